"""Root sets: the factorised fast paths equal materialised roots; custom finders plug in."""

from __future__ import annotations

import pytest
import torch

import dtd
from dtd import rules as R
from dtd.rootsets import ExplicitRoots, RootSet

ATOL64 = 1e-12

RULES = [R.ZPlus(), R.WSquare(), R.Gamma(0.7), R.LRP0(), R.ZB(0.0, 1000.0), R.Pinv()]


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_fast_relevance_equals_relevance_of_materialised_roots(rule):
    net = dtd.ReLUNetwork.random([6, 5, 4, 3], seed=1, dtype=torch.float64, init="torch")
    x = net.sample_inputs(30, output=0, seed=0)
    dec = dtd.train_free(net, x, rule=rule)
    for layer in dec.layers:
        weight = net.weight(layer.index)
        generic = RootSet.relevance(layer.root_set, weight)  # einsum over materialised (batch, J, D) roots
        assert torch.allclose(layer.relevance, generic, atol=ATOL64, rtol=0)
        assert torch.equal(layer.root_chunk(3, 7), layer.roots[3:7])


class _MaterialisingFinder(dtd.RootFinder):
    """A custom finder: the closed-form roots, handed over as an explicit tensor."""

    def __init__(self, rule):
        self.inner = dtd.LinearRoots(rule)

    def find(self, net, k, a, relevance, *, output):
        found = self.inner.find(net, k, a, relevance, output=output)
        return ExplicitRoots(a, found.roots(), found.valid)

    def describe(self, k):
        return "explicit " + self.inner.describe(k)


@pytest.mark.parametrize("rule", ["z+", "w2", R.Pinv()], ids=str)
def test_custom_root_finder_with_explicit_roots(rule):
    net = dtd.ReLUNetwork.random([6, 5, 4, 3], seed=1, dtype=torch.float64, init="torch")
    x = net.sample_inputs(30, output=0, seed=0)
    closed = dtd.train_free(net, x, rule=rule)
    explicit = dtd.train_free(net, x, root_finder=_MaterialisingFinder(rule))
    for a, b in zip(closed.layers, explicit.layers, strict=True):
        # relevances summed in another order reach the layer below with other rounding
        assert torch.allclose(a.roots, b.roots, atol=ATOL64, rtol=0) and torch.equal(a.root_valid, b.root_valid)
        assert torch.allclose(a.relevance, b.relevance, atol=ATOL64, rtol=0)
        assert b.method.startswith("explicit")


def test_explicit_roots_refuse_wrong_shape():
    a = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"\(batch, J, D\)"):
        ExplicitRoots(a, torch.zeros(4, 2, 2), torch.ones(4, 2, dtype=torch.bool))
