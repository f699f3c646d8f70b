"""Building a :class:`~dtd.graph.GraphNetwork` while the exported graph is read: values, DTD layers, non-linearities.

Every value of the walk is one of

* an **activation** (:class:`Act`): a node of the network -- the input, a
  ReLU's output or a max pooling's;
* a **linear value** (:class:`Lin`): ``sum_b ops_b(h_b) + const``, a sum of
  operator chains applied to activations plus a constant, built up by the
  affine operations between two non-linearities;
* a **constant**: a tensor computed from parameters, buffers and literals
  only (folded in float64: batch-norm statistics, a ``weight_norm``
  parametrisation, a pruning mask times its weight);
* a Python value (sizes, flags) or a tuple of values (an operation with
  several outputs).

A non-linearity applied to a linear value turns it into an affine node (one
DTD layer, :meth:`Builder.affine_node`); piecewise-linear activations become
ReLU units (:meth:`Builder.units`).  All operators are built in float64 from
float64 copies of the parameters; the network is converted to the model's
dtype once, at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..graph import AffineNode, Branch, InputNode, MaxPoolNode, Node, ReLUNode
from ..operators import Chain, Embed, IndexMap, Multiply, Narrow, Operator, Parallel, Reshape, Scale, Zero
from . import compose
from .capture import BATCH, Captured
from .compose import dense_bytes, dense_chain, dense_work, describe_ops, merge_convolutions, simplify, size_text

if TYPE_CHECKING:  # annotations only (postponed): no runtime import
    from typing_extensions import TypeIs

__all__ = ["Act", "Lin", "LinBranch", "Value", "Refused", "Builder", "Unit", "per_point", "is_value"]


class Refused(TypeError):
    """An operation DTD's lowering does not take (raised as ``TypeError``, its message naming the operation)."""


@dataclasses.dataclass(frozen=True)
class Act:
    """An activation: node ``id`` of the network, of per-point ``shape``."""

    id: int
    shape: tuple[int, ...]


#: one summand of a linear value: ``(source node id, operators applied in order, each one's module name)``
LinBranch = tuple[int, tuple[Operator, ...], tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class Lin:
    """``sum_b ops_b(h_b) + const``; ``branches`` are
    ``(source id, ops, module names)``, ``const`` float64 or None (zero)."""

    branches: tuple[LinBranch, ...]
    const: torch.Tensor | None
    shape: tuple[int, ...]


Value = Act | Lin


@dataclasses.dataclass(frozen=True)
class Unit:
    """One ReLU unit ``s * relu(sigma * z + beta)`` of a piecewise-linear
    activation (numbers or per-channel tensors)."""

    sigma: float | torch.Tensor = 1.0
    beta: float | torch.Tensor = 0.0
    s: float | torch.Tensor = 1.0


def is_value(v: object) -> TypeIs[Value]:
    return isinstance(v, (Act, Lin))


def per_point(const: float | torch.Tensor, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """A constant broadcast against activations of per-point ``shape`` (graph shape ``(batch, *shape)``), float64.

    A constant with a leading batch axis (of size 1, or of the example's
    batch size with equal rows) drops it; one that differs over the batch is
    refused (it would depend on which points are explained together).
    """
    c = const if isinstance(const, torch.Tensor) else torch.tensor(float(const), dtype=torch.float64)
    c = c.to(torch.float64)
    if c.dim() == len(shape) + 1:
        if c.shape[0] == BATCH and not bool((c == c[:1]).all()):
            raise Refused(f"{where} uses a constant that differs between the points of a batch")
        c = c[0] if c.shape[0] in (1, BATCH) else c
    if c.dim() > len(shape):
        raise Refused(f"{where} broadcasts a constant of shape {tuple(c.shape)} against activations of shape {shape}")
    try:
        return c.expand(shape).clone()
    except RuntimeError:
        raise Refused(
            f"{where} combines a constant of shape {tuple(c.shape)} with activations of shape {shape}"
        ) from None


def _factor_op(factor: float | torch.Tensor, shape: tuple[int, ...], device: torch.device) -> Operator | None:
    """Multiplication by a number, a per-channel tensor ``(C,)`` or an element-wise one; None for 1."""
    if isinstance(factor, torch.Tensor):
        factor = factor.to(dtype=torch.float64, device=device)
        if factor.numel() == 1:
            factor = float(factor.reshape(()))
        elif len(shape) >= 1 and factor.dim() == 1 and factor.shape[0] == shape[0]:
            return Scale(factor, shape)
        else:
            return Multiply(factor.expand(shape).clone(), shape)
    factor = float(factor)
    if factor == 1.0:
        return None
    if len(shape) == 0:
        return Multiply(torch.full((), factor, dtype=torch.float64, device=device), shape)
    return Scale(torch.full((shape[0],), factor, dtype=torch.float64, device=device), shape)


class Builder:
    """The network's nodes as the walk creates them (node 0 is the input)."""

    def __init__(self, captured: Captured, input_shape: tuple[int, ...], memory_budget: int):
        self.captured = captured
        self.device = captured.device
        self.memory_budget = memory_budget
        self.nodes: list[Node] = [InputNode(0, tuple(input_shape))]
        self._materialised: dict[int, tuple[Lin, int]] = {}
        #: the module the graph node being lowered came from: the name its operators record (reports, messages)
        self.module = ""
        #: id(linear value) -> (the units' ReLU activation, units, offset) of a monotone activation's output
        self._monotone: dict[int, tuple[Act, tuple[Unit, ...], float | torch.Tensor, Lin]] = {}

    # ------------------------------------------------------------------ linear values
    def lin(self, value: Value) -> Lin:
        if isinstance(value, Lin):
            return value
        return Lin(((value.id, (), ()),), None, value.shape)

    def apply(self, value: Value, op: Operator, name: str | None = None, bias: torch.Tensor | None = None,
              const_function: Callable[..., torch.Tensor] | None = None) -> Lin:
        """``op(value) + bias``: the operator appended to every branch, the constant pushed through it exactly.

        ``name``: the module the operator comes from (default: the current
        node's).  ``const_function`` replaces ``op`` for the constant (an affine
        map whose offset is not a bias, e.g. a padding with a value).
        """
        name = self.module if name is None else name
        lin = self.lin(value)
        if tuple(op.in_shape) != tuple(lin.shape):
            raise ValueError(f"internal: an operator for shape {op.in_shape} applied "
                             f"to activations of shape {lin.shape}")
        const = None
        if const_function is not None:
            base = (
                lin.const if lin.const is not None else torch.zeros(lin.shape, dtype=torch.float64, device=self.device)
            )
            const = const_function(base.unsqueeze(0)).squeeze(0)
        elif lin.const is not None:
            const = op.forward(lin.const.unsqueeze(0)).squeeze(0)
        if bias is not None:
            bias = bias.to(dtype=torch.float64, device=self.device)
            const = bias.expand(op.out_shape).clone() if const is None else const + bias
        branches = tuple((source, ops + (op,), names + (name,)) for source, ops, names in lin.branches)
        return Lin(branches, const, tuple(op.out_shape))

    def scale(self, value: Value, factor: float | torch.Tensor, name: str | None = None) -> Lin:
        op = _factor_op(factor, tuple(value.shape), self.device)
        return self.lin(value) if op is None else self.apply(value, op, name)

    def add(self, left: Value | float | torch.Tensor, right: Value | float | torch.Tensor, where: str,
            shape: tuple[int, ...]) -> Lin:
        """``left + right`` of per-point ``shape``: values (broadcast to it by :meth:`expand`) and constants."""
        parts = []
        const = None
        for v in (left, right):
            if isinstance(v, (Act, Lin)):
                if tuple(v.shape) != tuple(shape):
                    v = self.expand(v, shape, where)
                parts.append(self.lin(v))
            else:
                c = per_point(v, shape, where)
                const = c if const is None else const + c
        branches = tuple(b for p in parts for b in p.branches)
        consts = [p.const for p in parts if p.const is not None] + ([const] if const is not None else [])
        total = None
        for c in consts:
            total = c.clone() if total is None else total + c
        return Lin(branches, total, tuple(shape))

    def expand(self, value: Value, shape: tuple[int, ...], where: str) -> Lin:
        """``value`` broadcast to per-point ``shape`` (an index map): a ``+`` of differently shaped activations."""
        if len(value.shape) != len(shape):
            raise Refused(f"{where} broadcasts activations of shape {value.shape} against {shape} (different ranks)")
        target = tuple(shape)
        op = IndexMap(lambda t: t.expand((t.shape[0],) + target), value.shape, target,
                      injective=tuple(value.shape) == target, name="expand",
                      spatial_only=len(target) > 1 and value.shape[0] == target[0])
        return self.apply(value, op)

    # ------------------------------------------------------------------ DTD layers
    def affine_node(self, lin: Lin, where: str) -> int:
        """The affine node (a DTD layer) computing ``lin``, created once per linear value."""
        key = id(lin)
        if key in self._materialised:
            return self._materialised[key][1]
        grouped: dict[int, list[tuple[tuple[Operator, ...], tuple[str, ...]]]] = {}
        for source, ops, names in lin.branches:
            if not ops:  # an activation added as it is (a skip connection): the identity
                shape = self.nodes[source].shape
                ops, names = (Reshape(shape, shape),), ("skip",)
            grouped.setdefault(source, []).append((ops, names))
        branches: list[Branch] = []
        modules: list[str] = []
        for source, group in grouped.items():
            chains = [self.chain(ops, names, where) for ops, names in group]
            group_names = [n for _, ns in group for n in ns]
            modules.extend(n for n in group_names if n)
            nonzero = [c for c in chains if not (len(c.ops) == 1 and isinstance(c.ops[0], Zero))]
            chains = nonzero or chains[:1]  # parts that never reach this layer (a slice past them) are dropped
            op = chains[0] if len(chains) == 1 else self.merged(chains, group_names, where)
            branches.append(Branch(source, op))
        signed = [n for (_, ops, names) in lin.branches for op, n in zip(ops, names, strict=True) if op.signed and n]
        name = signed[0] if signed else (modules[0] if modules else "skip")
        node_id = len(self.nodes)
        bias = (
            lin.const.clone()
            if lin.const is not None
            else torch.zeros(lin.shape, dtype=torch.float64, device=self.device)
        )
        self.nodes.append(AffineNode(node_id, lin.shape, tuple(branches), bias, name, tuple(dict.fromkeys(modules))))
        self._materialised[key] = (lin, node_id)  # the value is kept alive, so its id is not reused
        return node_id

    def _dense_or_refused(self, op: Operator, what: str, names: Iterable[str], where: str) -> Chain:
        """``op`` folded into one dense matrix, or the ``ValueError`` saying why it cannot be (memory, time)."""
        listed = ", ".join(repr(n) for n in dict.fromkeys(names) if n and n != "skip") or "(no module)"
        n_in, n_out = op.in_features, op.out_features
        start = (f"the affine map before {where} ({what}; modules {listed}) has no exact operator form for DTD's "
                 "modified weights (W+, W-, W*W: its entries are sums of several products of its parts'), and its "
                 f"dense matrix ({n_in:,} inputs x {n_out:,} outputs)")
        needed = dense_bytes(op)
        if needed > self.memory_budget:
            raise ValueError(f"{start} would need {size_text(needed)}, more than memory_budget={self.memory_budget:,}; "
                             "pass a larger memory_budget= (where the memory is there), or put a ReLU between the maps")
        cost, limit = dense_work(op), compose.DENSE_WORK_LIMIT  # read at every fold: raised where the time is there
        if cost > limit:
            raise ValueError(f"{start} would take about {cost:.2g} multiply-adds to compute, more than "
                             f"dtd.lowering.compose.DENSE_WORK_LIMIT = {limit:.2g}; raise it where the time is "
                             "there, or put a ReLU between the maps")
        return dense_chain(op, self.device)

    def chain(self, ops: Sequence[Operator], names: Sequence[str], where: str) -> Chain:
        """One branch's operators as a chain with exact modified forms
        (rewritten, or dense within ``memory_budget``)."""
        chain = Chain(simplify(ops))
        if chain.exact_modifications():
            return chain
        return self._dense_or_refused(chain, describe_ops(chain.ops), names, where)

    def merged(self, chains: list[Chain], names: list[str], where: str) -> Chain | Parallel:
        """Several maps of one activation summed: one operator (its layer input holds the activation once)."""
        try:
            parallel = Parallel(chains)
        except ValueError:
            parallel = None
        if parallel is not None and parallel.exact_modifications():
            return parallel
        merged = merge_convolutions(chains)
        if merged is not None:
            return merged
        return self._dense_or_refused(_Sum(chains), "a sum of several maps of one activation", names, where)

    # ------------------------------------------------------------------ non-linearities
    def source_of(self, value: Value, where: str) -> int:
        """The node a non-linearity reads: the affine node of a linear value (an
        identity layer for a bare activation)."""
        if isinstance(value, Lin):
            return self.affine_node(value, where)
        node = self.nodes[value.id]
        if isinstance(node, AffineNode):
            return value.id
        return self.affine_node(self.lin(value), where)

    def relu(self, value: Value, where: str, name: str = "") -> Act:
        if isinstance(value, Act) and self._non_negative(value.id):
            return value  # relu of a ReLU's (or a max pool of a ReLU's) output is that output
        source = self.source_of(value, where)
        node_id = len(self.nodes)
        self.nodes.append(ReLUNode(node_id, tuple(value.shape), source, name))
        return Act(node_id, tuple(value.shape))

    def _non_negative(self, node_id: int) -> bool:
        node = self.nodes[node_id]
        if isinstance(node, ReLUNode):
            return True
        return isinstance(node, MaxPoolNode) and self._non_negative(node.source)

    def units(self, value: Value, units: Sequence[Unit], offset: float | torch.Tensor, where: str, name: str = "", *,
              monotone: bool = False) -> Value:
        """``offset + sum_m s_m * relu(sigma_m * z + beta_m)``: a piecewise-linear activation of ``z`` as ReLU units.

        One affine node stacks the units' pre-activations along a new first
        axis (``(M, *shape)``), one ReLU node follows, and the result is the
        linear value reading each unit's slice.  A plain ReLU is one node of
        the value's own shape.  ``monotone``: the activation is non-decreasing,
        so a max pooling of it pools its units (:meth:`max_pool`).
        """
        shape = tuple(value.shape)
        plain = len(units) == 1 and _is(units[0].sigma, 1.0) and _is(units[0].beta, 0.0) and _is(units[0].s, 1.0)
        if plain and _is(offset, 0.0):
            return self.relu(value, where, name)
        z = self.lin(value)
        m = len(units)
        stacked = (m,) + shape
        branches: list[LinBranch] = []
        consts = []
        for k, unit in enumerate(units):
            lifted = self.scale(z, unit.sigma)
            place = (Reshape(shape, (1,) + shape), Embed((1,) + shape, stacked, 0, k))
            branches.extend((src, ops + place, names + ("", "")) for src, ops, names in lifted.branches)
            lifted_const = (
                lifted.const
                if lifted.const is not None
                else torch.zeros(shape, dtype=torch.float64, device=self.device)
            )
            consts.append(lifted_const + per_point(unit.beta, shape, where).to(self.device))
        pre = Lin(tuple(branches), torch.stack(consts), stacked)
        relu = self.relu(pre, where, name)
        out_branches = []
        for k, unit in enumerate(units):
            ops: tuple[Operator, ...] = (Narrow(stacked, 0, k, 1), Reshape((1,) + shape, shape))
            factor = _factor_op(unit.s, shape, self.device)
            if factor is not None:
                ops = ops + (factor,)
            out_branches.append((relu.id, ops, ("",) * len(ops)))
        const = None if _is(offset, 0.0) else per_point(offset, shape, where).to(self.device)
        result = Lin(tuple(out_branches), const, shape)
        if monotone:
            self._monotone[id(result)] = (relu, tuple(units), offset, result)
        return result

    def max_pool(self, value: Value, where: str, *, dim: int, name: str = "", **params: Any) -> Value:
        """A max pooling of ``value``; of a monotone activation's units, their max / min poolings combined.

        For a non-decreasing ``f(z) = offset + sum_m s_m relu(sigma_m z + beta_m)``,
        ``maxpool(f(z)) = f(maxpool(z))``, and each unit of it is the max
        pooling of that unit (``sigma_m > 0``) or its min pooling (``sigma_m <
        0``): one signed pooling node of the units (:class:`~dtd.graph.MaxPoolNode`
        ``signs``), so the next layer reads non-negative values, as after a ReLU.
        """
        monotone = self._monotone.get(id(value)) if isinstance(value, Lin) else None
        if monotone is not None and monotone[3] is value:
            relu, units, offset, _ = monotone
            signs = tuple(1.0 if _positive(u.sigma) else -1.0 for u in units)
            pooled = self._pool_node(relu.id, relu.shape, dim, name, dict(params, signs=signs))
            shape = pooled.shape[1:]
            branches = []
            for k, unit in enumerate(units):
                ops: tuple[Operator, ...] = (Narrow(pooled.shape, 0, k, 1), Reshape((1,) + shape, shape))
                factor = _factor_op(unit.s, shape, self.device)
                if factor is not None:
                    ops = ops + (factor,)
                branches.append((pooled.id, ops, ("",) * len(ops)))
            const = None if _is(offset, 0.0) else per_point(offset, shape, where).to(self.device)
            return Lin(tuple(branches), const, shape)
        source = self.affine_node(value, where) if isinstance(value, Lin) else value.id
        return self._pool_node(source, tuple(value.shape), dim, name, params)

    def _pool_node(self, source: int, source_shape: tuple[int, ...], dim: int, name: str,
                   params: dict[str, Any]) -> Act:
        node_id = len(self.nodes)
        probe = MaxPoolNode(node_id, (), source, dim, name=name, **params)
        out, _ = probe.pool(torch.zeros((1,) + tuple(source_shape), dtype=torch.float64, device=self.device))
        shape = tuple(out.shape[1:])
        self.nodes.append(dataclasses.replace(probe, shape=shape))
        return Act(node_id, shape)


def _positive(value: float | torch.Tensor) -> bool:
    if isinstance(value, torch.Tensor):
        if not (bool((value > 0).all()) or bool((value < 0).all())):
            raise ValueError("internal: a unit's sigma must have one sign")
        return bool((value > 0).all())
    return float(value) > 0


def _is(value: float | torch.Tensor, number: float) -> bool:
    if isinstance(value, torch.Tensor):
        return bool((value == number).all())
    return float(value) == number


class _Sum(Chain):
    """The sum of chains reading one input (only pushed through to build a dense matrix)."""

    def __init__(self, chains: Sequence[Chain]):
        self.members = chains
        self.ops = [Reshape(chains[0].in_shape, chains[0].in_shape)]
        self.in_shape, self.out_shape = chains[0].in_shape, chains[0].out_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functools.reduce(operator.add, (c.forward(x) for c in self.members))

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        return functools.reduce(operator.add, (c.transpose(y) for c in self.members))

