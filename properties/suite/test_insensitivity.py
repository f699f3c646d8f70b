"""Class insensitivity with depth (Sixt, Granz & Landgraf 2020), measured: :mod:`properties.findings.insensitivity`.

Generated networks of every depth 1-10 (rates per rule, depth and pair, clustered by network), the paper's
random-matrix simulation with VGG-16's backward shapes, and the trained digits subjects.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from properties.findings import insensitivity
from properties.measure.keys import RateKey
from properties.measure.stats import interval_quantile
from properties.subjects import digits
from properties.subjects.subject import Subject

if TYPE_CHECKING:
    from properties.plugin import PropertyReport

pytestmark = pytest.mark.properties

#: networks per depth: the hypothesis profile's max_examples over this (ci: 6, thorough: 100)
NETWORKS_DIVISOR = 5
POINTS_PER_NETWORK = 64
#: simulation runs: max_examples over this (thorough: 33), and never fewer than separation needs (below)
SIMULATION_DIVISOR = 15


def _runs_to_separate(confidence: float) -> int:
    """Runs each simulation needs so that all-pass and all-fail rates over whole runs have disjoint intervals.

    An all-pass (all-fail) rate over ``n`` runs counts them as ``n`` trials (properties.measure.stats); the Wilson
    intervals of ``n / n`` and ``0 / n`` are disjoint when ``n > z^2``, ``z`` the
    interval's normal quantile (99 %: 6.6 -> 7).
    """
    z = interval_quantile(confidence)
    return math.floor(z * z) + 1
SUBJECT_POINTS = 200


def _summary(key: RateKey) -> bool:
    return key.depth == 8 and key.pair == "outputs" and key.rule in ("z+", "x")


def test_insensitivity_by_depth(property_report: PropertyReport) -> None:
    count = max(2, settings().max_examples // NETWORKS_DIVISOR)
    result = insensitivity.depth_sweep(n_networks=count, n_points=POINTS_PER_NETWORK, seed=property_report.seed)
    found = insensitivity.sweep_findings(result, confidence=property_report.confidence, seed=property_report.seed)
    found.record(property_report, summary=_summary)
    rules = {key.rule for key in found.rates}
    assert {"z+", "x", "w2", "zB"} <= rules
    assert len(found.rates) == len(rules) * len(insensitivity.DEPTHS) * 2
    for key, (rate, _) in found.rates.items():
        if key.pair == "random":  # two random top relevances: every point with relevance is judged
            assert rate.trials >= count * POINTS_PER_NETWORK * 0.9, f"{key}: only {rate.trials} points judged"
    # the theory's direction: z+'s backward maps are non-negative, so its relevance converges with depth
    shallow = found.rates[RateKey("insensitivity", "insensitive", rule="z+", depth=1, pair="random")][0]
    deep = found.rates[RateKey("insensitivity", "insensitive", rule="z+", depth=10, pair="random")][0]
    (deep_low, _), (_, shallow_high) = deep.interval, shallow.interval
    assert deep_low is not None and shallow_high is not None, f"no data: depth 1 {shallow}, depth 10 {deep}"
    assert deep_low > shallow_high, f"z+ does not converge with depth: depth 1 {shallow}, depth 10 {deep}"


def test_vgg16_simulation(property_report: PropertyReport) -> None:
    runs = max(_runs_to_separate(property_report.confidence), settings().max_examples // SIMULATION_DIVISOR)
    found = insensitivity.vgg16_simulation(runs=runs, seed=property_report.seed, confidence=property_report.confidence)
    found.record(property_report, summary=lambda key: True)
    depth = len(insensitivity.VGG16_WIDTHS) - 1
    rate = {kind: found.rates[RateKey("insensitivity", "insensitive", subject="vgg16_simulation", depth=depth,
                                      pair="columns", subset=kind)][0] for kind in insensitivity.SIMULATION}
    (nonnegative_low, _), (_, gaussian_high) = rate["nonnegative"].interval, rate["gaussian"].interval
    assert nonnegative_low is not None and gaussian_high is not None, f"no data: {rate}"
    assert nonnegative_low > gaussian_high, f"simulation: {rate}"


@pytest.mark.parametrize("name, train", [("digits_mlp", digits.digits_mlp), ("digits_cnn", digits.digits_cnn)])
def test_trained_subjects(property_report: PropertyReport, name: str,
                          train: Callable[[], digits.TrainedModel]) -> None:
    trained = train()
    subject = Subject(name, trained.model, trained.data.test_x[:SUBJECT_POINTS], rules=("z+", "zB"),
                      input_box=(0.0, 1.0))
    found = insensitivity.subject_insensitivity(subject, seed=property_report.seed,
                                                confidence=property_report.confidence)
    found.record(property_report)
    assert {key.rule for key in found.rates} == {"z+", "zB", "x"}
    for key, (rate, _) in found.rates.items():
        assert rate.trials > SUBJECT_POINTS // 2, f"{key}: only {rate.trials} of {SUBJECT_POINTS} points judged"
