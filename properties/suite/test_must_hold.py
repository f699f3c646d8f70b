"""Promises that hold by construction: any failure shrinks to a minimal network.

Each is an ordinary ``@given`` test over generated cases; a failure message
shows the shrunk network's sizes, weights and inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dtd
from dtd.rootsets import root_equation_residual as root_equation_residual_of
from dtd.tolerances import equation_rtol, pattern_tol
from properties.generate.strategies import cases, variants
from properties.measure.checks import conservation_residual, root_equation_residual, root_outcomes, segment_outcomes

if TYPE_CHECKING:
    from dtd import rules as R
    from properties.generate import variants as V
    from properties.generate.strategies import Case

pytestmark = pytest.mark.properties

#: every registered rule variant of the must-hold sweep (zB: DTD's recipe with the data's box at the input)
ANY_RULE = variants("must_hold")


def _rule_for(case: Case, variant: V.Variant) -> R.Rule | list[R.Rule]:
    return variant.make(case.x, case.net.n_layers)


@given(case=cases(n=(1, 16)), rule=ANY_RULE)
def test_root_equation_holds_for_every_valid_root(case: Case, rule: V.Variant) -> None:
    dec = dtd.train_free(case.net, case.x, rule=_rule_for(case, rule), output=case.output)
    tol = equation_rtol(case.x.dtype)
    for k, layer in enumerate(dec.layers):
        residual = root_equation_residual(case.net, dec, k)
        worst = float(residual[layer.root_valid].max()) if bool(layer.root_valid.any()) else 0.0
        assert worst <= tol, (f"rule {rule.label}, layer {k}: root equation "
                              f"residual {worst:.3g} > {tol:g}\n{case.describe()}")


@given(case=cases(n=(1, 16)), rule=ANY_RULE)
def test_train_free_conserves_relevance_per_layer(case: Case, rule: V.Variant) -> None:
    dec = dtd.train_free(case.net, case.x, rule=_rule_for(case, rule), output=case.output)
    tol = equation_rtol(case.x.dtype)
    for k in range(case.net.n_layers):
        worst = float(conservation_residual(dec, k).max())
        assert worst <= tol, (f"rule {rule.label}, layer {k}: conservation "
                              f"residual {worst:.3g} > {tol:g}\n{case.describe()}")


@given(case=cases(n=(1, 16)))
def test_zplus_relevance_is_nonnegative(case: Case) -> None:
    dec = dtd.train_free(case.net, case.x, rule="z+", output=case.output)
    for layer in dec.layers:
        worst = float(layer.relevance.min())
        assert worst >= 0, f"layer {layer.index}: z+ relevance {worst:.3g} < 0\n{case.describe()}"


@given(case=cases(n=(1, 16)), rule=ANY_RULE.filter(lambda v: v.label != "pinv"))
def test_top_layer_root_lies_on_the_hinge(case: Case, rule: V.Variant) -> None:
    """The explained output's root satisfies w . root + b = 0 (its relevance is z = f(x) > 0).

    With R = z(a) = w . a + b, that is the root equation w . (a - root) = R of the output neuron.
    """
    dec = dtd.train_free(case.net, case.x, rule=_rule_for(case, rule), output=case.output)
    top = dec.layers[-1]
    k = case.net.n_layers - 1
    valid = top.root_valid[:, case.output]
    z_a = case.net.pre_activations(top.input, from_layer=k)[-1][:, case.output : case.output + 1]
    delta = (top.input - top.roots[:, case.output, :]).unsqueeze(1)
    off = root_equation_residual_of(delta, case.net.weight(k)[case.output : case.output + 1], z_a)[:, 0][valid]
    worst = float(off.max()) if off.numel() else 0.0
    assert worst <= equation_rtol(case.x.dtype), (f"rule {rule.label}: top root off the "
                                                  f"hinge by {worst:.3g}\n{case.describe()}")


@given(case=cases(depth=1, n=(1, 16)))
def test_one_layer_zplus_root_in_closure_of_region(case: Case) -> None:
    """For one-layer networks every z+ root lies in the closure of the input's linear region."""
    dec = dtd.train_free(case.net, case.x, rule="z+", output=case.output)
    outcomes = root_outcomes(case.net, dec, layer=0)
    outside = outcomes.valid & ~outcomes.region_match
    assert not bool(outside.any()), (
        f"{int(outside.sum())} z+ root(s) leave the region (pattern "
        f"tolerance {pattern_tol(case.x.dtype):g})\n{case.describe()}"
    )


IN_REGION_FINDERS = {
    "region_l1": lambda: dtd.RegionRoots("l1"),
    "region_linf": lambda: dtd.RegionRoots("linf"),
    "sampled": lambda: dtd.RegionSamplingRoots(32, seed=0),
    "walk": lambda: dtd.MetropolisHastingsRoots(4, 30, seed=0),
}


@given(case=cases(depth=(1, 3), width=(1, 8), input_size=(1, 8), n=(1, 8)),
       finder=st.sampled_from(sorted(IN_REGION_FINDERS)))
def test_in_region_roots_keep_the_gradient_along_their_segment(case: Case, finder: str) -> None:
    """Every root an in-region finder returns: the gradient halfway to the input is the input's, and Taylor is exact.

    Judged at points strictly inside their region (see properties.measure.checks.segment_outcomes); the gradient at the
    root itself meets torch's relu'(0) = 0 on the region's boundary, where LP optima and top-layer roots lie.
    """
    dec = dtd.train_free(case.net, case.x, root_finder=IN_REGION_FINDERS[finder](), output=case.output)
    for layer in dec.layers:
        seg = segment_outcomes(case.net, layer.input, layer.roots, layer=layer.index, output=case.output)
        judged = layer.root_valid & layer.carries_relevance & seg.interior.unsqueeze(1)
        bad = judged & ~seg.midpoint_gradient_match
        assert not bool(bad.any()), (f"{finder}, layer {layer.index}: {int(bad.sum())} root(s) "
                                     f"change the gradient\n{case.describe()}")
        scale = 1.0 + float(dec.output_value.abs().max())
        worst = float(seg.taylor_residual[judged].max()) if bool(judged.any()) else 0.0
        assert worst <= equation_rtol(case.x.dtype) * scale, (f"{finder}, layer {layer.index}: Taylor "
                                                              f"residual {worst:.3g}\n{case.describe()}")
