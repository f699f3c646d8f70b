"""The pieces the agreement properties stand on: to_sequential, the rule mapping, the stabiliser bound."""

from __future__ import annotations

import pytest
import torch

import dtd
from dtd import rules as R
from properties.conformance import agreement as ag


def _case():
    net = dtd.ReLUNetwork.random([5, 6, 3], seed=1, dtype=torch.float64)
    return net, net.sample_inputs(10, output=0, seed=0)


def test_to_sequential_is_an_independent_copy_of_the_same_function():
    net, x = _case()
    seq = net.to_sequential()
    assert torch.equal(seq(x), net(x))
    with torch.no_grad():
        seq[0].weight.add_(1.0)
    assert not torch.equal(seq(x), net(x))  # the copy moved, the network did not
    assert torch.equal(dtd.ReLUNetwork.from_sequential(net.to_sequential())(x), net(x))
    bare = dtd.ReLUNetwork.from_sequential(net.to_sequential(bias=False))
    assert all(bool((bare.bias(k) == 0).all()) for k in range(bare.n_layers))
    assert torch.equal(bare.weight(0), net.weight(0))


def test_to_sequential_keeps_a_missing_final_relu():
    seq = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    net = dtd.ReLUNetwork.from_sequential(seq)
    copy = net.to_sequential()
    assert [type(m).__name__ for m in copy] == ["Linear", "ReLU", "Linear"]
    x = torch.rand(5, 3)
    assert torch.equal(copy(x), seq(x))


def test_the_bound_vanishes_without_a_stabiliser_and_grows_with_it():
    net, x = _case()
    dec = dtd.train_free(net, x)
    zero, conditioned = ag.stabilizer_bound(net, dec, R.ZPlus(), 0.0)
    assert bool((zero == 0).all()) and bool(conditioned.all())
    small, _ = ag.stabilizer_bound(net, dec, R.ZPlus(), 1e-9)
    large, _ = ag.stabilizer_bound(net, dec, R.ZPlus(), 1e-6)
    assert bool((large >= small).all()) and float(large.max()) > 0


def test_the_bound_is_met_and_nearly_attained_by_an_explicit_stabilised_lrp():
    # z+ on a bias-negative network is LRP-alpha1-beta0; with the denominator shifted by eps the
    # difference is the bound's
    net, x = _case()
    dec = dtd.train_free(net, x)
    eps = 1e-3
    relevance = torch.zeros_like(dec.layers[-1].upper_relevance)
    relevance[:, 0] = dec.output_value
    for k in range(net.n_layers - 1, -1, -1):
        a, w = dec.layers[k].input, net.weight(k)
        contributions = a.unsqueeze(1) * w.clamp(min=0)  # (N, J, D)
        d = contributions.sum(-1)
        relevance = (contributions * (relevance / (d + eps * torch.where(d >= 0, 1.0, -1.0))).unsqueeze(-1)).sum(1)
    bound, conditioned = ag.stabilizer_bound(net, dec, R.ZPlus(), eps)
    diff = (dec.relevance - relevance).abs()
    assert bool(conditioned.all())
    assert bool((diff <= bound + ag.ROUNDING64).all())
    assert float(diff.sum()) >= 0.5 * float(bound.sum())  # same-sign contributions: the bound is nearly tight


def test_rules_without_a_zennit_counterpart_are_refused():
    with pytest.raises(ValueError, match="no zennit counterpart"):
        ag.zennit_rule(R.Pinv())
    net, _ = _case()
    with pytest.raises(ValueError, match="1 rules for a network with 2 layers"):
        ag.stabilizer_bound(net, None, [R.ZPlus()], 1e-6)
