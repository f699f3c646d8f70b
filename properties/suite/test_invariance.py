"""Input invariance (Kindermans et al. 2019): must-hold for w2 and shifted zB, rates for every rule.

The shift.  Inputs ``x`` become ``x + c``; the first layer's bias becomes ``b' = b - W c``
(:func:`properties.findings.invariance.shifted_network`).  Then ``z' = W (x + c) + b' = W x + b = z``: every
activation above the input, hence every layer's upper relevance down to the first layer's ``R_j``, is
the original's (the layers above are untouched copies).

The first layer.  With a rule's direction ``v_j`` the input relevance is
``R_i = sum_j w_ji v_ji t_j`` with ``t_j = R_j / (w_j . v_j)``; it is unchanged when ``v_j`` is.

* ``w2``: ``v_j = w_j`` does not depend on the input, so ``v'_j = v_j`` and ``R'_i = R_i``.
* ``zB`` on ``[low, high]``, shifted to ``[low + c, high + c]``:
  ``v'_j = (x + c) - (low + c) 1[w_j >= 0] - (high + c) 1[w_j < 0] = x - low 1[w_j >= 0] - high 1[w_j < 0] = v_j``.
* ``zB`` whose bounds are *not* shifted: ``v'_j = v_j + c`` -- with two or more inputs the relevance is
  redistributed among them (with one input, conservation alone fixes ``R_i = sum_j R_j``), which
  hypothesis finds and shrinks to a network of two inputs and one neuron.

Both identities are exact in real arithmetic; in float64 the only differences are the rounding of
``b - W c`` and of ``x + c``, bounded by :data:`INVARIANCE_RTOL64` of the relevance's scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import torch
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import dtd
from dtd import rules as R
from properties.findings import invariance
from properties.generate.strategies import cases, sample_cases
from properties.measure.keys import RateKey
from properties.subjects import digits
from properties.subjects.subject import Subject

if TYPE_CHECKING:
    from properties.generate.strategies import Case
    from properties.plugin import PropertyReport

pytestmark = pytest.mark.properties

#: float64 relevances of shifted and original networks agree to this share of max |R| (rounding of b - W c, x + c)
INVARIANCE_RTOL64 = 1e-9
#: generated networks of the rates: the hypothesis profile's max_examples over this (ci: 15, thorough: 250)
NETWORKS_DIVISOR = 2
#: points per generated network of the rates
POINTS_PER_NETWORK = 32
SUBJECT_POINTS = 200


def _shift(seed: int, width: int) -> torch.Tensor:
    """``c``: i.i.d. uniform [0, 1) per input feature, from a local generator."""
    return torch.rand(width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _box(x: torch.Tensor) -> tuple[float, float]:
    """A box holding ``x`` and ``x + c`` for any ``c`` in [0, 1)."""
    return 0.0, float(math.ceil(float(x.max()))) + 1.0


def _relevances(case: Case, c: torch.Tensor, first_before: R.Rule,
                first_after: R.Rule) -> tuple[dtd.Decomposition, dtd.Decomposition]:
    """Input relevance of the original network on ``x`` and of the shifted one on ``x + c`` (z+ above the input)."""
    above: list[R.Rule] = [R.ZPlus()] * (case.net.n_layers - 1)
    before = dtd.train_free(case.net, case.x, rule=[first_before] + above, output=case.output)
    moved = invariance.shifted_network(case.net, c)
    after = dtd.train_free(moved, case.x + c, rule=[first_after] + above, output=case.output)
    return before, after


def _violation(before: dtd.Decomposition, after: dtd.Decomposition) -> float:
    return float(invariance.relevance_change(before.relevance, after.relevance).max())


#: the must-hold tests' networks: small, so that each example is cheap and a failure shrinks fast
SMALL = dict(depth=(1, 3), width=(1, 8), input_size=(1, 8), n=(1, 8))
#: the broken invariance's search space: a violation is found at once, the time goes into shrinking it
TINY = dict(depth=(1, 2), width=(1, 4), input_size=(1, 4), n=(1, 4))


@given(case=cases(**SMALL), seed=st.integers(0, 2**16))
def test_w2_and_shifted_zb_are_input_invariant(case: Case, seed: int) -> None:
    """w2 at the input, and zB with its bounds shifted by c, give the original relevance (see the module docstring)."""
    c = _shift(seed, case.net.in_features)
    weights = [case.net.weight(k).clone() for k in range(case.net.n_layers)]
    low, high = _box(case.x)
    for label, first_before, first_after in (("w2", R.WSquare(), R.WSquare()),
                                             ("zB", R.ZB(low, high), R.ZB(low + c, high + c))):
        before, after = _relevances(case, c, first_before, first_after)
        worst = _violation(before, after)
        assert worst <= INVARIANCE_RTOL64, (
            f"{label}: relevance changed by {worst:.3g} of its scale under "
            f"the shift c = {c.tolist()}\n{case.describe()}")
    # the layers above are untouched: same weights and biases, same pre-activations, same upper relevance
    moved = invariance.shifted_network(case.net, c)
    for k in range(case.net.n_layers):
        assert torch.equal(moved.weight(k), case.net.weight(k))
        if k:
            assert torch.equal(moved.bias(k), case.net.bias(k))
    scale = 1.0 + float(case.net.pre_activations(case.x)[0].abs().max())
    for z, z_moved in zip(case.net.pre_activations(case.x), moved.pre_activations(case.x + c), strict=True):
        assert float((z - z_moved).abs().max()) <= INVARIANCE_RTOL64 * scale
    for k in range(1, case.net.n_layers):
        diff = float((before.layers[k].upper_relevance - after.layers[k].upper_relevance).abs().max())
        assert diff <= INVARIANCE_RTOL64 * (1.0 + float(before.output_value.abs().max()))
    assert all(torch.equal(w, case.net.weight(k)) for k, w in enumerate(weights)), ("shifted_network changed "
                                                                                    "the caller's network")


def test_a_zb_whose_bounds_are_not_shifted_shrinks_to_two_inputs() -> None:
    """The deliberately broken invariance: zB keeps the unshifted box [low, high] on the shifted inputs."""

    def broken(example: tuple[Case, int]) -> bool:
        case, seed = example
        c = _shift(seed, case.net.in_features)
        low, high = _box(case.x)
        before, after = _relevances(case, c, R.ZB(low, high), R.ZB(low, high))
        return _violation(before, after) > INVARIANCE_RTOL64

    found = find(st.tuples(cases(**TINY), st.integers(0, 2**16)), broken,
                 settings=settings(max_examples=50, derandomize=True, database=None,
                                   suppress_health_check=list(HealthCheck),
                                   # the explain phase only annotates a failure's report: 6 of this test's 7 s
                                   phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]))
    case, _ = found
    # the minimal network: one input cannot show it (conservation fixes R_i), so two inputs, one layer of one neuron
    assert case.net.sizes == [2, 1], f"shrunk to {case.net.sizes}, expected [2, 1]\n{case.describe()}"
    assert case.x.shape[0] == 1, f"shrunk to {case.x.shape[0]} points\n{case.describe()}"


def test_invariance_rates_over_generated_networks(property_report: PropertyReport) -> None:
    count = max(2, settings().max_examples // NETWORKS_DIVISOR)
    generated = sample_cases(count, seed=property_report.seed, n=POINTS_PER_NETWORK)
    found = invariance.invariance_sweep(generated, seed=property_report.seed, confidence=property_report.confidence)
    found.record(property_report, summary=lambda key: key.rule in ("z+", "w2", "zB", invariance.UNSHIFTED))
    for label in ("w2", "zB"):
        rate = found.rates[RateKey("invariance", "unchanged", rule=label)][0]
        assert rate.successes == rate.trials > 0, f"{label} is invariant by construction, measured {rate}"
    contrast = found.rates[RateKey("invariance", "unchanged", rule=invariance.UNSHIFTED)][0]
    assert contrast.successes < contrast.trials, f"zB with unshifted bounds never changed: {contrast}"


@pytest.mark.parametrize("name, train", [("digits_mlp", digits.digits_mlp), ("digits_cnn", digits.digits_cnn)])
def test_invariance_of_trained_subjects(property_report: PropertyReport, name: str,
                                        train: Callable[[], digits.TrainedModel]) -> None:
    trained = train()
    subject = Subject(name, trained.model, trained.data.test_x[:SUBJECT_POINTS], rules=("z+", "zB"),
                      input_box=(0.0, 1.0))
    found = invariance.subject_invariance(subject, confidence=property_report.confidence)
    found.record(property_report)
    for label in ("zB", "w2_first"):
        rate = found.rates[RateKey("invariance", "unchanged", subject=name, rule=label)][0]
        assert rate.successes == rate.trials == len(subject.inputs), f"{name}, {label}: {rate}"
