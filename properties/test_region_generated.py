"""In-region roots and full-backward DTD over generated networks, per rule and per layer.

Cases are i.i.d. like the other sweeps (:func:`properties.strategies.sample_cases`), fewer and smaller:
every relevant (point, neuron) pair costs one exact LP.  For each rule, train-free DTD gives each layer's
upper relevance; then

* ``region.{rule}.layer{k}.root_exists``: relevant pairs with a root in the closure of the input's region
  (:class:`dtd.RegionRoots`, L1); ``region.{rule}.root_exists`` pools the layers;
* ``region.{rule}.nearer_than_closed_form``: pairs where both roots exist and the region root is no farther
  (L1) from ``a`` than the rule's closed-form root;
* ``region.{rule}.gradient_match.at_root``: region roots whose own gradient of ``f_k`` is the input's
  (torch's ``relu'(0) = 0``: boundary roots fail it although in the region);
  ``...gradient_match.midpoint``: the gradient halfway to the input (inputs strictly inside their region)
  -- 100 % by the finder's contract, asserted here as well;
* ``region.sampled.{rule}.root_exists`` / ``.gradient_match.midpoint``: the same for RegionSamplingRoots;
* ``region.output_root.layer{k}``: points whose region of ``f_k`` contains a zero of ``f_k``;
* ``full_backward.{finder}.*``: :func:`dtd.full_backward` on shallower networks (depth <= 3, width <= 12).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

import dtd
from dtd import rules as R
from dtd.tolerances import PROPERTY_ATOL
from properties.checks import CONSERVED_SHARE, root_outcomes, segment_outcomes, with_roots
from properties.stats import Tally
from properties.strategies import sample_cases

pytestmark = pytest.mark.properties

#: networks per sweep: this many times the hypothesis profile's max_examples (ci: 90 networks)
REGION_FACTOR = 3
REGION_SPACE = dict(depth=(1, 4), width=(1, 12), input_size=(1, 12), n=8)
FULL_BACKWARD_SPACE = dict(depth=(1, 3), width=(1, 12), input_size=(1, 12), n=8)
RULES = {"z+": R.ZPlus(), "w2": R.WSquare(), "x": R.LRP0(), "gamma1": R.Gamma(1.0)}


def _rate_rows(property_report, tally, describe, summary=lambda name: False):
    for name in tally.names():
        property_report.rate(name, tally.rate(name, property_report.confidence), describe(name), summary=summary(name))


REGION_TEXT = {
    "root_exists": "relevant (point, neuron) pairs with a root in the closure of the input's region of f_k (exact LP, L1, root >= 0)",
    "nearer_than_closed_form": "pairs with both roots: the region root is no farther (L1) from the input than the closed-form root",
    "at_root": f"valid region roots whose gradient of f_k equals the input's within {PROPERTY_ATOL:g} (relu'(0) = 0 at the root)",
    "midpoint": "valid roots (inputs strictly inside their region) with the input's gradient halfway between root and input",
}


def test_region_roots_over_generated_networks(property_report, property_report_seed):
    generated = sample_cases(REGION_FACTOR * settings.default.max_examples, seed=property_report_seed + 303, **REGION_SPACE)
    tally = Tally()
    ratios = []
    for case in generated:
        tally.new_cluster()
        activations = case.net.activations(case.x)
        for k in range(case.net.n_layers):
            exists, _, _ = dtd.regions.region_output_root(case.net, activations[k], layer=k, output=case.output)
            tally.add(f"region.output_root.layer{k}", exists)
        for name, rule in RULES.items():
            dec = dtd.train_free(case.net, case.x, rule=rule, output=case.output)
            for lay in dec.layers:
                k, relevant = lay.index, lay.carries_relevance
                found = dtd.RegionRoots("l1").find(case.net, k, lay.input, lay.upper_relevance, output=case.output)
                sampled = dtd.RegionSamplingRoots(64, seed=k).find(case.net, k, lay.input, lay.upper_relevance, output=case.output)
                for prefix, roots in ((f"region.{name}", found), (f"region.sampled.{name}", sampled)):
                    tally.add(f"{prefix}.root_exists", roots.valid, relevant)
                    seg = segment_outcomes(case.net, lay.input, roots.roots(), layer=k, output=case.output)
                    judged = roots.valid & relevant & seg.interior.unsqueeze(1)
                    tally.add(f"{prefix}.gradient_match.midpoint", seg.midpoint_gradient_match, judged)
                tally.add(f"region.{name}.layer{k}.root_exists", found.valid, relevant)
                outcomes = root_outcomes(case.net, with_roots(dec, k, found), layer=k, output=case.output)
                tally.add(f"region.{name}.gradient_match.at_root", outcomes.gradient_match, found.valid & relevant)
                both = found.valid & lay.root_valid & relevant
                d_region = (found.roots() - lay.input.unsqueeze(1)).abs().sum(-1)
                d_closed = (lay.roots - lay.input.unsqueeze(1)).abs().sum(-1)
                tally.add(f"region.{name}.nearer_than_closed_form", d_region <= d_closed * (1 + 1e-9) + 1e-12, both)
                if name == "z+":
                    ratios += (d_region[both] / d_closed[both].clamp_min(1e-300)).tolist()

    def describe(name):
        parts = name.split(".")
        if parts[1] == "output_root":
            return f"generated networks: points whose region of f_{parts[2][5:]} (closure, inputs >= 0) contains a zero of f_{parts[2][5:]} (exact LP)"
        finder = "RegionSamplingRoots(64)" if parts[1] == "sampled" else "RegionRoots"
        rule = parts[2] if parts[1] == "sampled" else parts[1]
        layer = next((p[5:] for p in parts if p.startswith("layer")), None)
        where = f", layer {layer} only" if layer else ""
        return f"{finder} for {rule} relevances, generated networks{where}: {REGION_TEXT[parts[-1]]}"

    _rate_rows(property_report, tally, describe, summary=lambda n: n.endswith("root_exists") and ".layer" not in n and ".sampled." not in n)
    for name in tally.names():
        if name.endswith("midpoint"):
            rate = tally.rate(name, property_report.confidence)
            assert rate.successes == rate.trials, f"{name}: {rate.trials - rate.successes} in-region root(s) change the gradient"
    if ratios:
        property_report.histogram(
            "region_distance_ratio.png", "Generated networks: L1 distance of the region root / of the z+ root",
            {"z+ relevances, pairs with both roots": [min(r, 5.0) for r in ratios]},
            xlabel="distance ratio (region / closed form, capped at 5)",
            caption="Below 1: the exact in-region root is nearer to the input than the z+ root (which may lie outside the region).",
        )
        property_report.count("median L1 distance ratio region root / z+ root (generated networks)", float(torch.tensor(ratios).median()))


FULL_BACKWARD_FINDERS = {"z+": lambda: dtd.LinearRoots("z+"), "sampled": lambda: dtd.RegionSamplingRoots(32, seed=0)}
FULL_BACKWARD_TEXT = {
    "root_exists": "relevant (point, neuron) pairs of the real activations whose relevance function has a root",
    "resolved": f"pairs with a root where the upper decomposition re-applied at it is 0: |R_j(root)| <= {PROPERTY_ATOL:g}",
    "conserved": f"points with |f(x) - sum_i R_i| <= {CONSERVED_SHARE:g} f(x) (input relevance of full-backward DTD)",
}


def test_full_backward_over_generated_networks(property_report, property_report_seed):
    generated = sample_cases(REGION_FACTOR * settings.default.max_examples, seed=property_report_seed + 404, **FULL_BACKWARD_SPACE)
    tally = Tally()
    errors: dict[str, list[float]] = {name: [] for name in FULL_BACKWARD_FINDERS}
    for case in generated:
        tally.new_cluster()
        for name, make in FULL_BACKWARD_FINDERS.items():
            fb = dtd.full_backward(case.net, case.x, root_finder=make(), output=case.output, budget=None)
            relative = fb.conservation_error.abs() / fb.output_value
            tally.add(f"full_backward.{name}.conserved", relative <= CONSERVED_SHARE)
            errors[name] += relative.tolist()
            for lay in fb.layers:
                relevant = lay.carries_relevance
                tally.add(f"full_backward.{name}.root_exists", lay.root_valid, relevant)
                tally.add(f"full_backward.{name}.resolved", lay.unresolved.abs() <= PROPERTY_ATOL, lay.root_valid & relevant)

    def describe(name):
        finder = {"z+": "LinearRoots(z+)", "sampled": "RegionSamplingRoots(32)"}[name.split(".")[1]]
        return f"full_backward with {finder}, generated networks (depth <= 3): {FULL_BACKWARD_TEXT[name.split('.')[-1]]}"

    _rate_rows(property_report, tally, describe, summary=lambda n: n.endswith("conserved"))
    property_report.histogram(
        "full_backward_conservation.png", "Generated networks: full-backward |f(x) - sum R_i| / f(x)",
        {name: [min(e, 2.0) for e in values] for name, values in errors.items()},
        xlabel="relative conservation error (capped at 2)", caption="0: the input relevance sums to the output.",
    )
