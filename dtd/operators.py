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
a pooling, a reshape, ...) or a :class:`Chain` of primitives.  A chain's
modified matrix is the chain of its primitives' modified operators only when
every entry of the product is a single product of entries (one path from
each input to each output) and at most one primitive is signed; the lowering
(:mod:`dtd.graph`) folds batch norms into convolutions and falls back to a
dense matrix otherwise, so every chain it builds satisfies this.

Shapes: an operator maps ``(batch, *in_shape)`` to ``(batch, *out_shape)``;
its bias is not part of it (the graph's affine node holds one bias for the sum
of its branches).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "KINDS",
    "Operator",
    "Dense",
    "Conv",
    "Scale",
    "Pooling",
    "Reshape",
    "Embed",
    "Zero",
    "Chain",
    "Parallel",
    "vjp",
]

#: the element-wise modifications every operator can apply (see the module docstring)
KINDS = ("W", "pos", "neg", "square", "ind", "ind_ge", "ind_lt")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown operator modification {kind!r}; known: {KINDS}")
    return kind


def vjp(function: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple, y: torch.Tensor) -> torch.Tensor:
    """``J^T y`` of a *linear* ``function`` (``(batch, *in_shape) -> (batch, ...)``) by autograd, at any point (zeros)."""
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
    """

    in_shape: tuple
    out_shape: tuple
    signed: bool = False
    column_sparse: bool = False
    row_sparse: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """``W^T y``: ``(batch, *out_shape) -> (batch, *in_shape)``."""
        return vjp(self.forward, self.in_shape, y)

    def modified(self, kind: str) -> "Operator":
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

    def flat_weight(self) -> Optional[torch.Tensor]:
        """The ``(J, D)`` matrix on flat inputs when the operator holds it as one (a Linear, possibly after a flatten), else None."""
        return None

    def to(self, dtype: torch.dtype, device=None) -> "Operator":
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

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x):
        return x.new_zeros((x.shape[0],) + self.out_shape)

    def transpose(self, y):
        return y.new_zeros((y.shape[0],) + self.in_shape)

    def modified(self, kind):
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
    """``y = x W^T`` on flat activations: ``weight`` ``(J, D)``, every input connected to every output."""

    signed = True

    def __init__(self, weight: torch.Tensor):
        if weight.dim() != 2:
            raise ValueError(f"a dense operator needs a (J, D) weight, got shape {tuple(weight.shape)}")
        self.weight = weight
        self.in_shape, self.out_shape = (weight.shape[1],), (weight.shape[0],)
        self._modified: dict = {}

    def forward(self, x):
        return F.linear(x, self.weight)

    def transpose(self, y):
        return y @ self.weight

    def rows(self, index, dtype):
        return self.weight[index]

    def flat_weight(self):
        return self.weight

    def modified(self, kind):
        if kind not in self._modified:
            self._modified[kind] = Dense(_signed_modification(self.weight, _check_kind(kind)))
        return self._modified[kind]

    def to(self, dtype, device=None):
        return Dense(self.weight.to(dtype=dtype, device=device))

    def tensors(self):
        return [self.weight]


class Conv(Operator):
    """A 1-d or 2-d convolution without bias (zero padding), any stride, dilation and groups.

    ``weight`` ``(C_out, C_in / groups, *kernel)``; padding as ints.  The
    transpose is the convolution's input gradient (no dense matrix).
    """

    signed = True

    def __init__(self, weight, in_shape, *, stride, padding, dilation, groups, out_shape=None):
        self.weight = weight
        self.dim = weight.dim() - 2
        if self.dim not in (1, 2):
            raise ValueError(f"only 1-d and 2-d convolutions are supported, got a {self.dim}-d kernel")
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), int(groups)
        self.in_shape = tuple(in_shape)
        if out_shape is None:
            out_shape = self._conv(torch.zeros((1,) + self.in_shape, dtype=weight.dtype, device="meta"), weight.to("meta")).shape[1:]
        self.out_shape = tuple(out_shape)
        self._modified: dict = {}

    def _conv(self, x, weight):
        conv = F.conv1d if self.dim == 1 else F.conv2d
        return conv(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x):
        return self._conv(x, self.weight)

    def transpose(self, y):
        grad = torch.nn.grad.conv1d_input if self.dim == 1 else torch.nn.grad.conv2d_input
        return grad((y.shape[0],) + self.in_shape, self.weight, y, self.stride, self.padding, self.dilation, self.groups)

    def _with(self, weight) -> "Conv":
        return Conv(weight, self.in_shape, stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    out_shape=self.out_shape)

    def modified(self, kind):
        if kind not in self._modified:  # a kernel-sized tensor per kind, kept: DTD asks for the same ones at every call
            self._modified[kind] = self._with(_signed_modification(self.weight, _check_kind(kind)))
        return self._modified[kind]

    def to(self, dtype, device=None):
        return self._with(self.weight.to(dtype=dtype, device=device))

    def tensors(self):
        return [self.weight]


class Scale(Operator):
    """A per-channel scale ``y = x * s`` (batch norm's linear part): ``scale`` ``(C,)`` over ``(C, ...)``."""

    column_sparse = row_sparse = True

    def __init__(self, scale: torch.Tensor, shape: Sequence[int]):
        self.scale = scale
        self.in_shape = self.out_shape = tuple(shape)
        self.signed = bool((scale < 0).any())
        self._view = (-1,) + (1,) * (len(self.in_shape) - 1)

    def forward(self, x):
        return x * self.scale.reshape(self._view)

    def transpose(self, y):
        return y * self.scale.reshape(self._view)

    def modified(self, kind):
        return Scale(_signed_modification(self.scale, _check_kind(kind)), self.in_shape)

    def to(self, dtype, device=None):
        return Scale(self.scale.to(dtype=dtype, device=device), self.in_shape)

    def tensors(self):
        return [self.scale]


class Pooling(Operator):
    """A non-negative map whose every output is a weighted sum of its window with one weight: ``y_j = m_j * base(x)_j``.

    ``base`` is the module's own function (an average pooling, a mean, ...)
    and ``multiplier`` (``out_shape``, or None for 1) scales it; the
    modifications multiply it by the window's entry (``square``) or divide
    by it (``ind``: the window's 0/1 structure).  ``entry`` (``out_shape``)
    is the weight every input of output ``j``'s window has in ``base``.
    """

    def __init__(self, base, in_shape, out_shape, entry: torch.Tensor, *, column_sparse: bool, multiplier=None, name: str = ""):
        self.base, self.entry, self.multiplier, self.name = base, entry, multiplier, name
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.column_sparse = column_sparse

    def forward(self, x):
        y = self.base(x)
        return y if self.multiplier is None else y * self.multiplier

    def transpose(self, y):
        return vjp(self.base, self.in_shape, y if self.multiplier is None else y * self.multiplier)

    def _times(self, factor) -> "Pooling":
        multiplier = factor if self.multiplier is None else self.multiplier * factor
        return Pooling(self.base, self.in_shape, self.out_shape, self.entry, column_sparse=self.column_sparse,
                       multiplier=multiplier, name=self.name)

    def modified(self, kind):
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
                       multiplier=1.0 / self.entry, name=self.name)

    def to(self, dtype, device=None):
        def convert(t):
            return None if t is None or not isinstance(t, torch.Tensor) else t.to(dtype=dtype, device=device)

        return Pooling(self.base, self.in_shape, self.out_shape, convert(self.entry), column_sparse=self.column_sparse,
                       multiplier=convert(self.multiplier) if isinstance(self.multiplier, torch.Tensor) else self.multiplier,
                       name=self.name)

    def tensors(self):
        return [self.entry]


class Reshape(Operator):
    """A reshape (flatten, view, identity, eval-mode dropout): every entry 1, one per row and column."""

    column_sparse = row_sparse = True

    def __init__(self, in_shape, out_shape):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError(f"cannot reshape {self.in_shape} into {self.out_shape}")

    def forward(self, x):
        return x.reshape((x.shape[0],) + self.out_shape)

    def transpose(self, y):
        return y.reshape((y.shape[0],) + self.in_shape)

    def modified(self, kind):
        kind = _check_kind(kind)
        return Zero(self.in_shape, self.out_shape) if kind in ("neg", "ind_lt") else self


class Embed(Operator):
    """Place the input at ``[start, start + n)`` of dimension ``dim`` of a larger zero tensor (one part of a ``torch.cat``)."""

    column_sparse = row_sparse = True

    def __init__(self, in_shape, out_shape, dim: int, start: int):
        self.in_shape, self.out_shape, self.dim, self.start = tuple(in_shape), tuple(out_shape), dim, start

    def forward(self, x):
        out = x.new_zeros((x.shape[0],) + self.out_shape)
        out.narrow(self.dim + 1, self.start, self.in_shape[self.dim]).copy_(x)
        return out

    def transpose(self, y):
        return y.narrow(self.dim + 1, self.start, self.in_shape[self.dim]).clone()

    def modified(self, kind):
        kind = _check_kind(kind)
        return Zero(self.in_shape, self.out_shape) if kind in ("neg", "ind_lt") else self


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
        for lower, upper in zip(ops[:-1], ops[1:]):
            if tuple(lower.out_shape) != tuple(upper.in_shape):
                raise ValueError(f"chain shapes do not match: {lower.out_shape} -> {upper.in_shape}")
        self.ops = ops
        self.in_shape, self.out_shape = ops[0].in_shape, ops[-1].out_shape
        self.signed = any(op.signed for op in ops)
        self.column_sparse = all(op.column_sparse for op in ops)
        self.row_sparse = all(op.row_sparse for op in ops)
        self._modified: dict = {}

    def n_signed(self) -> int:
        return sum(op.signed for op in self.ops)

    def single_path(self) -> bool:
        """Every (input, output) pair is joined by at most one path of non-zero entries.

        True when, for some primitive ``m``, every primitive before it feeds
        each input into at most one output (column-sparse) and every one after
        it reads each output from at most one input (row-sparse).
        """
        n = len(self.ops)
        for m in range(n):
            if all(op.column_sparse for op in self.ops[:m]) and all(op.row_sparse for op in self.ops[m + 1 :]):
                return True
        return False

    def exact_modifications(self) -> bool:
        """Whether :meth:`modified` is exact for this chain (one path, at most one signed primitive)."""
        return self.single_path() and self.n_signed() <= 1

    def forward(self, x):
        for op in self.ops:
            x = op.forward(x)
        return x

    def transpose(self, y):
        for op in reversed(self.ops):
            y = op.transpose(y)
        return y

    def rows(self, index, dtype):
        weight = self.flat_weight()
        if weight is None:
            return super().rows(index, dtype)
        return weight[index].reshape(tuple(index.shape) + tuple(self.in_shape))

    def flat_weight(self):
        """A chain of reshapes ending in a Linear: the Linear's matrix (on the flattened input), else None."""
        if isinstance(self.ops[-1], Dense) and all(isinstance(op, Reshape) for op in self.ops[:-1]):
            return self.ops[-1].weight
        return None

    def modified(self, kind):
        kind = _check_kind(kind)
        if kind not in self._modified:
            self._modified[kind] = self._modify(kind)
        return self._modified[kind]

    def _modify(self, kind):
        if not self.exact_modifications():
            raise ValueError("this chain's entries are not single products: its modified operators are not the chain's modifications")
        if not self.signed and kind in ("neg", "ind_lt"):
            return Zero(self.in_shape, self.out_shape)
        # the signed primitive takes the modification; the positive ones keep their entries, squared for "square"
        # and as 0/1 structure for the indicators
        positive_kind = {"W": "W", "pos": "W", "neg": "W", "square": "square", "ind": "ind", "ind_ge": "ind", "ind_lt": "ind"}[kind]
        ops = [op.modified(kind if op.signed else positive_kind) for op in self.ops]
        if any(isinstance(op, Zero) for op in ops):
            return Zero(self.in_shape, self.out_shape)
        return Chain(ops)

    def to(self, dtype, device=None):
        return Chain([op.to(dtype, device) for op in self.ops])

    def tensors(self):
        return [t for op in self.ops for t in op.tensors()]


class Parallel(Operator):
    """Chains reading one input whose outputs are disjoint slices (the parts of a ``torch.cat`` of maps of one activation).

    ``y = sum_m chains[m](x)``; each ends in an :class:`Embed` into its own
    slice, so every entry of the sum is an entry of one chain and the
    modified operator is the sum of the chains' modified operators.
    """

    def __init__(self, chains: Sequence[Chain]):
        chains = list(chains)
        slices = []
        for chain in chains:
            last = chain.ops[-1]
            if not isinstance(last, Embed):
                raise ValueError("a parallel operator's chains must each end in an Embed (a slice of a torch.cat)")
            slices.append((last.dim, last.start, last.start + last.in_shape[last.dim]))
        if len({(c.in_shape, c.out_shape) for c in chains}) != 1 or len({d for d, _, _ in slices}) != 1:
            raise ValueError("a parallel operator's chains must share their input and output shapes and concatenation axis")
        ordered = sorted(slices, key=lambda s: s[1])
        if any(prev[2] > nxt[1] for prev, nxt in zip(ordered[:-1], ordered[1:])):
            raise ValueError("a parallel operator's chains must write disjoint slices")
        self.chains = chains
        self.in_shape, self.out_shape = chains[0].in_shape, chains[0].out_shape
        self.signed = any(c.signed for c in chains)

    def exact_modifications(self) -> bool:
        return all(c.exact_modifications() for c in self.chains)

    def forward(self, x):
        return sum(c.forward(x) for c in self.chains)

    def transpose(self, y):
        return sum(c.transpose(y) for c in self.chains)

    def modified(self, kind):
        return Parallel([c.modified(kind) if not isinstance(c.modified(kind), Zero) else _ZeroChain(c) for c in self.chains])

    def to(self, dtype, device=None):
        return Parallel([c.to(dtype, device) for c in self.chains])

    def tensors(self):
        return [t for c in self.chains for t in c.tensors()]

    @property
    def ops(self) -> list:
        return [op for c in self.chains for op in c.ops]


def _ZeroChain(chain: Chain) -> Chain:
    """A chain computing zero that keeps ``chain``'s final slice (so a :class:`Parallel` of it stays well-formed)."""
    last = chain.ops[-1]
    return Chain([Zero(chain.in_shape, last.in_shape), last])
