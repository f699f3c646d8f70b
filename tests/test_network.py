"""ReLUNetwork: construction, evaluation, gradients, sampling."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from torch import nn

import dtd
from tests import reference

ATOL64 = 1e-12  # float64 re-computations that differ only in summation order


# --------------------------------------------------------------------------- the seed's init
class _SeedLinearReLU(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.relu = nn.ReLU()


class _SeedMLP(nn.Module):
    """The study's MLP as its code is structured: containers that Module.apply visits."""

    def __init__(self, sizes):
        super().__init__()
        for i, (n_in, n_out) in enumerate(pairwise(sizes)):
            setattr(self, f"layer{i + 1}", _SeedLinearReLU(n_in, n_out))

    def init_weights(self):
        def weight_scale(m):
            for p in m.parameters():
                p.data[p.data > 0] = 1.4 * p.data[p.data > 0]
            if isinstance(m, _SeedLinearReLU):
                m.linear.bias.data = -m.linear.bias.data.abs()

        self.apply(weight_scale)


def _seed_weights(sizes, seed):
    torch.manual_seed(seed)
    mlp = _SeedMLP(sizes)
    mlp.init_weights()
    return [(m.linear.weight.detach(), m.linear.bias.detach()) for m in mlp.children()]


@pytest.mark.parametrize("sizes, seed", [([10, 10, 10, 10, 2], 2), ([3, 7, 1], 0), ([5, 4, 4, 4, 4, 3], 123)])
def test_random_rebuilds_the_seed_bit_for_bit(sizes, seed):
    expected = _seed_weights(sizes, seed)
    net = dtd.ReLUNetwork.random(sizes, seed=seed)
    assert net.sizes == sizes
    for k, (w, b) in enumerate(expected):
        assert torch.equal(net.weight(k), w), f"weight of layer {k} differs"
        assert torch.equal(net.bias(k), b), f"bias of layer {k} differs"


def test_random_dtd_init_effective_scales():
    plain = dtd.ReLUNetwork.random([6, 5, 4], seed=7, init="torch")
    scaled = dtd.ReLUNetwork.random([6, 5, 4], seed=7, init="dtd")
    for k in range(2):
        w0, w1 = plain.weight(k), scaled.weight(k)
        pos = w0 > 0
        assert torch.allclose(w1[pos], w0[pos] * 2.744, rtol=1e-6)
        assert torch.equal(w1[~pos], w0[~pos])
        b0, b1 = plain.bias(k), scaled.bias(k)
        assert torch.allclose(b1[b0 > 0], -1.96 * b0[b0 > 0], rtol=1e-6)
        assert torch.equal(b1[b0 <= 0], b0[b0 <= 0])
        assert bool((b1 <= 0).all())


def test_random_leaves_global_rng_alone():
    torch.manual_seed(99)
    state = torch.get_rng_state()
    dtd.ReLUNetwork.random([4, 3, 2], seed=5)
    dtd.ReLUNetwork.random([4, 3, 2], seed=5).sample_inputs(10, seed=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_random_float64_holds_the_float32_values():
    n32 = dtd.ReLUNetwork.random([10, 10, 2], seed=2)
    n64 = dtd.ReLUNetwork.random([10, 10, 2], seed=2, dtype=torch.float64)
    assert n64.dtype == torch.float64
    for k in range(2):
        assert torch.equal(n64.weight(k), n32.weight(k).double())


# --------------------------------------------------------------------------- from_sequential
def test_from_sequential_round_trips_and_copies_parameters():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU())
    before = [p.clone() for p in seq.parameters()]
    net = dtd.ReLUNetwork.from_sequential(seq)
    x = torch.rand(8, 4)
    assert torch.equal(net(x), seq(x))
    assert net.final_relu and net.sizes == [4, 6, 3]
    assert net.layers[0] is not seq[0] and torch.equal(net.weight(0), seq[0].weight)
    assert net.weight(0).data_ptr() != seq[0].weight.data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(before, seq.parameters(), strict=True))
    assert len(list(seq.children())) == 4


def test_from_sequential_without_final_relu_and_with_flatten():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    net = dtd.ReLUNetwork.from_sequential(seq)
    x = torch.randn(7, 2, 3)
    assert not net.final_relu
    assert torch.allclose(net(x), seq(x))
    dec = dtd.train_free(net, x.flatten(1).abs(), rule="x")
    assert dec.relevance.shape == (7, 6)


@pytest.mark.parametrize(
    "seq, exception, message",
    [
        (nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()), TypeError, "Sigmoid"),
        (nn.Sequential(nn.Linear(3, 3), nn.GELU()), TypeError, r"'gelu' in module '1' \(GELU\)"),
        (nn.Sequential(nn.Conv1d(1, 1, 1)), ValueError, r"'0' \(Conv1d\) needs the input's shape"),
        (nn.Sequential(nn.Linear(3, 3), nn.MaxPool1d(1)), TypeError, "max pooling.*from_module"),
        (nn.Sequential(), ValueError, "no affine module"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)), ValueError,
         "the model fails on an input of shape"),
        (nn.ModuleList([nn.Linear(3, 3)]), TypeError, "nn.Sequential"),
    ],
)
def test_from_sequential_refuses(seq, exception, message):
    with pytest.raises(exception, match=message):
        dtd.ReLUNetwork.from_sequential(seq)


# --------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("final_relu", [True, False])
@pytest.mark.parametrize("from_layer", [0, 1, 2])
def test_input_gradient_equals_autograd_and_reference(final_relu, from_layer):
    net = dtd.ReLUNetwork.random([5, 8, 8, 3], seed=3, dtype=torch.float64)
    net.final_relu = final_relu
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, net.sizes[from_layer], generator=g, dtype=torch.float64).abs()
    x_before = x.clone()
    fast = net.input_gradient(x, 1, from_layer=from_layer)
    assert torch.equal(x, x_before) and not x.requires_grad

    x_auto = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(net.subnetwork(from_layer)(x_auto)[:, 1].sum(), x_auto)
    assert torch.allclose(fast, auto, rtol=0, atol=ATOL64)

    params = reference.layer_params(net)
    slow = np.stack([reference.input_gradient(params, row, 1, from_layer) for row in x.numpy()])
    np.testing.assert_allclose(fast.numpy(), slow, rtol=0, atol=ATOL64)


def test_input_gradient_uses_relu_derivative_zero_at_zero():
    layer = nn.Linear(3, 2, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [2.0, 1.0, 1.0]]))
    net = dtd.ReLUNetwork([layer, nn.Linear(2, 1, dtype=torch.float64)])
    x = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)  # first neuron exactly at 0
    x_auto = x.clone().requires_grad_(True)
    net(x_auto)[:, 0].sum().backward()
    assert torch.equal(net.input_gradient(x, 0), x_auto.grad)


def test_pre_activations_patterns_and_subnetwork_agree():
    net = dtd.ReLUNetwork.random([6, 7, 5, 2], seed=11, dtype=torch.float64)
    x = torch.rand(20, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    acts = net.activations(x)
    zs = net.pre_activations(x)
    patterns = net.activation_pattern(x)
    assert len(acts) == net.n_layers + 1 and len(zs) == len(patterns) == net.n_layers
    for k in range(net.n_layers):
        assert torch.equal(patterns[k], zs[k] > 0)
        sub = net.subnetwork(k)
        assert torch.allclose(sub(acts[k]), acts[-1], atol=ATOL64, rtol=0)
        assert torch.allclose(net.output_value(acts[k], 1, from_layer=k), acts[-1][:, 1], atol=ATOL64, rtol=0)
    assert net.subnetwork(1).layers[0] is net.layers[1]


# --------------------------------------------------------------------------- sampling
def test_sample_inputs_contract():
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)
    x = net.sample_inputs(300, output=0, min_output=0.1, seed=0)
    assert x.shape == (300, 10) and x.dtype == torch.float32
    assert bool((x >= 0).all())
    assert bool((net(x)[:, 0] > 0.1).all())
    assert torch.equal(x, net.sample_inputs(300, output=0, min_output=0.1, seed=0))
    assert not torch.equal(x, net.sample_inputs(300, output=0, min_output=0.1, seed=1))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(x, net.sample_inputs(300, output=0, min_output=0.1, generator=g))


def test_sample_inputs_impossible_bound_says_acceptance_rate():
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)
    with pytest.raises(ValueError, match="acceptance rate"):
        net.sample_inputs(5, output=0, min_output=1e9, seed=0)


# --------------------------------------------------------------------------- copies for other libraries
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_copy_is_an_ordinary_linear_holding_copies(dtype):
    weight = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=dtype)
    bias = torch.randn(3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    state = torch.random.get_rng_state()
    layer = dtd.network.linear_copy(weight, bias)
    assert torch.equal(torch.random.get_rng_state(), state)  # no draw from the global RNG
    reference_layer = nn.Linear(5, 3, dtype=dtype)  # built the usual way, then given the same parameters
    with torch.no_grad():
        reference_layer.weight.copy_(weight)
        reference_layer.bias.copy_(bias)
    x = torch.rand(4, 5, dtype=dtype)
    assert torch.equal(layer(x), reference_layer(x))
    assert repr(layer) == repr(reference_layer) and layer.training
    assert layer.state_dict().keys() == reference_layer.state_dict().keys()
    assert all(p.requires_grad and p.dtype == dtype for p in layer.parameters())
    with torch.no_grad():
        layer.weight.add_(1.0)
        layer.bias.add_(1.0)
    assert torch.equal(weight, reference_layer.weight) and torch.equal(bias, reference_layer.bias)  # nothing shared


def test_to_sequential_draws_nothing_from_the_global_rng_and_computes_the_network():
    net = dtd.ReLUNetwork.random([4, 6, 2], seed=0, dtype=torch.float64)
    state = torch.random.get_rng_state()
    model = net.to_sequential()
    assert torch.equal(torch.random.get_rng_state(), state)
    x = torch.rand(5, 4, dtype=torch.float64)
    assert torch.equal(model(x), net(x))
    assert torch.equal(net.to_sequential(bias=False)[0].bias, torch.zeros(6, dtype=torch.float64))
