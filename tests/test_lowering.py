"""Lowering users' models (``ReLUNetwork.from_sequential``): exact, owned, and loud about what it cannot do.

Everything is checked against the *original* model: its forward, zennit's LRP
on it, and its state before and after.
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from torch import nn

import dtd
from dtd import lowering
from dtd import rules as R
from properties.conformance import agreement as ag

#: the lowered network's forward vs the model's, relative to the largest output (issue 11)
FORWARD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
#: a dense matrix whose entries are single weights (or sums of exactly representable products) is bit-exact
#: in float64; a product of two lowered matrices is compared with this relative tolerance
MATRIX_RTOL64 = 1e-14


# --------------------------------------------------------------------------- building models
def _build(make, seed: int, dtype=torch.float64, *, negative_bias: bool = False) -> nn.Sequential:
    """``make()`` with every parameter and batch-norm statistic drawn from a local generator, in eval mode.

    ``negative_bias``: every bias and batch-norm shift ``<= 0``, batch-norm means ``>= 0``
    and scales ``> 0``, so that the folded biases are ``<= 0`` too.
    """
    with torch.random.fork_rng(devices=[]):  # module constructors draw from the global RNG
        model = make()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            values = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.endswith("bias") and negative_bias:
                values = -values.abs() * 0.1
            p.copy_(values)
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = module.num_features
                mean = (
                    torch.rand(n, generator=g, dtype=torch.float64)
                    if negative_bias
                    else torch.randn(n, generator=g, dtype=torch.float64)
                )
                module.running_mean.copy_(mean)
                module.running_var.copy_(0.5 + torch.rand(n, generator=g, dtype=torch.float64))
                if negative_bias:
                    module.weight.copy_(0.5 + torch.rand(n, generator=g, dtype=torch.float64))
    return model.to(dtype).eval()


def _mlp_batchnorm(eps: float = 1e-5):
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8, eps=eps), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(8, 8), nn.BatchNorm1d(8, eps=eps), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip


def _digits_cnn():  # the digits CNN's shape: input (1, 8, 8)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3),
    )  # fmt: skip


def _conv_geometry():  # input (2, 9, 9)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(3, 4, (2, 3), stride=(1, 2), padding=(2, 1), dilation=(2, 1)), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 7 * 3, 2),
    )  # fmt: skip


def _padding_modes():  # input (1, 6, 6)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding=2, padding_mode="replicate", bias=False), nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding="same", padding_mode="circular"), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * 8 * 8, 2),
    )  # fmt: skip


def _conv_batchnorm():  # input (2, 5, 5)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), nn.Conv2d(3, 2, 2), nn.BatchNorm2d(2), nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(2 * 2 * 2, 3), nn.ReLU(),
    )  # fmt: skip


def _nested():
    return nn.Sequential(
        collections.OrderedDict(
            features=nn.Sequential(nn.Identity(), nn.Sequential(nn.Linear(5, 7), nn.ReLU()), nn.Dropout()),
            head=nn.Sequential(nn.Linear(7, 4), nn.BatchNorm1d(4), nn.Identity(), nn.Linear(4, 6), nn.ReLU()),
            out=nn.Sequential(nn.Sequential(nn.Linear(6, 2))),
        )
    )


def _linear_on_images():  # input (1, 5, 5): a Linear acting on the last dimension of an image
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(3, 4), nn.ReLU(), nn.Flatten(), nn.Unflatten(1, (2, 12)),
                         nn.Flatten(), nn.Linear(24, 2))


FORWARD_CASES = [
    ("mlp with batch norm and dropout", _mlp_batchnorm, None, (6,)),
    ("digits cnn", _digits_cnn, (1, 8, 8), (1, 8, 8)),
    ("conv stride, padding, dilation, no bias", _conv_geometry, (2, 9, 9), (2, 9, 9)),
    ("conv padding modes", _padding_modes, (1, 6, 6), (1, 6, 6)),
    ("batch norm 2d, overlapping and ceil-mode pooling", _conv_batchnorm, (2, 5, 5), (2, 5, 5)),
    ("nested sequentials and identity", _nested, None, (5,)),
    ("linear on the last image dimension", _linear_on_images, (1, 5, 5), (1, 5, 5)),
]


def _inputs(shape, n=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n,) + tuple(shape), generator=g, dtype=torch.float64).to(dtype)


def _assert_same_forward(net, model, x):
    with torch.no_grad():
        expected = model(x).flatten(1)
        got = net(x)
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=FORWARD_RTOL[x.dtype] * scale)


# --------------------------------------------------------------------------- forward equality
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("make, input_shape, x_shape", [pytest.param(*c[1:], id=c[0]) for c in FORWARD_CASES])
def test_lowered_forward_equals_the_original_model(make, input_shape, x_shape, dtype):
    model = _build(make, seed=1, dtype=dtype)
    net = dtd.ReLUNetwork.from_sequential(model, input_shape)
    x = _inputs(x_shape, dtype=dtype)
    assert net.dtype == dtype
    _assert_same_forward(net, model, x)
    _assert_same_forward(net.to_sequential(), model, x)
    again = dtd.ReLUNetwork.from_sequential(net.to_sequential(), input_shape)
    _assert_same_forward(again, model, x)
    if len(x_shape) > 1:  # flat inputs are accepted as well
        torch.testing.assert_close(net(x.flatten(1)), net(x), rtol=0, atol=0)


def test_layers_end_at_relus_and_consecutive_affine_maps_fold():
    cnn = dtd.ReLUNetwork.from_sequential(_build(_digits_cnn, seed=0), (1, 8, 8))
    # conv | pool+conv | flatten+linear: the pooling folds into the second convolution
    assert cnn.sizes == [64, 4 * 8 * 8, 6 * 4 * 4, 3] and not cnn.final_relu
    nested = dtd.ReLUNetwork.from_sequential(_build(_nested, seed=0))
    # linear | linear+batchnorm+linear | linear; the trailing Dropout after a ReLU is the identity
    assert nested.sizes == [5, 7, 6, 2] and not nested.final_relu
    ending_in_relu = dtd.ReLUNetwork.from_sequential(_build(_conv_batchnorm, seed=0), (2, 5, 5))
    assert ending_in_relu.final_relu and ending_in_relu.n_layers == 3


# --------------------------------------------------------------------------- exact matrices vs slow references
def _conv_matrix_reference(conv: nn.Conv2d, shape) -> torch.Tensor:
    """The dense matrix of a zero-padded convolution, one weight at a time (slow and obvious)."""
    c_in, h_in, w_in = shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    h_out = (h_in + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w_in + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    weight = conv.weight.detach().double()
    matrix = torch.zeros(conv.out_channels * h_out * w_out, c_in * h_in * w_in, dtype=torch.float64)
    for o in range(conv.out_channels):
        for i in range(h_out):
            for j in range(w_out):
                row = (o * h_out + i) * w_out + j
                for c in range(c_in):
                    for u in range(kh):
                        for v in range(kw):
                            y, x = i * sh - ph + u * dh, j * sw - pw + v * dw
                            if 0 <= y < h_in and 0 <= x < w_in:
                                matrix[row, (c * h_in + y) * w_in + x] += weight[o, c, u, v]
    return matrix


def _pool_matrix_reference(k: int, shape) -> torch.Tensor:
    """Non-overlapping k x k average pooling as a matrix: 1 / k^2 where an input lies in an output's cell."""
    c, h, w = shape
    matrix = torch.zeros(c * (h // k) * (w // k), c * h * w, dtype=torch.float64)
    for ch in range(c):
        for i in range(h // k * k):
            for j in range(w // k * k):
                matrix[(ch * (h // k) + i // k) * (w // k) + j // k, (ch * h + i) * w + j] = 1.0 / k**2
    return matrix


def test_conv_layers_equal_the_slow_reference_exactly():
    model = _build(_conv_geometry, seed=2)
    net = dtd.ReLUNetwork.from_sequential(model, (2, 9, 9))
    first = _conv_matrix_reference(model[0], (2, 9, 9))
    assert torch.equal(net.weight(0), first)  # each entry is one weight: no rounding anywhere
    assert torch.equal(net.bias(0), torch.zeros(first.shape[0], dtype=torch.float64))
    second = _conv_matrix_reference(model[2], (3, 5, 5))
    assert torch.equal(net.weight(1), second)
    assert torch.equal(net.bias(1), model[2].bias.detach().repeat_interleave(second.shape[0] // 4))


def test_pool_then_conv_folds_to_the_product_of_the_references():
    model = _build(_digits_cnn, seed=3)
    net = dtd.ReLUNetwork.from_sequential(model, (1, 8, 8))
    folded = _conv_matrix_reference(model[3], (4, 4, 4)) @ _pool_matrix_reference(2, (4, 8, 8))
    torch.testing.assert_close(net.weight(1), folded, rtol=MATRIX_RTOL64, atol=0)


def test_batch_norm_folds_into_the_neighbouring_linear_maps():
    model = _build(_nested, seed=4)
    net = dtd.ReLUNetwork.from_sequential(model)
    first, bn, second = model.head[0], model.head[1], model.head[3]
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    weight = second.weight.detach() @ torch.diag(scale) @ first.weight.detach()
    bias = second.weight.detach() @ (scale * first.bias.detach() + shift) + second.bias.detach()
    torch.testing.assert_close(net.weight(1), weight, rtol=MATRIX_RTOL64, atol=0)
    torch.testing.assert_close(net.bias(1), bias, rtol=MATRIX_RTOL64, atol=0)


# --------------------------------------------------------------------------- shapes at the edges
def test_decompositions_take_and_return_the_models_input_shape():
    model = _build(_digits_cnn, seed=5, negative_bias=True)
    net = dtd.ReLUNetwork.from_sequential(model, (1, 8, 8))
    x = _inputs((1, 8, 8), n=6)
    assert net.input_shape == (1, 8, 8)
    dec = dtd.train_free(net, x, rule="z+", output=0)
    flat = dtd.train_free(net, x.flatten(1), rule="z+", output=0)
    assert dec.relevance.shape == (6, 1, 8, 8) and flat.relevance.shape == (6, 64)
    assert torch.equal(dec.relevance.flatten(1), flat.relevance)
    assert dec.layers[0].input.shape == (6, 64) and dec.layers[0].relevance.shape == (6, 64)
    assert dec.layers[0].root_chunk(0, 2).shape == (2, 4 * 8 * 8, 64)
    full = dtd.full_backward(net, x[:2], root_finder=dtd.LinearRoots("z+"))
    assert full.relevance.shape == (2, 1, 8, 8)
    assert torch.equal(full.relevance.flatten(1), full.layers[0].relevance)
    sampled = dtd.train_free(net, x[:2], root_finder=dtd.RegionSamplingRoots(4, seed=0))
    assert sampled.relevance.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\(batch, 64\) or \(batch, 1, 8, 8\)"):
        dtd.train_free(net, _inputs((1, 4, 16), n=2))


# ------------------------------------------------------------------------- agreement with zennit on the original model
def _zennit_on_model(model, x, module_rules, output, canonizers=()):
    from zennit.attribution import Gradient
    from zennit.core import Composite

    def module_map(ctx, name, module):
        for kind, make in module_rules:
            if isinstance(module, kind):
                return make()
        return None

    composite = Composite(module_map=module_map, canonizers=list(canonizers))
    with torch.no_grad():
        n_out = model(x[:1]).shape[1]
    onehot = torch.zeros(n_out, dtype=x.dtype)
    onehot[output] = 1
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.detach().clone(), lambda y: onehot * y)
    return relevance.detach()


def _points_with_positive_output(net, shape, n):
    """``n`` inputs in ``[0, 2)`` whose explained output exceeds 0.1, and that output (the one most often positive)."""
    x = 2 * _inputs(shape, n=20 * n, seed=7)
    with torch.no_grad():
        alive = net(x) > 0.1
    output = int(alive.sum(0).argmax())
    assert int(alive[:, output].sum()) >= n
    return x[alive[:, output]][:n], output


def test_zplus_on_a_lowered_batchnorm_mlp_equals_zennit_on_the_original():
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.rules import ZPlus

    # zennit's SequentialMergeBatchNorm folds the batch norm into the Linear and then makes it the
    # "identity" by setting running_var = 1 while keeping eps: it computes x / sqrt(1 + eps), a relative
    # change of eps / 2 per batch norm (2e-5 in the relevance here with torch's default eps = 1e-5) that
    # is neither DTD's nor a stabiliser effect.  With eps = 0 its merge is exact and the comparison below
    # is about the rules alone (the lowering with eps != 0 is checked against the model's forward above).
    model = _build(lambda: _mlp_batchnorm(eps=0.0), seed=8, negative_bias=True)
    net = dtd.ReLUNetwork.from_sequential(model)
    assert all(bool((net.bias(k) <= 0).all()) for k in range(net.n_layers))  # where z+ equals ZPlus
    x, output = _points_with_positive_output(net, (6,), 40)
    dec = dtd.train_free(net, x, rule="z+", output=output)
    theirs = _zennit_on_model(model, x, [(nn.Linear, ZPlus)], output, [SequentialMergeBatchNorm()])
    # zennit divides every denominator d_j by d_j + 1e-6 sign(d_j); stabilizer_bound turns that into a
    # rigorous per-input bound (on the lowered network, whose folded layers are zennit's merged ones)
    bound, conditioned = ag.stabilizer_bound(net, dec, R.ZPlus(), ag.ZENNIT_STABILIZER)
    assert int(conditioned.sum()) >= 30
    difference = (dec.relevance - theirs).abs()
    assert bool((difference[conditioned] <= bound[conditioned] + ag.ROUNDING64).all())
    assert float(dec.relevance.abs().max()) > 0.1


def _zplus_shrink(a: torch.Tensor, weight: torch.Tensor, carries: torch.Tensor) -> torch.Tensor:
    """Per point, the largest ``eps / (d_j + eps)`` over the relevance-carrying neurons (z+ denominators ``d``)."""
    d = a @ weight.clamp(min=0).T
    shrink = ag.ZENNIT_STABILIZER / (d + ag.ZENNIT_STABILIZER)
    return torch.where(carries, shrink, torch.zeros_like(shrink)).amax(1)


def test_zplus_on_a_lowered_pooling_cnn_equals_zennit_zplus_and_norm_on_the_original():
    """z+ on the folded pool+conv map equals zennit's ZPlus on the conv and Norm on the pooling.

    Non-overlapping average pooling (stride == kernel) is ``P`` with ``P[p, i] = 1/k^2`` for the one
    cell ``p(i)`` holding input ``i``.  So the folded matrix is ``W[j, i] = V[j, p(i)] / k^2`` and its
    positive part is ``V+[j, p(i)] / k^2``: the z+ denominator is ``sum_p V+[j, p] y_p = d_j`` (``y``
    the pooled activations), zennit's ZPlus denominator on the conv, and z+ hands input ``i``
    ``(a_i / (k^2 y_p)) sum_j y_p V+[j, p] R_j / d_j``: ZPlus's relevance of cell ``p`` distributed by
    zennit's Norm rule (``a_i / k^2 * R_p / y_p``).  With overlapping cells the positive part of a sum
    of weights is not the sum of positive parts, and the two differ (checked below).
    """
    from zennit.rules import Norm, ZPlus

    model = _build(_digits_cnn, seed=9, negative_bias=True)
    net = dtd.ReLUNetwork.from_sequential(model, (1, 8, 8))
    assert all(bool((net.bias(k) <= 0).all()) for k in range(net.n_layers))

    # the step the argument rests on: (V P)+ == V+ P for non-overlapping pooling, not for overlapping
    conv = dtd.ReLUNetwork.from_sequential(nn.Sequential(copy.deepcopy(model[3])), (4, 4, 4)).weight(0)
    for pool, commutes in [(nn.AvgPool2d(2), True), (nn.AvgPool2d(2, stride=1, padding=1), False)]:
        p = dtd.ReLUNetwork.from_sequential(nn.Sequential(pool), (4, 8, 8)).weight(0).double()
        if not commutes:
            conv_overlap = dtd.ReLUNetwork.from_sequential(
                nn.Sequential(copy.deepcopy(model[3])), (4,) + pool(torch.zeros(1, 4, 8, 8)).shape[2:]
            ).weight(0)
            assert not torch.allclose((conv_overlap @ p).clamp(min=0), conv_overlap.clamp(min=0) @ p)
        else:
            torch.testing.assert_close((conv @ p).clamp(min=0), conv.clamp(min=0) @ p, rtol=MATRIX_RTOL64, atol=0)

    x, output = _points_with_positive_output(net, (1, 8, 8), 30)
    dec = dtd.train_free(net, x, rule="z+", output=output)
    theirs = _zennit_on_model(model, x, [((nn.Conv2d, nn.Linear), ZPlus), (nn.AvgPool2d, Norm)], output)
    assert theirs.shape == dec.relevance.shape == (30, 1, 8, 8)

    # Tolerance.  With a >= 0, z+ relevances are sums of non-negative terms, and each of zennit's
    # stabilised divisions multiplies every term by d / (d + 1e-6) in [1 - delta, 1], delta = 1e-6 / (d + 1e-6)
    # over the neurons carrying relevance (and y_p for the Norm rule).  So per point
    # (1 - prod_layers (1 - delta_max)) R_dtd >= R_dtd - R_zennit >= 0, up to float64 rounding.
    keep = torch.ones(x.shape[0], dtype=torch.float64)
    for k in range(net.n_layers):
        layer = dec.layers[k]
        carries = layer.carries_relevance & layer.root_valid
        keep = keep * (1 - _zplus_shrink(layer.input, net.weight(k), carries))
    with torch.no_grad():
        pooled = model[:3](x).flatten(1)  # y: the pooling layer's output
    norm_shrink = torch.where(pooled > 0, ag.ZENNIT_STABILIZER / (pooled + ag.ZENNIT_STABILIZER),
                              torch.zeros_like(pooled))
    keep = keep * (1 - norm_shrink.amax(1))
    ours = dec.relevance.flatten(1)
    bound = (1 - keep).unsqueeze(1) * ours + ag.ROUNDING64
    difference = ours - theirs.flatten(1)
    assert bool((difference >= -ag.ROUNDING64).all())
    assert bool((difference <= bound).all())
    # the bound is meaningful: on a typical point it allows a relative difference of about 1e-5
    assert float((1 - keep).median()) < 1e-4
    assert float(ours.sum(1).min()) > 0.05


# --------------------------------------------------------------------------- what export captures is lowered
class _OwnLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class _OwnSequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + 1


def _hooked(pre: bool):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    if pre:
        model[2].register_forward_pre_hook(lambda module, args: (args[0] * 3,))
    else:
        model[0].register_forward_hook(lambda module, args, out: out * 2)
    return model


def _hooked_container():
    inner = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    inner.register_forward_hook(lambda module, args, out: out + 1)
    return nn.Sequential(collections.OrderedDict(block=inner, head=nn.Linear(3, 2)))


CAPTURED = [  # (what, model, input_shape, the number of dense layers)
    ("a Linear subclass computing twice its output",
     lambda: nn.Sequential(_OwnLinear(3, 3), nn.ReLU(), nn.Linear(3, 2)), None, 2),
    ("a Sequential subclass adding 1", lambda: _OwnSequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)), None, 2),
    ("a forward hook doubling an output", lambda: _hooked(pre=False), None, 2),
    ("a forward pre-hook tripling an input", lambda: _hooked(pre=True), None, 2),
    ("a hook on a container", _hooked_container, None, 2),
    ("a leaky ReLU: two ReLU units", lambda: nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.Linear(4, 2)), None,
     2),
    ("a ReLU6: relu(z) - relu(z - 6)", lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU6(), nn.Linear(4, 2)), None, 2),
    ("a Conv1d", lambda: nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5, 2)), (1, 7), 2),
    ("a grouped convolution", lambda: nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(),
                                                    nn.Linear(36, 2)),
     (2, 5, 5), 2),
    ("a ReLU first (an identity layer before it)", lambda: nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), None, 2),
    ("a ReLU after a ReLU (the same ReLU)",
     lambda: nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.ReLU(), nn.Linear(3, 2)), None, 2),
]  # fmt: skip


@pytest.mark.parametrize("make, input_shape, n_layers", [pytest.param(*c[1:], id=c[0]) for c in CAPTURED])
def test_from_sequential_lowers_what_the_model_computes(make, input_shape, n_layers):
    """Subclasses, hooks and the piecewise-linear activations: the graph torch.export captures is what is lowered."""
    model = _build(make, seed=3)
    net = dtd.ReLUNetwork.from_sequential(model, input_shape)
    assert net.n_layers == n_layers
    _assert_same_forward(net, model, _inputs(input_shape or (3,), dtype=torch.float64) - 0.5)  # negative inputs too


def _double_linear_outputs(module, args, out):
    return out * 2 if isinstance(module, nn.Linear) else out


def test_global_forward_hooks_are_part_of_what_is_lowered():
    model = nn.Sequential(nn.Linear(3, 2)).double()
    handle = torch.nn.modules.module.register_module_forward_hook(_double_linear_outputs)
    try:
        net = dtd.ReLUNetwork.from_sequential(model)
    finally:
        handle.remove()
    x = _inputs((3,))
    with torch.no_grad():
        torch.testing.assert_close(net(x), 2 * model(x), rtol=0, atol=FORWARD_RTOL[torch.float64])


# --------------------------------------------------------------------------- bad models
def _features(*modules):
    return nn.Sequential(collections.OrderedDict(features=nn.Sequential(*modules), head=nn.Linear(2, 2)))


def _training(module):
    model = nn.Sequential(nn.Linear(3, 3), module, nn.ReLU(), nn.Linear(3, 2))
    model.train()
    return model


def _no_running_stats():
    return nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False), nn.ReLU()).eval()


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x)[0]


CONV = dict(in_channels=1, out_channels=2, kernel_size=3)
BAD_MODELS = [
    ("max pooling", _features(nn.Conv2d(**CONV), nn.ReLU(), nn.AvgPool2d(1), nn.MaxPool2d(2)), (1, 6, 6), TypeError,
     r"'features\.3' \(max pooling\).*argmax pattern.*from_module\(model, input_shape\)"),
    ("sigmoid", nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()), None, TypeError,
     r"'sigmoid' in module '1' \(Sigmoid\).*smooth, not piecewise linear"),
    ("tanh", nn.Sequential(nn.Linear(3, 3), nn.Tanh()), None, TypeError,
     r"'tanh' in module '1' \(Tanh\).*not piecewise linear"),
    ("gelu", _features(nn.Linear(2, 2), nn.GELU()), None, TypeError,
     r"'gelu' in module 'features\.1' \(GELU\).*not piecewise linear"),
    ("hardswish", nn.Sequential(nn.Linear(3, 3), nn.Hardswish()), None, TypeError,
     r"'hardswish' in module '1' \(Hardswish\).*piecewise quadratic"),
    ("attention", nn.Sequential(_Attention()), (2, 4), TypeError, r"in module '0.attention' \(MultiheadAttention\)"),
    ("softmax", nn.Sequential(nn.Linear(3, 3), nn.Softmax(1)), None, TypeError,
     r"'softmax' in module '1' \(Softmax\).*explain the logits"),
    ("layer norm", nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), None, TypeError,
     r"'layer_norm' in module '1' \(LayerNorm\).*divides by statistics of the input"),
    ("module list", nn.ModuleList([nn.Linear(3, 3)]), None, TypeError, "expects nn.Sequential, got ModuleList"),
    ("batch norm in train mode", _training(nn.BatchNorm1d(3)), None, ValueError,
     r"'batch_norm' \(module '1', BatchNorm1d\) runs in training mode.*call model\.eval\(\)"),
    ("dropout in train mode", _training(nn.Dropout()), None, ValueError,
     r"'dropout' \(module '1', Dropout\) runs in training mode.*call model\.eval\(\)"),
    ("batch norm without running statistics", _no_running_stats(), None, ValueError, "track_running_stats=False"),
    ("conv without input_shape", nn.Sequential(nn.Conv2d(**CONV)), None, ValueError,
     r"'0' \(Conv2d\) needs the input's shape.*input_shape="),
    ("input_shape with the wrong channels", nn.Sequential(nn.Conv2d(**CONV)), (3, 6, 6), ValueError,
     r"the model fails on an input of shape \(2, 3, 6, 6\).*channels"),
    ("linear width mismatch", nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)), None, ValueError,
     r"the model fails on an input of shape \(2, 3\).*mat1 and mat2"),
    ("input_shape not a tuple", nn.Sequential(nn.Linear(4, 2)), 4, TypeError, "input_shape must be a non-empty tuple"),
    ("input_shape entry 0", nn.Sequential(nn.Linear(4, 2)), (0, 4), ValueError, "input_shape"),
    ("empty", nn.Sequential(), None, ValueError, "no affine module"),
    ("mixed dtypes", nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2).double()), None, ValueError,
     "share one dtype"),
]  # fmt: skip


@pytest.mark.parametrize("model, input_shape, exception, message", [pytest.param(*c[1:], id=c[0]) for c in BAD_MODELS])
def test_from_sequential_refuses(model, input_shape, exception, message):
    with pytest.raises(exception, match=message):
        dtd.ReLUNetwork.from_sequential(model, input_shape)


def test_the_constructor_refuses_linear_subclasses_and_hooked_layers():
    with pytest.raises(TypeError, match=r"layer 1 is _OwnLinear, a subclass of nn\.Linear"):
        dtd.ReLUNetwork([nn.Linear(3, 3), _OwnLinear(3, 2)])
    hooked = nn.Linear(3, 2)
    hooked.register_forward_pre_hook(lambda module, args: None)
    with pytest.raises(TypeError, match="layer 0 has forward hooks or pre-hooks"):
        dtd.ReLUNetwork([hooked])


@pytest.mark.parametrize(
    "budget, exception, message",
    [(0, ValueError, "memory_budget must be >= 1"), (1.5, TypeError, "memory_budget must be an int"),
     (True, TypeError, "memory_budget")],
)
def test_memory_budget_argument_is_checked(budget, exception, message):
    with pytest.raises(exception, match=message):
        dtd.ReLUNetwork.from_sequential(nn.Sequential(nn.Linear(3, 2)), memory_budget=budget)


@pytest.mark.parametrize("rule", ["z+", R.Gamma(0.5)])
def test_negative_inputs_under_zplus_or_gamma_point_to_zb_and_w2(rule):
    net = dtd.ReLUNetwork.from_sequential(_build(_digits_cnn, seed=0), (1, 8, 8))
    x = _inputs((1, 8, 8), n=3) - 0.5
    with pytest.raises(ValueError, match=r"non-negative.*ZB\(low, high\) with your data's box.*'w2'"):
        dtd.train_free(net, x, rule=rule)
    low, high = float(x.min()), float(x.max())  # the hint's fix works
    assert dtd.train_free(net, x, rule=[R.ZB(low, high), "z+", "z+"]).relevance.shape == x.shape
    assert dtd.train_free(net, x, rule=["w2", "z+", "z+"]).relevance.shape == x.shape


# --------------------------------------------------------------------------- memory
def _cnn28():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
    )  # fmt: skip


def test_a_layer_above_the_memory_budget_is_refused_before_allocating():
    model = _build(_cnn28, seed=0, dtype=torch.float32)
    # the largest folded map is pool+conv: 8*28*28 inputs, 16*14*14 outputs, float64
    needed = (8 * 28 * 28) * (16 * 14 * 14) * 8
    message = (r"layer 1 \(modules '2', '3'\) folds into a dense 3,136 x 6,272 "
               rf"matrix, which needs {needed:,} bytes.*memory_budget={needed - 1:,}")
    with pytest.raises(ValueError, match=message):
        dtd.ReLUNetwork.from_sequential(model, (1, 28, 28), memory_budget=needed - 1)
    # the budget is inclusive: a pooling of (2, 4, 4) is a 8 x 32 float64 matrix of 2048 bytes
    pool = nn.Sequential(nn.AvgPool2d(2))
    with pytest.raises(ValueError,
                       match=r"layer 0 \(modules '0'\) folds into a dense 8 x 32 matrix, which needs 2,048 bytes"):
        dtd.ReLUNetwork.from_sequential(pool, (2, 4, 4), memory_budget=2047)
    assert dtd.ReLUNetwork.from_sequential(pool, (2, 4, 4), memory_budget=2048).sizes == [32, 8]


def test_a_28x28_cnn_with_8_and_16_channels_fits_the_default_budget():
    model = _build(_cnn28, seed=1, dtype=torch.float32)
    net = dtd.ReLUNetwork.from_sequential(model, (1, 28, 28))
    largest = max(net.sizes[k] * net.sizes[k + 1] * 8 for k in range(net.n_layers))
    assert largest <= lowering.DEFAULT_MEMORY_BUDGET == 1 << 30
    _assert_same_forward(net, model, _inputs((1, 28, 28), n=4, dtype=torch.float32))


# --------------------------------------------------------------------------- nothing the user passed changes
def _snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "children": [type(m) for m in model.modules()],
    }


def _assert_same_snapshot(before, after):
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        assert torch.equal(before["state"][key], after["state"][key]), key
    for field in ("training", "requires_grad", "hooks", "children"):
        assert before[field] == after[field], field


def test_the_users_model_is_never_modified_nor_shared():
    model = _build(_conv_batchnorm, seed=6)
    model[0].weight.requires_grad_(False)
    model[1].register_full_backward_hook(lambda module, grad_in, grad_out: None)  # backward hooks do not change forward
    x = _inputs((2, 5, 5), n=5)
    with torch.no_grad():
        expected = model(x)
    before = _snapshot(model)
    net = dtd.ReLUNetwork.from_sequential(model, (2, 5, 5))
    dtd.train_free(net, x, rule="z+")
    _assert_same_snapshot(before, _snapshot(model))
    ours = {p.data_ptr() for p in net.parameters()}
    theirs = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    assert not ours & theirs
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    _assert_same_snapshot(before, _snapshot(model))
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_lowering_leaves_torchs_global_rng_alone():
    model = _build(_digits_cnn, seed=0)
    state = torch.get_rng_state()
    dtd.ReLUNetwork.from_sequential(model, (1, 8, 8))
    dtd.ReLUNetwork.from_sequential(_build(_mlp_batchnorm, seed=0))
    assert torch.equal(torch.get_rng_state(), state)


def test_a_linear_relu_model_in_train_mode_stays_in_train_mode():
    model = _build(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), seed=0).train()
    before = _snapshot(model)
    net = dtd.ReLUNetwork.from_sequential(model)
    _assert_same_snapshot(before, _snapshot(model))
    assert model.training
    _assert_same_forward(net, model, _inputs((3,)))


def test_an_input_shape_with_the_batch_dimension_is_named_as_such():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 2)).eval()
    with pytest.raises(ValueError, match=r"batch dimension in front.*x.shape\[1:\], e.g. \(3, 16, 16\)"):
        dtd.ReLUNetwork.from_sequential(model, input_shape=(1, 3, 16, 16))
