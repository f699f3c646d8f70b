"""A slow, obvious z+ on the suite's CNNs and residual nets, and the conformance kit's mutants made from it.

:func:`zplus` explains the *original* model (an ``nn.Sequential`` of
``Conv2d``/``BatchNorm2d``/``ReLU``/``MaxPool2d``/``AvgPool2d``/
``AdaptiveAvgPool2d``/``Flatten``/``Linear``, or a
:class:`properties.generate.architectures.ResidualNet`) the way train-free DTD's z+
does on the graph of affine operators, in float64 and with dense matrices:

* an affine node is a maximal run of affine modules between non-linearities
  (convolution, batch norm, average pooling, flatten, Linear; batch norm folded
  in), its matrix ``W`` built by applying the run, without its shift, to every
  basis input; a residual block's ``bn2(conv2(h)) + shortcut(x)`` is *one* node
  with the block row ``[W_h, W_x]`` on the concatenated input ``[h, x]``;
* z+: ``R_in = a * (W+^T (R / d))`` with ``d = W+ a`` (``W+`` the positive part,
  the shift ignored); a neuron with ``d = 0`` passes nothing on;
* ReLU passes relevance unchanged; a max pool passes each output's relevance
  to its argmax input (``F.max_pool2d``'s index, overlapping windows add up);
* the relevance entering the top is the explained logit's value.

Each keyword switches on one defect (the kit's mutation tests):

``merge_batch_norm=False``
    batch norm is a node of its own (z+ on its diagonal), not folded into the
    convolution before it;
``max_pool="average"``
    a max pool hands its relevance to the window in proportion to the inputs;
``residual="both"``
    each branch of a residual sum gets the full relevance (a bare ``+`` under
    autograd: relevance doubles); ``residual="proportional"`` splits it by the
    branches' outputs first (zennit's ``Sum`` with its ``Norm`` rule), then z+
    inside each branch;
``batch_stabilizer=c``
    every denominator becomes ``d + c max_batch |d| sign(d)``: a point's relevance
    depends on its batch mates.

Two more knobs model how a library computes the same thing (not defects):
``stabilizer=e`` divides by ``d + e sign(d)`` (``sign(0) = 1``, zennit's and
captum's convention) and ``pooling_nodes=True`` makes every average pooling a
node of its own (the library sees modules, not folded runs; for 2x2 stride-2
and global pooling the result is the same up to the stabiliser).

With no defect, ``zplus`` is what the conformance kit's CNN and ResNet
populations must find equal to ``dtd.train_free(..., rule="z+")``.
"""

from __future__ import annotations

import copy
import functools
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast, overload

import torch
import torch.nn.functional as F
from torch import nn

from dtd.validation import check_bool, check_int, check_number

from . import Implementation

if TYPE_CHECKING:
    from ..generate.architectures import BasicBlock

__all__ = ["zplus", "RESIDUAL_MODES", "MAX_POOL_MODES", "mutant_implementations", "replica_implementation",
           "MUTANT_DEFECTS"]

RESIDUAL_MODES = ("joint", "both", "proportional")
MAX_POOL_MODES = ("max", "average")

_AFFINE = (nn.Conv2d, nn.BatchNorm2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear)
_NONLINEAR = (nn.ReLU, nn.MaxPool2d)


def _apply(group: Sequence[nn.Module], a: torch.Tensor) -> torch.Tensor:
    for module in group:
        a = module(a)
    return a


def _matrix(group: Sequence[nn.Module], shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W (J, D), shift (J,))`` of the affine map ``group`` on inputs of ``shape`` (float64, dense)."""
    size = 1
    for s in shape:
        size *= s
    zero = torch.zeros((1, *shape), dtype=torch.float64)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
    with torch.no_grad():
        shift = _apply(group, zero).reshape(-1)
        columns = _apply(group, basis).reshape(size, -1) - shift
    return columns.T.contiguous(), shift


def _groups(modules: Sequence[nn.Module], merge: bool, pooling_nodes: bool = False) -> list[list[nn.Module]]:
    """A run of affine modules as nodes: one, or split so every batch norm (``merge=False``) and every average
    pooling (``pooling_nodes``) is its own."""
    alone = (() if merge else (nn.BatchNorm2d,)) + ((nn.AvgPool2d, nn.AdaptiveAvgPool2d) if pooling_nodes else ())
    if not alone:
        return [list(modules)] if modules else []
    groups: list[list[nn.Module]] = [[]]
    for module in modules:
        if isinstance(module, alone):
            if groups[-1]:
                groups.append([])
            groups[-1].append(module)
            groups.append([])
        else:
            groups[-1].append(module)
    return [g for g in groups if g]


class _Options:
    def __init__(self, merge_batch_norm: bool, max_pool: str, residual: str, batch_stabilizer: float,
                 stabilizer: float = 0.0, pooling_nodes: bool = False) -> None:
        self.merge = check_bool(merge_batch_norm, "merge_batch_norm")
        self.pooling_nodes = check_bool(pooling_nodes, "pooling_nodes")
        self.stabilizer = check_number(stabilizer, "stabilizer", minimum=0.0)
        if max_pool not in MAX_POOL_MODES:
            raise ValueError(f"max_pool must be one of {MAX_POOL_MODES}, got {max_pool!r}")
        if residual not in RESIDUAL_MODES:
            raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
        self.max_pool, self.residual = max_pool, residual
        self.batch_stabilizer = check_number(batch_stabilizer, "batch_stabilizer", minimum=0.0)

    def divide(self, relevance: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``R / d`` per neuron, 0 where ``d = 0`` (after the batch stabiliser, if any)."""
        sign = torch.where(d >= 0, 1.0, -1.0).to(d)
        if self.batch_stabilizer:
            d = d + self.batch_stabilizer * d.abs().max() * sign
        if self.stabilizer:
            d = d + self.stabilizer * sign
        return torch.where(d != 0, relevance / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


def _node(
    branches: list[tuple[torch.Tensor, list[nn.Module]]], relevance: torch.Tensor, opts: _Options
) -> list[torch.Tensor]:
    """z+ through one affine node with one or more branches ``(input a_b, modules)``; the relevance of each input."""
    n = relevance.shape[0]
    upper = relevance.reshape(n, -1)
    parts = []
    for a, group in branches:
        w, shift = _matrix(group, tuple(a.shape[1:]))
        flat = a.reshape(n, -1)
        parts.append((flat, w.clamp(min=0), w, shift))
    if len(parts) > 1 and opts.residual == "both":
        shares = [upper] * len(parts)
    elif len(parts) > 1 and opts.residual == "proportional":
        outputs = [flat @ w.T + shift for flat, _, w, shift in parts]
        total = functools.reduce(operator.add, outputs)
        shares = [opts.divide(upper, total) * out for out in outputs]
    else:
        shares = None
    out = []
    if shares is None:
        d = functools.reduce(operator.add, [flat @ wp.T for flat, wp, _, _ in parts])
        ratio = opts.divide(upper, d)
        for (flat, wp, _, _), (a, _) in zip(parts, branches, strict=True):
            out.append((flat * (ratio @ wp)).reshape(a.shape))
    else:
        for (flat, wp, _, _), (a, group), share in zip(parts, branches, shares, strict=True):
            if not group:  # an identity shortcut: its share is its input's relevance
                out.append(share.reshape(a.shape))
            else:
                out.append((flat * (opts.divide(share, flat @ wp.T) @ wp)).reshape(a.shape))
    return out


class _Tape:
    """The forward of a chain of modules, recorded for the backward: affine nodes, ReLUs, max pools."""

    def __init__(self, modules: Sequence[nn.Module], a: torch.Tensor, opts: _Options) -> None:
        #: each step's input and what it is: an affine node's modules, a ReLU or a max pool
        self.steps: list[tuple[torch.Tensor, list[nn.Module] | nn.ReLU | nn.MaxPool2d]] = []
        run: list[nn.Module] = []

        def flush(a: torch.Tensor) -> torch.Tensor:
            for group in _groups(run, opts.merge, opts.pooling_nodes):
                self.steps.append((a, group))
                a = _apply(group, a)
            run.clear()
            return a

        with torch.no_grad():
            for module in modules:
                if isinstance(module, _AFFINE):
                    run.append(module)
                elif isinstance(module, _NONLINEAR):
                    a = flush(a)
                    self.steps.append((a, module))
                    a = module(a)
                else:
                    raise TypeError(f"the z+ replica handles {', '.join(t.__name__ for t in _AFFINE + _NONLINEAR)} "
                                    f"and ResidualNet, not {type(module).__name__}")
            self.output = flush(a)

    def backward(self, relevance: torch.Tensor, opts: _Options, last: int | None = None) -> torch.Tensor:
        steps = self.steps if last is None else self.steps[:last]
        for a, step in reversed(steps):
            if isinstance(step, list):
                (relevance,) = _node([(a, step)], relevance, opts)
            elif isinstance(step, nn.MaxPool2d):
                relevance = _max_pool_backward(a, step, relevance, opts)
            # ReLU: relevance passes unchanged
        return relevance


def _max_pool_backward(a: torch.Tensor, pool: nn.MaxPool2d, relevance: torch.Tensor, opts: _Options) -> torch.Tensor:
    if opts.max_pool == "max":
        _, index = F.max_pool2d(a, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode,
                                return_indices=True)
        n, c = a.shape[:2]
        out = torch.zeros_like(a).reshape(n, c, -1)
        out.scatter_add_(2, index.reshape(n, c, -1), relevance.reshape(n, c, -1))
        return out.reshape(a.shape)
    # the defect: average pooling's proportional split over the window
    # (R_p / mean_p) times d mean_p / d a_i = 1 / k^2 gives R_p / sum_p: input i gets a_i R_p / sum_p
    u = a.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        mean = F.avg_pool2d(u, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, count_include_pad=True)
        (spread,) = torch.autograd.grad(mean, u, opts.divide(relevance, mean.detach()))
    return a * spread


@overload
def _block_backward(block: BasicBlock, u: torch.Tensor, relevance: None,
                    opts: _Options) -> tuple[torch.Tensor, None]: ...
@overload
def _block_backward(block: BasicBlock, u: torch.Tensor, relevance: torch.Tensor,
                    opts: _Options) -> tuple[torch.Tensor, torch.Tensor]: ...
def _block_backward(
    block: BasicBlock, u: torch.Tensor, relevance: torch.Tensor | None, opts: _Options
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A :class:`~properties.generate.architectures.BasicBlock` on input ``u``: ``(its output, the relevance of u)``."""
    first = _Tape([block.conv1, block.bn1, block.relu1], u, opts)
    h = first.output
    main = [block.conv2, block.bn2]
    shortcut = [] if block.downsample is None else list(block.downsample)
    # the sum node: the last group of each branch; groups before it (merge_batch_norm=False) are nodes of their own
    main_groups, short_groups = _groups(main, opts.merge), _groups(shortcut, opts.merge)  # no pooling inside a block
    with torch.no_grad():
        main_inputs, a = [], h
        for group in main_groups:
            main_inputs.append(a)
            a = _apply(group, a)
        short_inputs, b = [], u
        for group in short_groups:
            short_inputs.append(b)
            b = _apply(group, b)
        output = block.relu2(a + b)
    if relevance is None:
        return output, None
    branches = [(main_inputs[-1], main_groups[-1]), (short_inputs[-1] if short_groups else u,
                                                     short_groups[-1] if short_groups else [])]
    r_main, r_short = _node(branches, relevance, opts)
    for inputs, group in zip(reversed(main_inputs[:-1]), reversed(main_groups[:-1]), strict=True):
        (r_main,) = _node([(inputs, group)], r_main, opts)
    for inputs, group in zip(reversed(short_inputs[:-1]), reversed(short_groups[:-1]), strict=True):
        (r_short,) = _node([(inputs, group)], r_short, opts)
    return output, first.backward(r_main, opts) + r_short


def zplus(model: nn.Module, x: torch.Tensor, output: int, *, merge_batch_norm: bool = True, max_pool: str = "max",
          residual: str = "joint", batch_stabilizer: float = 0.0, stabilizer: float = 0.0,
          pooling_nodes: bool = False) -> torch.Tensor:
    """Train-free z+ relevance of ``model``'s logit ``output`` at ``x``
    ``(batch, *input_shape)``, float64, shaped like ``x``.

    ``model`` is the original module (never modified); the keywords switch
    on the defects listed in the module docstring.  Slow: every affine node
    is a dense matrix.
    """
    from ..generate.architectures import ResidualNet

    opts = _Options(merge_batch_norm, max_pool, residual, batch_stabilizer, stabilizer, pooling_nodes)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    check_int(output, "output", minimum=0)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).double()  # float64 throughout; the caller's model is left alone
    a = x.detach().to(torch.float64)
    if isinstance(model, ResidualNet):
        stem = _Tape(list(model.stem), a, opts)
        blocks = cast("list[BasicBlock]", list(model.blocks))  # a ResidualNet's blocks are BasicBlocks
        inputs, h = [], stem.output
        for block in blocks:
            inputs.append(h)
            h, _ = _block_backward(block, h, None, opts)
        head = _Tape([model.pool, model.flatten, model.fc], h, opts)
        relevance = _top(head.output, output)
        relevance = head.backward(relevance, opts)
        for block, u in zip(reversed(blocks), reversed(inputs), strict=True):
            _, relevance = _block_backward(block, u, relevance, opts)
        relevance = stem.backward(relevance, opts)
    elif isinstance(model, nn.Sequential):
        leaves = [m for m in model.modules() if not list(m.children())]
        tape = _Tape(leaves, a, opts)
        relevance = tape.backward(_top(tape.output, output), opts)
    else:
        raise TypeError("model must be an nn.Sequential or a "
                        f"properties.generate.architectures.ResidualNet, got {type(model).__name__}")
    return relevance.to(x.dtype)


def _top(logits: torch.Tensor, output: int) -> torch.Tensor:
    if output >= logits.shape[1]:
        raise ValueError(f"output {output} out of range: the model has {logits.shape[1]} outputs")
    relevance = torch.zeros_like(logits)
    relevance[:, output] = logits[:, output]
    return relevance


#: name -> (defect keywords, claimed stabiliser) of :func:`mutant_implementations`
MUTANT_DEFECTS: dict[str, tuple[dict[str, Any], float]] = {
    "mutant_bn_unmerged": (dict(merge_batch_norm=False), 0.0),
    "mutant_max_as_average": (dict(max_pool="average"), 0.0),
    "mutant_residual_both": (dict(residual="both"), 0.0),
    # within the 1e-6 stabiliser it claims, so it agrees with DTD; but a point's result depends on its batch mates
    "mutant_batch_stabilizer": (dict(batch_stabilizer=1e-10), 1e-6),
}


def replica_implementation() -> Implementation:
    """:func:`zplus` without defects as a :class:`properties.conformance.Implementation` (claims z+, stabiliser 0)."""
    return Implementation("replica_zplus", lambda model, x, output: zplus(model, x, output), "z+", stabilizer=0.0)


def mutant_implementations() -> list[Implementation]:
    """One :class:`properties.conformance.Implementation` per entry of :data:`MUTANT_DEFECTS`, each claiming z+."""
    def make(defect: dict[str, Any]) -> Callable[[nn.Module, torch.Tensor, int], torch.Tensor]:
        return lambda model, x, output: zplus(model, x, output, **defect)

    return [
        Implementation(name, make(defect), "z+", stabilizer=stabilizer)
        for name, (defect, stabilizer) in MUTANT_DEFECTS.items()
    ]
