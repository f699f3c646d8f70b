"""The affine map between two non-linearities as operators whose modified forms are exact.

A DTD layer's branch is the chain of linear maps an activation passes
through before the next non-linearity (a convolution, a batch norm, an
upsampling, a slice of a concatenation, ...).  DTD's rules need that
composite's element-wise modified matrices (``W+``, ``W-``, ``W*W``, its 0/1
structure), which are the chain of the parts' modified maps only when every
entry of the composite is a single product of the parts' entries
(:meth:`dtd.operators.Chain.exact_modifications`).  :func:`simplify` rewrites
a chain into that form where the composite has one, exactly (every rewrite
computes the composite's entries in float64):

* a per-channel or uniform scale (batch norm, a multiplication by a number,
  the sign of a leaky ReLU's negative unit) is multiplied into the
  convolution or Linear beside it, moving past maps that act on the spatial
  axes only (a uniform factor past any map);
* a channel slice of a concatenation read by a convolution is the
  convolution's kernel restricted to those input channels;
* two convolutions of which one is pointwise (1x1, stride 1, no padding) are
  one convolution with the product kernel;
* a nearest upsampling by integer factors followed by a convolution (stride
  1, dilation 1, zero padding ``p <= k - 1``) is one transposed convolution
  with stride ``s``, kernel ``k + s - 1`` (each tap the sum of the kernel taps
  that read the same input) and padding ``k - 1 - p``.

What still has no exact operator form is folded into one dense matrix
(:func:`dense_chain`) when it fits ``memory_budget``; otherwise the lowering
refuses it, naming the modules and the size.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..graph import operator_matrix
from ..operators import (
    Chain,
    Conv,
    Dense,
    Embed,
    IndexMap,
    Interpolation,
    Narrow,
    Operator,
    Pooling,
    Reshape,
    Scale,
    Zero,
)

__all__ = ["DENSE_WORK_LIMIT", "simplify", "merge_convolutions", "dense_chain", "dense_matrix", "dense_bytes",
           "dense_work", "work",
           "describe_ops", "size_text"]


def describe_ops(ops: Sequence[Operator]) -> str:
    """The chain's primitives by kind, e.g. ``'conv2d -> upsample_bilinear2d'``."""
    names = []
    for op in ops:
        if isinstance(op, Conv):
            names.append(f"conv_transpose{op.dim}d" if op.transposed else f"conv{op.dim}d")
        elif isinstance(op, Dense):
            names.append("linear")
        elif isinstance(op, Scale):
            names.append("scale")
        elif isinstance(op, (Pooling, Interpolation, IndexMap)):
            names.append(op.name or type(op).__name__.lower())
        elif isinstance(op, (Reshape, Embed, Narrow)):
            continue
        else:
            names.append(type(op).__name__.lower())
    return " -> ".join(names) if names else "reshape"


# --------------------------------------------------------------------------- scales
def _scale_out_channels(conv: Conv, scale: torch.Tensor) -> Conv:
    """``conv`` followed by a per-output-channel scale, as one convolution."""
    w = conv.weight
    if not conv.transposed:
        return conv._with(w * scale.reshape((-1,) + (1,) * (w.dim() - 1)))
    # transposed: weight (C_in, C_out / g, ...): output channel g * (C_out / g) + o
    groups = conv.groups
    c_in, out_per_group = w.shape[:2]
    s = (
        scale.reshape(groups, 1, out_per_group)
        .expand(groups, c_in // groups, out_per_group)
        .reshape(c_in, out_per_group)
    )
    return conv._with(w * s.reshape(s.shape + (1,) * (w.dim() - 2)))


def _scale_in_channels(conv: Conv, scale: torch.Tensor) -> Conv:
    """A per-input-channel scale followed by ``conv``, as one convolution."""
    w = conv.weight
    if conv.transposed:  # weight (C_in, C_out / g, ...)
        return conv._with(w * scale.reshape((-1,) + (1,) * (w.dim() - 1)))
    groups = conv.groups
    out_c, in_per_group = w.shape[:2]
    s = scale.reshape(groups, in_per_group).repeat_interleave(out_c // groups, dim=0)  # (O, I/g)
    return conv._with(w * s.reshape(s.shape + (1,) * (w.dim() - 2)))


def _fold_scale(ops: list, i: int) -> bool:
    """Fold the :class:`Scale` at ``ops[i]`` into a neighbouring weight where
    that is exact; True if the chain changed."""
    op = ops[i]
    before = ops[i - 1] if i > 0 else None
    if isinstance(before, Conv):
        ops[i - 1 : i + 1] = [_scale_out_channels(before, op.scale)]
        return True
    if isinstance(before, Dense) and before.flat and len(op.in_shape) == 1:
        ops[i - 1 : i + 1] = [before._with(before.weight * op.scale.unsqueeze(1))]
        return True
    after = ops[i + 1] if i + 1 < len(ops) else None
    if isinstance(after, Conv):
        ops[i : i + 2] = [_scale_in_channels(after, op.scale)]
        return True
    j = i + 1
    while j < len(ops) and isinstance(ops[j], Reshape):
        j += 1
    after = ops[j] if j < len(ops) else None
    if isinstance(after, Dense) and after.flat:
        flat = op.scale.reshape((-1,) + (1,) * (len(op.in_shape) - 1)).expand(op.in_shape).reshape(-1)
        ops[j] = after._with(after.weight * flat.unsqueeze(0))
        del ops[i]  # the reshapes between keep their shapes (the scale's shape is the first one's input)
        return True
    signed = [k for k, other in enumerate(ops) if isinstance(other, (Conv, Dense))]
    if op.uniform and signed:  # a number commutes with every linear map: into the nearest weight
        k = min(signed, key=lambda k: abs(k - i))
        target = ops[k]
        ops[k] = target._with(target.weight * op.scale[0])
        del ops[i]
        return True
    if op.uniform and i + 1 < len(ops) and isinstance(ops[i + 1], Scale):  # two numbers: one
        ops[i : i + 2] = [Scale(ops[i + 1].scale * op.scale[0], ops[i + 1].in_shape)]
        return True
    # a per-channel scale after a channel slice or concatenation part: the scale of those channels, before it
    if isinstance(before, Embed) and before.dim == 0 and left_weight(ops, i):
        ops[i - 1 : i + 1] = [Scale(op.scale[before.start : before.start + before.in_shape[0]], before.in_shape),
                              before]
        return True
    if isinstance(before, Narrow) and before.dim == 0 and left_weight(ops, i):
        full = torch.ones(before.in_shape[0], dtype=op.scale.dtype, device=op.scale.device)
        full[before.start : before.start + before.length] = op.scale
        ops[i - 1 : i + 1] = [Scale(full, before.in_shape), before]
        return True
    # a per-channel scale commutes with maps of the spatial axes only: move it towards a weight
    left = [k for k in signed if k < i]
    right = [k for k in signed if k > i]
    if left and left[-1] < i - 1 and all(ops[k].spatial_only for k in range(left[-1] + 1, i)):
        k = i - 1
        ops[k], ops[i] = Scale(op.scale, ops[k].in_shape), ops[k]
        return True
    if right and right[0] > i + 1 and all(ops[k].spatial_only for k in range(i + 1, right[0])):
        k = i + 1
        ops[i], ops[k] = ops[k], Scale(op.scale, ops[k].out_shape)
        return True
    return False


def left_weight(ops: list, i: int) -> bool:
    """Whether a convolution or Linear stands left of position ``i`` with only channel slices, concatenation parts
    and maps of the spatial axes between (so a per-channel scale can travel to it)."""
    for k in range(i - 1, -1, -1):
        if isinstance(ops[k], (Conv, Dense)):
            return True
        if not (ops[k].spatial_only or (isinstance(ops[k], (Embed, Narrow)) and ops[k].dim == 0)):
            return False
    return False


# --------------------------------------------------------------------------- convolutions
def _spatially_pointwise(op: Operator) -> bool:
    """A convolution (not transposed) whose kernel is one tap with no padding: a channel mixing, possibly strided."""
    return (
        isinstance(op, Conv) and not op.transposed and all(k == 1 for k in op.weight.shape[2:]) and not any(op.padding)
    )


def _compose_convs(first: Conv, second: Conv) -> Conv | None:
    """``second(first(x))`` as one convolution when one of them is a (strided) channel mixing, else None.

    A 1x1 convolution with stride ``s`` reads every ``s``-th position: after
    another convolution it multiplies that one's stride; before one it
    multiplies the other's stride, dilation and padding by ``s``.  The kernel
    is the product over the channels.  Checked by the output shape.
    """
    if first.transposed or second.transposed:
        return None
    try:
        if _spatially_pointwise(second):
            weight = torch.einsum("om,mc...->oc...", second.full_weight().flatten(1), first.full_weight())
            stride = tuple(a * b for a, b in zip(first.stride, second.stride, strict=True))
            result = Conv(weight, first.in_shape, stride=stride, padding=first.padding, dilation=first.dilation,
                          groups=1)
        elif _spatially_pointwise(first):
            weight = torch.einsum("om...,mc->oc...", second.full_weight(), first.full_weight().flatten(1))
            s = first.stride
            result = Conv(weight, first.in_shape, stride=tuple(a * b for a, b in zip(s, second.stride, strict=True)),
                          padding=tuple(a * b for a, b in zip(s, second.padding, strict=True)),
                          dilation=tuple(a * b for a, b in zip(s, second.dilation, strict=True)), groups=1)
        else:
            return None
    except RuntimeError:  # a geometry the convolution does not take
        return None
    return result if result.out_shape == second.out_shape else None


def _embed_then_narrow(embed: Embed, narrow: Narrow) -> list[Operator] | None:
    """A part placed into a concatenation, then a slice of the concatenation taken: the overlap (a zero map if none)."""
    if embed.dim != narrow.dim:
        return None
    d = embed.dim
    low = max(embed.start, narrow.start)
    high = min(embed.start + embed.in_shape[d], narrow.start + narrow.length)
    if high <= low:
        return [Zero(embed.in_shape, narrow.out_shape)]
    ops: list[Operator] = []
    shape = embed.in_shape
    if low - embed.start != 0 or high - low != embed.in_shape[d]:
        ops.append(Narrow(shape, d, low - embed.start, high - low))
        shape = ops[-1].out_shape
    if shape != narrow.out_shape:
        ops.append(Embed(shape, narrow.out_shape, d, low - narrow.start))
    return ops or [Reshape(shape, shape)]


def _output_channels(conv: Conv, narrow: Narrow) -> Conv | None:
    """A convolution followed by a slice of its output channels: the kernel's rows of that slice."""
    if narrow.dim != 0 or conv.transposed:
        return None
    weight = conv.full_weight()[narrow.start : narrow.start + narrow.length]
    return Conv(weight, conv.in_shape, stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=1,
                out_shape=narrow.out_shape)


def _slice_of_concatenation(embed: Embed, conv: Conv) -> Conv | None:
    """A convolution (groups 1) reading a channel slice of a concatenation: the kernel's columns of that slice."""
    if embed.dim != 0 or conv.transposed or conv.groups != 1:
        return None
    n = embed.in_shape[0]
    weight = conv.weight[:, embed.start : embed.start + n]
    return Conv(weight, embed.in_shape, stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=1,
                out_shape=conv.out_shape)


def _upsampled_convolution(upsample: IndexMap, conv: Conv) -> Conv | None:
    """A nearest upsampling by integer factors ``s`` then a convolution, as one transposed convolution (None if not)."""
    scales = getattr(upsample, "upsample", None)
    if scales is None or conv.transposed or len(scales) != conv.dim:
        return None
    kernel = tuple(conv.weight.shape[2:])
    if any(s != 1 for s in conv.stride) or any(d != 1 for d in conv.dilation):
        return None
    if any(p > k - 1 for p, k in zip(conv.padding, kernel, strict=True)):
        return None
    # K_T[t] = sum of the flipped kernel over t - s + 1 .. t, along every spatial axis
    box = conv.weight.flip(tuple(range(2, conv.weight.dim())))
    for axis, s in enumerate(scales):
        d = axis + 2
        pad = [0, 0] * (box.dim() - 2)
        pad[2 * (box.dim() - 1 - d)] = pad[2 * (box.dim() - 1 - d) + 1] = s - 1
        padded = F.pad(box, pad)
        length = kernel[axis] + s - 1
        box = functools.reduce(operator.add, (padded.narrow(d, j, length) for j in range(s)))
    groups = conv.groups
    out_c, in_per_group = conv.weight.shape[:2]
    out_per_group = out_c // groups
    # conv_transpose weight (C_in, C_out / g, *L): input channel g * (C_in / g) + c, output g * (C_out / g) + o
    weight = box.reshape((groups, out_per_group, in_per_group) + box.shape[2:]).transpose(1, 2)
    weight = weight.reshape((groups * in_per_group, out_per_group) + box.shape[2:]).contiguous()
    padding = tuple(k - 1 - p for k, p in zip(kernel, conv.padding, strict=True))
    try:
        result = Conv(weight, upsample.in_shape, stride=scales, padding=padding, dilation=1, groups=groups,
                      transposed=True)
    except RuntimeError:
        return None
    if result.out_shape != conv.out_shape:
        return None
    return result


# --------------------------------------------------------------------------- the rewriting
def simplify(ops: Sequence[Operator]) -> list[Operator]:
    """The chain rewritten (see the module docstring); the same linear map, its entries computed exactly in float64."""
    ops = list(ops)
    changed = True
    while changed:
        changed = False
        # identity reshapes (kept if they are all there is) and reshapes in a row
        for i, op in enumerate(ops):
            if isinstance(op, Reshape) and op.in_shape == op.out_shape and len(ops) > 1:
                del ops[i]
                changed = True
                break
            if isinstance(op, Reshape) and i + 1 < len(ops) and isinstance(ops[i + 1], Reshape):
                ops[i : i + 2] = [Reshape(op.in_shape, ops[i + 1].out_shape)]
                changed = True
                break
        if changed:
            continue
        if any(isinstance(op, Zero) for op in ops) and len(ops) > 1:  # a part that never reaches the output
            return [Zero(ops[0].in_shape, ops[-1].out_shape)]
        for i, op in enumerate(ops):
            nxt = ops[i + 1] if i + 1 < len(ops) else None
            if isinstance(op, Embed) and isinstance(nxt, Narrow):
                replaced = _embed_then_narrow(op, nxt)
                if replaced is not None:
                    ops[i : i + 2] = replaced
                    changed = True
                    break
            if isinstance(op, Scale) and _fold_scale(ops, i):
                changed = True
                break
            if not isinstance(nxt, (Conv, Narrow)):
                continue
            merged = None
            if isinstance(op, Conv) and isinstance(nxt, Narrow):
                merged = _output_channels(op, nxt)
            elif isinstance(op, Conv) and isinstance(nxt, Conv):
                merged = _compose_convs(op, nxt)
            elif isinstance(op, Embed) and isinstance(nxt, Conv):
                merged = _slice_of_concatenation(op, nxt)
            elif isinstance(op, IndexMap) and isinstance(nxt, Conv):
                merged = _upsampled_convolution(op, nxt)
            if merged is not None:
                ops[i : i + 2] = [merged]
                changed = True
                break
    return ops


def merge_convolutions(chains: Sequence[Chain]) -> Chain | None:
    """Convolutions of one activation summed (a RepVGG block: 3x3 + 1x1 + identity) as one convolution, or None.

    Each chain must be a single convolution (not transposed), a per-channel
    scale or the identity, all with the same stride and dilation and their
    kernels centred alike; the kernels are zero-padded to the largest size
    and added (the sum's entries are the summed kernels' taps, exactly).
    """
    kernels: list[tuple[torch.Tensor, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []
    for chain in chains:
        ops = chain.ops
        if len(ops) != 1:
            return None
        op = ops[0]
        if isinstance(op, Conv) and not op.transposed:
            kernels.append((op.full_weight(), op.stride, op.padding, op.dilation))
        elif isinstance(op, (Scale, Reshape)) and op.in_shape == op.out_shape and len(op.in_shape) >= 2:
            c, n = op.in_shape[0], len(op.in_shape) - 1
            scale = op.scale if isinstance(op, Scale) else torch.ones(c, dtype=torch.float64)
            weight = torch.diag(scale).reshape((c, c) + (1,) * n)
            kernels.append((weight, (1,) * n, (0,) * n, (1,) * n))
        else:
            return None
    if len({k[1] for k in kernels}) != 1:
        return None
    dilations = {k[3] for k in kernels if any(s > 1 for s in k[0].shape[2:])} or {kernels[0][3]}
    if len(dilations) != 1:
        return None
    dilation = dilations.pop()
    n = kernels[0][0].dim() - 2
    size = [max(k[0].shape[2 + d] for k in kernels) for d in range(n)]
    offsets = set()
    total = None
    for weight, _, padding, _ in kernels:
        pads = []
        for d in range(n):
            extra = size[d] - weight.shape[2 + d]
            if extra % 2:
                return None
            pads.append(extra // 2)
            offsets.add((d, padding[d] + extra // 2 * dilation[d]))
        padded = F.pad(weight, [p for d in reversed(range(n)) for p in (pads[d], pads[d])])
        total = padded if total is None else total + padded
    if total is None:  # no chains
        return None
    merged_padding = []
    for d in range(n):
        values = {o for axis, o in offsets if axis == d}
        if len(values) != 1:
            return None
        merged_padding.append(values.pop())
    try:
        conv = Conv(total, chains[0].in_shape, stride=kernels[0][1], padding=merged_padding, dilation=dilation,
                    groups=1)
    except RuntimeError:
        return None
    return Chain([conv]) if conv.out_shape == tuple(chains[0].out_shape) else None


#: Largest number of multiply-adds one dense fold may take (:func:`dense_work`): about half a minute on two cores;
#: a larger fold is refused naming the modules.  Read at every fold, so ``dtd.lowering.compose.DENSE_WORK_LIMIT = ...``
#: raises it where the time is there.
DENSE_WORK_LIMIT = 5 * 10**10


def dense_bytes(op: Operator) -> int:
    """Bytes of the operator's dense float64 matrix."""
    return op.in_features * op.out_features * 8


def work(op: Operator) -> int:
    """Multiply-adds of one application of ``op`` to one point (a convolution's kernel taps per output, ...)."""
    if isinstance(op, Conv):
        taps = math.prod(op.weight.shape[2:])
        if op.transposed:
            return op.in_features * (op.weight.shape[1]) * taps
        return op.out_features * op.weight.shape[1] * taps
    if isinstance(op, Dense):
        return op.out_features * op.weight.shape[1]
    if hasattr(op, "members"):  # a sum of chains
        return sum(work(c) for c in op.members)
    if hasattr(op, "chains"):
        return sum(work(c) for c in op.chains)
    if hasattr(op, "ops") and op.ops is not op:
        return sum(work(o) for o in op.ops)
    return op.in_features + op.out_features


def dense_work(chain: Operator) -> int:
    """Multiply-adds :func:`dense_matrix` spends on ``chain``: the cheaper of its ways (see there)."""
    ops = getattr(chain, "ops", None)
    options = [min(chain.in_features, chain.out_features) * work(chain)]
    if ops is not None and not hasattr(chain, "chains") and not hasattr(chain, "members"):
        last = len(ops) - 1
        while last > 0 and isinstance(ops[last], Reshape):
            last -= 1
        if isinstance(ops[last], Dense) and ops[last].flat and last > 0:  # its rows pushed back through the rest
            return ops[last].weight.shape[0] * sum(work(op) for op in ops[:last])
        shortcut = _spatial_basis_work(ops)
        if shortcut is not None:
            options.append(shortcut)
    return min(options)


def _spatial_basis_work(ops: Sequence[Operator]) -> int | None:
    """Multiply-adds of :func:`_spatial_basis_through_convolution` on ``ops``, or None where it does not apply."""
    m, conv = next(((k, op) for k, op in enumerate(ops) if isinstance(op, Conv)), (None, None))
    if m is None or not isinstance(conv, Conv) or conv.transposed:
        return None
    if not all(op.spatial_only and not op.signed for op in ops[:m]) or len(conv.in_shape) < 2:
        return None
    channels = conv.in_shape[0]
    first = ops[0].in_shape if m > 0 else conv.in_shape
    if first[0] != channels:
        return None
    n_spatial = math.prod(first[1:])
    rest = sum(work(op) for op in ops[m + 1 :])
    first_conv = conv.weight.shape[0] * channels * math.prod(conv.weight.shape[2:]) * math.prod(conv.out_shape[1:])
    return n_spatial * (first_conv + channels * rest + sum(work(op) for op in ops[:m]))


def dense_chain(chain: Operator, device: torch.device) -> Chain:
    """The chain as one dense matrix between reshapes (exact in float64; see :func:`dense_matrix`)."""
    return Chain([Reshape(chain.in_shape, (chain.in_features,)), Dense(dense_matrix(chain, device)),
                  Reshape((chain.out_features,), chain.out_shape)])


def dense_matrix(chain: Operator, device: torch.device) -> torch.Tensor:
    """The map's ``(D_out, D_in)`` matrix in float64: its rows or columns pushed through it.

    A chain that ends in a Linear (then reshapes) is ``W P``: the Linear's
    rows pushed back through the part before it (``P^T w_j``), one pass per
    output instead of one per input.  Otherwise the standard basis of whichever
    side is smaller is pushed through (forward, or back through the
    transpose), in chunks.
    """
    d_in, d_out = chain.in_features, chain.out_features
    ops = getattr(chain, "ops", None)
    with torch.no_grad():
        if ops is not None and not hasattr(chain, "chains"):
            last = len(ops) - 1
            while last > 0 and isinstance(ops[last], Reshape):
                last -= 1
            if isinstance(ops[last], Dense) and ops[last].flat and last > 0:
                prefix = Chain(ops[:last])
                weight = ops[last].weight
                rows = weight.reshape((weight.shape[0],) + tuple(prefix.out_shape))
                return prefix.transpose(rows).reshape(weight.shape[0], d_in)
        shortcut = _spatial_basis_work(ops) if ops is not None and not hasattr(chain, "chains") else None
        if ops is not None and shortcut is not None and shortcut < min(d_in, d_out) * work(chain):
            matrix = _spatial_basis_through_convolution(ops, device)
            if matrix is not None:
                return matrix
    return operator_matrix(chain, torch.float64, device)  # basis vectors of the smaller side pushed through


def _spatial_basis_through_convolution(ops: Sequence[Operator], device: torch.device) -> torch.Tensor | None:
    """The dense matrix of ``[spatial maps..., convolution, rest...]`` with one
    pass per spatial position, not per input.

    The maps before the convolution act on every channel alike, so the
    image of input ``(c, i)`` there is the image ``s_i`` of position ``i`` in
    channel ``c``; the convolution of it is kernel column ``K[:, c]`` applied
    to ``s_i`` -- all channels at once as a convolution of the single-channel
    ``s_i`` with the ``(O * C, 1, *k)`` kernel -- and the maps after it act on
    each channel's result as on a point.  ``C`` times fewer multiplications
    than pushing the ``C * S`` basis inputs through (a pooled 1x1 map into a
    7x7 convolution with 512 x 4096 channels: 0.1 instead of 51 GFLOP).
    None when the chain has another form.
    """
    m, conv = next(((k, op) for k, op in enumerate(ops) if isinstance(op, Conv)), (None, None))
    if m is None or conv is None or conv.transposed or not all(op.spatial_only for op in ops[:m]):
        return None
    if any(op.signed for op in ops[:m]) or len(conv.in_shape) < 2:
        return None
    channels = conv.in_shape[0]
    first = ops[0].in_shape if m > 0 else conv.in_shape
    spatial = tuple(first[1:])
    n_spatial = math.prod(spatial)
    if first[0] != channels or n_spatial * conv.weight.shape[0] * channels * math.prod(conv.out_shape[1:]) > (1 << 31):
        return None
    weight = conv.full_weight()  # (O, C, *k)
    out_c = weight.shape[0]
    kernel = weight.transpose(0, 1).reshape((channels * out_c, 1) + tuple(weight.shape[2:]))
    rest = Chain(list(ops[m + 1 :])) if m + 1 < len(ops) else None
    d_out = (rest.out_features if rest is not None else conv.out_features)
    matrix = torch.empty(d_out, channels * n_spatial, dtype=torch.float64, device=device)
    chunk = max(1, min(n_spatial, (64 << 20) // (8 * channels * max(1, math.prod(conv.out_shape)))))
    for start in range(0, n_spatial, chunk):
        stop = min(start + chunk, n_spatial)
        basis = torch.zeros(stop - start, n_spatial, dtype=torch.float64, device=device)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        images = basis.reshape((stop - start, 1) + spatial).expand((stop - start, channels) + spatial).contiguous()
        for op in ops[:m]:
            images = op.forward(images)
        single = images[:, :1]  # every channel holds the same image
        out = _CONV_FUNCTIONS[conv.dim](single, kernel, None, conv.stride, conv.padding, conv.dilation, 1)
        out = out.reshape((stop - start, channels, out_c) + tuple(out.shape[2:]))  # (positions, C, O, *spatial_out)
        if rest is not None:
            out = rest.forward(out.reshape(((stop - start) * channels,) + tuple(conv.out_shape)))
        columns = out.reshape(stop - start, channels, d_out)
        channel_offsets = torch.arange(channels, device=device).unsqueeze(0) * n_spatial
        index = channel_offsets + torch.arange(start, stop, device=device).unsqueeze(1)
        matrix[:, index.reshape(-1)] = columns.reshape(-1, d_out).T
    return matrix


_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def size_text(n_bytes: int) -> str:
    return f"{n_bytes:,} bytes ({n_bytes / 2**30:.2f} GiB)"

