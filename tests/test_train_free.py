"""train_free: every rule against the slow reference, and DTD's identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import dtd
from dtd import rules as R
from dtd.tolerances import denominator_eps
from properties.generate import variants as V
from properties.measure import checks
from tests import reference

ATOL64 = 1e-10  # float64, batched vs looped: summation order only (relevances are O(1..10))

def reference_rules() -> list:
    """Every rule variant the registry marks for the reference tests, as pytest params (a new rule joins there)."""
    return [pytest.param(v.make(None, 1), id=v.label) for v in V.variants("reference")]


RULES = reference_rules()


def _case(sizes=(6, 5, 4, 3), seed=0, n=40, output=0):
    """A float64 network whose output is alive, and n inputs in [0, 5] with f(x) > 0."""
    for attempt in range(seed, seed + 1000, 100):
        net = dtd.ReLUNetwork.random(list(sizes), seed=attempt, dtype=torch.float64)
        try:
            x = net.sample_inputs(n, output=output, seed=seed)
        except ValueError:
            continue
        return net, x.clamp(max=5.0)
    raise RuntimeError(f"no network of sizes {sizes} with a live output 0")


def assert_matches_reference(rule, sizes, seed):
    """Batched train_free with ``rule`` at every layer equals the rule's slow replica, layer by layer."""
    net, x = _case(sizes, seed)
    dec = dtd.train_free(net, x, rule=rule, output=0)
    ref = reference.train_free(net, x, [rule] * net.n_layers, 0, denominator_eps(torch.float64))
    for k, layer in enumerate(dec.layers):
        assert layer.index == k
        np.testing.assert_array_equal(layer.root_valid.numpy(), ref[k]["valid"], err_msg=f"valid, layer {k}")
        np.testing.assert_allclose(layer.upper_relevance.numpy(), ref[k]["upper"], atol=ATOL64, rtol=0)
        valid = ref[k]["valid"]
        np.testing.assert_allclose(layer.roots.numpy()[valid], ref[k]["roots"][valid], atol=ATOL64, rtol=1e-9)
        np.testing.assert_allclose(layer.relevance.numpy(), ref[k]["relevance"], atol=ATOL64, rtol=1e-9)
        assert torch.equal(layer.carries_relevance, layer.upper_relevance != 0)
    assert torch.equal(dec.relevance, dec.layers[0].relevance)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("sizes, seed", [((6, 5, 4, 3), 0), ((4, 8, 2), 1), ((10, 10, 10, 10, 2), 2),
                                         ((3, 2, 6, 2), 3)])
def test_rule_matches_reference(rule, sizes, seed):
    assert_matches_reference(rule, sizes, seed)


def test_every_registered_rule_has_a_replica_and_a_reference_variant():
    for entry in R.registered():
        assert entry.cls in reference.REPLICAS, f"{entry.cls.__name__} has no slow replica in tests/reference.py"
        assert any("reference" in v.sweeps for v in V.suite_entry(entry.cls).variants), (f"{entry.cls.__name__} has "
                                                                                         "no reference variant")


def test_per_layer_rules_match_reference():
    net, x = _case((6, 5, 4, 3), seed=4)
    rules = [R.ZB(0.0, 5.0), R.Gamma(0.25), "w2"]
    dec = dtd.train_free(net, x, rule=rules)
    ref = reference.train_free(net, x, [R.Rule.ensure(r) for r in rules], 0, denominator_eps(torch.float64))
    for k, layer in enumerate(dec.layers):
        np.testing.assert_allclose(layer.relevance.numpy(), ref[k]["relevance"], atol=ATOL64, rtol=1e-9)
    assert [layer.method for layer in dec.layers] == ["ZB(low=0, high=5)", "Gamma(gamma=0.25)", "WSquare()"]


def test_zb_per_feature_bounds_match_reference():
    net, x = _case((4, 5, 2), seed=5)
    rule = R.ZB(torch.zeros(4, dtype=torch.float64), torch.tensor([5.0, 6.0, 7.0, 8.0]))
    dec = dtd.train_free(net, x, rule=[rule, "z+"])
    ref = reference.train_free(net, x, [rule, R.ZPlus()], 0, denominator_eps(torch.float64))
    np.testing.assert_allclose(dec.relevance.numpy(), ref[0]["relevance"], atol=ATOL64, rtol=1e-9)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_root_equation_and_conservation(rule, dtype):
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2, dtype=dtype)
    x = net.sample_inputs(200, output=0, min_output=0.1, seed=0).clamp(max=5.0)
    dec = dtd.train_free(net, x, rule=rule)
    rtol = dtd.tolerances.equation_rtol(dtype)
    for layer in dec.layers:
        k = layer.index
        residual = checks.root_equation_residual(net, dec, k)
        assert bool((residual[layer.root_valid] <= rtol).all()), f"root equation fails at layer {k}"
        assert bool((checks.conservation_residual(dec, k) <= rtol).all()), f"conservation fails at layer {k}"


@pytest.mark.parametrize("seed", range(5))
def test_zplus_relevance_is_nonnegative_and_top_root_on_hinge(seed):
    net, x = _case((8, 9, 7, 3), seed=seed, n=100, output=1)
    dec = dtd.train_free(net, x, rule="z+", output=1)
    for layer in dec.layers:
        assert bool((layer.relevance >= 0).all())
    top = dec.layers[-1]
    on = top.carries_relevance[:, 1]
    z_root = top.roots[:, 1, :] @ net.weight(2)[1] + net.bias(2)[1]
    assert bool(on.any())
    assert torch.allclose(z_root[on], torch.zeros_like(z_root[on]), atol=1e-12)
    # the output neuron's relevance is f(x); all other top neurons carry none
    assert torch.equal(top.upper_relevance[:, 1], dec.output_value)
    assert bool((top.upper_relevance[:, [0, 2]] == 0).all())


def test_degenerate_denominator_is_invalid_not_nan():
    layer = nn.Linear(3, 2, dtype=torch.float64)
    top = nn.Linear(2, 1, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        layer.bias.zero_()
        top.weight.copy_(torch.tensor([[1.0, 1.0]]))
        top.bias.zero_()
    net = dtd.ReLUNetwork([layer, top])
    x = torch.tensor([[1.0, 2.0, 0.0], [1.0, 0.0, 3.0]], dtype=torch.float64)
    dec = dtd.train_free(net, x, rule="z+")
    first = dec.layers[0]
    assert torch.isfinite(first.roots).all() and torch.isfinite(first.relevance).all()
    # point 0: neuron 1 is inactive -> carries no relevance -> trivial root, valid
    assert bool(first.root_valid[0, 1]) and not bool(first.carries_relevance[0, 1])
    # a box whose lower corner equals a on w_0's support makes v_0 orthogonal to w_0 (w.v = 0)
    box = R.ZB(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 2.0, 3.0]))
    x2 = torch.tensor([[1.0, 0.0, 3.0]], dtype=torch.float64)
    dec2 = dtd.train_free(net, x2, rule=[box, "z+"])
    layer0 = dec2.layers[0]
    assert bool(layer0.carries_relevance[0, 0]) and not bool(layer0.root_valid[0, 0])
    assert layer0.n_invalid == 1 and dec2.n_invalid == 1
    assert float(layer0.lost_relevance[0]) == float(layer0.upper_relevance[0, 0])
    assert torch.isfinite(layer0.relevance).all()
    # conservation over the valid roots still holds
    assert torch.allclose(layer0.relevance.sum(1), layer0.upper_relevance[:, 1])


def test_pinv_invalid_when_rank_deficient():
    net, x = _case((2, 5, 1), n=20)  # 5 neurons, rank 2
    dec = dtd.train_free(net, x, rule=["pinv", "z+"])
    layer = dec.layers[0]
    assert bool((~layer.root_valid & layer.carries_relevance).any())
    assert torch.isfinite(layer.relevance).all()


def test_nothing_is_mutated():
    net, x = _case((6, 5, 4, 3), seed=0)
    x_before = x.clone()
    params_before = [p.clone() for p in net.parameters()]
    x.requires_grad_(False)
    dtd.train_free(net, x, rule=R.Gamma(0.3))
    assert torch.equal(x, x_before) and not x.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(params_before, net.parameters(), strict=True))
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in net.modules())


def test_repeat_gives_identical_results():
    net, x = _case((10, 10, 10, 10, 2), seed=2)
    a = dtd.train_free(net, x)
    b = dtd.train_free(net, x)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert torch.equal(la.roots, lb.roots) and torch.equal(la.relevance, lb.relevance)


def test_seed_experiment_single_batched_call():
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)
    x = net.sample_inputs(1000, output=0, min_output=0.1, seed=0)
    dec = dtd.train_free(net, x, rule="z+", output=0)
    assert dec.layers[0].roots.shape == (1000, 10, 10)
    assert [layer.roots.shape[1:] for layer in dec.layers] == [(10, 10), (10, 10), (10, 10), (2, 10)]
    assert torch.allclose(dec.relevance.sum(1), dec.output_value, rtol=1e-4)
