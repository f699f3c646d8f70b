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

from typing import Callable, Optional

import torch

from ..operators import IndexMap
from .build import Builder, Refused, is_value
from .capture import BATCH, operation_name

__all__ = ["HANDLERS", "KIND", "LIKE", "IGNORED", "handles", "operations", "bind", "shape_of", "where", "module_of", "input_value",
           "graph_dim", "f64", "number_or_const", "check_batch", "tup", "index_map"]

Handler = Callable[[Builder, torch.fx.Node, dict], object]
#: ATen operation name (without namespace and overload) -> its handler
HANDLERS: dict[str, Handler] = {}
#: ATen operation name -> "affine" or "piecewise linear"
KIND: dict[str, str] = {}


def handles(kind: str, *names: str):
    """Register a handler for the ATen operations ``names`` of ``kind`` (``"affine"``, ``"piecewise linear"``)."""
    if kind not in ("affine", "piecewise linear"):
        raise ValueError(f"internal: unknown kind of operation {kind!r}")

    def register(function: Handler) -> Handler:
        for name in names:
            HANDLERS[name] = function
            KIND[name] = kind
        return function

    return register


def operations(kind: str) -> frozenset:
    """The operations of one kind the lowering takes (:mod:`dtd.lowering.linear`, :mod:`dtd.lowering.hinges`)."""
    return frozenset(name for name, k in KIND.items() if k == kind)


def bind(node: torch.fx.Node, args: tuple, kwargs: dict) -> dict:
    """The operation's arguments by their schema names, defaults filled in."""
    schema = node.target._schema
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


def shape_of(node: torch.fx.Node, index: Optional[int] = None) -> tuple:
    """The per-point shape of a node's (``index``-th) output."""
    val = node.meta["val"]
    if index is not None:
        val = val[index]
    return tuple(int(s) for s in val.shape[1:])


def where(b: Builder, node) -> str:
    return b.captured.where(node)


def module_of(b: Builder, node) -> str:
    return b.captured.module_name(node)[0]


def input_value(b: Builder, node, v, what: str = "input"):
    if not is_value(v):
        raise Refused(f"{where(b, node)}: its {what} is not computed from the model's input")
    return v


def graph_dim(b: Builder, node, dim: int, rank: int) -> int:
    """A graph dimension (batch is 0) normalised; refused when it is the batch dimension."""
    d = int(dim) % rank
    if d == 0:
        raise Refused(f"{where(b, node)} acts along the batch dimension; DTD explains each point on its own")
    return d


def f64(t) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float64)


def number_or_const(v):
    """A number as it is, a constant tensor in float64."""
    return v if not isinstance(v, torch.Tensor) else f64(v)


def check_batch(b: Builder, node, out_graph_shape) -> None:
    if int(out_graph_shape[0]) != BATCH:
        raise Refused(f"{where(b, node)} mixes the batch dimension into another (a reshape or view across points); "
                      "keep dimension 0 the batch")


def index_map(b: Builder, node, x, function, *, injective: bool, spatial_only: bool = False, channel_only: bool = False,
               transpose_function=None, out_shape=None, **attributes):
    out = shape_of(node) if out_shape is None else out_shape
    op = IndexMap(function, x.shape, out, injective=injective, name=operation_name(node), spatial_only=spatial_only,
                  channel_only=channel_only, transpose_function=transpose_function)
    for key, value in attributes.items():
        setattr(op, key, value)
    return b.apply(x, op)


def tup(v, n):
    return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v),) * n


#: operations of the graph that compute nothing the model returns (export's own shape and value assertions)
IGNORED = frozenset(("_assert_tensor_metadata", "_assert_async", "_assert_scalar", "_functional_assert_async",
                     "_functional_assert_scalar", "sym_constrain_range", "sym_constrain_range_for_size", "_print"))

#: operations whose result is a constant of the input's shape (``zeros_like(x)``): they do not depend on its values
LIKE = frozenset(("zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full", "new_empty"))
