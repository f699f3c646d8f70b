"""What each ATen operation of an exported graph is for DTD: the table of handlers and the helpers they share.

Every operation that reads the model's input (directly or through other
operations) falls in one of three classes; operations on parameters,
buffers and literals alone are evaluated once, in float64 (:mod:`dtd.lowering.walk`).

**Affine** (:mod:`dtd.lowering.linear`): convolutions of any dimension, transposed
included, any groups; ``linear``, ``addmm``, ``mm``, ``matmul`` with a
constant matrix; batch norm in eval mode; and every parameter-free linear
map -- views and reshapes, permutations and transposes (a channel shuffle),
slices, selections and splits, ``cat`` / ``stack``, paddings (constant,
reflect, replicate, circular), repeats and broadcasts, flips and rolls,
pixel (un)shuffles, nearest and (bi/tri)linear / bicubic upsampling (either
``align_corners``), average and adaptive average pooling, means and sums over
non-batch dimensions, ``+`` / ``-`` of activations and constants, negation,
multiplication and division by constants, ``where`` / ``masked_fill`` with a
constant mask, eval-mode dropout.

**Piecewise linear** (:mod:`dtd.lowering.hinges`), lowered exactly into ReLU
units ``offset + sum_m s_m relu(sigma_m z + beta_m)`` (:class:`~dtd.lowering.build.Unit`):

========================  ===============================================
``relu``                  ``relu(z)``
``hardtanh(lo, hi)``      ``lo + relu(z - lo) - relu(z - hi)``; ReLU6: ``relu(z) - relu(z - 6)``
``clamp`` / ``clamp_min`` the same with one or both bounds; ``maximum(z, c) = c + relu(z - c)``
``leaky_relu(a)``         ``relu(z) - a relu(-z)``; ``prelu`` with a per-channel ``a``
``abs``                   ``relu(z) + relu(-z)``
``hardsigmoid``           ``relu(z / 6 + 1/2) - relu(z / 6 - 1/2)``
``maximum(a, b)``         ``a + relu(b - a)`` (both activations)
========================  ===============================================

and max pooling (1-d, 2-d, adaptive; a global ``amax``): winner-take-all, its
argmax pattern part of the linear region.  The DTD layer after such an
activation reads all its units (``a = [relu(z), relu(z - 6)]`` for a ReLU6),
with the weights ``[W, -W]``.

**Anything else** is refused (:mod:`dtd.lowering.refusals`, ``TypeError``) by the operation's name as the
graph holds it, the module it came from and why: smooth activations
(``silu``, ``gelu``, ``sigmoid``, ``tanh``, ...), normalisations that divide by
an input's own statistics (``layer_norm``, ``group_norm``, ...), ``softmax``,
products of two activations (attention, squeeze-and-excitation gates),
data-dependent indexing, discontinuous maps.  Batch norm, dropout and
``rrelu`` in training mode are refused with ``ValueError`` ("call
model.eval()").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import torch

from ..operators import IndexMap
from .build import Builder, Lin, Refused, Value, is_value
from .capture import BATCH, operation_name

__all__ = ["HANDLERS", "KIND", "LIKE", "IGNORED", "Args", "handles", "operations", "aten_operation", "bind",
           "shape_of", "where", "module_of", "input_value", "graph_dim", "f64", "number_or_const", "check_batch", "tup",
           "index_map"]

#: a handler's arguments by their schema names (:func:`bind`): values, constant tensors, numbers, lists of them, None
Args = dict[str, Any]
#: lowers one graph node; what it returns is the node's value for the nodes that read it (a value, a constant, a
#: number, or a tuple or list of those)
Handler = Callable[[Builder, torch.fx.Node, Args], object]
_H = TypeVar("_H", bound=Handler)
#: ATen operation name (without namespace and overload) -> its handler
HANDLERS: dict[str, Handler] = {}
#: ATen operation name -> "affine" or "piecewise linear"
KIND: dict[str, str] = {}


def handles(kind: str, *names: str) -> Callable[[_H], _H]:
    """Register a handler for the ATen operations ``names`` of ``kind`` (``"affine"``, ``"piecewise linear"``)."""
    if kind not in ("affine", "piecewise linear"):
        raise ValueError(f"internal: unknown kind of operation {kind!r}")

    def register(function: _H) -> _H:
        for name in names:
            HANDLERS[name] = function
            KIND[name] = kind
        return function

    return register


def operations(kind: str) -> frozenset[str]:
    """The operations of one kind the lowering takes (:mod:`dtd.lowering.linear`, :mod:`dtd.lowering.hinges`)."""
    return frozenset(name for name, k in KIND.items() if k == kind)


def aten_operation(node: torch.fx.Node) -> torch._ops.OpOverload:
    """The ATen operation a ``call_function`` node of the exported (decomposed) graph calls."""
    return cast(torch._ops.OpOverload, node.target)


def bind(node: torch.fx.Node, args: Sequence[Any], kwargs: dict[str, Any]) -> Args:
    """The operation's arguments by their schema names, defaults filled in."""
    schema = aten_operation(node)._schema
    bound = {}
    for i, argument in enumerate(schema.arguments):
        if i < len(args):
            bound[argument.name] = args[i]
        elif argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
        else:
            bound[argument.name] = None
    return bound


def shape_of(node: torch.fx.Node, index: int | None = None) -> tuple[int, ...]:
    """The per-point shape of a node's (``index``-th) output."""
    val = node.meta["val"]
    if index is not None:
        val = val[index]
    return tuple(int(s) for s in val.shape[1:])


def where(b: Builder, node: torch.fx.Node) -> str:
    return b.captured.where(node)


def module_of(b: Builder, node: torch.fx.Node) -> str:
    return b.captured.module_name(node)[0]


def input_value(b: Builder, node: torch.fx.Node, v: object, what: str = "input") -> Value:
    if not is_value(v):
        raise Refused(f"{where(b, node)}: its {what} is not computed from the model's input")
    return v


def graph_dim(b: Builder, node: torch.fx.Node, dim: int, rank: int) -> int:
    """A graph dimension (batch is 0) normalised; refused when it is the batch dimension."""
    d = int(dim) % rank
    if d == 0:
        raise Refused(f"{where(b, node)} acts along the batch dimension; DTD explains each point on its own")
    return d


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64)


def number_or_const(v: float | torch.Tensor) -> float | torch.Tensor:
    """A number as it is, a constant tensor in float64."""
    return v if not isinstance(v, torch.Tensor) else f64(v)


def check_batch(b: Builder, node: torch.fx.Node, out_graph_shape: Sequence[int]) -> None:
    if int(out_graph_shape[0]) != BATCH:
        raise Refused(f"{where(b, node)} mixes the batch dimension into another (a reshape or view across points); "
                      "keep dimension 0 the batch")


def index_map(b: Builder, node: torch.fx.Node, x: Value, function: Callable[..., torch.Tensor], *,
              injective: bool, spatial_only: bool = False, channel_only: bool = False,
              transpose_function: Callable[..., torch.Tensor] | None = None,
              out_shape: tuple[int, ...] | None = None, **attributes: object) -> Lin:
    out = shape_of(node) if out_shape is None else out_shape
    op = IndexMap(function, x.shape, out, injective=injective, name=operation_name(node), spatial_only=spatial_only,
                  channel_only=channel_only, transpose_function=transpose_function)
    for key, value in attributes.items():
        setattr(op, key, value)
    return b.apply(x, op)


def tup(v: int | tuple[int, ...] | list[int], n: int) -> tuple[int, ...]:
    return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v),) * n


#: operations of the graph that compute nothing the model returns (export's own shape and value assertions)
IGNORED = frozenset(("_assert_tensor_metadata", "_assert_async", "_assert_scalar", "_functional_assert_async",
                     "_functional_assert_scalar", "sym_constrain_range", "sym_constrain_range_for_size", "_print"))

#: operations whose result is a constant of the input's shape (``zeros_like(x)``): they do not depend on its values
LIKE = frozenset(("zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full",
                  "new_empty"))
