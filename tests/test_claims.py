"""properties.conformance.claims: the libraries' own rules (bias kept) as slow references, checked against zennit and
captum on the original models, and the conformance kit judging an implementation by its claim."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dtd
from properties import conformance as K
from properties.conformance import claims as C
from properties.conformance.adapters import CAPTUM_STABILIZER, ZENNIT_STABILIZER
from properties.generate import architectures as A

#: the reference and the library compute the same divisions in another order; relative to the point's largest |R|
LIBRARY_RTOL = 1e-9
#: captum also divides at the Flatten and max pool (x / (x + 1e-9)), which the reference does not
CAPTUM_CNN_RTOL = 1e-6


def _zennit(model, x, output, rule_for):
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.core import Composite
    from zennit.rules import Norm, Pass

    affine = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    rules = {id(m): rule_for(i) for i, m in enumerate(affine)}

    def module_map(ctx, name, module):
        if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return Norm()
        if isinstance(module, nn.ReLU):
            return Pass()  # zennit's composites' choice for activations
        return rules.get(id(module))

    with torch.no_grad():
        n_out = model(x[:1]).shape[1]
    onehot = torch.zeros(n_out, dtype=x.dtype)
    onehot[output] = 1
    with Gradient(
        model=model, composite=Composite(module_map=module_map, canonizers=[SequentialMergeBatchNorm()])
    ) as attributor:
        _, relevance = attributor(x.detach().clone(), lambda y: onehot * y)
    return relevance.detach()


def _captum(model, x, output, make):
    import warnings

    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.rule = make()
        elif isinstance(m, nn.Flatten):
            m.rule = EpsilonRule(CAPTUM_STABILIZER)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
        return LRP(model).attribute(x.detach().clone().requires_grad_(True), target=output).detach()


def _relative(a, b):
    a, b = a.flatten(1), b.flatten(1)
    return float(((a - b).abs().amax(1) / b.abs().amax(1).clamp_min(1e-300)).max())


def _mlps(count=4):
    """MLPs with torch's init (positive and negative biases), their non-negative inputs and explained output."""
    out = []
    for seed in range(40):
        net = dtd.ReLUNetwork.random([5, 7, 6, 3], seed=seed, init="torch", dtype=torch.float64)
        try:
            x = net.sample_inputs(10, output=seed % 3, seed=seed)
        except ValueError:
            continue
        if any(bool((net.bias(k) > 0).any()) for k in range(net.n_layers)):
            out.append((net.to_sequential(), x, seed % 3))
        if len(out) == count:
            return out
    raise AssertionError("too few live MLPs")


ZENNIT_CLAIMS = [
    ("Epsilon", C.Epsilon(1e-6), lambda: __import__("zennit.rules", fromlist=["x"]).Epsilon(1e-6)),
    ("Epsilon(0.25)", C.Epsilon(0.25), lambda: __import__("zennit.rules", fromlist=["x"]).Epsilon(0.25)),
    ("ZPlus", C.ZPlus("positive", ZENNIT_STABILIZER), lambda: __import__("zennit.rules", fromlist=["x"]).ZPlus()),
    ("AlphaBeta(2, 1)", C.AlphaBeta(2.0, 1.0, ZENNIT_STABILIZER),
     lambda: __import__("zennit.rules", fromlist=["x"]).AlphaBeta(2.0, 1.0)),
    ("Flat", C.Flat(ZENNIT_STABILIZER), lambda: __import__("zennit.rules", fromlist=["x"]).Flat()),
]


@pytest.mark.parametrize("label, claim, make", ZENNIT_CLAIMS, ids=[c[0] for c in ZENNIT_CLAIMS])
def test_the_references_equal_zennit_on_mlps_with_biases(label, claim, make):
    for model, x, output in _mlps():
        theirs = _zennit(model, x, output, lambda i: make())
        ours = C.reference(model, x, output, claim)
        assert _relative(theirs, ours) <= LIBRARY_RTOL, label
    # signed inputs exercise the rules' a- terms (only the first layer sees them)
    model, x, output = _mlps(1)[0]
    signed = x - 0.5
    assert bool((signed < 0).any())
    assert (
        _relative(_zennit(model, signed, output, lambda i: make()), C.reference(model, signed, output, claim))
        <= LIBRARY_RTOL
    )


@pytest.mark.parametrize("label, claim, make", ZENNIT_CLAIMS, ids=[c[0] for c in ZENNIT_CLAIMS])
def test_the_references_equal_zennit_on_cnns_with_batch_norm_and_pooling(label, claim, make):
    # bias_positive CNNs: shifts of both signs, negative batch-norm scales, max/avg/global pooling; bn_eps = 0 so
    # zennit's merge is exact (with eps it computes x / sqrt(1 + eps), see properties.conformance.adapters)
    checked = 0
    for g in A.sample_models("cnn", 12, seed=8, population="bias_positive", bn_eps=0.0, image_size=(4, 6)):
        with torch.no_grad():
            y = g.model(A.nonnegative_images(100, g.input_shape, seed=0))
        output = int((y > 0).sum(0).argmax())
        if int((y[:, output] > 0).sum()) < 10:
            continue
        x = A.live_inputs(g.model, g.input_shape, 4, output=output, seed=0)
        theirs = _zennit(g.model, x, output, lambda i: make())
        ours = C.reference(g.model, x, output, claim, pooling_stabilizer=ZENNIT_STABILIZER)
        assert _relative(theirs, ours) <= LIBRARY_RTOL, (label, g.spec)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


CAPTUM_CLAIMS = [
    ("EpsilonRule", C.Epsilon(CAPTUM_STABILIZER), ("EpsilonRule", {})),
    ("EpsilonRule(0.25)", C.Epsilon(0.25), ("EpsilonRule", {"epsilon": 0.25})),
    ("Alpha1_Beta0_Rule", C.ZPlus("all", CAPTUM_STABILIZER), ("Alpha1_Beta0_Rule", {})),
    ("Alpha1_Beta0_Rule(set_bias_to_zero)", C.ZPlus("none", CAPTUM_STABILIZER),
     ("Alpha1_Beta0_Rule", {"set_bias_to_zero": True})),
]


def _captum_rule(name, kwargs):
    from captum.attr._utils import lrp_rules

    return lambda: getattr(lrp_rules, name)(**kwargs)


@pytest.mark.parametrize("label, claim, spec", CAPTUM_CLAIMS, ids=[c[0] for c in CAPTUM_CLAIMS])
def test_the_references_equal_captum_on_mlps_with_biases(label, claim, spec):
    for model, x, output in _mlps():
        theirs = _captum(model, x, output, _captum_rule(*spec))
        assert _relative(theirs, C.reference(model, x, output, claim)) <= LIBRARY_RTOL, label


def test_the_epsilon_reference_equals_captum_on_a_cnn_without_batch_norm():
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, stride=2),
                              nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, stride=2), nn.Flatten(),
                              nn.Linear(4 * 2 * 2, 3)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=generator, dtype=torch.float64) - 0.4) * 2)
    x = A.nonnegative_images(6, (1, 8, 8), seed=0)
    output = int(model(x).mean(0).argmax())
    theirs = _captum(model, x, output, _captum_rule("EpsilonRule", {}))
    ours = C.reference(model, x, output, C.Epsilon(CAPTUM_STABILIZER))
    assert _relative(theirs, ours) <= CAPTUM_CNN_RTOL


def test_claims_differ_from_each_other_where_the_bias_matters():
    model, x, output = _mlps(1)[0]
    zennit_zplus = C.reference(model, x, output, C.ZPlus("positive", 0.0))
    captum_zplus = C.reference(model, x, output, C.ZPlus("all", 0.0))
    dtd_zplus = C.reference(model, x, output, C.ZPlus("none", 0.0))
    net = dtd.ReLUNetwork.from_sequential(model)
    torch.testing.assert_close(dtd_zplus, dtd.train_free(net, x, rule="z+", output=output).relevance, rtol=0,
                               atol=1e-11)
    assert _relative(zennit_zplus, dtd_zplus) > 1e-3 and _relative(captum_zplus, dtd_zplus) > 1e-3
    # alpha = 1, beta = 0 is zennit's ZPlus
    torch.testing.assert_close(C.reference(model, x, output, C.AlphaBeta(1.0, 0.0, 0.0)), zennit_zplus, rtol=1e-12,
                               atol=1e-12)
    # a per-layer pair: Flat at the input, epsilon above
    pair = C.reference(model, x, output, [C.Flat(0.0), C.Epsilon(0.0)])
    assert torch.allclose(pair[:, 0:1].expand_as(pair), pair)  # Flat spreads evenly over a Linear's inputs


def test_claims_reject_bad_arguments():
    with pytest.raises(ValueError, match="alpha - beta must be 1"):
        C.AlphaBeta(2.0, 0.5)
    with pytest.raises(ValueError, match="bias must be one of"):
        C.ZPlus("negative")
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        C.Epsilon(-1.0)
    with pytest.raises(TypeError, match="claims must be"):
        C.ensure_claims("epsilon")
    with pytest.raises(TypeError, match="nn.Sequential"):
        C.reference(A.sample_models("resnet", 1, seed=0)[0].model, torch.ones(1, 1, 4, 4), 0, C.Epsilon())
    with pytest.raises(TypeError, match="do not model Tanh"):
        C.reference(nn.Sequential(nn.Linear(2, 2), nn.Tanh()).double(), torch.ones(1, 2), 0, C.Epsilon())


def test_the_kit_judges_an_implementation_by_its_claim():
    """captum's EpsilonRule claims LRP-epsilon with the bias: it equals its
    claim everywhere, DTD only without biases."""
    from properties.conformance.adapters import captum_model_attribute

    make = _captum_rule("EpsilonRule", {})
    impl = K.Implementation("captum_eps_claim", lambda m, x, o: captum_model_attribute(m, x, o, make), "x",
                            stabilizer=CAPTUM_STABILIZER, claims=C.Epsilon(CAPTUM_STABILIZER))
    assert ("equals_claim", "bias_positive") in impl.properties()
    result = K.run(impl, seed=0, networks=4, points=6, shrink_failures=False)
    rates = {name.split(".", 2)[2]: rate for name, rate in result.rates.items()}
    for population in K.POPULATIONS:
        assert rates[f"equals_claim.{population}"].successes == rates[f"equals_claim.{population}"].trials > 0
    assert rates["equals_dtd.bias_positive"].successes < rates["equals_dtd.bias_positive"].trials
    # a wrong claim is caught: zennit's ZPlus (positive bias kept) is not captum's epsilon
    wrong = K.Implementation("captum_eps_wrong", impl.attribute, "x", stabilizer=CAPTUM_STABILIZER,
                             claims=C.ZPlus("positive", CAPTUM_STABILIZER))
    rates = K.run(wrong, seed=0, networks=4, points=6, shrink_failures=False).rates
    assert rates["conformance.captum_eps_wrong.equals_claim.bias_positive"].successes < rates[
        "conformance.captum_eps_wrong.equals_claim.bias_positive"].trials
    # without a claim nothing changes
    assert not any(p == "equals_claim" for p, _ in K.Implementation("plain", impl.attribute, "x").properties())
    with pytest.raises(TypeError, match="claims must be"):
        K.Implementation("bad", impl.attribute, "x", claims="epsilon")
