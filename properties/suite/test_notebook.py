"""The seed notebook's experiment, reproduced exactly, then broken down.

Network ``ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)`` (float32, as in
the notebook); rule z+; explained output 0; 1000 non-negative inputs with
``f(x) > 0.1``; the roots of the first layer (one per hidden neuron, in input
space).  Questions (3) "is the network output set to zero by the root?" and
(4) "do the roots have the same gradient as the input?".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch

import dtd
from dtd.tolerances import equation_rtol
from properties.measure.checks import root_outcomes, segment_outcomes, with_roots
from properties.measure.keys import OUTCOMES, RateKey
from properties.measure.stats import Rate
from properties.measure.thresholds import CONSERVED_SHARE, PROPERTY_ATOL

if TYPE_CHECKING:
    from dtd.rootsets import RootSet
    from properties.measure.checks import RootOutcomes
    from properties.plugin import PropertyReport

pytestmark = pytest.mark.properties

#: the seed network, its points and their z+ decomposition
SeedExperiment = tuple[dtd.ReLUNetwork, torch.Tensor, dtd.Decomposition]

N_POINTS = 1000
MIN_OUTPUT = 0.1
OUTPUT = 0

#: the root questions of every layer: (outcome, unit) of the key, and which RootOutcomes field answers it
QUESTIONS = {
    ("zero_output", None): "zero_output",
    ("output_unchanged", None): "output_unchanged",
    ("gradient_match", "roots"): "gradient_match",
    ("region_match", None): "region_match",
    ("in_domain", None): "in_domain",
}


@pytest.fixture(scope="module")
def seed_experiment() -> SeedExperiment:
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)
    x = net.sample_inputs(N_POINTS, output=OUTPUT, min_output=MIN_OUTPUT, seed=0)
    dec = dtd.train_free(net, x, rule="z+", output=OUTPUT)
    return net, x, dec


def _record_layer(property_report: PropertyReport, key: RateKey, outcomes: RootOutcomes, *, summary: bool) -> None:
    """Root rates (clustered by point) and the per-point gradient rate of one
    layer (``key``: the layer's notebook key)."""
    valid = outcomes.valid
    for (outcome, unit), field in QUESTIONS.items():
        rate = Rate.from_mask(getattr(outcomes, field), valid, cluster_dim=0, confidence=property_report.confidence)
        property_report.rate(key.replace(outcome=outcome, unit=unit), rate, summary=summary and outcome != "in_domain")
    holds, has_roots = outcomes.per_point("gradient_match")
    property_report.rate(
        key.replace(outcome="gradient_match", unit="points"),
        Rate.from_mask(holds, has_roots, confidence=property_report.confidence),
        summary=summary,
    )


NOTEBOOK = RateKey("notebook", "zero_output")


def test_seed_notebook(seed_experiment: SeedExperiment, property_report: PropertyReport) -> None:
    net, x, dec = seed_experiment
    outcomes = root_outcomes(net, dec, layer=0, output=OUTPUT)
    _record_layer(property_report, NOTEBOOK, outcomes, summary=True)
    property_report.rate(
        NOTEBOOK.replace(outcome="root_exists"),
        Rate.from_mask(outcomes.valid, cluster_dim=0, confidence=property_report.confidence)
    )

    # per hidden neuron j: roots of neuron j over the 1000 points (independent points: Wilson)
    outcomes_per_neuron = ("zero_output", "output_unchanged", "gradient_match")
    neuron_rows: dict[str, list[str]] = {outcome: [] for outcome in outcomes_per_neuron}
    for j in range(net.sizes[1]):
        for outcome in neuron_rows:
            key = NOTEBOOK.replace(outcome=outcome, neuron=j)
            rate = Rate.from_mask(getattr(outcomes, outcome)[:, j], outcomes.valid[:, j],
                                  confidence=property_report.confidence)
            property_report.rate(key, rate)
            neuron_rows[outcome].append(str(key))

    labels = [f"n{j}" for j in range(net.sizes[1])]
    for outcome, rows in neuron_rows.items():
        property_report.bars(
            f"notebook_neuron_{outcome}.png", f"Seed network, first-layer z+ roots: {outcome} per hidden neuron", rows,
            labels, xlabel="hidden neuron of the first layer",
            caption=f"Share of the 1000 roots of each neuron with {OUTCOMES[outcome]}.",
        )

    books = dtd.accounting(net, dec)
    for acc in books.layers:
        scale = acc.upper.abs().clamp_min(1.0)
        assert bool((acc.residual.abs() <= equation_rtol(x.dtype) * scale).all()), (f"layer {acc.index}: "
                                                                                    "books do not balance")
        for field in ("upper", "lost", "bias_share"):
            property_report.count(f"seed network, layer {acc.index}: mean "
                                  f"{field.replace('_', ' ')} relevance "
                                  "(dtd.accounting)", float(getattr(acc, field).mean()))

    f_x = outcomes.output_at_input
    diffs = (f_x.unsqueeze(1) - outcomes.output_at_root)[outcomes.valid]
    property_report.histogram(
        "notebook_output_difference.png", "Seed network: f(x) - f(root) of the first-layer z+ roots, beside f(x)",
        {"f(x) - f(root), every root": diffs.tolist(), "f(x), every point": f_x.tolist()},
        xlabel="f(x) - f(root) per root; f(x) per point",
        caption="The notebook's first histogram: a root that zeroed the output would give f(x) - f(root) = f(x).",
    )
    mean_diff = (outcomes.gradient_mean_abs_difference * outcomes.valid).sum(1) / outcomes.valid.sum(1).clamp_min(1)
    property_report.histogram(
        "notebook_gradient_difference.png", "Seed network: mean |grad f(root) - grad f(x)| per point",
        {"mean over the point's roots and input dimensions": mean_diff.tolist()},
        xlabel="mean absolute gradient difference",
        caption="The notebook's second histogram; 0 means every root of the point lies in the input's linear region.",
    )


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_seed_notebook_per_layer(seed_experiment: SeedExperiment, property_report: PropertyReport, layer: int) -> None:
    net, x, dec = seed_experiment
    outcomes = root_outcomes(net, dec, layer=layer, output=OUTPUT)
    _record_layer(property_report, NOTEBOOK.replace(layer=layer), outcomes, summary=False)


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_seed_network_region_roots(seed_experiment: SeedExperiment, property_report: PropertyReport,
                                   layer: int) -> None:
    """Beyond the notebook: does a valid Taylor root exist inside the input's region at all?"""
    net, x, dec = seed_experiment
    lay = dec.layers[layer]
    found = dtd.RegionRoots("l1").find(net, layer, lay.input, lay.upper_relevance, output=OUTPUT)
    relevant = lay.carries_relevance
    confidence = property_report.confidence
    summary = layer == 0
    key = NOTEBOOK.replace(layer=layer)
    property_report.rate(
        key.replace(outcome="region_root_exists"),
        Rate.from_mask(found.valid, relevant, cluster_dim=0, confidence=confidence), summary=summary
    )
    exists, _, _ = dtd.regions.region_output_root(net, lay.input, layer=layer, output=OUTPUT)
    property_report.rate(key.replace(outcome="region_output_root"), Rate.from_mask(exists, confidence=confidence),
                         summary=summary)
    _judge_in_region(property_report, net, dec, layer, found,
                     key.replace(finder="region_roots", outcome="gradient_match"))

    for finder_key, finder in (
        ("sampled_roots", dtd.RegionSamplingRoots(256, seed=0)),
        ("walk_roots", dtd.MetropolisHastingsRoots(8, 100, seed=0)),
    ):
        found_here = finder.find(net, layer, lay.input, lay.upper_relevance, output=OUTPUT)
        property_report.rate(
            key.replace(finder=finder_key, outcome="exists"),
            Rate.from_mask(found_here.valid, relevant, cluster_dim=0, confidence=confidence)
        )
        _judge_in_region(property_report, net, dec, layer, found_here,
                         key.replace(finder=finder_key, outcome="gradient_match"))


def _judge_in_region(property_report: PropertyReport, net: dtd.ReLUNetwork, dec: dtd.Decomposition, layer: int,
                     root_set: RootSet, key: RateKey) -> None:
    """Another finder's roots of ``layer``, judged with the same checks: all in the region; gradient match recorded
    at the root (relu'(0) = 0 on the region's boundary) and halfway to the input (must be 100 %)."""
    outcomes = root_outcomes(net, with_roots(dec, layer, root_set), layer=layer, output=OUTPUT)
    counted = root_set.valid & dec.layers[layer].carries_relevance
    assert bool(outcomes.region_match[counted].all()), f"{key}: a root left the closure of its region"
    property_report.rate(key, Rate.from_mask(outcomes.gradient_match, counted, cluster_dim=0,
                                             confidence=property_report.confidence))
    lay = dec.layers[layer]
    seg = segment_outcomes(net, lay.input, root_set.roots(), layer=layer, output=OUTPUT)
    judged = counted & seg.interior.unsqueeze(1)
    midpoint = Rate.from_mask(seg.midpoint_gradient_match, judged, cluster_dim=0, confidence=property_report.confidence)
    property_report.rate(key.replace(subset="midpoint"), midpoint)
    assert midpoint.successes == midpoint.trials, f"{key}: an in-region root changes the gradient along its segment"


FULL_BACKWARD = {
    # name: (finder, points of the seed experiment used)
    "z+": (lambda: dtd.LinearRoots("z+"), N_POINTS),
    "sampled": (lambda: dtd.RegionSamplingRoots(256, seed=0), 100),
}


@pytest.mark.parametrize("name", list(FULL_BACKWARD))
def test_seed_network_full_backward(seed_experiment: SeedExperiment, property_report: PropertyReport,
                                    name: str) -> None:
    """The recursive DTD on the seed network: how much relevance survives, and how much stays unresolved."""
    net, x, _ = seed_experiment
    make, n_points = FULL_BACKWARD[name]
    fb = dtd.full_backward(net, x[:n_points], root_finder=make(), output=OUTPUT)
    relative = fb.conservation_error.abs() / fb.output_value
    confidence = property_report.confidence
    finder = fb.layers[0].method
    key = RateKey("full_backward", "conserved", subject="seed", finder=name)
    property_report.rate(key, Rate.from_mask(relative <= CONSERVED_SHARE, confidence=confidence),
                         f"seed network, full_backward with {finder} ({n_points} points): {OUTCOMES['conserved']}",
                         summary=True)
    property_report.count(f"seed network, full_backward ({finder}): mean |f(x) - sum R_i| / f(x)",
                          float(relative.mean()))
    property_report.count(f"seed network, full_backward ({finder}): root-finder evaluations", sum(fb.evaluations))
    for lay in fb.layers:
        relevant = lay.carries_relevance
        property_report.rate(key.replace(outcome="root_exists", layer=lay.index),
                             Rate.from_mask(lay.root_valid, relevant, cluster_dim=0, confidence=confidence))
        property_report.rate(key.replace(outcome="resolved", layer=lay.index),
                             Rate.from_mask(lay.unresolved.abs() <= PROPERTY_ATOL, lay.root_valid & relevant,
                                            cluster_dim=0, confidence=confidence))
        scale = lay.upper_relevance.abs().sum(1).clamp_min(1e-30)
        property_report.count(
            f"seed network, full_backward ({finder}), layer {lay.index}: mean sum_j |R_j(root)| / sum_j |R_j|",
            float((lay.unresolved.abs().sum(1) / scale).mean()),
        )
