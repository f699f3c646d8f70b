"""Vectorised property evaluators: what holds at every root of a decomposition.

All roots of all points of one layer are evaluated in one batched pass
through ``f_k`` (streamed over chunks of points to bound memory): outputs,
exact gradients (closed form: masks, transposed operators and argmax routing)
and the deciding patterns.  Every network is judged on the one engine, a
:class:`dtd.GraphNetwork` (a :class:`dtd.ReLUNetwork` as its chain graph).
Nothing here loops over points or neurons.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from dtd import Decomposition, GraphDecomposition, GraphNetwork, OperatorRoots, ReLUNetwork
from dtd.decomposition import LayerDecomposition
from dtd.graph import NodeValues, _all_last  # _all_last: a boolean reduction over the last dimension (uint8 min)
from dtd.outputs import OutputLike, explain
from dtd.rootsets import AffineRoots, RootSet
from dtd.rootsets import root_equation_residual as _residual
from dtd.tolerances import EQUATION_SCALE_FLOOR, pattern_tol
from dtd.validation import check_finite_layer, check_int, check_number

from .thresholds import PROPERTY_ATOL

__all__ = [
    "RootOutcomes",
    "root_outcomes",
    "root_equation_residual",
    "conservation_residual",
    "SegmentOutcomes",
    "segment_outcomes",
    "with_roots",
    "DEFAULT_MEMORY_BUDGET",
    "draw_neurons",
    "selected_roots",
]

#: Bytes the roots of one chunk of points and their pre-activations may take
#: (roots are streamed over points, so memory stays flat in the batch size).
DEFAULT_MEMORY_BUDGET = 256 << 20


@dataclasses.dataclass(frozen=True)
class RootOutcomes:
    """Per-root (``(batch, J)``) and per-point (``(batch,)``) outcomes at layer ``k``.

    Root-level booleans are only meaningful where :attr:`valid` is True;
    use :meth:`considered` to select roots and :meth:`per_point` to reduce.

    Attributes
    ----------
    output_at_input
        ``f_k(a)`` ``(batch,)``.
    output_at_root
        ``f_k(root_j)`` ``(batch, J)``.
    gradient_difference
        ``max_i |grad f_k(root_j) - grad f_k(a)|_i`` ``(batch, J)``, with
        ``relu'(z) = 1[z > pattern_tol]`` (see :func:`root_outcomes`).
    gradient_mean_abs_difference
        ``mean_i |grad f_k(root_j) - grad f_k(a)|_i`` ``(batch, J)``.
    zero_output
        ``|f_k(root_j)| <= atol``: the root zeroes the explained output.
    output_unchanged
        ``f_k(a) - f_k(root_j) < atol``: the seed notebook's own test.
    gradient_match
        ``gradient_difference <= atol``.
    region_match
        The root lies in the closure of the input's linear region of
        ``f_k``: the same ReLU state as the input for every hidden neuron
        of the layers ``>= k`` and for the explained output neuron (other
        output neurons do not enter ``f``); a neuron with
        ``|z| <= pattern_tol`` at the root or the input matches either state.
    in_domain
        ``root_j >= -atol`` in every coordinate (inputs are non-negative).
    valid, carries_relevance
        From the decomposition: the root exists; ``R_j != 0``.  With
        sampled neurons, False where a point had fewer neurons than draws.
    neurons
        With sampled neurons (``root_outcomes(..., neurons=K)``): which
        neuron each column is, ``(batch, K)`` (-1: no draw); None when every
        neuron was evaluated (column ``j`` is neuron ``j``).
    """

    layer: int
    atol: float
    output_at_input: torch.Tensor
    output_at_root: torch.Tensor
    gradient_difference: torch.Tensor
    gradient_mean_abs_difference: torch.Tensor
    zero_output: torch.Tensor
    output_unchanged: torch.Tensor
    gradient_match: torch.Tensor
    region_match: torch.Tensor
    in_domain: torch.Tensor
    valid: torch.Tensor
    carries_relevance: torch.Tensor
    neurons: torch.Tensor | None = None

    #: the root-level boolean outcomes, in report order
    OUTCOMES = ("zero_output", "output_unchanged", "gradient_match", "region_match", "in_domain")

    def considered(self, include_trivial: bool = True) -> torch.Tensor:
        """``(batch, J)``: valid roots, optionally only those of neurons that carry relevance."""
        return self.valid if include_trivial else self.valid & self.carries_relevance

    def per_point(self, outcome: str, include_trivial: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether *all* considered roots of each point satisfy ``outcome``.

        Returns ``(holds, has_roots)``, both ``(batch,)``; a point without
        considered roots has ``has_roots = False`` and must not be counted.
        """
        values = getattr(self, outcome)
        mask = self.considered(include_trivial)
        return (values | ~mask).all(1), mask.any(1)


def chunk_points(net: ReLUNetwork | GraphNetwork, layer: int, memory_budget: int, n_roots: int | None = None) -> int:
    """How many points' roots of ``layer`` fit ``memory_budget`` bytes at once.

    A point holds ``n_roots`` roots (default ``J``, every neuron), each
    needing its ``D`` coordinates and the value of every node ``f_k``
    recomputes (:meth:`dtd.GraphNetwork.live_nodes`), about four times over
    while the outcomes are formed.
    """
    check_int(memory_budget, "memory_budget", minimum=1)
    graph = net.graph() if isinstance(net, ReLUNetwork) else net
    n_roots = graph.out_features_of(layer) if n_roots is None else n_roots
    _, live = graph.live_nodes(layer)
    element = graph.dtype.itemsize
    per_root = 4 * (graph.in_features(layer) + sum(math.prod(node.shape) for node in live)) * element
    return max(1, memory_budget // (per_root * max(1, n_roots)))


def root_outcomes(
    net: ReLUNetwork | GraphNetwork,
    dec: Decomposition,
    *,
    layer: int = 0,
    output: OutputLike | None = None,
    atol: float = PROPERTY_ATOL,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    neurons: int | None = None,
    generator: torch.Generator | None = None,
) -> RootOutcomes:
    """Evaluate the DTD promises at every root (or a sample of roots) of layer ``layer`` of ``dec``.

    Parameters
    ----------
    net, dec
        The network and a decomposition of it.
    layer
        ``k``; roots live in the input space of layer ``k`` and are judged
        with ``f_k``, the network from layer ``k`` up to the output.
    output
        The explained output (default: the decomposition's): an int, an
        index tuple, a ``(batch,)`` tensor of per-point outputs, or output
        weights (:mod:`dtd.outputs`; the network is then
        ``net.explaining(weights)``, as in :func:`dtd.train_free`).
    atol
        Tolerance of the questions (default the notebook's 1e-6).
    memory_budget
        Bytes for the roots of one chunk of points (see :func:`chunk_points`);
        the results are identical for every budget.
    neurons
        ``K``: evaluate ``K`` neurons per point instead of all ``J``, drawn
        uniformly without replacement among *all* the layer's neurons
        (``generator`` decides).  The results are then ``(batch, K)``
        (:attr:`RootOutcomes.neurons` says which neuron each column is), and
        :attr:`RootOutcomes.valid` / :attr:`~RootOutcomes.carries_relevance`
        select the drawn roots to count, exactly as in the exhaustive case.
        Every (point, neuron) pair is drawn with the same probability
        ``K / J``, so a rate over the drawn roots of any subset (valid
        roots, relevance-carrying ones) estimates the exhaustive rate over
        that subset; compute its interval clustered by point.  ``K >= J``
        evaluates every neuron (in a random column order).
    generator
        Required with ``neurons``: the local generator of the draws.

    Notes
    -----
    Gradients use ``relu'(z) = 1[z > pattern_tol]``: torch's ``relu'(0) = 0``
    applied to pre-activations that are zero up to rounding.  DTD puts some
    roots exactly on a hinge (the top layer's root of the explained output
    by construction); with a bare ``z > 0`` their gradient would be decided
    by the last bit of rounding, and a re-ordered sum could flip it.

    The gradient is a function of the active sets alone, so roots whose
    active sets equal the input's have exactly the input's gradient
    (difference 0); the backward pass runs only for the others.
    """
    if not isinstance(dec, Decomposition):
        raise TypeError(f"dec must be a dtd.Decomposition, got {type(dec).__name__}")
    if isinstance(net, (ReLUNetwork, GraphNetwork)):
        net, output = explain(net, dec.output if output is None else output)
    if isinstance(net, ReLUNetwork):
        net.check_layer(layer)
        if len(dec.layers) != net.n_layers or dec.layers[layer].input.shape[1] != net.layers[layer].in_features:
            raise ValueError("the decomposition does not belong to this network (layer widths differ)")
        return _graph_root_outcomes(net.graph(), dec, layer, output, atol, memory_budget, neurons, generator)
    if isinstance(net, GraphNetwork):
        return _graph_root_outcomes(net, dec, layer, output, atol, memory_budget, neurons, generator)
    raise TypeError(f"net must be a dtd.ReLUNetwork or dtd.GraphNetwork, got {type(net).__name__}")


def _graph_root_outcomes(net: GraphNetwork, dec: Decomposition, layer: int, output: OutputLike | None, atol: float,
                         memory_budget: int, neurons: int | None,
                         generator: torch.Generator | None) -> RootOutcomes:
    """:func:`root_outcomes` on a :class:`dtd.GraphNetwork`: ``f_k`` recomputes what depends on layer ``k``'s input.

    The region is the ReLU pattern and the argmax pattern of the deciding
    non-linearities (:meth:`dtd.GraphNetwork.deciding`); a root whose argmax
    differs from the input's is still in the closure when the value at the
    input's argmax ties its window's maximum within ``pattern_tol``.
    """
    if not isinstance(dec, GraphDecomposition) and len(net.consumers[0]) != 1:
        raise TypeError("the decomposition is not one of a graph network (train_free on this GraphNetwork gives one)")
    net.check_layer(layer)
    explained = net.check_output(dec.output if output is None else output, dec.layers[0].input.shape[0])
    atol = check_number(atol, "atol", minimum=0.0)
    lay = dec.layers[layer]
    if lay.input.shape[1] != net.in_features(layer):
        raise ValueError("the decomposition does not belong to this network (layer widths differ)")
    n_points, width = lay.input.shape
    drawn = _drawn(lay, neurons, generator)
    n_roots = lay.root_valid.shape[1] if drawn is None else drawn.shape[1]
    chunk = chunk_points(net, layer, memory_budget, n_roots)
    tol = pattern_tol(lay.input.dtype)
    base = _base(net, dec)
    dtype, device = lay.input.dtype, lay.input.device
    f_a = torch.empty(n_points, dtype=dtype, device=device)
    f_r, gmax, gmean = (torch.zeros(n_points, n_roots, dtype=dtype, device=device) for _ in range(3))
    region, domain = (torch.empty(n_points, n_roots, dtype=torch.bool, device=device) for _ in range(2))
    for start in range(0, n_points, chunk):
        stop = min(n_points, start + chunk)
        roots = (
            lay.root_chunk(start, stop)
            if drawn is None
            else selected_roots(lay.root_set, start, stop, drawn[start:stop])
        )
        points = torch.arange(start, stop, device=device)
        out_a = explained[start:stop] if isinstance(explained, torch.Tensor) else explained
        at_input = net.evaluate_roots(layer, None, points, base, out_a, threshold=tol)
        out_r = out_a.repeat_interleave(n_roots) if isinstance(out_a, torch.Tensor) else out_a
        at_root = net.compare_roots(layer, roots.reshape(-1, width), points, base, out_r, at_input, threshold=tol)
        f_a[start:stop] = at_input.value
        f_r[start:stop] = at_root.value.reshape(-1, n_roots)
        region[start:stop] = at_root.in_closure.reshape(-1, n_roots)
        gmax[start:stop] = at_root.gradient_max.reshape(-1, n_roots)
        gmean[start:stop] = at_root.gradient_mean.reshape(-1, n_roots)
        domain[start:stop] = _all_last(roots >= -atol)
    return _assemble(layer, atol, lay, drawn, f_a, f_r, gmax, gmean, region, domain)


def _base(net: GraphNetwork, dec: Decomposition) -> NodeValues:
    """Every node's value at the decomposition's inputs (:meth:`dtd.GraphNetwork.run`): kept
    by the decomposition, else recomputed."""
    if isinstance(dec, GraphDecomposition):
        return dec.activations if dec.activations is not None else net.run(dec.x)
    # a decomposition built elsewhere (a full backward, a replaced layer) of a network whose input only layer 0 reads
    x = dec.layers[0].input
    return net.run(x.reshape((x.shape[0],) + tuple(net.input_shape)))


def _drawn(lay: LayerDecomposition, neurons: int | None, generator: torch.Generator | None) -> torch.Tensor | None:
    """The sampled neurons ``(batch, K)`` of
    ``root_outcomes(..., neurons=K, generator=...)``, or None for every neuron."""
    if neurons is not None:
        neurons = check_int(neurons, "neurons", minimum=1)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"neurons={neurons} needs generator=torch.Generator(...), got {type(generator).__name__}")
        return draw_neurons(lay.input.shape[0], lay.root_valid.shape[1], neurons, generator, device=lay.input.device)
    if generator is not None:
        raise ValueError("generator is only used with neurons=K (sampled neurons); pass neurons or drop generator")
    return None


def _assemble(layer: int, atol: float, lay: LayerDecomposition, drawn: torch.Tensor | None, f_a: torch.Tensor,
              f_r: torch.Tensor, gmax: torch.Tensor, gmean: torch.Tensor, region: torch.Tensor,
              domain: torch.Tensor) -> RootOutcomes:
    """The outcomes from what was measured at the inputs and the roots (dense or graph network alike)."""
    return RootOutcomes(
        layer=layer,
        atol=float(atol),
        output_at_input=f_a,
        output_at_root=f_r,
        gradient_difference=gmax,
        gradient_mean_abs_difference=gmean,
        zero_output=f_r.abs() <= atol,
        output_unchanged=(f_a.unsqueeze(1) - f_r) < atol,
        gradient_match=gmax <= atol,
        region_match=region,
        in_domain=domain,
        valid=lay.root_valid if drawn is None else lay.root_valid.gather(1, drawn),
        carries_relevance=lay.carries_relevance if drawn is None else lay.carries_relevance.gather(1, drawn),
        neurons=drawn,
    )


def draw_neurons(n_points: int, n_neurons: int, k: int, generator: torch.Generator, *,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``(n_points, min(k, n_neurons))`` neuron indices, per point ``k`` distinct ones drawn uniformly.

    The ``k`` smallest of i.i.d. uniform scores: a uniformly random subset,
    so every (point, neuron) pair is drawn with probability ``k / n_neurons``.
    """
    k = min(k, n_neurons)
    scores = torch.rand(n_points, n_neurons, generator=generator, device=generator.device)
    return scores.topk(k, dim=1, largest=False).indices.to(device)


def selected_roots(root_set: RootSet, start: int, stop: int, index: torch.Tensor) -> torch.Tensor:
    """Roots ``(stop - start, K, D)`` of the neurons ``index`` ``(stop - start, K)`` of the points ``start:stop``.

    Closed-form roots are built for the drawn neurons only; other root sets
    are built for the chunk and then picked.
    """
    if isinstance(root_set, OperatorRoots):
        return root_set.selected(start, stop, index)
    if isinstance(root_set, AffineRoots):
        a = root_set.input[start:stop].unsqueeze(1)
        direction = torch.zeros(index.shape + (a.shape[-1],), dtype=a.dtype, device=a.device)
        if root_set.p is not None:
            direction = a * root_set.p[index]
        if root_set.q is not None:
            direction = direction + root_set.q[index]
        return a - root_set.t[start:stop].gather(1, index).unsqueeze(-1) * direction
    roots = root_set.roots(start, stop)
    return roots.gather(1, index.unsqueeze(-1).expand(-1, -1, roots.shape[-1]))


def root_equation_residual(net: ReLUNetwork, dec: Decomposition, layer: int) -> torch.Tensor:
    """``(batch, J)``: ``|w_j . (a - root_j) - R_j|`` relative to the terms' scale (0 for invalid roots).

    Values above :func:`dtd.tolerances.equation_rtol` mean the root
    equation fails.  The measure is :func:`dtd.rootsets.root_equation_residual`.
    """
    lay = dec.layers[layer]
    residual = _residual(lay.input.unsqueeze(1) - lay.roots, net.weight(layer), lay.upper_relevance)
    return torch.where(lay.root_valid, residual, torch.zeros_like(residual))


def conservation_residual(dec: Decomposition, layer: int) -> torch.Tensor:
    """``(batch,)``: ``|sum_i R_i - sum_j R_j|`` over valid roots, relative to ``max(1, sum_j |R_j|)``."""
    lay = dec.layers[layer]
    upper = torch.where(lay.root_valid, lay.upper_relevance, torch.zeros_like(lay.upper_relevance))
    scale = upper.abs().sum(1).clamp_min(EQUATION_SCALE_FLOOR)
    return (lay.relevance.sum(1) - upper.sum(1)).abs() / scale




def with_roots(dec: Decomposition, layer: int, root_set: RootSet) -> Decomposition:
    """``dec`` with layer ``layer``'s roots replaced by another finder's ``root_set``
    (to judge them with the same checks)."""
    layers = tuple(
        dataclasses.replace(lay, root_set=root_set, root_valid=root_set.valid) if lay.index == layer else lay
        for lay in dec.layers
    )
    return dataclasses.replace(dec, layers=layers)


@dataclasses.dataclass(frozen=True)
class SegmentOutcomes:
    """What an in-region root promises about the segment from it to the input (see :func:`segment_outcomes`).

    interior : ``(batch,)`` -- every deciding pre-activation of the input is farther than ``pattern_tol`` from 0
    midpoint_gradient_match : ``(batch, J)`` -- ``grad f_k`` at ``(a + root) / 2`` equals ``grad f_k(a)``
        (torch's ``relu'(0) = 0``)
    taylor_residual : ``(batch, J)`` -- ``|f_k(a) - f_k(root) - grad f_k(a) . (a - root)|``
    """

    interior: torch.Tensor
    midpoint_gradient_match: torch.Tensor
    taylor_residual: torch.Tensor


def segment_outcomes(
    net: ReLUNetwork | GraphNetwork, a: torch.Tensor, roots: torch.Tensor, *, layer: int, output: int | torch.Tensor,
    atol: float = PROPERTY_ATOL, base: NodeValues | None = None,
) -> SegmentOutcomes:
    """The promises of a root in the closure of the input's region, judged without a hinge convention.

    A root on the region's boundary has a neuron at ``z = 0``, where torch's
    ``relu'(0) = 0`` may change the gradient although the root is in the
    region (the top layer's root of the explained output always lies on its
    hinge).  The segment from the root to an input strictly inside its
    region (:attr:`SegmentOutcomes.interior`) lies in the region except for
    the root itself, so its midpoint has the input's gradient, and the
    first-order Taylor expansion at the root is exact: ``f_k(a) = f_k(root) +
    grad f_k(a) . (a - root)``.  Both can fail only if the root lies outside
    the region.  ``a`` is ``(batch, D)``, ``roots`` ``(batch, J, D)``.

    Computed on the engine (:meth:`dtd.GraphNetwork.evaluate_roots`, torch's
    ``relu'(0) = 0``).  On a graph network whose ``f_k`` reads activations
    other than layer ``k``'s input (a skip from below), pass ``base``, the
    values at the points (``dec.activations``); ``f_k`` must have no max pool
    (the interior here is a ReLU notion: use ``root_outcomes``' ``region_match``).
    """
    if not isinstance(net, (ReLUNetwork, GraphNetwork)):
        raise TypeError(f"net must be a dtd.ReLUNetwork or dtd.GraphNetwork, got {type(net).__name__}")
    net, index = explain(net, output)
    graph = net.graph() if isinstance(net, ReLUNetwork) else net
    graph.check_layer(layer)
    n, j, d = roots.shape
    output = graph.check_output(index, n)
    relus, pools = graph.deciding(layer)
    if pools:
        raise TypeError(
            f"segment_outcomes judges ReLU regions, but f_{layer} of this network has {len(pools)} max pool(s); "
            "judge its roots with root_outcomes (region_match compares the argmax pattern too)"
        )
    overridden, live = graph.live_nodes(layer)
    reads_more = any(s not in overridden and s not in {m.id for m in live} for node in live
                     for s in graph.sources(node))
    if base is None:
        if reads_more:
            raise ValueError(f"f_{layer} reads activations below layer {layer} (a skip): pass base=dec.activations")
        base = ({}, {})
    per_root = output.repeat_interleave(j) if isinstance(output, torch.Tensor) else output
    points = torch.arange(n, device=a.device)
    at_a = graph.evaluate_roots(layer, a, points, base, output)
    check_finite_layer(at_a.value, layer, "f_k at the inputs")
    interior = (at_a.relu.abs() > pattern_tol(a.dtype)).all(1)
    flat_roots = roots.reshape(n * j, d)
    mid = (a.unsqueeze(1) + roots).reshape(n * j, d) / 2
    point_of_root = points.repeat_interleave(j)
    grad_mid = graph.evaluate_roots(layer, mid, point_of_root, base, per_root).gradient
    grad_a = at_a.gradient
    assert grad_mid is not None and grad_a is not None  # evaluate_roots computes them by default (gradient=True)
    grad_mid = grad_mid.reshape(n, j, d)
    match = ((grad_mid - grad_a.unsqueeze(1)).abs() <= atol).all(-1)
    f_root = graph.evaluate_roots(layer, flat_roots, point_of_root, base, per_root, gradient=False).value.reshape(n, j)
    predicted = ((a.unsqueeze(1) - roots) * grad_a.unsqueeze(1)).sum(-1)
    return SegmentOutcomes(interior, match, (at_a.value.unsqueeze(1) - f_root - predicted).abs())
