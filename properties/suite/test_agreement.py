"""Train-free DTD equals the LRP rules of zennit and captum, and where that stops.

Must-hold (``@given``, float64, networks with biases <= 0 -- the ``"dtd"``
init -- and inputs >= 0): every rule's input relevance equals zennit's
counterpart within :func:`properties.conformance.agreement.stabilizer_bound` (zennit adds
1e-6 to denominators, captum 1e-9) plus :data:`ROUNDING64`, at every point
whose denominators are not of the stabiliser's size; and on bias-free
networks the x-rule is gradient x input.

Rates (i.i.d. networks, like the generated sweeps): the share of points
that agree, on bias-negative networks (expected: all) and where the
agreement is known to break: z+ against zennit's ``ZPlus()`` on networks with
positive biases (zennit keeps them in the denominator) and gamma where
positive biases let its denominator vanish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import dtd
from dtd import rules as R
from properties.conformance import agreement as ag
from properties.generate import variants as V
from properties.generate.strategies import cases, sample_cases, variants
from properties.measure.keys import OUTCOMES, RateKey
from properties.measure.stats import Rate, Tally
from properties.measure.thresholds import ROUNDING64

if TYPE_CHECKING:
    from properties.generate.strategies import Case
    from properties.plugin import PropertyReport

pytestmark = pytest.mark.properties

#: the rule variants compared with zennit (from the registry: every variant of the "agreement" sweep; zB and
#: w2 as DTD's recipes, at the input and z+ above, since above the input w2 hands relevance to inactive neurons,
#: which an LRP backward pass stops at their ReLU)
RECIPES = {variant.label: variant for variant in V.variants("agreement")}
NEGATIVE_BIAS = dict(init="dtd", n=(1, 16))


def _disagreement(case: Case, rule: R.Rule | list[R.Rule], reference: torch.Tensor,
                  epsilon: float) -> tuple[torch.Tensor, torch.Tensor, dtd.Decomposition]:
    """``(|R_dtd - R_lib| - bound)`` per input ``(batch, D)`` and the conditioned points ``(batch,)``."""
    dec = dtd.train_free(case.net, case.x, rule=rule, output=case.output)
    bound, conditioned = ag.stabilizer_bound(case.net, dec, rule, epsilon)
    return (dec.relevance - reference).abs() - bound, conditioned, dec


def _assert_agrees(case: Case, rule: R.Rule | list[R.Rule], reference: torch.Tensor, epsilon: float, what: str) -> None:
    """At every conditioned point (at least one), DTD's relevance lies within the stabiliser bound of ``reference``."""
    excess, conditioned, _ = _disagreement(case, rule, reference, epsilon)
    assume(bool(conditioned.any()))
    worst = float(excess[conditioned].max())
    assert worst <= ROUNDING64, (f"{what}: DTD and the library differ by {worst:.3g} beyond "
                                 f"the stabiliser bound\n{case.describe()}")


@given(case=cases(**NEGATIVE_BIAS), variant=variants("agreement"))
def test_rules_equal_zennit_on_bias_negative_networks(case: Case, variant: V.Variant) -> None:
    rule = variant.make(case.x, case.net.n_layers)
    _assert_agrees(case, rule, ag.zennit_relevance(case.net, case.x, rule, case.output), ag.ZENNIT_STABILIZER,
                   f"zennit {variant.label}")


@given(case=cases(**NEGATIVE_BIAS), gamma=st.floats(0.0, 100.0))
def test_gamma_equals_zennit_for_any_gamma(case: Case, gamma: float) -> None:
    rule = R.Gamma(gamma)
    _assert_agrees(case, rule, ag.zennit_relevance(case.net, case.x, rule, case.output), ag.ZENNIT_STABILIZER,
                   f"zennit gamma={gamma}")


@given(case=cases(**NEGATIVE_BIAS))
def test_zplus_equals_captum_alpha1_beta0(case: Case) -> None:
    rule = R.ZPlus()
    _assert_agrees(case, rule, ag.captum_zplus_relevance(case.net, case.x, case.output), ag.CAPTUM_STABILIZER,
                   "captum z+")


@given(case=cases(n=(1, 16)))
def test_x_rule_is_gradient_times_input_without_biases(case: Case) -> None:
    net = dtd.ReLUNetwork.from_sequential(case.net.to_sequential(bias=False))
    alive = net.output_value(case.x, case.output) > 0
    assume(bool(alive.any()))
    x = case.x[alive]
    dec = dtd.train_free(net, x, rule="x", output=case.output)
    expected = net.input_gradient(x, case.output) * x
    complete = dec.layers[0].root_valid.all(1)  # every layer's roots exist: denominators z_j > 0
    for layer in dec.layers[1:]:
        complete &= layer.root_valid.all(1)
    worst = float((dec.relevance - expected).abs()[complete].max()) if bool(complete.any()) else 0.0
    assert worst <= ROUNDING64, f"x-rule vs gradient x input: {worst:.3g}\n{case.describe()}"


# ---------------------------------------------------------------------------------------------- rates

#: networks per population: this many times the hypothesis profile's max_examples (ci: 90)
AGREEMENT_FACTOR = 3
POINTS = 32


def _agreeing_points(case: Case, rule: R.Rule | list[R.Rule], reference: torch.Tensor,
                     epsilon: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(agree (batch,), conditioned (batch,), max |R_dtd - R_lib|)``."""
    excess, conditioned, dec = _disagreement(case, rule, reference, epsilon)
    return (excess <= ROUNDING64).all(1), conditioned, float((dec.relevance - reference).abs().max())


def test_agreement_rates(property_report: PropertyReport, property_report_seed: int) -> None:
    count = AGREEMENT_FACTOR * settings().max_examples
    negative = sample_cases(count, seed=property_report_seed + 101, init="dtd", n=POINTS)
    mixed = sample_cases(count, seed=property_report_seed + 202, init="torch", n=POINTS)
    tally: Tally[RateKey] = Tally()
    max_difference: dict[str, float] = {}
    for case in negative:
        tally.new_cluster()
        for label, variant in RECIPES.items():
            rule = variant.make(case.x, case.net.n_layers)
            reference = ag.zennit_relevance(case.net, case.x, rule, case.output)
            agree, conditioned, diff = _agreeing_points(case, rule, reference, ag.ZENNIT_STABILIZER)
            key = RateKey("agreement", "points", subject="zennit", rule=label)
            tally.add(key, agree)
            tally.add(key.replace(outcome="conditioned"), conditioned)
            tally.add(key.replace(outcome="agree_where_conditioned"), agree, conditioned)
            max_difference[f"zennit {label}"] = max(max_difference.get(f"zennit {label}", 0.0), diff)
        reference = ag.captum_zplus_relevance(case.net, case.x, case.output)
        agree, _, diff = _agreeing_points(case, R.ZPlus(), reference, ag.CAPTUM_STABILIZER)
        tally.add(RateKey("agreement", "points", subject="captum", rule="z+"), agree)
        max_difference["captum z+"] = max(max_difference.get("captum z+", 0.0), diff)
    zplus_breaks = RateKey("agreement", "points", subject="breaks", rule="zplus_positive_bias")
    gamma_breaks = RateKey("agreement", "points", subject="breaks", rule="gamma_positive_bias")
    for case in mixed:
        tally.new_cluster()
        positive = torch.zeros(case.x.shape[0], dtype=torch.bool)
        if any(bool((case.net.bias(k) > 0).any()) for k in range(case.net.n_layers)):
            positive[:] = True
        reference = ag.zennit_relevance(case.net, case.x, R.ZPlus(), case.output)
        agree, _, _ = _agreeing_points(case, R.ZPlus(), reference, ag.ZENNIT_STABILIZER)
        tally.add(zplus_breaks, agree, positive)
        gamma = R.Gamma(0.25)
        reference = ag.zennit_relevance(case.net, case.x, gamma, case.output)
        agree, conditioned, _ = _agreeing_points(case, gamma, reference, ag.ZENNIT_STABILIZER)
        tally.add(gamma_breaks, agree)
        tally.add(gamma_breaks.replace(outcome="conditioned"), conditioned)
        tally.add(gamma_breaks.replace(outcome="agree_where_conditioned"), agree, conditioned)
    populations = {
        zplus_breaks.rule: "z+ vs zennit ZPlus() (keeps positive biases), networks with a positive bias",
        gamma_breaks.rule: "gamma 0.25 vs zennit Gamma(0.25, zero_params='bias'), torch-init networks",
    }
    for key in tally.names():
        what = populations.get(key.rule) if key.subject == "breaks" else (f"{key.rule} vs {key.subject}, "
                                                                          "bias-negative networks")
        rate = tally.rate(key, property_report.confidence)
        property_report.rate(key, rate, f"{what}: {OUTCOMES[key.outcome]}", summary=key.outcome == "points")
    for label, value in max_difference.items():
        property_report.count(f"max |R_dtd - R_lib| ({label}, bias-negative networks)", value)
    # on bias-negative networks every conditioned point agrees (the must-hold properties, over this population)
    for label in RECIPES:
        rate = tally.rate(RateKey("agreement", "agree_where_conditioned", subject="zennit", rule=label),
                          property_report.confidence)
        assert rate.successes == rate.trials, (f"{label}: {rate.trials - rate.successes} conditioned "
                                               "point(s) disagree with zennit")


#: points of the residual-sum comparison, and where they agree: relative to the point's largest relevance
RESNET_POINTS = 8
RESNET_AGREEMENT_RTOL = 1e-6


def test_resnet_sums_break_agreement_with_zennit(property_report: PropertyReport) -> None:
    """DTD's one layer per residual sum against zennit's ``ResNetCanonizer`` with ``Norm`` on the sum (two steps).

    DTD treats ``relu(bn2(conv2(h)) + x)`` as one layer whose input is ``[h, x]``
    (the skip's identity is a weight like any other), so z+ shares the block's
    relevance between the branches by their positive contributions.  zennit
    applies z+ inside the branch and then splits the sum's relevance by each
    branch's (signed) output (``Norm``).  Both conserve; they differ wherever
    the branch and the skip are not proportional.  Rate: the share of points
    where the two agree (torchvision's BasicBlock ResNet with one block per
    stage, random weights and batch-norm statistics, float64, 16x16 inputs).
    """
    import torchvision
    from torch import nn
    from zennit.composites import LayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Norm, ZPlus
    from zennit.torchvision import ResNetCanonizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(property_report.seed)
        model = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)
    generator = torch.Generator().manual_seed(property_report.seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    model = model.eval().double()
    x = torch.rand(RESNET_POINTS, 3, 16, 16, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    dec = dtd.train_free(dtd.ReLUNetwork.from_module(model, (3, 16, 16)), x, rule="z+", output=predicted)
    rule = ZPlus(zero_params="bias", stabilizer=1e-300)
    composite = LayerMapComposite(layer_map=[(nn.Conv2d, rule), (nn.Linear, rule), (Sum, Norm(stabilizer=1e-300))],
                                  canonizers=[ResNetCanonizer()])
    xx = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(xx)
        seed = torch.zeros_like(out).scatter_(1, predicted.unsqueeze(1), out.gather(1, predicted.unsqueeze(1)))
        (theirs,) = torch.autograd.grad(out, xx, seed)
    ours, theirs = dec.relevance.flatten(1), theirs.flatten(1)
    scale = ours.abs().amax(1)
    agree = (ours - theirs).abs().amax(1) <= RESNET_AGREEMENT_RTOL * scale
    key = RateKey("agreement", "points", subject="breaks", rule="zplus_resnet_sum")
    property_report.rate(key, Rate(int(agree.sum()), RESNET_POINTS, property_report.confidence),
                         "z+ vs zennit ResNetCanonizer + ZPlus + Norm on the sum, torchvision BasicBlock ResNet: "
                         f"{OUTCOMES[key.outcome]}")
    cosine = torch.nn.functional.cosine_similarity(ours, theirs)
    property_report.count("median cosine of z+ (DTD) and zennit's two-step residual sum (BasicBlock ResNet)",
                          float(cosine.median()))
    # DTD's one-layer sum conserves what its roots pass on: the difference is where the sum's relevance goes
    lost = sum(layer.lost_relevance for layer in dec.layers)
    assert torch.allclose(ours.sum(1), dec.output_value - lost, rtol=1e-9, atol=1e-12)
    assert bool(torch.isfinite(theirs).all())
