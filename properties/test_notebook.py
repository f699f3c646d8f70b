"""The seed notebook's experiment, reproduced exactly, then broken down.

Network ``ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)`` (float32, as in
the notebook); rule z+; explained output 0; 1000 non-negative inputs with
``f(x) > 0.1``; the roots of the first layer (one per hidden neuron, in input
space).  Questions (3) "is the network output set to zero by the root?" and
(4) "do the roots have the same gradient as the input?".
"""

from __future__ import annotations


import pytest

import dtd
from dtd.tolerances import PROPERTY_ATOL, equation_rtol
from properties.checks import CONSERVED_SHARE, root_outcomes, segment_outcomes, with_roots
from properties.stats import Rate

pytestmark = pytest.mark.properties

N_POINTS = 1000
MIN_OUTPUT = 0.1
OUTPUT = 0

QUESTIONS = {
    "zero_output": f"|f(root)| <= {PROPERTY_ATOL:g}: the root sets the explained output to zero",
    "output_unchanged": f"f(x) - f(root) < {PROPERTY_ATOL:g}: the notebook's printed number (\"difference almost zero\")",
    "gradient_match.roots": f"max_i |grad f(root) - grad f(x)| <= {PROPERTY_ATOL:g}: the root has the input's gradient",
    "region_match": "the root lies in the closure of the input's linear region of f (hidden ReLUs and the explained output)",
    "in_domain": f"root >= -{PROPERTY_ATOL:g} in every coordinate",
}


@pytest.fixture(scope="module")
def seed_experiment():
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)
    x = net.sample_inputs(N_POINTS, output=OUTPUT, min_output=MIN_OUTPUT, seed=0)
    dec = dtd.train_free(net, x, rule="z+", output=OUTPUT)
    return net, x, dec


def _record_layer(property_report, prefix, outcomes, *, summary, what):
    """Root rates (clustered by point) and the per-point gradient rate of one layer."""
    valid = outcomes.valid
    for key, text in QUESTIONS.items():
        values = getattr(outcomes, key.split(".")[0])
        rate = Rate.from_mask(values, valid, cluster_dim=0, confidence=property_report.confidence)
        property_report.rate(f"{prefix}.{key}", rate, f"{what}: {text}", summary=summary and key != "in_domain")
    holds, has_roots = outcomes.per_point("gradient_match")
    property_report.rate(
        f"{prefix}.gradient_match.points",
        Rate.from_mask(holds, has_roots, confidence=property_report.confidence),
        f"points all of whose {what} have the input's gradient (the notebook printed the complement)",
        summary=summary,
    )


def test_seed_notebook(seed_experiment, property_report):
    net, x, dec = seed_experiment
    outcomes = root_outcomes(net, dec, layer=0, output=OUTPUT)
    what = "first-layer z+ roots of the seed network (10 per point, trivial roots included)"
    _record_layer(property_report, "notebook", outcomes, summary=True, what=what)
    property_report.rate(
        "notebook.root_exists",
        Rate.from_mask(outcomes.valid, cluster_dim=0, confidence=property_report.confidence),
        "first-layer (point, neuron) pairs whose closed-form z+ root exists (|w.v| > eps or R = 0)",
    )

    # per hidden neuron j: roots of neuron j over the 1000 points (independent points: Wilson)
    neuron_rows = {key: [] for key in ("zero_output", "output_unchanged", "gradient_match")}
    for j in range(net.sizes[1]):
        for key in neuron_rows:
            name = f"notebook.neuron{j}.{key}"
            values = getattr(outcomes, key)[:, j]
            rate = Rate.from_mask(values, outcomes.valid[:, j], confidence=property_report.confidence)
            property_report.rate(name, rate, f"first-layer z+ roots of hidden neuron {j}: {QUESTIONS.get(key, QUESTIONS['gradient_match.roots'])}")
            neuron_rows[key].append(name)

    labels = [f"n{j}" for j in range(net.sizes[1])]
    for key, rows in neuron_rows.items():
        property_report.bars(
            f"notebook_neuron_{key}.png", f"Seed network, first-layer z+ roots: {key} per hidden neuron", rows, labels,
            xlabel="hidden neuron of the first layer", caption=f"Share of the 1000 roots of each neuron with {QUESTIONS.get(key, QUESTIONS['gradient_match.roots'])}.",
        )

    books = dtd.accounting(net, dec)
    for acc in books.layers:
        scale = acc.upper.abs().clamp_min(1.0)
        assert bool((acc.residual.abs() <= equation_rtol(x.dtype) * scale).all()), f"layer {acc.index}: books do not balance"
        for key in ("upper", "lost", "bias_share"):
            property_report.count(f"seed network, layer {acc.index}: mean {key.replace('_', ' ')} relevance (dtd.accounting)", float(getattr(acc, key).mean()))

    f_x = outcomes.output_at_input
    diffs = (f_x.unsqueeze(1) - outcomes.output_at_root)[outcomes.valid]
    property_report.histogram(
        "notebook_output_difference.png", "Seed network: f(x) - f(root) of the first-layer z+ roots, beside f(x)",
        {"f(x) - f(root), every root": diffs.tolist(), "f(x), every point": f_x.tolist()},
        xlabel="f(x) - f(root) per root; f(x) per point", caption="The notebook's first histogram: a root that zeroed the output would give f(x) - f(root) = f(x).",
    )
    mean_diff = (outcomes.gradient_mean_abs_difference * outcomes.valid).sum(1) / outcomes.valid.sum(1).clamp_min(1)
    property_report.histogram(
        "notebook_gradient_difference.png", "Seed network: mean |grad f(root) - grad f(x)| per point",
        {"mean over the point's roots and input dimensions": mean_diff.tolist()},
        xlabel="mean absolute gradient difference", caption="The notebook's second histogram; 0 means every root of the point lies in the input's linear region.",
    )


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_seed_notebook_per_layer(seed_experiment, property_report, layer):
    net, x, dec = seed_experiment
    outcomes = root_outcomes(net, dec, layer=layer, output=OUTPUT)
    what = f"layer-{layer} z+ roots of the seed network, judged with f_{layer} (trivial roots included)"
    _record_layer(property_report, f"notebook.layer{layer}", outcomes, summary=False, what=what)


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_seed_network_region_roots(seed_experiment, property_report, layer):
    """Beyond the notebook: does a valid Taylor root exist inside the input's region at all?"""
    net, x, dec = seed_experiment
    lay = dec.layers[layer]
    found = dtd.RegionRoots("l1").find(net, layer, lay.input, lay.upper_relevance, output=OUTPUT)
    relevant = lay.carries_relevance
    confidence = property_report.confidence
    summary = layer == 0
    property_report.rate(
        f"notebook.layer{layer}.region_root_exists",
        Rate.from_mask(found.valid, relevant, cluster_dim=0, confidence=confidence),
        f"seed network, layer-{layer} (point, neuron) pairs carrying z+ relevance with a root in the closure of the "
        f"input's region of f_{layer} (root equation, root >= 0; exact LP)",
        summary=summary,
    )
    exists, _, _ = dtd.regions.region_output_root(net, lay.input, layer=layer, output=OUTPUT)
    property_report.rate(
        f"notebook.layer{layer}.region_output_root",
        Rate.from_mask(exists, confidence=confidence),
        f"seed network, points whose region of f_{layer} (closure, inputs >= 0) contains a point with f_{layer} = 0 (exact LP)",
        summary=summary,
    )
    _judge_in_region(
        property_report, net, dec, layer, found, f"notebook.layer{layer}.region_roots.gradient_match",
        f"seed network, layer-{layer} in-region LP roots (relevant neurons) whose gradient of f_{layer} equals the input's "
        "(roots on the region's boundary meet relu'(0) = 0)",
    )

    for key, finder, how in (
        ("sampled_roots", dtd.RegionSamplingRoots(256, seed=0), "one of 256 random rays from the input reaches the neuron's root inside the region (RegionSamplingRoots)"),
        ("walk_roots", dtd.MetropolisHastingsRoots(8, 100, seed=0), "8 random walks of 100 moves inside the region cross the neuron's root hyperplane (MetropolisHastingsRoots)"),
    ):
        found_here = finder.find(net, layer, lay.input, lay.upper_relevance, output=OUTPUT)
        property_report.rate(
            f"notebook.layer{layer}.{key}.exists",
            Rate.from_mask(found_here.valid, relevant, cluster_dim=0, confidence=confidence),
            f"seed network, layer-{layer} (point, neuron) pairs carrying relevance for which {how}",
        )
        _judge_in_region(
            property_report, net, dec, layer, found_here, f"notebook.layer{layer}.{key}.gradient_match",
            f"seed network, layer-{layer} {key.replace('_', ' ')} (relevant neurons) whose gradient of f_{layer} equals the input's",
        )


def _judge_in_region(property_report, net, dec, layer, root_set, name, description):
    """Another finder's roots of ``layer``, judged with the same checks: all in the region; gradient match recorded."""
    outcomes = root_outcomes(net, with_roots(dec, layer, root_set), layer=layer, output=OUTPUT)
    counted = root_set.valid & dec.layers[layer].carries_relevance
    assert bool(outcomes.region_match[counted].all()), f"{name}: a root left the closure of its region"
    property_report.rate(name, Rate.from_mask(outcomes.gradient_match, counted, cluster_dim=0, confidence=property_report.confidence),
                         description + " (at the root: relu'(0) = 0 on the region's boundary)")
    lay = dec.layers[layer]
    seg = segment_outcomes(net, lay.input, root_set.roots(), layer=layer, output=OUTPUT)
    judged = counted & seg.interior.unsqueeze(1)
    midpoint = Rate.from_mask(seg.midpoint_gradient_match, judged, cluster_dim=0, confidence=property_report.confidence)
    property_report.rate(f"{name}.midpoint", midpoint, description + " halfway between root and input (inputs strictly inside their region)")
    assert midpoint.successes == midpoint.trials, f"{name}: an in-region root changes the gradient along its segment"


FULL_BACKWARD = {
    # name: (finder, points of the seed experiment used)
    "z+": (lambda: dtd.LinearRoots("z+"), N_POINTS),
    "sampled": (lambda: dtd.RegionSamplingRoots(256, seed=0), 100),
}


@pytest.mark.parametrize("name", list(FULL_BACKWARD))
def test_seed_network_full_backward(seed_experiment, property_report, name):
    """The recursive DTD on the seed network: how much relevance survives, and how much stays unresolved."""
    net, x, _ = seed_experiment
    make, n_points = FULL_BACKWARD[name]
    fb = dtd.full_backward(net, x[:n_points], root_finder=make(), output=OUTPUT)
    relative = fb.conservation_error.abs() / fb.output_value
    confidence = property_report.confidence
    finder = fb.layers[0].method
    property_report.rate(
        f"notebook.full_backward.{name}.conserved",
        Rate.from_mask(relative <= CONSERVED_SHARE, confidence=confidence),
        f"seed network, full_backward with {finder} ({n_points} points): |f(x) - sum_i R_i| <= {CONSERVED_SHARE * 100:g} % of f(x)",
        summary=True,
    )
    property_report.count(f"seed network, full_backward ({finder}): mean |f(x) - sum R_i| / f(x)", float(relative.mean()))
    property_report.count(f"seed network, full_backward ({finder}): root-finder evaluations", sum(fb.evaluations))
    for lay in fb.layers:
        relevant = lay.carries_relevance
        property_report.rate(
            f"notebook.full_backward.{name}.layer{lay.index}.root_exists",
            Rate.from_mask(lay.root_valid, relevant, cluster_dim=0, confidence=confidence),
            f"seed network, full_backward with {finder}, layer {lay.index}: relevant neurons whose relevance function has a root",
        )
        property_report.rate(
            f"notebook.full_backward.{name}.layer{lay.index}.resolved",
            Rate.from_mask(lay.unresolved.abs() <= PROPERTY_ATOL, lay.root_valid & relevant, cluster_dim=0, confidence=confidence),
            f"seed network, full_backward with {finder}, layer {lay.index}: roots where the upper decomposition re-applied "
            f"at the root is 0 (|R_j(root)| <= {PROPERTY_ATOL:g})",
        )
        scale = lay.upper_relevance.abs().sum(1).clamp_min(1e-30)
        property_report.count(
            f"seed network, full_backward ({finder}), layer {lay.index}: mean sum_j |R_j(root)| / sum_j |R_j|",
            float((lay.unresolved.abs().sum(1) / scale).mean()),
        )
