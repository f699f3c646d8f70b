"""In-region roots and full-backward DTD over generated networks, per rule and per layer.

Cases are i.i.d. like the other sweeps (:func:`properties.generate.strategies.sample_cases`), fewer and smaller:
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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import torch
from hypothesis import settings

import dtd
from properties.generate import variants as V
from properties.generate.strategies import sample_cases
from properties.measure.checks import root_outcomes, segment_outcomes, with_roots
from properties.measure.keys import RateKey
from properties.measure.stats import Tally
from properties.measure.thresholds import CONSERVED_SHARE, NEARER_ATOL, NEARER_RTOL, PROPERTY_ATOL

if TYPE_CHECKING:
    from properties.plugin import PropertyReport

pytestmark = pytest.mark.properties

#: networks per sweep: this many times the hypothesis profile's max_examples (ci: 90 networks)
REGION_FACTOR = 3
REGION_SPACE: dict[str, Any] = dict(depth=(1, 4), width=(1, 12), input_size=(1, 12), n=8)
FULL_BACKWARD_SPACE: dict[str, Any] = dict(depth=(1, 3), width=(1, 12), input_size=(1, 12), n=8)


def _rate_rows(property_report: PropertyReport, tally: Tally[RateKey], summary: Callable[[RateKey], bool]) -> None:
    for key in tally.names():
        property_report.rate(key, tally.rate(key, property_report.confidence), summary=summary(key))


def test_region_roots_over_generated_networks(property_report: PropertyReport, property_report_seed: int) -> None:
    generated = sample_cases(REGION_FACTOR * settings().max_examples, seed=property_report_seed + 303,
                             **REGION_SPACE)
    tally: Tally[RateKey] = Tally()
    ratios = []
    variants = V.variants("region")
    for case in generated:
        tally.new_cluster()
        activations = case.net.activations(case.x)
        for k in range(case.net.n_layers):
            exists, _, _ = dtd.regions.region_output_root(case.net, activations[k], layer=k, output=case.output)
            tally.add(RateKey("region", "output_root", layer=k), exists)
        for variant in variants:
            dec = dtd.train_free(case.net, case.x, rule=variant.make(case.x, case.net.n_layers), output=case.output)
            lp_key = RateKey("region", "root_exists", rule=variant.label)
            for lay in dec.layers:
                k, relevant = lay.index, lay.carries_relevance
                found = dtd.RegionRoots("l1").find(case.net, k, lay.input, lay.upper_relevance, output=case.output)
                sampled = dtd.RegionSamplingRoots(64, seed=k).find(
                    case.net, k, lay.input, lay.upper_relevance, output=case.output
                )
                for key, roots in ((lp_key, found), (lp_key.replace(finder="sampled"), sampled)):
                    tally.add(key, roots.valid, relevant)
                    seg = segment_outcomes(case.net, lay.input, roots.roots(), layer=k, output=case.output)
                    judged = roots.valid & relevant & seg.interior.unsqueeze(1)
                    tally.add(key.replace(outcome="gradient_match", subset="midpoint"), seg.midpoint_gradient_match,
                              judged)
                tally.add(lp_key.replace(layer=k), found.valid, relevant)
                outcomes = root_outcomes(case.net, with_roots(dec, k, found), layer=k, output=case.output)
                tally.add(lp_key.replace(outcome="gradient_match", subset="at_root"), outcomes.gradient_match,
                          found.valid & relevant)
                both = found.valid & lay.root_valid & relevant
                d_region = (found.roots() - lay.input.unsqueeze(1)).abs().sum(-1)
                d_closed = (lay.roots - lay.input.unsqueeze(1)).abs().sum(-1)
                tally.add(lp_key.replace(outcome="nearer_than_closed_form"),
                          d_region <= d_closed * (1 + NEARER_RTOL) + NEARER_ATOL, both)
                if variant.label == "z+":
                    ratios += (d_region[both] / d_closed[both].clamp_min(1e-300)).tolist()

    _rate_rows(property_report, tally, summary=lambda key: key.outcome == "root_exists" and key.layer is None
               and key.finder is None)
    for key in tally.names():
        if key.subset == "midpoint":
            rate = tally.rate(key, property_report.confidence)
            assert rate.successes == rate.trials, (f"{key}: {rate.trials - rate.successes} in-region "
                                                   "root(s) change the gradient")
    if ratios:
        property_report.histogram(
            "region_distance_ratio.png", "Generated networks: L1 distance of the region root / of the z+ root",
            {"z+ relevances, pairs with both roots": [min(r, 5.0) for r in ratios]},
            xlabel="distance ratio (region / closed form, capped at 5)",
            caption="Below 1: the exact in-region root is nearer to the input "
                    "than the z+ root (which may lie outside the region).",
        )
        property_report.count("median L1 distance ratio region root / z+ root (generated networks)",
                              float(torch.tensor(ratios).median()))


FULL_BACKWARD_FINDERS = {"z+": lambda: dtd.LinearRoots("z+"), "sampled": lambda: dtd.RegionSamplingRoots(32, seed=0)}


def test_full_backward_over_generated_networks(property_report: PropertyReport, property_report_seed: int) -> None:
    generated = sample_cases(REGION_FACTOR * settings().max_examples, seed=property_report_seed + 404,
                             **FULL_BACKWARD_SPACE)
    tally: Tally[RateKey] = Tally()
    errors: dict[str, list[float]] = {name: [] for name in FULL_BACKWARD_FINDERS}
    for case in generated:
        tally.new_cluster()
        for name, make in FULL_BACKWARD_FINDERS.items():
            fb = dtd.full_backward(case.net, case.x, root_finder=make(), output=case.output, budget=None)
            relative = fb.conservation_error.abs() / fb.output_value
            key = RateKey("full_backward", "conserved", finder=name)
            tally.add(key, relative <= CONSERVED_SHARE)
            errors[name] += relative.tolist()
            for lay in fb.layers:
                relevant = lay.carries_relevance
                tally.add(key.replace(outcome="root_exists"), lay.root_valid, relevant)
                tally.add(key.replace(outcome="resolved"), lay.unresolved.abs() <= PROPERTY_ATOL,
                          lay.root_valid & relevant)

    _rate_rows(property_report, tally, summary=lambda key: key.outcome == "conserved")
    property_report.histogram(
        "full_backward_conservation.png", "Generated networks: full-backward |f(x) - sum R_i| / f(x)",
        {name: [min(e, 2.0) for e in values] for name, values in errors.items()},
        xlabel="relative conservation error (capped at 2)", caption="0: the input relevance sums to the output.",
    )
