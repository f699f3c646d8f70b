"""The affine operations of an exported graph (see :mod:`dtd.lowering.aten`): each appends an operator to the
linear value it reads, or combines linear values and constants."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F

from ..operators import Conv, Dense, Embed, IndexMap, Interpolation, Narrow, Operator, Pooling, Reshape, Scale
from .aten import (
    Args,
    aten_operation,
    check_batch,
    f64,
    graph_dim,
    handles,
    index_map,
    input_value,
    module_of,
    number_or_const,
    shape_of,
    tup,
    where,
)
from .build import Builder, Lin, LinBranch, Refused, Value, is_value, per_point
from .capture import BATCH, operation_name
from .refusals import training_mode

__all__ = ["axis_matrices"]  # and the handlers, which register themselves in dtd.lowering.aten.HANDLERS


# --------------------------------------------------------------------------- reshapes and index maps
@handles("affine", "view", "_unsafe_view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "alias", "clone",
          "contiguous", "detach", "lift_fresh_copy", "_reshape_alias", "view_copy")
def _reshape(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    x = input_value(b, node, a["self"] if "self" in a else a["input"])
    check_batch(b, node, node.meta["val"].shape)
    out = shape_of(node)
    if out == tuple(x.shape):
        return x
    return b.apply(x, Reshape(x.shape, out))


@handles("affine", "expand")
def _expand(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    size = list(a["size"])
    if int(size[0]) not in (BATCH, -1) or len(size) != len(x.shape) + 1:
        raise Refused(f"{where(b, node)} broadcasts along the batch dimension or adds leading dimensions")
    return b.expand(x, shape_of(node), where(b, node))


@handles("affine", "permute")
def _permute(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    x = input_value(b, node, a["self"])
    rank = len(x.shape) + 1
    dims = [int(d) % rank for d in a["dims"]]
    if dims[0] != 0:
        raise Refused(f"{where(b, node)} moves the batch dimension; DTD explains each point on its own")
    if dims == list(range(rank)):
        return x
    inverse = [dims.index(i) for i in range(rank)]
    return index_map(b, node, x, lambda t, d=tuple(dims): t.permute(d), injective=True,
                     spatial_only=rank > 2 and dims[1] == 1,
                     transpose_function=lambda t, d=tuple(inverse): t.permute(d))


@handles("affine", "transpose")
def _transpose(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    x = input_value(b, node, a["self"])
    rank = len(x.shape) + 1
    d0, d1 = graph_dim(b, node, a["dim0"], rank), graph_dim(b, node, a["dim1"], rank)
    if d0 == d1:
        return x
    dims = list(range(rank))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return index_map(b, node, x, lambda t, d=tuple(dims): t.permute(d), injective=True,
                      spatial_only=1 not in (d0, d1), transpose_function=lambda t, d=tuple(dims): t.permute(d))


@handles("affine", "t", "numpy_T")
def _t(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    raise Refused(f"{where(b, node)} transposes a (batch, features) matrix, moving the batch dimension")


def _slice_bounds(start: int | None, end: int | None, n: int) -> tuple[int, int]:
    start = 0 if start is None else int(start)
    end = n if end is None else int(end)
    start = max(0, min(n, start + n if start < 0 else start))
    end = max(start, min(n, end + n if end < 0 else end))
    return start, end


@handles("affine", "slice")
def _slice(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    x = input_value(b, node, a["self"])
    rank = len(x.shape) + 1
    d = graph_dim(b, node, a["dim"], rank)
    n = x.shape[d - 1]
    start, end = _slice_bounds(a["start"], a["end"], n)
    step = int(a["step"])
    if step == 1:
        if start == 0 and end == n:
            return x
        return b.apply(x, Narrow(x.shape, d - 1, start, end - start))
    index = tuple([slice(None)] * d + [slice(start, end, step)])
    return index_map(b, node, x, lambda t, i=index: t[i], injective=True, spatial_only=d > 1, channel_only=d == 1)


@handles("affine", "narrow")
def _narrow(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    d = graph_dim(b, node, a["dim"], len(x.shape) + 1)
    start = int(a["start"]) % x.shape[d - 1] if int(a["start"]) < 0 else int(a["start"])
    return b.apply(x, Narrow(x.shape, d - 1, start, int(a["length"])))


@handles("affine", "select")
def _select(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    d = graph_dim(b, node, a["dim"], len(x.shape) + 1)
    index = int(a["index"]) % x.shape[d - 1]
    narrow = Narrow(x.shape, d - 1, index, 1)
    return b.apply(b.apply(x, narrow), Reshape(narrow.out_shape, shape_of(node)))


def _split(b: Builder, node: torch.fx.Node, x: Value, dim: int, sizes: Sequence[int]) -> list[Lin]:
    d = graph_dim(b, node, dim, len(x.shape) + 1)
    parts, start = [], 0
    for size in sizes:
        parts.append(b.apply(x, Narrow(x.shape, d - 1, start, size)))
        start += size
    return parts


@handles("affine", "split", "unsafe_split")
def _split_tensor(b: Builder, node: torch.fx.Node, a: Args) -> list[Lin]:
    x = input_value(b, node, a["self"])
    d = int(a["dim"]) % (len(x.shape) + 1)
    n, size = x.shape[d - 1], int(a["split_size"])
    return _split(b, node, x, a["dim"], [min(size, n - s) for s in range(0, n, size)])


@handles("affine", "split_with_sizes", "unsafe_split_with_sizes", "split_copy")
def _split_sizes(b: Builder, node: torch.fx.Node, a: Args) -> list[Lin]:
    x = input_value(b, node, a["self"])
    return _split(b, node, x, a["dim"], [int(s) for s in a["split_sizes"]])


@handles("affine", "chunk")
def _chunk(b: Builder, node: torch.fx.Node, a: Args) -> list[Lin]:
    x = input_value(b, node, a["self"])
    return _split(b, node, x, a["dim"], [shape_of(node, i)[int(a["dim"]) % (len(x.shape) + 1) - 1]
                                         for i in range(len(node.meta["val"]))])


@handles("affine", "unbind")
def _unbind(b: Builder, node: torch.fx.Node, a: Args) -> list[Lin]:
    x = input_value(b, node, a["self"])
    d = graph_dim(b, node, a["dim"], len(x.shape) + 1)
    parts = _split(b, node, x, d, [1] * x.shape[d - 1])
    out = tuple(s for i, s in enumerate(x.shape) if i != d - 1)
    return [b.apply(p, Reshape(p.shape, out)) for p in parts]


@handles("affine", "cat", "concat", "concatenate")
def _cat(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    tensors = list(a["tensors"])
    out = shape_of(node)
    rank = len(out) + 1
    d = graph_dim(b, node, a["dim"], rank)
    branches: list[LinBranch] = []
    const, start = torch.zeros(out, dtype=torch.float64, device=b.device), 0
    has_const = False
    sources = cast(Sequence[torch.fx.Node], node.args[0])  # the graph nodes of the tensors
    for t, source in zip(tensors, sources, strict=True):
        part_shape = shape_of(source)
        if math.prod(part_shape) == 0:
            continue
        if is_value(t):
            lin = b.lin(t)
            embed = Embed(part_shape, out, d - 1, start)
            if lin.const is not None:
                const = const + embed.forward(lin.const.unsqueeze(0)).squeeze(0)
                has_const = True
            branches += [(s, ops + (embed,), names + (b.module,)) for s, ops, names in lin.branches]
        else:
            c = per_point(t, part_shape, where(b, node)).to(b.device)
            const = const + Embed(part_shape, out, d - 1, start).forward(c.unsqueeze(0)).squeeze(0)
            has_const = True
        start += part_shape[d - 1]
    return Lin(tuple(branches), const if has_const else None, out)


@handles("affine", "stack")
def _stack(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    tensors = list(a["tensors"])
    out = shape_of(node)
    d = graph_dim(b, node, a["dim"], len(out) + 1)
    part = tuple(s for i, s in enumerate(out) if i != d - 1)
    lifted = tuple(out[:d - 1]) + (1,) + tuple(out[d:])
    parts: list[Lin | torch.Tensor] = []
    for t in tensors:
        if is_value(t):
            parts.append(b.apply(t, Reshape(part, lifted)))
        else:
            parts.append(per_point(t, part, where(b, node)).reshape(lifted))
    branches: list[LinBranch] = []
    const, start = torch.zeros(out, dtype=torch.float64, device=b.device), 0
    for p in parts:
        embed = Embed(lifted, out, d - 1, start)
        if isinstance(p, Lin):
            if p.const is not None:
                const = const + embed.forward(p.const.unsqueeze(0)).squeeze(0)
            branches += [(s, ops + (embed,), names + (b.module,)) for s, ops, names in p.branches]
        else:
            const = const + embed.forward(p.to(b.device).unsqueeze(0)).squeeze(0)
        start += 1
    return Lin(tuple(branches), const, out)


@handles("affine", "flip")
def _flip(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    rank = len(x.shape) + 1
    dims = tuple(graph_dim(b, node, d, rank) for d in a["dims"])
    return index_map(b, node, x, lambda t, d=dims: t.flip(d), injective=True, spatial_only=1 not in dims,
                      transpose_function=lambda t, d=dims: t.flip(d))


@handles("affine", "roll")
def _roll(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    rank = len(x.shape) + 1
    if not a["dims"]:
        raise Refused(f"{where(b, node)} rolls the flattened tensor, batch dimension included")
    dims = tuple(graph_dim(b, node, d, rank) for d in a["dims"])
    shifts = tuple(int(s) for s in a["shifts"])
    back = tuple(-s for s in shifts)
    return index_map(b, node, x, lambda t: t.roll(shifts, dims), injective=True, spatial_only=1 not in dims,
                      transpose_function=lambda t: t.roll(back, dims))


@handles("affine", "repeat", "tile")
def _repeat(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    x = input_value(b, node, a["self"])
    repeats = [int(r) for r in (a["repeats"] if a.get("repeats") is not None else a["dims"])]
    if len(repeats) != len(x.shape) + 1 or repeats[0] != 1:
        raise Refused(f"{where(b, node)} repeats along the batch dimension")
    if all(r == 1 for r in repeats):
        return x
    return index_map(b, node, x, lambda t, r=tuple(repeats): t.repeat(r), injective=False,
                      spatial_only=len(repeats) > 2 and repeats[1] == 1)


@handles("affine", "unfold")
def _unfold(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    """``Tensor.unfold(dim, size, step)``: sliding windows of one axis as a new last axis (an index map)."""
    x = input_value(b, node, a["self"])
    d = graph_dim(b, node, a["dimension"], len(x.shape) + 1)
    size, step = int(a["size"]), int(a["step"])
    return index_map(b, node, x, lambda t, d=d, size=size, step=step: t.unfold(d, size, step), injective=step >= size,
                      spatial_only=d > 1)


@handles("affine", "im2col")
def _im2col(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    """``F.unfold``: every window of a convolution's input as a column (an index map)."""
    x = input_value(b, node, a["self"])
    params = [a["kernel_size"], a["dilation"], a["padding"], a["stride"]]
    overlapping = any(s < k for s, k in zip(a["stride"], a["kernel_size"], strict=True))
    return index_map(b, node, x, lambda t, p=params: F.unfold(t, *p), injective=not overlapping)


@handles("affine", "index_select")
def _index_select(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    index = a["index"]
    if is_value(index):
        raise Refused(f"{where(b, node)} selects with indices computed from the input (data-dependent indexing)")
    d = graph_dim(b, node, a["dim"], len(x.shape) + 1)
    index = index.to(torch.int64)
    unique = index.unique().numel() == index.numel()
    return index_map(b, node, x, lambda t, i=index: t.index_select(d, i), injective=unique, spatial_only=d > 1,
                      channel_only=d == 1)


@handles("affine", "index")
def _index(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    indices = list(a["indices"])
    if any(is_value(i) for i in indices if i is not None):
        raise Refused(f"{where(b, node)} indexes with indices computed from the input (data-dependent indexing), "
                      "which is not a fixed linear map")
    if indices and indices[0] is not None:
        raise Refused(f"{where(b, node)} indexes the batch dimension")
    fixed = [None if i is None else i.to(torch.int64 if i.dtype != torch.bool else torch.bool) for i in indices]
    return index_map(b, node, x, lambda t, i=tuple(fixed): torch.ops.aten.index.Tensor(t, list(i)), injective=False)


@handles("affine", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle")
def _shuffle(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    target = aten_operation(node)
    rest = [v for k, v in a.items() if k != "self"]
    return index_map(b, node, x, lambda t: target(t, *rest), injective=True)


# --------------------------------------------------------------------------- paddings and resampling
_PAD_MODES = {"reflection_pad1d": "reflect", "reflection_pad2d": "reflect", "reflection_pad3d": "reflect",
              "replication_pad1d": "replicate", "replication_pad2d": "replicate", "replication_pad3d": "replicate",
              "_pad_circular": "circular"}


@handles("affine", "pad", "constant_pad_nd", *_PAD_MODES)
def _pad(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    x = input_value(b, node, a["self"])
    name = operation_name(node)
    pad = [int(p) for p in (a["pad"] if a.get("pad") is not None else a["padding"])]
    mode = _PAD_MODES.get(name, a.get("mode") or "constant")
    value = a.get("value") if name == "constant_pad_nd" else (a.get("value") or 0.0)
    value = 0.0 if value is None else float(value)
    rank = len(x.shape) + 1
    if len(pad) // 2 > rank - 1:
        raise Refused(f"{where(b, node)} pads the batch dimension")
    if not any(pad):  # a padding of nothing (TensorFlow-style 'same' padding before a 1x1 convolution): the identity
        return x
    spatial = len(pad) // 2 <= rank - 2
    if mode == "constant":
        injective = True
        function: Callable[..., torch.Tensor] = lambda t, p=tuple(pad): F.pad(t, p)  # noqa: E731
        const_function = None if value == 0.0 else (lambda t, p=tuple(pad), v=value: F.pad(t, p, value=v))
    else:
        injective = False
        function = lambda t, p=tuple(pad), m=mode: F.pad(t, p, mode=m)  # noqa: E731
        const_function = None
    op = IndexMap(function, x.shape, shape_of(node), injective=injective, name=f"pad ({mode})", spatial_only=spatial)
    return b.apply(x, op, const_function=const_function)


def _resample_args(a: Args) -> list[Any]:
    return [v for k, v in a.items() if k not in ("input", "self")]


@handles("affine", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
          "_upsample_nearest_exact2d", "_upsample_nearest_exact3d")
def _nearest(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a.get("input", a.get("self")))
    target, rest = aten_operation(node), _resample_args(a)
    out = shape_of(node)
    spatial_in, spatial_out = x.shape[1:], out[1:]
    scales = None
    if all(o % i == 0 for i, o in zip(spatial_in, spatial_out, strict=True)):
        candidate = tuple(o // i for i, o in zip(spatial_in, spatial_out, strict=True))
        given = a.get("scale_factors")
        if given is None or all(float(s) == float(c) for s, c in zip(given, candidate, strict=True)):
            scales = candidate
    return index_map(b, node, x, lambda t: target(t, *rest),
                     injective=all(o <= i for i, o in zip(spatial_in, spatial_out, strict=True)),
                     spatial_only=True, upsample=scales)


def axis_matrices(function: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...],
                  out_shape: tuple[int, ...]) -> list[tuple[int, torch.Tensor]]:
    """Per spatial axis, the 1-d matrix of a separable resampling, read off ``function`` applied to a thin basis."""
    matrices = []
    spatial = in_shape[1:]
    for axis, n_in in enumerate(spatial):
        view = [1] * len(spatial)
        view[axis] = n_in
        basis = torch.eye(n_in, dtype=torch.float64).reshape((n_in, 1) + tuple(view)).expand((n_in, 1) + tuple(spatial))
        response = function(basis.contiguous())  # (n_in, 1, *spatial_out)
        index: list[int | slice] = [0] * len(spatial)
        index[axis] = slice(None)
        column = response[(slice(None), 0) + tuple(index)]  # (n_in, n_out)
        matrices.append((axis + 1, column.T.contiguous()))
    return matrices


@handles("affine", "upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d", "upsample_bicubic2d",
          "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa")
def _interpolate(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a.get("input", a.get("self")))
    target, rest = aten_operation(node), _resample_args(a)
    out = shape_of(node)

    def base(t: torch.Tensor) -> torch.Tensor:
        return target(t, *rest)

    matrices = axis_matrices(base, x.shape, out)
    op = Interpolation(base, x.shape, out, [(axis, m.to(b.device)) for axis, m in matrices], name=operation_name(node))
    probe = torch.rand((2,) + tuple(x.shape), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    direct, separable = base(probe), Interpolation(None, x.shape, out, matrices).forward(probe)
    signed = any(bool((m < 0).any()) for _, m in matrices)
    if signed or not torch.allclose(direct, separable, rtol=1e-12, atol=1e-12):
        op = Interpolation(base, x.shape, out, [(axis, m.to(b.device)) for axis, m in matrices], signed=True,
                           name=operation_name(node))
    return b.apply(x, op)


# --------------------------------------------------------------------------- pooling, means, sums
_AVG_POOL: dict[int, Callable[..., torch.Tensor]] = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@handles("affine", "avg_pool1d", "avg_pool2d", "avg_pool3d")
def _avg_pool(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    n = int(operation_name(node)[-2])
    kernel = tup(a["kernel_size"], n)
    stride = tup(a["stride"], n) if a["stride"] else kernel
    padding = tup(a["padding"], n)
    ceil_mode, include = bool(a["ceil_mode"]), bool(a["count_include_pad"])
    divisor = a.get("divisor_override")
    kwargs: dict[str, Any] = dict(ceil_mode=ceil_mode, count_include_pad=include)
    if n > 1:
        kwargs["divisor_override"] = divisor

    def base(t: torch.Tensor, k: tuple[int, ...] = kernel, s: tuple[int, ...] = stride, p: tuple[int, ...] = padding,
             kw: dict[str, Any] = kwargs, pool: Callable[..., torch.Tensor] = _AVG_POOL[n]) -> torch.Tensor:
        return pool(t, k, s, p, **kw)

    ones = torch.ones((1,) + tuple(x.shape), dtype=torch.float64)
    average = base(ones)
    # the number of real inputs in each window: a sum pooling of ones (1-d as a 2-d pooling of height 1)
    if n == 1:
        count = F.avg_pool2d(ones.unsqueeze(2), (1,) + kernel, (1,) + stride, (0,) + padding, ceil_mode=ceil_mode,
                             count_include_pad=True, divisor_override=1).squeeze(2)
    else:
        count = _AVG_POOL[n](ones, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=True,
                             divisor_override=1)
    entry = torch.where(count > 0, average / count.clamp_min(1), torch.zeros_like(average)).squeeze(0)
    non_overlapping = all(s >= k for s, k in zip(stride, kernel, strict=True))
    op = Pooling(base, x.shape, tuple(average.shape[1:]), entry.to(b.device), column_sparse=non_overlapping,
                 name=operation_name(node), spatial_only=True)
    return b.apply(x, op)


def _adaptive_windows(n_in: int, n_out: int) -> tuple[torch.Tensor, bool]:
    """Window sizes of adaptive pooling along one dimension (torch's start/end rule), and whether they overlap."""
    starts = [(i * n_in) // n_out for i in range(n_out)]
    ends = [-(-((i + 1) * n_in) // n_out) for i in range(n_out)]
    overlap = any(ends[i] > starts[i + 1] for i in range(n_out - 1))
    return torch.tensor([e - s for s, e in zip(starts, ends, strict=True)], dtype=torch.float64), overlap


_ADAPTIVE_AVG: dict[int, Callable[..., torch.Tensor]] = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d,
                                                          3: F.adaptive_avg_pool3d}


@handles("affine", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d",
         "_adaptive_avg_pool3d")
def _adaptive_avg_pool(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    out = shape_of(node)
    n = len(out) - 1
    size = tuple(out[1:])

    def base(t: torch.Tensor, s: tuple[int, ...] = size,
             pool: Callable[..., torch.Tensor] = _ADAPTIVE_AVG[n]) -> torch.Tensor:
        return pool(t, s)

    windows, overlaps = zip(*(_adaptive_windows(x.shape[1 + i], size[i]) for i in range(n)), strict=True)
    count = windows[0]
    for w in windows[1:]:
        count = count.unsqueeze(-1) * w
    entry = (1.0 / count).to(b.device).expand(out).clone()
    op = Pooling(base, x.shape, out, entry, column_sparse=not any(overlaps), name=operation_name(node),
                 spatial_only=True)
    return b.apply(x, op)


@handles("affine", "mean", "sum")
def _reduce(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    rank = len(x.shape) + 1
    dims_arg = a.get("dim")
    if dims_arg is None or (isinstance(dims_arg, (list, tuple)) and len(dims_arg) == 0):
        raise Refused(f"{where(b, node)} reduces over every dimension, the batch included; give the dimensions "
                      "(e.g. x.mean((2, 3)))")
    given = dims_arg if isinstance(dims_arg, (list, tuple)) else [dims_arg]
    dims = tuple(sorted(graph_dim(b, node, d, rank) for d in given))
    keepdim = bool(a.get("keepdim", False))
    out = shape_of(node)
    count = math.prod(x.shape[d - 1] for d in dims)
    mean = operation_name(node) == "mean"
    if mean:
        base = lambda t, d=dims, k=keepdim: t.mean(d, keepdim=k)  # noqa: E731
    else:
        base = lambda t, d=dims, k=keepdim: t.sum(d, keepdim=k)  # noqa: E731
    entry = torch.full(out, 1.0 / count if mean else 1.0, dtype=torch.float64, device=b.device)
    op = Pooling(base, x.shape, out, entry, column_sparse=True, name=operation_name(node),
                 spatial_only=1 not in dims and keepdim)
    return b.apply(x, op)


# --------------------------------------------------------------------------- maps with parameters
_Ints = int | tuple[int, ...] | list[int]  # one number per spatial axis, or one for all


def _conv(b: Builder, node: torch.fx.Node, x: Value, weight: torch.Tensor | Value, bias: torch.Tensor | Value | None, *,
          stride: _Ints, padding: _Ints | str, dilation: _Ints, groups: int, transposed: bool = False,
          output_padding: _Ints = 0) -> Lin:
    if is_value(weight) or (bias is not None and is_value(bias)):
        raise Refused(f"{where(b, node)} convolves with a kernel computed from the input (a product of activations)")
    weight = f64(weight)
    n = weight.dim() - 2
    ops: list[Operator] = []
    in_shape = tuple(x.shape)
    if isinstance(padding, str):
        kernel = weight.shape[2:]
        dil = tup(dilation, n)
        if padding == "valid":
            padding = (0,) * n
        else:  # "same": torch pads total // 2 before and the rest after
            total = [d * (k - 1) for d, k in zip(dil, kernel, strict=True)]
            if any(t % 2 for t in total):
                pads = []
                for t in reversed(total):
                    pads += [t // 2, t - t // 2]
                pre = IndexMap(lambda t, p=tuple(pads): F.pad(t, p), in_shape,
                               (in_shape[0],) + tuple(s + t for s, t in zip(in_shape[1:], total, strict=True)),
                               injective=True, name="pad (constant)", spatial_only=True)
                ops.append(pre)
                in_shape = pre.out_shape
                padding = (0,) * n
            else:
                padding = tuple(t // 2 for t in total)
    op = Conv(weight.to(b.device), in_shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
              transposed=transposed, output_padding=output_padding)
    ops.append(op)
    value = x
    for o in ops[:-1]:
        value = b.apply(value, o)
    if tuple(op.out_shape) != shape_of(node):
        raise ValueError(f"internal: {where(b, node)} lowered to shape {op.out_shape}, the graph says {shape_of(node)}")
    bias_t = None
    if bias is not None:
        bias_t = f64(bias).reshape((-1,) + (1,) * n).expand(op.out_shape).clone()
    return b.apply(value, op, module_of(b, node), bias=bias_t)


@handles("affine", "conv1d", "conv2d", "conv3d")
def _convnd(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["input"])
    return _conv(b, node, x, a["weight"], a["bias"], stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                 groups=int(a["groups"]))


@handles("affine", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv_transpose(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["input"])
    return _conv(b, node, x, a["weight"], a["bias"], stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                 groups=int(a["groups"]), transposed=True, output_padding=a["output_padding"])


@handles("affine", "convolution", "_convolution")
def _convolution(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["input"])
    return _conv(b, node, x, a["weight"], a["bias"], stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                 groups=int(a["groups"]), transposed=bool(a["transposed"]), output_padding=a["output_padding"])


def _dense(b: Builder, node: torch.fx.Node, x: Value, matrix: torch.Tensor | Value,
           bias: float | torch.Tensor | Value | None) -> Lin:
    """``x @ matrix^T + bias`` along the last axis; ``matrix`` ``(J, D)`` a constant."""
    if is_value(matrix) or (bias is not None and is_value(bias)):
        raise Refused(f"{where(b, node)} multiplies two activations (a product of input-dependent values is not "
                      "piecewise linear: attention, gating)")
    matrix = f64(matrix).to(b.device)
    shape = tuple(x.shape)
    op = Dense(matrix, shape if len(shape) > 1 else None)
    bias_t = None if bias is None else per_point(bias, op.out_shape, where(b, node)).to(b.device)
    return b.apply(x, op, module_of(b, node), bias=bias_t)


@handles("affine", "linear")
def _linear(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    return _dense(b, node, input_value(b, node, a["input"]), a["weight"], a["bias"])


@handles("affine", "addmm")
def _addmm(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["mat1"], "first matrix")
    alpha, beta = float(a["alpha"]), float(a["beta"])
    matrix = a["mat2"]
    if is_value(matrix):
        return _dense(b, node, x, matrix, None)  # refused there
    bias = None if is_value(a["self"]) else f64(a["self"]) * beta
    if is_value(a["self"]):
        raise Refused(f"{where(b, node)} adds an activation as addmm's bias")
    return _dense(b, node, x, f64(matrix).T * alpha, bias)


@handles("affine", "mm", "matmul")
def _mm(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    left, right = a["self"], a["mat2"] if "mat2" in a else a["other"]
    if not is_value(left):
        raise Refused(f"{where(b, node)} multiplies a constant matrix from the left of the activations")
    if is_value(right):
        return _dense(b, node, left, right, None)  # refused there
    right = f64(right)
    if right.dim() != 2:
        raise Refused(f"{where(b, node)} multiplies activations with a {right.dim()}-d constant (a batched matmul)")
    return _dense(b, node, left, right.T, None)


def _batch_norm_eval(b: Builder, node: torch.fx.Node, x: Value, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     mean: torch.Tensor | None, var: torch.Tensor | None, eps: float) -> Lin:
    if mean is None or var is None:
        raise ValueError(f"{where(b, node)} has no running statistics (track_running_stats=False), "
                         "so it normalises with each batch's own statistics even in eval mode: "
                         "not an affine map; train it with running statistics")
    scale = 1.0 / torch.sqrt(f64(var) + float(eps))
    if weight is not None:
        scale = scale * f64(weight)
    shift = -f64(mean) * scale
    if bias is not None:
        shift = shift + f64(bias)
    shape = tuple(x.shape)
    view = (-1,) + (1,) * (len(shape) - 1)
    out = b.apply(x, Scale(scale.to(b.device), shape), module_of(b, node),
                  bias=shift.reshape(view).expand(shape).clone())
    return out


@handles("affine", "_native_batch_norm_legit_no_training")
def _bn_eval(b: Builder, node: torch.fx.Node, a: Args) -> tuple[Lin, None, None]:
    x = input_value(b, node, a["input"])
    out = _batch_norm_eval(b, node, x, a["weight"], a["bias"], a["running_mean"], a["running_var"], a["eps"])
    return (out, None, None)


@handles("affine", "batch_norm", "native_batch_norm", "_native_batch_norm_legit_functional", "_native_batch_norm_legit")
def _bn(b: Builder, node: torch.fx.Node, a: Args) -> Lin | tuple[Lin | None, ...]:
    x = input_value(b, node, a["input"])
    if a.get("training"):
        raise training_mode(b.captured, node)
    out = _batch_norm_eval(b, node, x, a["weight"], a["bias"], a["running_mean"], a["running_var"], a["eps"])
    n_outputs = len(aten_operation(node)._schema.returns)
    return out if n_outputs == 1 else (out,) + (None,) * (n_outputs - 1)


# --------------------------------------------------------------------------- arithmetic
@handles("affine", "add", "sub", "rsub")
def _add(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    name = operation_name(node)
    left, right = a["self"], a["other"]
    alpha = float(a.get("alpha", 1) if a.get("alpha") is not None else 1)
    if name == "rsub":
        left, right = right, left
    sign = -alpha if name in ("sub", "rsub") else alpha
    out = shape_of(node)
    if is_value(right):
        right = right if sign == 1.0 else b.scale(right, sign)
    else:
        right = number_or_const(right) * sign
    left = left if is_value(left) else number_or_const(left)
    return b.add(left, right, where(b, node), out)


@handles("affine", "neg")
def _neg(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    return b.scale(input_value(b, node, a["self"]), -1.0)


def _multiply(b: Builder, node: torch.fx.Node, value: Value, factor: float | torch.Tensor, out: tuple[int, ...]) -> Lin:
    if tuple(value.shape) != tuple(out):
        value = b.expand(value, out, where(b, node))
    if not isinstance(factor, torch.Tensor):
        return b.scale(value, float(factor))
    f = f64(factor)
    if f.numel() == 1:
        return b.scale(value, float(f.reshape(())))
    full = per_point(f, out, where(b, node))
    channel = full.reshape(out[0], -1)[:, :1] if len(out) > 0 else None
    if channel is not None and bool((full.reshape(out[0], -1) == channel).all()):
        return b.scale(value, channel.reshape(-1))
    return b.scale(value, full)


@handles("affine", "mul")
def _mul(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    left, right = a["self"], a["other"]
    if is_value(left) and is_value(right):
        raise Refused(f"{where(b, node)} multiplies two activations (a product of input-dependent values is not "
                      "piecewise linear: gating, squeeze-and-excitation, attention)")
    value, factor = (left, right) if is_value(left) else (right, left)
    return _multiply(b, node, value, factor, shape_of(node))


@handles("affine", "div")
def _div(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    left, right = a["self"], a["other"]
    if a.get("rounding_mode") is not None:
        raise Refused(f"{where(b, node)} divides with rounding_mode={a['rounding_mode']!r}, which is not linear")
    if is_value(right):
        raise Refused(f"{where(b, node)} divides by an activation (not piecewise linear)")
    value = input_value(b, node, left)
    factor = 1.0 / right if not isinstance(right, torch.Tensor) else 1.0 / f64(right)
    return _multiply(b, node, value, factor, shape_of(node))


@handles("affine", "where")
def _where_op(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    condition, first, second = a["condition"], a["self"], a["other"]
    if is_value(condition):
        raise Refused(f"{where(b, node)} chooses with a condition computed from the input (a discontinuous, data-"
                      "dependent selection)")
    out = shape_of(node)
    mask = per_point(condition.to(torch.float64), out, where(b, node))
    terms: list[Lin | torch.Tensor] = []
    for v, m in ((first, mask), (second, 1.0 - mask)):
        if is_value(v):
            terms.append(_multiply(b, node, v, m, out))
        else:
            terms.append(per_point(v, out, where(b, node)) * m)
    return b.add(terms[0], terms[1], where(b, node), out)


@handles("affine", "masked_fill")
def _masked_fill(b: Builder, node: torch.fx.Node, a: Args) -> Lin:
    x = input_value(b, node, a["self"])
    mask, fill = a["mask"], a["value"]
    if is_value(mask) or is_value(fill):
        raise Refused(f"{where(b, node)} masks with a mask computed from the input (data-dependent)")
    out = shape_of(node)
    m = per_point(mask.to(torch.float64), out, where(b, node))
    return b.add(_multiply(b, node, x, 1.0 - m, out), per_point(fill, out, where(b, node)) * m, where(b, node), out)


@handles("affine", "zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full",
         "new_empty")
def _like(b: Builder, node: torch.fx.Node, a: Args) -> torch.Tensor:
    out = shape_of(node)
    name = operation_name(node)
    fill = {"zeros_like": 0.0, "ones_like": 1.0, "empty_like": 0.0, "new_zeros": 0.0, "new_ones": 1.0,
            "new_empty": 0.0}.get(name)
    if fill is None:
        fill = float(a["fill_value"])
    return torch.full((1,) + out, fill, dtype=torch.float64, device=b.device)


@handles("affine", "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
def _dropout(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    if a.get("train"):
        raise training_mode(b.captured, node)
    return input_value(b, node, a["input"])


@handles("affine", "native_dropout")
def _native_dropout(b: Builder, node: torch.fx.Node, a: Args) -> tuple[Value, None]:
    if a.get("train") is None or a.get("train"):
        raise training_mode(b.captured, node)
    return (input_value(b, node, a["input"]), None)


@handles("affine", "_to_copy", "to", "type_as")
def _to_copy(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    x = input_value(b, node, a["self"])
    dtype = node.meta["val"].dtype
    if dtype != b.captured.dtype:
        raise Refused(f"{where(b, node)} converts activations to {dtype} (the model computes in {b.captured.dtype}); "
                      "DTD lowers a model that computes in one floating dtype")
    return x


