"""dtd.accounting: the books balance, and the bias share equals a slow loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dtd
from dtd.tolerances import equation_rtol


@pytest.mark.parametrize("rule", ["z+", "w2", "x", dtd.rules.Gamma(1.0)], ids=str)
def test_books_balance_and_bias_share_matches_loop(rule):
    net = dtd.ReLUNetwork.random([6, 5, 4, 3], seed=1, dtype=torch.float64, init="torch")
    x = net.sample_inputs(25, output=0, seed=0)
    dec = dtd.train_free(net, x, rule=rule)
    books = dtd.accounting(net, dec)
    assert len(books.layers) == net.n_layers and torch.equal(books.output_value, dec.output_value)
    for acc, lay in zip(books.layers, dec.layers, strict=True):
        scale = lay.upper_relevance.abs().sum(1).clamp_min(1.0)
        assert bool((acc.residual.abs() <= equation_rtol(torch.float64) * scale).all())
        assert torch.equal(acc.upper, lay.upper_relevance.sum(1))
        assert torch.equal(acc.trivial_roots, (lay.upper_relevance == 0).sum(1))
        w, b = net.weight(lay.index), net.bias(lay.index)
        for n in range(x.shape[0]):
            expected = 0.0
            for j in range(w.shape[0]):
                z = float(w[j] @ lay.input[n]) + float(b[j])
                if z != 0:
                    expected += float(lay.upper_relevance[n, j]) * float(b[j]) / z
            assert abs(float(acc.bias_share[n]) - expected) <= 1e-12
    assert "bias share" in books.summary()


def test_lost_relevance_and_bias_free_networks():
    first, top = nn.Linear(3, 2, bias=False, dtype=torch.float64), nn.Linear(2, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        top.weight.copy_(torch.tensor([[1.0, 1.0]]))
    net = dtd.ReLUNetwork([first, top])
    x = torch.tensor([[1.0, 0.0, 3.0]], dtype=torch.float64)
    box = dtd.rules.ZB(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 2.0, 3.0]))  # neuron 0's root does not exist
    books = dtd.accounting(net, dtd.train_free(net, x, rule=[box, "z+"]))
    first_layer = books.layers[0]
    assert float(first_layer.lost[0]) == pytest.approx(1.0) and float(first_layer.conserved[0]) == pytest.approx(3.0)
    assert float(first_layer.upper[0]) == pytest.approx(4.0)
    assert all(float(acc.bias_share.abs().max()) == 0.0 for acc in books.layers)  # no biases, no share


def test_accounting_refuses_foreign_decompositions():
    net = dtd.ReLUNetwork.random([4, 3, 2], seed=0)
    other = dtd.ReLUNetwork.random([5, 3, 2], seed=0)
    dec = dtd.train_free(other, torch.rand(3, 5, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="does not belong"):
        dtd.accounting(net, dec)
    with pytest.raises(TypeError, match="Decomposition"):
        dtd.accounting(net, "dec")
