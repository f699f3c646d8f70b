"""The torch.export lowering, operation by operation: every affine and piecewise-linear operation lowers exactly,
every rewritten composite equals the dense fold of its parts, and z+ equals a slow reference written out here.

References: each model's own forward (float64, :data:`FORWARD_RTOL`), the dense matrix of a chain's original
operators pushed basis vector by basis vector (:func:`tests.reference.dense_matrix`), and z+ neuron by neuron on
matrices read off the model's own modules with autograd-free basis pushes (:func:`tests.reference.zplus_step`).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune
from torch import nn

import dtd
from dtd.graph import operator_matrix
from dtd.lowering import compose, lower_module
from dtd.operators import KINDS, Chain, Conv, IndexMap, Reshape, Scale

from .reference import dense_matrix, linear_part, zplus_step

#: the lowered network's forward against the model's, relative to the largest output (float64)
FORWARD_RTOL = 1e-10
#: a rewritten chain's modified matrices against the modified dense fold of its parts (float64 sums in another order)
FOLD_RTOL = 1e-12
#: float64 agreement of z+ with its slow reference
RELEVANCE_RTOL = 1e-10


def _inputs(shape, n=3, seed=0, low=0.0):
    x = torch.rand((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x + low


def _seeded(make, seed=0):
    """``make()`` in float64 and eval mode, every parameter and batch-norm statistic drawn from a local generator."""
    with torch.random.fork_rng(devices=[]):
        model = make()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g, dtype=torch.float64))
    return model.double().eval()


class Op(nn.Module):
    """A model around one operation: ``head(op(stem(x)))`` with a convolution before (so the operation acts on a
    linear value, not only on the input) unless ``stem=False``."""

    def __init__(self, op, channels=3, stem=True, head=None):
        super().__init__()
        self.stem = nn.Conv2d(channels, channels, 3, padding=1) if stem else nn.Identity()
        self.op = op
        self.head = head if head is not None else nn.Identity()

    def forward(self, x):
        return self.head(self.op(self.stem(x)))


class Fn(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


def _shuffle(x, groups=2):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _pieces(x):
    """Pieces of x put back together differently: chunks reversed, a stack of splits, an unbound column broadcast."""
    column = x.narrow(2, 1, 5).unbind(3)[2]  # (n, 3, 5)
    padded = F.pad(column.unsqueeze(3).expand(-1, -1, -1, 6), (0, 0, 0, 1))
    return torch.cat(list(x.chunk(3, 1))[::-1] + [torch.stack(x.split(1, 1), 1).flatten(1, 2), padded], 1)


class PerChannel(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor([0.5, -2.0, 3.0]).reshape(3, 1, 1))

    def forward(self, x):
        return x * self.scale - 1.0


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(4)) > 0.5)

    def forward(self, x):
        return torch.where(self.mask, x, -x).masked_fill(~self.mask, 0.25)


def _weight_normed():
    linear = nn.utils.parametrizations.weight_norm(nn.Linear(3 * 6 * 6, 4))
    return nn.Sequential(nn.Flatten(), linear)


def _pruned():
    linear = nn.Linear(3 * 6 * 6, 4)
    torch.nn.utils.prune.random_unstructured(linear, "weight", amount=0.5)
    return nn.Sequential(nn.Flatten(), linear)


# every operation on input (3, 6, 6) after a 3x3 convolution; (name, model)
OPERATIONS = [
    ("conv1d on a flattened axis", lambda: Op(nn.Sequential(nn.Flatten(2), nn.Conv1d(3, 2, 3, stride=2, dilation=2)))),
    ("conv3d", lambda: Op(nn.Sequential(nn.Unflatten(1, (1, 3)), nn.Conv3d(1, 2, (2, 3, 3), padding=(0, 1, 1))))),
    ("conv_transpose2d", lambda: Op(nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, groups=1))),
    ("conv_transpose2d grouped, dilated", lambda: Op(nn.ConvTranspose2d(3, 3, 2, stride=2, groups=3, dilation=2))),
    ("conv_transpose1d", lambda: Op(nn.Sequential(nn.Flatten(2), nn.ConvTranspose1d(3, 2, 4, stride=3)))),
    ("grouped depthwise conv", lambda: Op(nn.Conv2d(3, 6, 3, groups=3, padding=2, dilation=2))),
    ("reflect padding", lambda: Op(nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"))),
    ("replicate padding", lambda: Op(nn.Conv2d(3, 2, 3, padding=2, padding_mode="replicate"))),
    ("circular padding", lambda: Op(nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular"))),
    ("'same' padding, even kernel", lambda: Op(nn.Conv2d(3, 2, 4, padding="same"))),
    ("linear on the last axis", lambda: Op(nn.Linear(6, 5))),
    ("matmul with a constant",
     lambda: Op(Fn(lambda x: x @ torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(6, 4)))),
    ("batch norm 2d", lambda: Op(nn.BatchNorm2d(3))),
    ("batch norm 3d", lambda: Op(nn.Sequential(nn.Unflatten(1, (1, 3)), nn.BatchNorm3d(1)))),
    ("avg pool, ceil mode, padding not counted", lambda: Op(nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                                                          count_include_pad=False))),
    ("avg pool with divisor", lambda: Op(nn.AvgPool2d(2, divisor_override=3))),
    ("avg pool 1d", lambda: Op(nn.Sequential(nn.Flatten(2), nn.AvgPool1d(4, stride=3, padding=1)))),
    ("adaptive avg pool, overlapping windows", lambda: Op(nn.AdaptiveAvgPool2d((4, 5)))),
    ("adaptive avg pool 3d", lambda: Op(nn.Sequential(nn.Unflatten(1, (1, 3)), nn.AdaptiveAvgPool3d((2, 3, 2))))),
    ("mean and sum over dimensions", lambda: Op(Fn(lambda x: x.mean((2, 3), keepdim=True) + x.sum(3, keepdim=True)))),
    ("nearest upsampling", lambda: Op(nn.Upsample(scale_factor=2))),
    ("nearest to a size", lambda: Op(Fn(lambda x: F.interpolate(x, size=(9, 4), mode="nearest")))),
    ("nearest-exact", lambda: Op(Fn(lambda x: F.interpolate(x, scale_factor=1.5, mode="nearest-exact")))),
    ("bilinear", lambda: Op(nn.Upsample(scale_factor=2, mode="bilinear"))),
    ("bilinear, align_corners",
     lambda: Op(Fn(lambda x: F.interpolate(x, size=(5, 11), mode="bilinear", align_corners=True)))),
    ("bicubic (negative weights)", lambda: Op(nn.Upsample(scale_factor=2, mode="bicubic"))),
    ("trilinear", lambda: Op(nn.Sequential(nn.Unflatten(1, (1, 3)), nn.Upsample(scale_factor=2, mode="trilinear")))),
    ("pixel shuffle", lambda: Op(nn.Sequential(nn.Conv2d(3, 8, 1), nn.PixelShuffle(2)))),
    ("pixel unshuffle", lambda: Op(nn.PixelUnshuffle(2))),
    ("channel shuffle (view, transpose)",
     lambda: Op(nn.Sequential(nn.Conv2d(3, 4, 1), Fn(_shuffle), nn.Conv2d(4, 2, 3)))),
    ("permute, transpose", lambda: Op(Fn(lambda x: x.permute(0, 2, 3, 1).transpose(1, 2) * 2))),
    ("strided slice, select",
     lambda: Op(Fn(lambda x: x[:, 1:, ::2, 1::3] + x[:, 2:3, 0:3, 0:2].select(3, 1).unsqueeze(3)))),
    ("split, chunk, unbind, narrow, cat, stack", lambda: Op(Fn(_pieces))),
    ("flip, roll, repeat", lambda: Op(Fn(lambda x: x.flip(3).roll(2, 2).repeat(1, 2, 1, 1)))),
    ("broadcast add", lambda: Op(Fn(lambda x: x + x.mean((2, 3), keepdim=True)))),
    ("Tensor.unfold, F.unfold",
     lambda: Op(Fn(lambda x: x.unfold(3, 3, 2).flatten(3)
                   + F.unfold(x, 3, padding=1).reshape(x.shape[0], 27, 6, 6)[:, :3]))),
    ("constant padding with a value", lambda: Op(Fn(lambda x: F.pad(x, (1, 2, 0, 1), value=0.5)))),
    ("negation, subtraction, division", lambda: Op(Fn(lambda x: -x - 1 + (x / 4) - 3 * x))),
    ("per-channel constants", lambda: Op(PerChannel())),
    ("where and masked_fill with a constant mask", lambda: Op(Masked())),
    ("weight_norm parametrisation", lambda: Op(_weight_normed())),
    ("pruned Linear (mask applied by a hook)", lambda: Op(_pruned())),
    ("relu6", lambda: Op(nn.ReLU6())),
    ("hardtanh", lambda: Op(nn.Hardtanh(-1.0, 2.0))),
    ("clamp(min=0), clamp_min, clamp(max=)",
     lambda: Op(Fn(lambda x: x.clamp(min=0) + torch.clamp_min(x, 0.3) + x.clamp(max=0.2)))),
    ("maximum and minimum with constants",
     lambda: Op(Fn(lambda x: torch.maximum(x, torch.zeros_like(x)) + torch.minimum(x, torch.full_like(x, 0.1))))),
    ("maximum of two activations",
     lambda: Op(Fn(lambda x: torch.maximum(x[:, :1], x[:, 1:2]) + torch.max(x[:, 2:], x[:, :1])))),
    ("leaky relu", lambda: Op(nn.LeakyReLU(0.2))),
    ("prelu per channel", lambda: Op(nn.PReLU(3, init=0.3))),
    ("rrelu in eval mode", lambda: Op(nn.RReLU())),
    ("abs", lambda: Op(Fn(torch.abs))),
    ("hardsigmoid", lambda: Op(nn.Hardsigmoid())),
    ("max pool with dilation and ceil mode",
     lambda: Op(nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True))),
    ("max pool 1d", lambda: Op(nn.Sequential(nn.Flatten(2), nn.MaxPool1d(3, stride=2)))),
    ("adaptive max pool", lambda: Op(nn.AdaptiveMaxPool2d((2, 3)))),
    ("global amax", lambda: Op(Fn(lambda x: x.amax((2, 3))))),
]  # fmt: skip


@pytest.mark.parametrize("make", [pytest.param(make, id=name) for name, make in OPERATIONS])
def test_every_operation_lowers_exactly(make):
    """The lowered forward equals the model's, on inputs of both signs (x in [-0.5, 0.5))."""
    model = _seeded(make)
    net = lower_module(model, (3, 6, 6))
    x = _inputs((3, 6, 6), n=4, low=-0.5)
    with torch.no_grad():
        expected = model(x).flatten(1)
        got = net(x)
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((got - expected).abs().max()) <= FORWARD_RTOL * scale


def test_the_piecewise_linear_activations_become_relu_units():
    """A ReLU6 layer's input is [relu(z), relu(z - 6)] and the next layer reads it with [W, -W]."""
    model = _seeded(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU6(), nn.Linear(4, 2)))
    net = lower_module(model, (3,))
    assert net.n_layers == 2 and net.layer(0).shape == (2, 4)  # the units stacked along a new first axis
    a = torch.tensor([[0.5, -1.0, 3.0]], dtype=torch.float64)
    values, _ = net.run(a)
    z = model[0](a)
    np.testing.assert_allclose(net.layer_input(values, 1).numpy(),
                               torch.cat([z.relu(), (z - 6).relu()], 1).detach().numpy())
    w = net.weight(1)
    np.testing.assert_allclose(w.numpy(), torch.cat([model[2].weight, -model[2].weight], 1).detach().numpy(), rtol=0,
                               atol=0)


# --------------------------------------------------------------------------- rewritten composites vs dense folds
def _conv(weight_shape, in_shape, seed, **geometry):
    w = torch.randn(weight_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    geometry = dict(dict(stride=1, padding=0, dilation=1, groups=1), **geometry)
    return Conv(w, in_shape, **geometry)


def _nearest(in_shape, s):
    out = (in_shape[0],) + tuple(n * s for n in in_shape[1:])
    op = IndexMap(lambda t: F.interpolate(t, scale_factor=s, mode="nearest"), in_shape, out, injective=False,
                  name="upsample_nearest2d", spatial_only=True)
    op.upsample = (s, s)
    return op


def _bilinear(in_shape):
    out = (in_shape[0], in_shape[1] * 2, in_shape[2] * 2)
    from dtd.lowering.linear import axis_matrices
    from dtd.operators import Interpolation

    def base(t):
        return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

    return Interpolation(base, in_shape, out, axis_matrices(base, in_shape, out), name="upsample_bilinear2d")


COMPOSITES = [  # (what, original primitives): each is rewritten (or recognised) into an exact matrix-free form
    ("nearest upsampling then a 3x3 convolution",
     lambda: [_nearest((3, 4, 4), 2), _conv((2, 3, 3, 3), (3, 8, 8), 1, padding=1)]),
    ("nearest x3 then a grouped 5x5 convolution, padding 2",
     lambda: [_nearest((4, 3, 3), 3), _conv((4, 2, 5, 5), (4, 9, 9), 2, padding=2, groups=2)]),
    ("a 3x3 then a 1x1 convolution", lambda: [_conv((4, 3, 3, 3), (3, 5, 5), 3, padding=1),
                                              _conv((2, 4, 1, 1), (4, 5, 5), 4)]),
    ("a depthwise then a strided 1x1 convolution", lambda: [_conv((3, 1, 3, 3), (3, 6, 6), 5, padding=1, groups=3),
                                                          _conv((2, 3, 1, 1), (3, 6, 6), 6, stride=2)]),
    ("a strided 1x1 then a 3x3 convolution", lambda: [_conv((4, 3, 1, 1), (3, 9, 9), 7, stride=2),
                                                    _conv((2, 4, 3, 3), (4, 5, 5), 8, padding=1)]),
    ("a convolution, a channel slice, a per-channel scale", lambda: [
        _conv((5, 3, 3, 3), (3, 5, 5), 9), compose.Narrow((5, 3, 3), 0, 1, 3),
        Scale(torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64), (3, 3, 3))]),
    ("a 1x1 convolution then bilinear upsampling (a Kronecker product)", lambda: [
        _conv((2, 3, 1, 1), (3, 4, 4), 10), _bilinear((2, 4, 4))]),
    ("a concatenation part, then a convolution of it", lambda: [
        compose.Embed((2, 4, 4), (5, 4, 4), 0, 1), _conv((3, 5, 3, 3), (5, 4, 4), 11, padding=1)]),
]  # fmt: skip


@pytest.mark.parametrize("make", [pytest.param(make, id=name) for name, make in COMPOSITES])
def test_rewritten_composites_equal_the_dense_fold_of_their_parts(make):
    ops = make()
    original = Chain(ops)
    dense = torch.from_numpy(dense_matrix(original.forward, original.in_shape))
    rewritten = Chain(compose.simplify(ops))
    assert rewritten.exact_modifications(), [type(op).__name__ for op in rewritten.ops]
    assert len(rewritten.ops) < len(ops) or rewritten.kronecker_path()
    structure = dense != 0  # random weights: no entry of the composite is zero by accident
    expected = {"W": dense, "pos": dense.clamp_min(0), "neg": dense.clamp_max(0), "square": dense * dense,
                "ind": structure.double(), "ind_ge": (structure & (dense >= 0)).double(),
                "ind_lt": (structure & (dense < 0)).double()}
    for kind in KINDS:
        got = operator_matrix(rewritten.modified(kind), torch.float64)
        torch.testing.assert_close(got, expected[kind], rtol=FOLD_RTOL, atol=FOLD_RTOL * float(dense.abs().max()))
        # and its transpose is the adjoint
        y = torch.randn((2,) + tuple(rewritten.out_shape), generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
        back = rewritten.modified(kind).transpose(y).reshape(2, -1)
        torch.testing.assert_close(back, y.reshape(2, -1) @ expected[kind], rtol=FOLD_RTOL, atol=1e-10)


def test_sums_of_convolutions_of_one_activation_merge_into_one():
    """A RepVGG block: 3x3 + 1x1 + identity (a batch norm's scale) of one input, one convolution exactly."""
    in_shape = (3, 5, 5)
    parts = [Chain([_conv((3, 3, 3, 3), in_shape, 1, padding=1)]), Chain([_conv((3, 3, 1, 1), in_shape, 2)]),
             Chain([Scale(torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64), in_shape)])]
    merged = compose.merge_convolutions(parts)
    assert merged is not None and len(merged.ops) == 1
    expected = sum(torch.from_numpy(dense_matrix(p.forward, in_shape)) for p in parts)
    torch.testing.assert_close(operator_matrix(merged, torch.float64), expected, rtol=FOLD_RTOL, atol=1e-12)


def test_dense_folds_take_the_shortcut_only_where_it_is_the_same_matrix():
    """The spatial-basis fold of [spatial maps, convolution, ...] equals the plain basis push."""
    pool = IndexMap(lambda t: F.adaptive_avg_pool2d(t, 3), (4, 1, 1), (4, 3, 3), injective=False, spatial_only=True)
    conv = _conv((5, 4, 3, 3), (4, 3, 3), 3)
    chain = Chain([pool, conv, Reshape((5, 1, 1), (5,))])
    fast = compose.dense_matrix(chain, "cpu")
    slow = torch.from_numpy(dense_matrix(chain.forward, chain.in_shape))
    torch.testing.assert_close(fast, slow, rtol=FOLD_RTOL, atol=1e-12)


def test_a_composite_without_an_exact_form_is_dense_within_the_budget_or_refused_naming_it(monkeypatch):
    model = _seeded(lambda: Op(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1),
                                             nn.Upsample(scale_factor=2, mode="bilinear")),
                               head=nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(3 * 144, 2))))
    net = lower_module(model, (3, 6, 6))
    x = _inputs((3, 6, 6))
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=FORWARD_RTOL * float(model(x).abs().max()))
    with pytest.raises(ValueError, match=r"conv2d -> upsample_bilinear2d; modules 'stem', 'op\.0', 'op\.1'.*"
                                         r"108 inputs x 432 outputs.*memory_budget=1,000"):
        lower_module(model, (3, 6, 6), memory_budget=1000)
    # and where the fold would take too long to compute (a limit read at every fold)
    cost = compose.dense_work(Chain([_conv((3, 3, 3, 3), (3, 6, 6), 0, padding=1), _bilinear((3, 6, 6))]))
    monkeypatch.setattr(compose, "DENSE_WORK_LIMIT", cost // 2)
    with pytest.raises(ValueError, match=r"432 outputs\) would take about .* multiply-adds.*DENSE_WORK_LIMIT"):
        lower_module(model, (3, 6, 6))


# --------------------------------------------------------------------------- z+ against written-out references
def _relevance_check(ours: torch.Tensor, reference: np.ndarray) -> None:
    assert np.abs(ours.numpy() - reference).max() <= RELEVANCE_RTOL * np.abs(reference).max()


class UpConv(nn.Module):
    """conv, ReLU, nearest x2, conv, ReLU, 1x1 conv: a segmentation map (2, 8, 8)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1, stride=2)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.c = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(F.interpolate(F.relu(self.a(x)), scale_factor=2))))


class TransposedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.t = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
        self.c = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.c(F.relu(self.t(F.relu(self.a(x)))))


class Shuffled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(F.relu(self.b(_shuffle(F.relu(self.a(x))))).flatten(1))


class Relu6Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(F.relu6(self.a(x) * 8).flatten(1))


@pytest.mark.parametrize("make, output", [
    pytest.param(UpConv, (1, 3, 5), id="upsampling then a convolution, at a pixel"),
    pytest.param(UpConv, "mask", id="upsampling then a convolution, over a mask"),
    pytest.param(TransposedConv, (0, 6, 2), id="a transposed convolution"),
    pytest.param(Shuffled, 2, id="a channel shuffle"),
])  # fmt: skip
def test_zplus_on_new_operators_equals_a_slow_reference(make, output):
    model = _seeded(make, seed=2)
    x = _inputs((2, 8, 8), n=2, seed=5)
    net = dtd.ReLUNetwork.from_module(model, (2, 8, 8))
    mask = None
    if output == "mask":
        mask = torch.zeros(net.output_shape, dtype=torch.float64)
        mask[1, 2:6, 3:7] = 1.0
        output = mask
    dec = dtd.train_free(net, x, rule="z+", output=output)
    m = model
    if isinstance(m, UpConv):
        layers = [(lambda v: linear_part(m.a)(v), (2, 8, 8)),
                  (lambda v: linear_part(m.b)(F.interpolate(v, scale_factor=2)), (3, 4, 4)),
                  (lambda v: linear_part(m.c)(v), (3, 8, 8))]
        acts = [lambda v: F.relu(m.a(v)), lambda v: F.relu(m.b(F.interpolate(v, scale_factor=2))), m.c]
    elif isinstance(m, TransposedConv):
        layers = [(lambda v: linear_part(m.a)(v), (2, 8, 8)), (lambda v: linear_part(m.t)(v), (3, 4, 4)),
                  (lambda v: linear_part(m.c)(v), (2, 8, 8))]
        acts = [lambda v: F.relu(m.a(v)), lambda v: F.relu(m.t(v)), m.c]
    else:
        layers = [(lambda v: linear_part(m.a)(v), (2, 8, 8)), (lambda v: linear_part(m.b)(_shuffle(v)), (4, 8, 8)),
                  (lambda v: linear_part(m.fc)(v.flatten(1)), (4, 8, 8))]
        acts = [lambda v: F.relu(m.a(v)), lambda v: F.relu(m.b(_shuffle(v))), lambda v: m.fc(v.flatten(1))]
    matrices = [dense_matrix(f, shape) for f, shape in layers]
    for n in range(x.shape[0]):
        with torch.no_grad():
            h = [x[n : n + 1]]
            for act in acts:
                h.append(act(h[-1]))
        y = h[-1].flatten().numpy()
        if mask is None:
            R = np.zeros_like(y)
            R[output if isinstance(output, int) else net.check_output(output)] = y[net.check_output(output)]
            top = matrices[2]
        else:
            w = mask.flatten().numpy()
            R = np.array([float(w @ y)])
            top = w[None, :] @ matrices[2]  # the weights absorbed into the top layer: one neuron
        R = zplus_step(h[2].flatten().numpy(), top, R)
        R = zplus_step(h[1].flatten().numpy(), matrices[1], R)
        R = zplus_step(h[0].flatten().numpy(), matrices[0], R)
        _relevance_check(dec.relevance[n].flatten(), R)


def test_zplus_through_relu6_units_equals_a_slow_reference():
    """The layer after a ReLU6 reads [relu(z), relu(z - 6)] with [W, -W]; the ReLU6's layer computes [z, z - 6]."""
    model = _seeded(Relu6Net, seed=3)
    x = _inputs((2, 8, 8), n=3, seed=6)
    net = dtd.ReLUNetwork.from_module(model, (2, 8, 8))
    dec = dtd.train_free(net, x, rule="z+", output=1)
    A = dense_matrix(lambda v: 8 * linear_part(model.a)(v), (2, 8, 8))
    W = dense_matrix(lambda v: linear_part(model.fc)(v.flatten(1)), (3, 8, 8))
    for n in range(x.shape[0]):
        with torch.no_grad():
            z = (8 * model.a(x[n : n + 1])).flatten().numpy()
        units = np.concatenate([np.maximum(z, 0), np.maximum(z - 6, 0)])
        y = np.hstack([W, -W]) @ units + model.fc.bias.detach().numpy()
        R = np.zeros(3)
        R[1] = y[1]
        R_units = zplus_step(units, np.hstack([W, -W]), R)
        R_x = zplus_step(x[n].flatten().numpy(), np.vstack([A, A]), R_units)
        _relevance_check(dec.relevance[n].flatten(), R_x)
        assert abs(float(dec.output_value[n]) - float(model(x[n : n + 1])[0, 1])) <= 1e-12


# --------------------------------------------------------------------------- outputs
def test_an_index_tuple_is_its_flat_index_and_weights_are_the_top_layer():
    model = _seeded(UpConv, seed=1)
    net = dtd.ReLUNetwork.from_module(model, (2, 8, 8))
    x = _inputs((2, 8, 8), n=3, seed=2)
    assert net.output_shape == (2, 8, 8)
    by_tuple = dtd.train_free(net, x, output=(1, 2, 3))
    by_int = dtd.train_free(net, x, output=1 * 64 + 2 * 8 + 3)
    assert torch.equal(by_tuple.relevance, by_int.relevance) and by_tuple.output == by_int.output == 83
    one_hot = torch.zeros(2, 8, 8, dtype=torch.float64)
    one_hot[1, 2, 3] = 1.0
    by_weights = dtd.train_free(net, x, output=one_hot)
    torch.testing.assert_close(by_weights.relevance, by_int.relevance, rtol=RELEVANCE_RTOL, atol=1e-14)
    assert torch.equal(by_weights.output, one_hot) and by_weights.layers[-1].upper_relevance.shape == (3, 1)
    with torch.no_grad():
        torch.testing.assert_close(by_weights.output_value, model(x)[:, 1, 2, 3], rtol=1e-12, atol=0)
    mask = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    masked = dtd.train_free(net, x, output=mask)
    with torch.no_grad():
        torch.testing.assert_close(masked.output_value, (model(x) * mask).sum((1, 2, 3)), rtol=1e-12, atol=0)
    from properties.measure.checks import root_outcomes

    outcomes = root_outcomes(net, masked, layer=2)  # judged on the network of sum(w * y), as train_free explained it
    assert bool(outcomes.zero_output[outcomes.valid & outcomes.carries_relevance].all())


@pytest.mark.parametrize("output, exception, message", [
    ((1, 2), ValueError, r"output=\(1, 2\) has 2 indices but the network's output per point has shape \(2, 8, 8\)"),
    ((1, 8, 0), ValueError, r"index 8 of dimension 1 is outside \[0, 7\]"),
    ("predicted", ValueError, r"'predicted' takes each point's largest class.*\(2, 8, 8\).*index tuple"),
    (torch.zeros(2, 8, 8, dtype=torch.float64), ValueError, "all zero"),
    (torch.ones(3, 8, 8, dtype=torch.float64), ValueError,
     r"weights must have the per-point output's shape \(2, 8, 8\)"),
])  # fmt: skip
def test_outputs_that_name_nothing_are_refused(output, exception, message):
    net = dtd.ReLUNetwork.from_module(_seeded(UpConv), (2, 8, 8))
    with pytest.raises(exception, match=message):
        dtd.train_free(net, _inputs((2, 8, 8)), output=output)


def test_weights_on_an_mlp_with_a_final_relu_add_a_layer():
    net = dtd.ReLUNetwork.random([4, 5, 3], seed=0).double()
    x = net.sample_inputs(4, output=0, min_output=0.05, seed=1)
    w = torch.tensor([1.0, 0.5, -0.25], dtype=torch.float64)
    explained = net.explaining(w)
    assert explained.n_layers == 3 and not explained.final_relu
    with torch.no_grad():
        torch.testing.assert_close(explained(x)[:, 0], (net(x) * w).sum(1), rtol=1e-14, atol=0)
    dec = dtd.train_free(net, x, output=w)
    assert torch.equal(dec.output, w) and dec.layers[-1].upper_relevance.shape == (4, 1)


# --------------------------------------------------------------------------- selecting among several outputs
class Several(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        h = F.relu(self.conv(x))
        logits, seg = self.fc(h.mean((2, 3))), -h
        return {"logits": logits, "seg": seg} if self.kind == "dict" else (seg, logits)


def test_select_picks_an_output_by_key_index_path_or_callable():
    for kind, selects in (("dict", ["logits", ("logits",), lambda out: out["logits"]]),
                          ("tuple", [1, (1,), lambda out: out[1]])):
        model = _seeded(lambda kind=kind: Several(kind))
        x = _inputs((2, 5, 5))
        for select in selects:
            net = dtd.ReLUNetwork.from_module(model, (2, 5, 5), select=select)
            with torch.no_grad():
                expected = model(x)["logits" if kind == "dict" else 1]
                torch.testing.assert_close(net(x), expected, rtol=0, atol=FORWARD_RTOL * float(expected.abs().max()))
    # a callable that computes is exported with the model: its arithmetic is lowered too
    model = _seeded(lambda: Several("dict"))
    net = dtd.ReLUNetwork.from_module(model, (2, 5, 5), select=lambda out: out["logits"][:, 1:] * 2)
    with torch.no_grad():
        torch.testing.assert_close(net(_inputs((2, 5, 5))), model(_inputs((2, 5, 5)))["logits"][:, 1:] * 2, rtol=1e-12,
                                   atol=1e-14)
    assert net.layer_names()[0] == "conv"  # the wrapper's name is not in the layer names


def test_select_errors_list_what_there_is():
    model = _seeded(lambda: Several("dict"))
    with pytest.raises(ValueError,
                       match=r"returns 2 tensors, dict\('logits': \(4,\), 'seg': \(3, 5, 5\)\).*select='logits'"):
        dtd.ReLUNetwork.from_module(model, (2, 5, 5))
    with pytest.raises(ValueError, match=r"select='out' names no output of the model, which returns dict\('logits'"):
        dtd.ReLUNetwork.from_module(model, (2, 5, 5), select="out")


def test_an_exported_program_is_lowered_as_it_is():
    model = _seeded(lambda: Several("tuple"))
    program = torch.export.export(model, (torch.zeros(2, 2, 5, 5, dtype=torch.float64),))
    net = dtd.ReLUNetwork.from_module(program, select=1)
    assert net.input_shape == (2, 5, 5)
    x = _inputs((2, 5, 5))
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x)[1], rtol=0, atol=1e-12)


def test_lowering_changes_nothing_of_the_model_nor_torchs_state():
    model = _seeded(UpConv)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    dtd.ReLUNetwork.from_module(model, (2, 8, 8))
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model.training and all(p.requires_grad for p in model.parameters())
    copy.deepcopy(model)  # still an ordinary module


@pytest.mark.parametrize("relu", [
    pytest.param(F.relu, id="F.relu"), pytest.param(torch.relu, id="torch.relu"),
    pytest.param(lambda z: z.clamp(min=0), id="clamp(min=0)"),
    pytest.param(lambda z: torch.clamp_min(z, 0), id="clamp_min"),
    pytest.param(lambda z: torch.maximum(z, torch.zeros_like(z)), id="maximum(z, 0)"),
    pytest.param(lambda z: z.relu_(), id="relu_"), pytest.param(nn.ReLU(inplace=True), id="nn.ReLU(inplace=True)"),
])  # fmt: skip
def test_every_spelling_of_relu_is_one_relu_node(relu):
    model = _seeded(lambda: nn.Sequential(nn.Linear(3, 4), Fn(relu), nn.Linear(4, 2)))
    net = lower_module(model, (3,))
    relus = [node for node in net.nodes if isinstance(node, dtd.graph.ReLUNode)]
    assert net.n_layers == 2 and len(relus) == 1 and relus[0].shape == (4,)


def test_a_module_called_twice_is_two_layers_of_the_same_weights():
    shared = nn.Linear(4, 4)
    model = _seeded(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(),
                                          nn.Linear(4, 2)))
    net = lower_module(model, (3,))
    assert net.n_layers == 4 and net.layer_names()[1:3] == ["2", "4"]  # the module's names at its two call sites
    assert torch.equal(net.weight(1), net.weight(2))


def test_a_boolean_mask_is_told_to_be_weights():
    net = dtd.ReLUNetwork.from_module(_seeded(UpConv), (2, 8, 8))
    labels = torch.zeros(net.output_shape, dtype=torch.bool)
    labels[1, 2:5, 2:5] = True
    with pytest.raises(TypeError, match=r"must be floating point, e\.g\. output=mask\.float\(\)"):
        dtd.train_free(net, _inputs((2, 8, 8)), output=labels)


def test_a_dense_lowering_keeps_the_output_shape_for_index_tuples():
    model = _seeded(lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 1)))
    net = dtd.ReLUNetwork.from_sequential(model, (1, 4, 4))
    assert isinstance(net, dtd.ReLUNetwork) and net.output_shape == (2, 4, 4)
    assert net.subnetwork(1).output_shape == (2, 4, 4)
    x = _inputs((1, 4, 4))
    dec = dtd.train_free(net, x, output=(1, 2, 3))
    with torch.no_grad():
        torch.testing.assert_close(dec.output_value, model(x)[:, 1, 2, 3], rtol=1e-12, atol=0)
