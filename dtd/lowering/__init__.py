"""Lowering users' models exactly into DTD's networks, from the graph ``torch.export`` captures.

One path for every model, from an MLP in an ``nn.Sequential`` to a U-Net:

1. :mod:`~dtd.lowering.capture` -- ``torch.export`` runs the model's Python
   once at the user's input shape and records its ATen operations
   (shape-dependent ``if``s, ``.ndim``, ``x.size(1) // 2``, hooks,
   parametrisations and pruning masks resolved there), made functional at
   the level PyTorch's API names them; ``select=`` picks the explained tensor
   of a dict, tuple or ``ModelOutput``.
2. :mod:`~dtd.lowering.walk` -- every operation that depends on the input is
   classified (:mod:`~dtd.lowering.aten`): affine, piecewise linear (ReLU
   units, max pooling), or refused by its name and module before any work;
   operations on parameters only are evaluated once in float64.
3. :mod:`~dtd.lowering.build` -- affine operations accumulate into linear
   values; a non-linearity turns one into a **DTD layer** (an affine node of
   :mod:`dtd.graph`): the exact affine map between two non-linearities, its
   branches operator chains (:mod:`dtd.operators`).
4. :mod:`~dtd.lowering.compose` -- each chain is rewritten so that its
   modified weights (``W+``, ``W-``, ``W*W``) are exact and matrix-free
   (batch norm folded, upsampling then convolution as one transposed
   convolution, ...), dense under ``memory_budget`` where no such form
   exists, refused otherwise.

Exactness: operators are built from float64 copies of the parameters and the
constants propagated in float64, converted to the model's dtype once; the
lowered network is then checked against the model itself on a random input
(a mismatch is an error, never a silently wrong network).

Modes: the model's mode is never changed.  What training mode changes --
batch norm with the batch's statistics, dropout's random masks, ``rrelu``'s
random slopes -- is refused with a ``ValueError`` naming the module ("call
model.eval()"); modules whose computation does not depend on the mode lower
as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.utils._pytree as pytree
from torch import nn

from ..graph import AffineNode, GraphNetwork, MaxPoolNode, Node, ReLUNode, operator_matrix
from ..validation import check_int
from .build import Refused
from .capture import BATCH, Captured, SelectLike, capture, check_input_shape, check_lazy
from .compose import size_text
from .walk import build_network, lower_captured

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "FORWARD_CHECK_RTOL",
    "AffineLayer",
    "LoweredModel",
    "lower_module",
    "lower_sequential",
    "check_input_shape",
]

#: Largest dense matrix (bytes, float64) one affine map without an exact operator form may be folded into: 1 GiB.
DEFAULT_MEMORY_BUDGET = 1 << 30

#: Largest difference between the lowered network's output and the model's own on a random input, relative to the
#: largest output, before the lowering reports itself wrong (float32 allows the rounding of a deep network's sums).
FORWARD_CHECK_RTOL = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 5e-2}


@dataclasses.dataclass(frozen=True)
class AffineLayer:
    """One dense layer ``y = x W^T + b`` on flattened activations (:func:`lower_sequential`).

    ``weight`` ``(D_out, D_in)`` and ``bias`` ``(D_out,)`` in the model's dtype,
    owned; ``relu``: a ReLU follows; ``modules``: the model's modules folded in.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    relu: bool
    modules: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LoweredModel:
    """Result of :func:`lower_sequential`: the dense layers, the input shape given (or
    None) and whether inputs are flattened."""

    layers: tuple[AffineLayer, ...]
    input_shape: tuple[int, ...] | None
    flatten_input: bool
    output_shape: tuple[int, ...] = ()  # the per-point output's shape (a segmentation map's), flattened by the layers


def _lower(model: nn.Module | torch.export.ExportedProgram, input_shape: Sequence[int] | None, select: SelectLike,
           memory_budget: int) -> tuple[list[Node], int, bool, Captured, tuple[int, ...]]:
    memory_budget = check_int(memory_budget, "memory_budget", minimum=1)
    captured, shape = capture(model, input_shape, select)
    try:
        nodes, output, final_relu = lower_captured(captured, shape, memory_budget)
    except Refused as refused:
        raise TypeError(str(refused)) from None
    return nodes, output, final_relu, captured, shape


def _eager_output(model: nn.Module | torch.export.ExportedProgram, captured: Captured, select: SelectLike,
                  x: torch.Tensor) -> torch.Tensor:
    """The model's own output that the lowering explains, at ``x`` (no gradient, torch's RNG untouched)."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        out = model.module()(x) if isinstance(model, torch.export.ExportedProgram) else model(x)
        # a callable selection that computes: applied to the model's output, as exported
        if captured.prefix and callable(select):
            return select(out)
    leaves = [leaf for leaf in pytree.tree_leaves(out) if isinstance(leaf, torch.Tensor)]
    return leaves[captured.output]


def _check_forward(model: nn.Module | torch.export.ExportedProgram, captured: Captured, select: SelectLike,
                   net: GraphNetwork) -> None:
    """The lowered network against the model itself on a random non-negative input (``RuntimeError`` if they differ)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand((BATCH,) + tuple(net.input_shape), generator=g, dtype=torch.float64)
    x = x.to(dtype=captured.dtype, device=captured.device)
    expected = _eager_output(model, captured, select, x).flatten(1)
    with torch.no_grad():
        values, _ = net.run(x)
        got = net.output_of(values)
    # rounding is relative to the terms summed, not to an output that cancels: the largest value anywhere is the scale
    magnitudes = [float(v.abs().max()) for v in list(values.values()) + [expected] if v.numel()]
    scale = max(magnitudes, default=0.0)
    difference = float((got - expected).abs().max()) if expected.numel() else 0.0
    rtol = FORWARD_CHECK_RTOL.get(captured.dtype, 1e-3)
    if tuple(got.shape) != tuple(expected.shape) or not difference <= rtol * max(scale, 1e-30):
        raise RuntimeError(
            f"internal error: the lowered network's output differs from the model's on a random input (largest "
            f"difference {difference:.3g}, largest output {scale:.3g}, shapes {tuple(got.shape)} and "
            f"{tuple(expected.shape)}); this is a bug of dtd's lowering -- please report it with the model"
        )


def lower_module(
    model: nn.Module | torch.export.ExportedProgram,
    input_shape: Sequence[int] | None,
    *,
    select: SelectLike = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> GraphNetwork:
    """Lower ``model`` exactly into a :class:`~dtd.graph.GraphNetwork` (see the module docstring).

    ``input_shape`` is one input's shape without the batch dimension (None
    for an ``ExportedProgram``: its example's).  ``select`` picks the
    explained output of a model returning several (a key, an index, a path,
    or a callable).  The model is not modified and shares no storage with
    the result.
    """
    nodes, output, final_relu, captured, shape = _lower(model, input_shape, select, memory_budget)
    net = build_network(nodes, output, final_relu, shape, captured.dtype, captured.device)
    _check_forward(model, captured, select, net)
    return net


def _infer_sequential_shape(model: nn.Sequential) -> tuple[tuple[int, ...] | None, bool]:
    """The input's width read off the first module that tells it (a Linear, a
    BatchNorm1d), and whether a Flatten leads."""
    flatten = False
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            continue
        if isinstance(module, nn.Flatten) and not flatten:
            if module.start_dim != 1 or module.end_dim != -1:
                raise ValueError(
                    f"module {name!r} is nn.Flatten(start_dim={module.start_dim}, end_dim={module.end_dim}) and the "
                    "input's shape is unknown; pass input_shape="
                )
            flatten = True
            continue
        if isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.ReLU)):
            continue
        if isinstance(module, nn.Linear):
            return (module.in_features,), flatten
        if isinstance(module, nn.BatchNorm1d):
            return (module.num_features,), flatten
        raise ValueError(
            f"module {name!r} ({type(module).__name__}) needs the input's shape: pass input_shape= to from_sequential "
            "(without the batch dimension, e.g. input_shape=(1, 8, 8) for one-channel 8x8 images)"
        )
    raise ValueError("the Sequential holds no affine module (nn.Linear, nn.Conv2d, ...)")


def lower_sequential(
    model: nn.Module, input_shape: Sequence[int] | None = None, *, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> LoweredModel:
    """Lower an ``nn.Sequential`` into dense layers, each ending at a ReLU (the last one optionally without).

    The model goes through :func:`lower_module` (the one lowering); every
    DTD layer is then folded into one ``(D_out, D_in)`` matrix on the
    flattened activations, exactly (float64, then the model's dtype).  A
    model whose graph is not such a chain (max pooling, a skip connection)
    is refused with a ``TypeError`` pointing to ``from_module``; a layer
    whose dense matrix exceeds ``memory_budget`` with a ``ValueError``,
    before any matrix is computed.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"from_sequential expects nn.Sequential, got {type(model).__name__}; lower any other model (a "
            "ResNet, a module with a residual +, ...) with dtd.ReLUNetwork.from_module(model, input_shape)"
        )
    given = check_input_shape(input_shape)
    memory_budget = check_int(memory_budget, "memory_budget", minimum=1)
    check_lazy(model)
    if len(model) == 0:
        raise ValueError("the Sequential holds no affine module (nn.Linear, nn.Conv2d, ...)")
    if given is None:
        shape, flatten_input = _infer_sequential_shape(model)
    else:
        shape, flatten_input = given, len(given) > 1
    nodes, output, final_relu, captured, shape = _lower(model, shape, None, memory_budget)
    net = build_network(nodes, output, final_relu, shape, torch.float64, captured.device)
    layers = _dense_layers(net, memory_budget)
    dtype, device = captured.dtype, captured.device
    converted = tuple(AffineLayer(w.to(dtype=dtype, device=device), b.to(dtype=dtype, device=device), relu, modules)
                      for w, b, relu, modules in layers)
    checked = GraphNetwork.chain([layer.weight for layer in converted], [layer.bias for layer in converted],
                                 final_relu=final_relu, input_shape=shape)
    _check_forward(model, captured, None, checked)
    return LoweredModel(layers=converted, input_shape=given, flatten_input=flatten_input,
                        output_shape=tuple(net.output_shape))


def _dense_layers(net: GraphNetwork,
                  memory_budget: int) -> list[tuple[torch.Tensor, torch.Tensor, bool, tuple[str, ...]]]:
    """Each DTD layer of a chain-shaped float64 network as a dense ``(weight, bias, relu, modules)``."""
    previous = 0
    chain = []
    for node in net.nodes[1:]:
        if isinstance(node, MaxPoolNode):
            name = node.name or "a max pooling"
            raise TypeError(
                f"module {name!r} (max pooling) is piecewise linear (inside a linear region it selects one input per "
                "window), but its region is an argmax pattern, which the dense ReLU layers of from_sequential cannot "
                "hold; lower the model with dtd.ReLUNetwork.from_module(model, input_shape) (the graph engine)"
            )
        if isinstance(node, AffineNode):
            if len(node.branches) != 1 or node.branches[0].source != previous:
                raise TypeError(
                    f"layer {node.name!r} reads more than the previous layer's output (a skip connection or a "
                    "concatenation); lower the model with dtd.ReLUNetwork.from_module(model, input_shape)"
                )
            chain.append(node)
        elif isinstance(node, ReLUNode):
            previous = node.id
    for k, node in enumerate(chain):
        op = node.branches[0].op
        needed = op.in_features * op.out_features * 8
        if needed > memory_budget:
            listed = ", ".join(repr(m) for m in node.modules) or repr(node.name)
            raise ValueError(
                f"layer {k} (modules {listed}) folds into a dense {op.out_features:,} x "
                f"{op.in_features:,} matrix, which needs {size_text(needed)}, more than "
                f"memory_budget={memory_budget:,}; pass a larger memory_budget= or lower the model with "
                "dtd.ReLUNetwork.from_module(model, input_shape), which keeps convolutions matrix-free"
            )
    layers = []
    for k, node in enumerate(chain):
        weight = operator_matrix(node.branches[0].op, torch.float64)
        relu = k < len(chain) - 1 or net.final_relu
        layers.append((weight, node.bias.reshape(-1), relu, node.modules or (node.name,)))
    return layers
