"""Affine operators applied matrix-free: a layer's linear map ``W`` and its element-wise modifications.

A DTD layer of a graph network (:mod:`dtd.graph`) maps the activations
entering it to its pre-activation, ``z = sum_b A_b(h_b) + c``.  Every rule
of :mod:`dtd.rules` needs ``W`` only through a few element-wise modified
matrices applied forward (``W x``) and transposed (``W^T y``):

=========  ==============================  =======================================
kind       entries                         used for
=========  ==============================  =======================================
``W``      ``W_ji``                        LRP-0 / x, gamma, zB
``pos``    ``max(W_ji, 0)``                z+, gamma, zB's low bound
``neg``    ``min(W_ji, 0)``                zB's high bound
``square`` ``W_ji ** 2``                   w2
``ind``    ``1`` where ``i`` feeds ``j``   the roots' directions (``v_j``)
``ind_ge`` ``1[W_ji >= 0]`` where it does  z+, gamma, zB directions
``ind_lt`` ``1[W_ji < 0]`` where it does   zB directions
=========  ==============================  =======================================

"Where ``i`` feeds ``j``" is the operator's structure: a dense (``Linear``)
operator connects every input to every output (as the dense layers of
:class:`dtd.ReLUNetwork` do, so a zero weight counts as ``>= 0``); a
convolution connects an output to its receptive field (inputs outside it,
and padding, are no entries at all, so a root never moves an input its
neuron does not see).

An operator is a *primitive* (:class:`Dense`, :class:`Conv`, :class:`Scale`,
:class:`Multiply`, a pooling, an interpolation, an index map such as a
reshape, a permutation, a slice or a padding, ...) or a :class:`Chain` of
primitives.  A chain's modified matrix is the chain of its primitives'
modified operators only when every entry of the product is a single product
of entries and at most one primitive is signed: one path from each input to
each output (:meth:`Chain.single_path`), or one path along the channel axis
and one along the other axes when every primitive acts on only one of them
(a 1x1 convolution then a bilinear upsampling: :meth:`Chain.kronecker_path`).
The lowering (:mod:`dtd.lowering`) rewrites chains into that form where the
composite has one (batch norms folded, a nearest upsampling then a
convolution as one transposed convolution, ...) and falls back to a dense
matrix otherwise, so every chain it builds satisfies this.

Flags every operator carries for that check: ``signed``, ``row_sparse``
(every output reads at most one input), ``column_sparse`` (every input feeds
at most one output), ``channel_only`` (mixes only the first non-batch axis,
the same map at every other position: a 1x1 convolution, a per-channel
scale) and ``spatial_only`` (the same map for every index of the first axis,
which it keeps: pooling, upsampling, padding).

Shapes: an operator maps ``(batch, *in_shape)`` to ``(batch, *out_shape)``;
its bias is not part of it (the graph's affine node holds one bias for the sum
of its branches).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
import torch.nn.grad

__all__ = [
    "KINDS",
    "Operator",
    "Dense",
    "Conv",
    "Scale",
    "Multiply",
    "Pooling",
    "Interpolation",
    "IndexMap",
    "Reshape",
    "Embed",
    "Narrow",
    "Zero",
    "Chain",
    "Parallel",
    "vjp",
    "single_path",
]

#: the element-wise modifications every operator can apply (see the module docstring)
KINDS = ("W", "pos", "neg", "square", "ind", "ind_ge", "ind_lt")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown operator modification {kind!r}; known: {KINDS}")
    return kind


def vjp(function: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple, y: torch.Tensor) -> torch.Tensor:
    """``J^T y`` of a *linear* ``function``
    (``(batch, *in_shape) -> (batch, ...)``) by autograd, at any point (zeros)."""
    with torch.enable_grad():
        x = torch.zeros((y.shape[0],) + tuple(in_shape), dtype=y.dtype, device=y.device, requires_grad=True)
        out = function(x)
        (grad,) = torch.autograd.grad(out, x, y, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


class Operator:
    """A linear map ``(batch, *in_shape) -> (batch, *out_shape)``.

    Attributes
    ----------
    in_shape, out_shape
        Shapes without the batch dimension.
    signed
        Whether entries may be negative (a convolution's, a Linear's, a batch
        norm's scale with negative entries); pooling and reshapes are not.
    column_sparse
        Every input feeds at most one output (reshape, non-overlapping
        pooling, global mean, a per-channel scale).
    row_sparse
        Every output reads at most one input (reshape, a per-channel scale).
    channel_only, spatial_only
        Acts only along the first non-batch axis (the same map at every other
        position), or only along the others (the same map for every index of
        the first axis, whose length it keeps); see the module docstring.
    modifiable
        Whether :meth:`modified` is available (a signed interpolation's is not).
    """

    in_shape: tuple
    out_shape: tuple
    signed: bool = False
    column_sparse: bool = False
    row_sparse: bool = False
    channel_only: bool = False
    spatial_only: bool = False
    modifiable: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """``W^T y``: ``(batch, *out_shape) -> (batch, *in_shape)``."""
        return vjp(self.forward, self.in_shape, y)

    def modified(self, kind: str) -> Operator:
        """The operator with element-wise modified entries (one of :data:`KINDS`)."""
        raise NotImplementedError

    def rows(self, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``index`` of the matrix: ``(*index.shape, *in_shape)`` (``W^T`` of one-hot outputs in ``dtype``).

        ``index`` holds flat output indices.  Operators that hold their matrix
        (:class:`Dense`) gather the rows directly; the others transpose one-hot
        vectors, which gives the same entries exactly (one non-zero product per sum).
        """
        onehot = torch.zeros(index.numel(), self.out_features, dtype=dtype, device=index.device)
        onehot[torch.arange(index.numel(), device=index.device), index.reshape(-1)] = 1.0
        rows = self.transpose(onehot.reshape((index.numel(),) + tuple(self.out_shape)))
        return rows.reshape(tuple(index.shape) + tuple(self.in_shape))

    def flat_weight(self) -> torch.Tensor | None:
        """The ``(J, D)`` matrix on flat inputs when the operator holds it as one (a Linear,
        possibly after a flatten), else None."""
        return None

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Operator:
        """A copy in ``dtype`` on ``device`` (operators without tensors return themselves)."""
        return self

    def tensors(self) -> list[torch.Tensor]:
        """The tensors the operator holds (for dtype/device checks)."""
        return []

    @property
    def in_features(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


class Zero(Operator):
    """The zero map (a modification that removes every entry, e.g. ``neg`` of a pooling)."""

    column_sparse = row_sparse = True

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((x.shape[0],) + self.out_shape)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y.new_zeros((y.shape[0],) + self.in_shape)

    def modified(self, kind: str) -> Operator:
        _check_kind(kind)
        return self


def _signed_modification(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """Element-wise modification of the entries of a signed operator's weight tensor."""
    if kind == "W":
        return weight
    if kind == "pos":
        return weight.clamp_min(0)
    if kind == "neg":
        return weight.clamp_max(0)
    if kind == "square":
        return weight * weight
    if kind == "ind":
        return torch.ones_like(weight)
    if kind == "ind_ge":
        return (weight >= 0).to(weight.dtype)
    return (weight < 0).to(weight.dtype)  # ind_lt


class Dense(Operator):
    """``y = x W^T`` along the last axis: ``weight`` ``(J, D)``, every input of a row connected to every output.

    ``in_shape`` defaults to ``(D,)`` (flat activations, a Linear after a
    flatten); a longer one, ``(..., D)``, applies the weight to the last axis
    at every other position (``nn.Linear`` on a tensor with more dimensions).
    """

    signed = True

    def __init__(self, weight: torch.Tensor, in_shape: Sequence[int] | None = None):
        if weight.dim() != 2:
            raise ValueError(f"a dense operator needs a (J, D) weight, got shape {tuple(weight.shape)}")
        self.weight = weight
        self.in_shape = (weight.shape[1],) if in_shape is None else tuple(in_shape)
        if self.in_shape[-1] != weight.shape[1]:
            raise ValueError(f"a ({weight.shape[0]}, {weight.shape[1]}) weight "
                             f"cannot act on activations of shape {self.in_shape}")
        self.out_shape = self.in_shape[:-1] + (weight.shape[0],)
        self.flat = len(self.in_shape) == 1
        self.channel_only = self.flat
        self._modified: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.weight

    def rows(self, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.flat:
            return self.weight[index]
        return super().rows(index, dtype)

    def flat_weight(self) -> torch.Tensor | None:
        return self.weight if self.flat else None

    def _with(self, weight: torch.Tensor) -> Dense:
        return Dense(weight, self.in_shape)

    def modified(self, kind: str) -> Operator:
        if kind not in self._modified:
            self._modified[kind] = self._with(_signed_modification(self.weight, _check_kind(kind)))
        return self._modified[kind]

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Operator:
        return self._with(self.weight.to(dtype=dtype, device=device))

    def tensors(self) -> list[torch.Tensor]:
        return [self.weight]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_CONV_INPUT = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}


class Conv(Operator):
    """A 1-d, 2-d or 3-d convolution without bias (zero padding), any stride, dilation and groups; or its transpose.

    ``weight`` ``(C_out, C_in / groups, *kernel)`` for a convolution,
    ``(C_in, C_out / groups, *kernel)`` for a transposed one (``transposed=True``,
    as ``nn.ConvTranspose2d`` holds it); padding as ints.  Every (input,
    output) pair is joined by at most one kernel entry, so the modified
    operators are the same convolution with a modified kernel.  The transpose
    of a convolution is its input gradient, that of a transposed convolution
    the convolution itself (no dense matrix).
    """

    signed = True

    def __init__(self, weight: torch.Tensor, in_shape: Sequence[int], *, stride: int | tuple[int, ...] | list[int],
                 padding: int | tuple[int, ...] | list[int], dilation: int | tuple[int, ...] | list[int], groups: int,
                 transposed: bool = False, output_padding: int | tuple[int, ...] | list[int] | None = None,
                 out_shape: Sequence[int] | None = None) -> None:
        self.weight = weight.contiguous()  # a sliced or composed kernel: torch's convolutions are slow on strided ones
        self.dim = weight.dim() - 2
        if self.dim not in (1, 2, 3):
            raise ValueError(f"only 1-d, 2-d and 3-d convolutions are supported, got a {self.dim}-d kernel")
        def tup(v: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
            return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v),) * self.dim
        self.stride, self.padding, self.dilation, self.groups = tup(stride), tup(padding), tup(dilation), int(groups)
        self.transposed = bool(transposed)
        self.output_padding = tup(0 if output_padding is None else output_padding)
        self.in_shape = tuple(in_shape)
        if out_shape is None:
            probe = torch.zeros((1,) + self.in_shape, dtype=weight.dtype, device="meta")
            out_shape = self._apply(probe, weight.to("meta")).shape[1:]
        self.out_shape = tuple(out_shape)
        kernel = tuple(weight.shape[2:])
        self.pointwise = all(k == 1 for k in kernel) and all(s == 1 for s in self.stride) and not any(self.padding) \
            and not any(self.output_padding)
        self.channel_only = self.pointwise
        self._modified: dict = {}

    def _apply(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return _CONV_TRANSPOSE[self.dim](x, weight, None, self.stride, self.padding, self.output_padding,
                                             self.groups, self.dilation)
        return _CONV[self.dim](x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self.weight)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return _CONV[self.dim](y, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return _CONV_INPUT[self.dim]((y.shape[0],) + self.in_shape, self.weight, y, self.stride, self.padding,
                                     self.dilation, self.groups)

    def _with(self, weight: torch.Tensor) -> Conv:
        return Conv(weight, self.in_shape, stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups,
                    transposed=self.transposed, output_padding=self.output_padding, out_shape=self.out_shape)

    def full_weight(self) -> torch.Tensor:
        """The kernel of a convolution (not transposed) with ``groups = 1``: the grouped kernel as a block diagonal."""
        if self.transposed:
            raise ValueError("full_weight is defined for convolutions, not transposed ones")
        if self.groups == 1:
            return self.weight
        out_c, in_per_group = self.weight.shape[:2]
        out_per_group = out_c // self.groups
        full = self.weight.new_zeros((out_c, in_per_group * self.groups) + tuple(self.weight.shape[2:]))
        for g in range(self.groups):
            full[g * out_per_group:(g + 1) * out_per_group, g * in_per_group:(g + 1) * in_per_group] = \
                self.weight[g * out_per_group:(g + 1) * out_per_group]
        return full

    def modified(self, kind: str) -> Operator:
        if kind not in self._modified:  # a kernel-sized tensor per kind, kept: DTD asks for the same ones at every call
            self._modified[kind] = self._with(_signed_modification(self.weight, _check_kind(kind)))
        return self._modified[kind]

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Operator:
        return self._with(self.weight.to(dtype=dtype, device=device))

    def tensors(self) -> list[torch.Tensor]:
        return [self.weight]


class Scale(Operator):
    """A per-channel scale ``y = x * s`` (batch norm's linear part): ``scale`` ``(C,)`` over ``(C, ...)``."""

    column_sparse = row_sparse = channel_only = spatial_only = True

    def __init__(self, scale: torch.Tensor, shape: Sequence[int]):
        self.scale = scale
        self.in_shape = self.out_shape = tuple(shape)
        self.signed = bool((scale < 0).any())
        self._view = (-1,) + (1,) * (len(self.in_shape) - 1)

    @property
    def uniform(self) -> bool:
        """Every channel has the same factor (a multiplication by a number)."""
        return bool((self.scale == self.scale[0]).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.reshape(self._view)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale.reshape(self._view)

    def modified(self, kind: str) -> Operator:
        return Scale(_signed_modification(self.scale, _check_kind(kind)), self.in_shape)

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Operator:
        return Scale(self.scale.to(dtype=dtype, device=device), self.in_shape)

    def tensors(self) -> list[torch.Tensor]:
        return [self.scale]


class Multiply(Operator):
    """An element-wise product ``y = x * m`` with a constant ``m`` of the activations' shape (a diagonal matrix)."""

    column_sparse = row_sparse = True

    def __init__(self, factor: torch.Tensor, shape: Sequence[int]):
        self.in_shape = self.out_shape = tuple(shape)
        if tuple(factor.shape) != self.in_shape:
            raise ValueError(f"an element-wise factor of shape {tuple(factor.shape)} does "
                             f"not fit activations of shape {self.in_shape}")
        self.factor = factor
        self.signed = bool((factor < 0).any())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.factor

    def modified(self, kind: str) -> Operator:
        return Multiply(_signed_modification(self.factor, _check_kind(kind)), self.in_shape)

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Operator:
        return Multiply(self.factor.to(dtype=dtype, device=device), self.in_shape)

    def tensors(self) -> list[torch.Tensor]:
        return [self.factor]


class Pooling(Operator):
    """A non-negative map whose every output is a weighted sum of its window with one weight: ``y_j = m_j * base(x)_j``.

    ``base`` is the module's own function (an average pooling, a mean, ...)
    and ``multiplier`` (``out_shape``, or None for 1) scales it; the
    modifications multiply it by the window's entry (``square``) or divide
    by it (``ind``: the window's 0/1 structure).  ``entry`` (``out_shape``)
    is the weight every input of output ``j``'s window has in ``base``.
    """

    def __init__(self, base: Callable[[torch.Tensor], torch.Tensor], in_shape: Sequence[int], out_shape: Sequence[int],
                 entry: torch.Tensor, *, column_sparse: bool, multiplier: torch.Tensor | None = None, name: str = "",
                 spatial_only: bool = False) -> None:
        self.base, self.entry, self.multiplier, self.name = base, entry, multiplier, name
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.column_sparse = column_sparse
        self.spatial_only = spatial_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y if self.multiplier is None else y * self.multiplier

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return vjp(self.base, self.in_shape, y if self.multiplier is None else y * self.multiplier)

    def _times(self, factor: torch.Tensor) -> Pooling:
        multiplier = factor if self.multiplier is None else self.multiplier * factor
        return Pooling(self.base, self.in_shape, self.out_shape, self.entry, column_sparse=self.column_sparse,
                       multiplier=multiplier, name=self.name, spatial_only=self.spatial_only)

    def modified(self, kind: str) -> Operator:
        kind = _check_kind(kind)
        if kind in ("W", "pos"):
            return self
        if kind in ("neg", "ind_lt"):
            return Zero(self.in_shape, self.out_shape)
        if kind == "square":  # every entry is m e: squared, m^2 e^2 = (m e) * (m e)
            current = self.entry if self.multiplier is None else self.entry * self.multiplier
            return self._times(current)
        # ind, ind_ge: 1 on the window, i.e. base / entry (the multiplier dropped)
        return Pooling(self.base, self.in_shape, self.out_shape, self.entry, column_sparse=self.column_sparse,
                       multiplier=1.0 / self.entry, name=self.name, spatial_only=self.spatial_only)

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Operator:
        multiplier = None if self.multiplier is None else self.multiplier.to(dtype=dtype, device=device)
        return Pooling(self.base, self.in_shape, self.out_shape, self.entry.to(dtype=dtype, device=device),
                       column_sparse=self.column_sparse, multiplier=multiplier, name=self.name,
                       spatial_only=self.spatial_only)

    def tensors(self) -> list[torch.Tensor]:
        return [self.entry]


def _axis_product(x: torch.Tensor, matrices: Sequence[tuple[int, torch.Tensor]],
                  transpose: bool = False) -> torch.Tensor:
    """``x`` with each ``(axis, A)`` applied along that non-batch axis (``A``
    ``(n_out, n_in)``; ``A^T`` when transposing)."""
    for axis, matrix in matrices:
        moved = x.movedim(axis + 1, -1)
        moved = moved @ (matrix if transpose else matrix.T)
        x = moved.movedim(-1, axis + 1)
    return x


class Interpolation(Operator):
    """A separable non-negative map: along each listed axis a matrix ``A_d`` (linear, bilinear, trilinear upsampling).

    ``y = (A_1 (x) A_2 (x) ...) x`` over the axes after the first (the
    channels are kept).  ``base`` is the model's own function (used for the
    map itself, so its values round as the model's do); the matrices, found
    by the lowering from ``base`` on a basis, give the modified operators:
    ``square`` squares every ``A_d`` (an entry is a product of one entry per
    axis), ``ind`` / ``ind_ge`` replace them by their non-zero pattern.
    ``signed=True`` (bicubic weights) makes it unmodifiable: a chain holding
    it is folded densely.
    """

    spatial_only = True

    def __init__(self, base: Callable[[torch.Tensor], torch.Tensor] | None, in_shape: Sequence[int],
                 out_shape: Sequence[int],
                 matrices: Sequence[tuple[int, torch.Tensor]], *, signed: bool = False, name: str = "") -> None:
        self.base, self.matrices, self.name = base, [(int(a), m) for a, m in matrices], name
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.signed = signed
        self.modifiable = not signed
        self.row_sparse = all(bool(((m != 0).sum(1) <= 1).all()) for _, m in self.matrices)
        self.column_sparse = all(bool(((m != 0).sum(0) <= 1).all()) for _, m in self.matrices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) if self.base is not None else _axis_product(x, self.matrices)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        if self.base is not None:
            return vjp(self.base, self.in_shape, y)
        return _axis_product(y, list(reversed(self.matrices)), transpose=True)

    def modified(self, kind: str) -> Operator:
        kind = _check_kind(kind)
        if self.signed:
            raise ValueError(f"{self.name or 'this interpolation'} has negative "
                             "weights: its modified operators are not available")
        if kind in ("W", "pos"):
            return self
        if kind in ("neg", "ind_lt"):
            return Zero(self.in_shape, self.out_shape)
        if kind == "square":
            matrices = [(a, m * m) for a, m in self.matrices]
        else:  # ind, ind_ge: the non-zero pattern
            matrices = [(a, (m != 0).to(m.dtype)) for a, m in self.matrices]
        return Interpolation(None, self.in_shape, self.out_shape, matrices, name=self.name)

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Operator:
        return Interpolation(self.base, self.in_shape, self.out_shape,
                             [(a, m.to(dtype=dtype, device=device)) for a, m in self.matrices],
                             signed=self.signed, name=self.name)

    def tensors(self) -> list[torch.Tensor]:
        return [m for _, m in self.matrices]


class IndexMap(Operator):
    """A parameter-free map whose every output copies one input or is 0 (entries 0 or 1, at most one per row).

    Permutations, transposes, slices, selections, flips, rolls, paddings
    (zero, reflect, replicate, circular), repeats, broadcasts, pixel
    shuffles, nearest-neighbour resampling: ``function`` is the model's own
    operation on ``(batch, *in_shape)``, its transpose is the function's
    vector-Jacobian product (or ``transpose_function`` where one is given).
    ``injective``: every input feeds at most one output (a permutation, a
    slice, a zero padding; not a repeat or a reflect padding).  Every
    modification is the map itself, or zero for the negative parts.
    """

    row_sparse = True

    # the functions are called with the tensor alone: Callable[..., Tensor], as the lowering's lambdas bind their
    # constants as default arguments (lambda t, d=dims: t.permute(d)), which Callable[[Tensor], Tensor] cannot infer
    def __init__(self, function: Callable[..., torch.Tensor], in_shape: Sequence[int],
                 out_shape: Sequence[int], *,
                 injective: bool, name: str = "", spatial_only: bool = False, channel_only: bool = False,
                 transpose_function: Callable[..., torch.Tensor] | None = None) -> None:
        self.function, self.transpose_function, self.name = function, transpose_function, name
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.column_sparse = bool(injective)
        self.spatial_only, self.channel_only = spatial_only, channel_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        if self.transpose_function is not None:
            return self.transpose_function(y)
        return vjp(self.function, self.in_shape, y)

    def modified(self, kind: str) -> Operator:
        kind = _check_kind(kind)
        return Zero(self.in_shape, self.out_shape) if kind in ("neg", "ind_lt") else self


class Reshape(Operator):
    """A reshape (flatten, view, identity, eval-mode dropout): every entry 1, one per row and column."""

    column_sparse = row_sparse = True

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError(f"cannot reshape {self.in_shape} into {self.out_shape}")
        # only the identity acts on one axis group; a reshape that keeps the first axis keeps the channels apart
        self.channel_only = self.in_shape == self.out_shape
        self.spatial_only = self.channel_only or (len(self.in_shape) > 1 and len(self.out_shape) > 1
                                                  and self.in_shape[0] == self.out_shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape((x.shape[0],) + self.out_shape)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape((y.shape[0],) + self.in_shape)

    def modified(self, kind: str) -> Operator:
        kind = _check_kind(kind)
        return Zero(self.in_shape, self.out_shape) if kind in ("neg", "ind_lt") else self


class Embed(Operator):
    """Place the input at ``[start, start + n)`` of dimension ``dim`` of a larger zero
    tensor (one part of a ``torch.cat``)."""

    column_sparse = row_sparse = True

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], dim: int, start: int) -> None:
        self.in_shape, self.out_shape, self.dim, self.start = tuple(in_shape), tuple(out_shape), dim, start
        self.channel_only, self.spatial_only = dim == 0, dim > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((x.shape[0],) + self.out_shape)
        out.narrow(self.dim + 1, self.start, self.in_shape[self.dim]).copy_(x)
        return out

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y.narrow(self.dim + 1, self.start, self.in_shape[self.dim]).clone()

    def modified(self, kind: str) -> Operator:
        kind = _check_kind(kind)
        return Zero(self.in_shape, self.out_shape) if kind in ("neg", "ind_lt") else self


class Narrow(Operator):
    """Take ``[start, start + length)`` of dimension ``dim`` (the adjoint of :class:`Embed`; a slice of a split)."""

    column_sparse = row_sparse = True

    def __init__(self, in_shape: Sequence[int], dim: int, start: int, length: int) -> None:
        self.in_shape, self.dim, self.start, self.length = tuple(in_shape), int(dim), int(start), int(length)
        out = list(self.in_shape)
        out[self.dim] = self.length
        self.out_shape = tuple(out)
        self.channel_only, self.spatial_only = self.dim == 0, self.dim > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.narrow(self.dim + 1, self.start, self.length)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        out = y.new_zeros((y.shape[0],) + self.in_shape)
        out.narrow(self.dim + 1, self.start, self.length).copy_(y)
        return out

    def modified(self, kind: str) -> Operator:
        kind = _check_kind(kind)
        return Zero(self.in_shape, self.out_shape) if kind in ("neg", "ind_lt") else self


def single_path(flags: Sequence[tuple[bool, bool]]) -> bool:
    """Whether a chain of maps with ``(row_sparse, column_sparse)`` flags joins every
    (input, output) pair by at most one path.

    True when, for some position ``m``, every map before it feeds each input
    into at most one output and every map after it reads each output from at
    most one input.
    """
    n = len(flags)
    return any(all(col for _, col in flags[:m]) and all(row for row, _ in flags[m + 1:]) for m in range(n))


class Chain(Operator):
    """Primitives applied one after another, first to last (``ops[0]`` reads the input).

    Its modified operators are the chain of the primitives' modified operators;
    that is exact when :meth:`single_path` holds and at most one primitive is
    signed (then every entry of the product is one signed entry times
    positive ones).  :mod:`dtd.graph` only builds such chains.
    """

    def __init__(self, ops: Sequence[Operator]):
        ops = [op for op in ops]
        if not ops:
            raise ValueError("a chain needs at least one operator")
        for lower, upper in pairwise(ops):
            if tuple(lower.out_shape) != tuple(upper.in_shape):
                raise ValueError(f"chain shapes do not match: {lower.out_shape} -> {upper.in_shape}")
        self.ops = ops
        self.in_shape, self.out_shape = ops[0].in_shape, ops[-1].out_shape
        self.signed = any(op.signed for op in ops)
        self.column_sparse = all(op.column_sparse for op in ops)
        self.row_sparse = all(op.row_sparse for op in ops)
        self.channel_only = all(op.channel_only for op in ops)
        self.spatial_only = all(op.spatial_only for op in ops)
        self.modifiable = all(op.modifiable for op in ops)
        self._modified: dict = {}

    def n_signed(self) -> int:
        return sum(op.signed for op in self.ops)

    def single_path(self) -> bool:
        """Every (input, output) pair is joined by at most one path of non-zero entries (see :func:`single_path`)."""
        return single_path([(op.row_sparse, op.column_sparse) for op in self.ops])

    def kronecker_path(self) -> bool:
        """Every primitive acts on the channels only or on the other axes only, and each of the two axis groups is
        joined by at most one path: every entry of the product is one channel
        path's product times one spatial path's."""
        if not all(op.channel_only or op.spatial_only for op in self.ops):
            return False
        channel = [(True, True) if op.spatial_only else (op.row_sparse, op.column_sparse) for op in self.ops]
        spatial = [(True, True) if op.channel_only else (op.row_sparse, op.column_sparse) for op in self.ops]
        return single_path(channel) and single_path(spatial)

    def exact_modifications(self) -> bool:
        """Whether :meth:`modified` is exact for this chain (one path per entry, at most one signed primitive)."""
        return (all(op.modifiable for op in self.ops) and self.n_signed() <= 1
                and (self.single_path() or self.kronecker_path()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op.forward(x)
        return x

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        for op in reversed(self.ops):
            y = op.transpose(y)
        return y

    def rows(self, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        weight = self.flat_weight()
        if weight is None:
            return super().rows(index, dtype)
        return weight[index].reshape(tuple(index.shape) + tuple(self.in_shape))

    def flat_weight(self) -> torch.Tensor | None:
        """A chain of reshapes ending in a Linear: the Linear's matrix (on the flattened input), else None."""
        if isinstance(self.ops[-1], Dense) and all(isinstance(op, Reshape) for op in self.ops[:-1]):
            return self.ops[-1].weight
        return None

    def modified(self, kind: str) -> Chain | Zero:
        kind = _check_kind(kind)
        if kind not in self._modified:
            self._modified[kind] = self._modify(kind)
        return self._modified[kind]

    def _modify(self, kind: str) -> Chain | Zero:
        if not self.exact_modifications():
            raise ValueError("this chain's entries are not single products: its "
                             "modified operators are not the chain's modifications")
        if not self.signed and kind in ("neg", "ind_lt"):
            return Zero(self.in_shape, self.out_shape)
        # the signed primitive takes the modification; the positive ones keep their entries, squared for "square"
        # and as 0/1 structure for the indicators
        positive_kind = {"W": "W", "pos": "W", "neg": "W", "square": "square", "ind": "ind", "ind_ge": "ind",
                         "ind_lt": "ind"}[kind]
        ops = [op.modified(kind if op.signed else positive_kind) for op in self.ops]
        if any(isinstance(op, Zero) for op in ops):
            return Zero(self.in_shape, self.out_shape)
        return Chain(ops)

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Chain:
        return Chain([op.to(dtype, device) for op in self.ops])

    def tensors(self) -> list[torch.Tensor]:
        return [t for op in self.ops for t in op.tensors()]


class Parallel(Operator):
    """Chains reading one input whose every (input, output) pair belongs to one chain, summed.

    Any two chains write disjoint slices of the output (each ends in an
    :class:`Embed`: the parts of a ``torch.cat`` of maps of one activation) or
    read disjoint slices of the input (each starts with a :class:`Narrow`: the
    units of a ReLU6 or a leaky ReLU read by one layer).  ``y = sum_m chains[m](x)``;
    every entry of the sum is an entry of one chain, so the modified operator
    is the sum of the chains' modified operators.
    """

    def __init__(self, chains: Sequence[Chain]):
        chains = list(chains)
        if len({(c.in_shape, c.out_shape) for c in chains}) != 1:
            raise ValueError("a parallel operator's chains must share their input and output shapes")
        outputs = [(c.ops[-1].dim, c.ops[-1].start, c.ops[-1].start + c.ops[-1].in_shape[c.ops[-1].dim])
                   if isinstance(c.ops[-1], Embed) else None for c in chains]
        inputs = [(c.ops[0].dim, c.ops[0].start, c.ops[0].start + c.ops[0].length)
                  if isinstance(c.ops[0], Narrow) else None for c in chains]
        for i in range(len(chains)):
            for j in range(i + 1, len(chains)):
                if not (_apart(outputs[i], outputs[j]) or _apart(inputs[i], inputs[j])):
                    raise ValueError("a parallel operator's chains must each write disjoint "
                                     "slices of the output or read disjoint slices of the input")
        self.chains = chains
        self.in_shape, self.out_shape = chains[0].in_shape, chains[0].out_shape
        self.signed = any(c.signed for c in chains)
        self.modifiable = all(c.modifiable for c in chains)

    def exact_modifications(self) -> bool:
        return all(c.exact_modifications() for c in self.chains)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functools.reduce(operator.add, [c.forward(x) for c in self.chains])

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return functools.reduce(operator.add, [c.transpose(y) for c in self.chains])

    def modified(self, kind: str) -> Operator:
        parts = [c.modified(kind) for c in self.chains]
        return Parallel([_ZeroChain(c) if isinstance(p, Zero) else p for c, p in zip(self.chains, parts, strict=True)])

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Parallel:
        return Parallel([c.to(dtype, device) for c in self.chains])

    def tensors(self) -> list[torch.Tensor]:
        return [t for c in self.chains for t in c.tensors()]

    @property
    def ops(self) -> list:
        return [op for c in self.chains for op in c.ops]


def _apart(a: tuple[int, int, int] | None, b: tuple[int, int, int] | None) -> bool:
    """Whether two ``(dim, start, stop)`` slices (None: not a slice) lie along one dimension without overlapping."""
    if a is None or b is None or a[0] != b[0]:
        return False
    return a[2] <= b[1] or b[2] <= a[1]


def _ZeroChain(chain: Chain) -> Chain:
    """A chain computing zero that keeps ``chain``'s first or final slice (so a
    :class:`Parallel` of it stays well-formed)."""
    first, last = chain.ops[0], chain.ops[-1]
    if isinstance(last, Embed):
        return Chain([Zero(chain.in_shape, last.in_shape), last])
    return Chain([first, Zero(first.out_shape, chain.out_shape)])
