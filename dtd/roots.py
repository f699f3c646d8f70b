"""Root finders: where DTD expands each neuron's relevance.

A root finder gets the input ``a`` ``(batch, D)`` of layer ``k`` and the
relevance ``R`` ``(batch, J)`` of its output neurons and returns a
:class:`~dtd.rootsets.RootSet`: for every (point, neuron) a root (materialised
on demand, ``(batch, J, D)``) with a validity flag ``(batch, J)``.
A valid root satisfies the root equation ``w_j . (a - root_j) = R_j``, so the
relevances ``R_i = sum_j w_ji (a - root_j)_i`` conserve ``sum_j R_j``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .graph import NodeValues
from .progress import progress
from .regions import (
    LPStatus,
    RegionConstraints,
    RegionLP,
    base_rows,
    check_dense_limits,
    edge_steps,
    region_constraints,
    region_rows,
)
from .rootsets import ExplicitRoots, RegionRootSet, RootSet, WalkRootSet
from .rules import Rule, RuleLike
from .threads import one_thread
from .tolerances import DIVISION_GUARD, denominator_eps, region_slack
from .validation import SEED_LIMIT, check_bool, check_int, check_number, check_probability, check_seed

if TYPE_CHECKING:
    from .graph import GraphNetwork
    from .network import ReLUNetwork

__all__ = [
    "RootFinder",
    "LinearRoots",
    "RegionRoots",
    "RegionRootSet",
    "RegionSamplingRoots",
    "MetropolisHastingsRoots",
    "WalkRootSet",
    "DEFAULT_MEMORY_BUDGET",
    "SERIAL_WALK_ELEMENTS",
]

#: Entries of the walk's per-step tensors (points x chains x rows) below which
#: :class:`MetropolisHastingsRoots` runs on one intra-op thread.
SERIAL_WALK_ELEMENTS = 1 << 20

#: Bytes the per-chunk work tensors of :class:`RegionSamplingRoots` may take
#: (the points are processed in chunks, so memory stays flat in the batch size).
DEFAULT_MEMORY_BUDGET = 256 << 20


def _layer_seed(seed: int, layer: int) -> int:
    """The seed of layer ``layer``'s generator: ``seed * 1009 + layer``, wrapped into ``[0, 2**63)`` (no overflow)."""
    return (seed * 1009 + layer) % (SEED_LIMIT + 1)


class RootFinder(abc.ABC):
    """Finds the roots of every neuron of one layer, for a whole batch."""

    def check(self, net: ReLUNetwork | GraphNetwork) -> None:  # noqa: B027 -- a hook: by default a finder serves every network
        """Raise ``ValueError`` if the finder cannot serve ``net`` (called once per decomposition)."""

    def check_domain(self, k: int, a: torch.Tensor) -> None:  # noqa: B027 -- a hook: by default every input
        """Raise ``ValueError`` if the input ``a`` of layer ``k`` is outside the finder's domain."""

    @abc.abstractmethod
    def find(self, net: ReLUNetwork | GraphNetwork, k: int, a: torch.Tensor, relevance: torch.Tensor, *,
             output: int | torch.Tensor) -> RootSet:
        """The roots of every (point, neuron) of layer ``k`` for the explained ``output``
        (use :class:`~dtd.rootsets.ExplicitRoots` to return a ``(batch, J_k, D_k)`` tensor)."""

    @abc.abstractmethod
    def describe(self, k: int) -> str:
        """Short label of what is used at layer ``k`` (for results and reports)."""


class LinearRoots(RootFinder):
    """Closed-form roots along each rule's direction (train-free DTD's default).

    Parameters
    ----------
    rule
        One rule for every layer, or a sequence with one rule per layer
        (first layer first; DTD's usual recipe is ``[ZB(...), "z+", ...]``).
    eps
        ``|w_j . v_j|`` at or below this means the root does not exist
        (default: :func:`dtd.tolerances.denominator_eps` of the dtype).
    """

    def __init__(self, rule: RuleLike | Sequence[RuleLike] = "z+", *, eps: float | None = None) -> None:
        if isinstance(rule, (str, Rule)):
            self.rules: Rule | tuple[Rule, ...] = Rule.ensure(rule)
        elif isinstance(rule, Sequence) and len(rule) > 0:
            self.rules = tuple(Rule.ensure(r) for r in rule)
        else:
            raise TypeError(f"rule must be a rule, a rule name or a non-empty list of them, got {rule!r}")
        self.eps = None if eps is None else check_number(eps, "eps", minimum=0.0)

    def rule(self, k: int) -> Rule:
        """The rule used at layer ``k``."""
        return self.rules[k] if isinstance(self.rules, tuple) else self.rules

    def check(self, net: ReLUNetwork | GraphNetwork) -> None:
        if isinstance(self.rules, tuple) and len(self.rules) != net.n_layers:
            raise ValueError(
                f"got {len(self.rules)} rules for a network with {net.n_layers} layers; give one rule per layer "
                f"(net.n_layers; a lowered model has one layer per ReLU, plus a last one without), e.g. "
                f"[dtd.rules.ZB(low, high)] + ['z+'] * {net.n_layers - 1}"
            )

    def check_domain(self, k: int, a: torch.Tensor) -> None:
        try:
            self.rule(k).check_domain(a)
        except ValueError as error:  # say which layer's inputs, and that DTD's recipes change the rule above the input
            where = "the network's input" if k == 0 else f"the activations entering layer {k}"
            hint = "" if k == 0 else (
                "; a rule for the input's domain (zB's box, or z+/gamma for x >= 0) is meant for layer 0: "
                "pass one rule per layer, e.g. rule=[dtd.rules.ZB(low, high)] + ['z+'] * (net.n_layers - 1)"
            )
            raise ValueError(f"layer {k} ({where}): {error}{hint}") from None

    def find(self, net: ReLUNetwork | GraphNetwork, k: int, a: torch.Tensor, relevance: torch.Tensor, *,
             output: int | torch.Tensor = 0) -> RootSet:
        eps = denominator_eps(a.dtype) if self.eps is None else self.eps
        return self.rule(k).root_set(a, net.weight(k), relevance, eps, layer=k)

    def describe(self, k: int) -> str:
        return repr(self.rule(k))

    def __repr__(self) -> str:
        rules = list(self.rules) if isinstance(self.rules, tuple) else self.rules
        return f"LinearRoots({rules!r})"


class _InRegionFinder(RootFinder):
    """Shared by the finders that search the input's region: the domain ``root >= 0`` when ``nonnegative``.

    They serve a :class:`~dtd.ReLUNetwork` and a :class:`~dtd.GraphNetwork`
    alike (there the region is the ReLU and argmax pattern; layers whose
    dense weight or region rows exceed :data:`dtd.graph.DENSE_LAYER_LIMIT`
    are refused).  ``find``'s ``base``: on a graph, :meth:`GraphNetwork.run`
    at the same points (``dtd.train_free`` passes it), for activations that
    skip past layer ``k``.
    """

    nonnegative: bool = True

    def check(self, net: ReLUNetwork | GraphNetwork) -> None:
        """On a graph network: every layer's weight and region rows fit :data:`dtd.graph.DENSE_LAYER_LIMIT`
        (:func:`dtd.regions.check_dense_limits`), so a refusal comes before any linear program or walk."""
        check_dense_limits(net)

    def check_domain(self, k: int, a: torch.Tensor) -> None:
        if self.nonnegative and float(a.min()) < 0:
            raise ValueError(
                f"{type(self).__name__}(nonnegative=True) needs non-negative "
                f"inputs; layer {k}'s minimum is {float(a.min()):.3g}"
            )


def _is_graph(net: ReLUNetwork | GraphNetwork) -> bool:
    from .graph import GraphNetwork

    return isinstance(net, GraphNetwork)


def _dense_limit() -> int:
    from . import graph

    return graph.DENSE_LAYER_LIMIT


def _region_chunk(net: ReLUNetwork | GraphNetwork, k: int, a: torch.Tensor, output: int | torch.Tensor,
                  base: NodeValues | None) -> int:
    """Points whose region rows are built at once: all of them on a dense network (as always); on a graph as
    many as fit :data:`dtd.graph.DENSE_LAYER_LIMIT` together (at least one)."""
    if not _is_graph(net):
        return a.shape[0]
    return max(1, _dense_limit() // (8 * region_rows(net, k) * a.shape[1]))


def _chunk_output(output: int | torch.Tensor, start: int, stop: int) -> int | torch.Tensor:
    return output[start:stop] if isinstance(output, torch.Tensor) else output


def _chunk_region(net: ReLUNetwork | GraphNetwork, k: int, a: torch.Tensor, output: int | torch.Tensor,
                  base: NodeValues | None, start: int, stop: int) -> RegionConstraints:
    return region_constraints(net, a[start:stop], k, _chunk_output(output, start, stop),
                              base=base_rows(base, start, stop))


class RegionRoots(_InRegionFinder):
    """For every (point, neuron): the root nearest to ``a`` inside the input's linear region.

    The root satisfies the neuron's root equation ``w_j . (a - root) = R_j``,
    lies in the closure of the input's linear region of ``f_k`` (up to a
    tenth of the dtype's ``pattern_tol``, within what the region checks accept; ReLU states
    of the layers ``>= k`` fixed, as linear inequalities; see
    :mod:`dtd.regions`) and in the domain ``root >= 0``.  One linear program
    per (point, neuron) carrying relevance, minimising the L1 or L-infinity
    distance to ``a``, solved with HiGHS (``highspy``); no feasible point means
    ``root_valid = False`` with status "no root in region".

    Parameters
    ----------
    norm
        ``"l1"`` or ``"linf"``.
    nonnegative
        Require ``root >= 0`` (activations and the suite's inputs are non-negative).
    """

    def __init__(self, norm: str = "l1", *, nonnegative: bool = True) -> None:
        if norm not in ("l1", "linf"):
            raise ValueError(f"norm must be 'l1' or 'linf', got {norm!r}")
        self.norm = norm
        self.nonnegative = check_bool(nonnegative, "nonnegative")

    def find(self, net: ReLUNetwork | GraphNetwork, k: int, a: torch.Tensor, relevance: torch.Tensor, *,
             output: int | torch.Tensor = 0, base: NodeValues | None = None) -> RootSet:
        slack = region_slack(a.dtype)
        n_points, n_neurons = relevance.shape
        chunk = _region_chunk(net, k, a, output, base)
        regions: Iterable[tuple[int, int, RegionConstraints]]
        if chunk >= n_points:
            regions = [(0, n_points, region_constraints(net, a, k, output, base=base))]
        else:  # a graph layer whose region rows for every point at once would pass the dense limit: chunks of points
            bounds = ((start, min(n_points, start + chunk)) for start in range(0, n_points, chunk))
            regions = ((start, stop, _chunk_region(net, k, a, output, base, start, stop)) for start, stop in bounds)
        weight = net.weight(k).to(torch.float64).cpu().numpy()
        a64 = a.detach().to(torch.float64).cpu().numpy()
        r64 = relevance.detach().to(torch.float64).cpu().numpy()
        roots = np.repeat(a64[:, None, :], n_neurons, axis=1)
        status = np.full((n_points, n_neurons), LPStatus.TRIVIAL, dtype=np.int8)  # trivial unless solved below
        with progress(n_points, f"RegionRoots layer {k}") as bar:
            for start, stop, region in regions:
                A, c, sign = (t.cpu().numpy() for t in (region.A, region.c, region.sign))
                for n in range(start, stop):
                    carrying = np.nonzero(r64[n])[0]
                    if carrying.size:
                        i = n - start
                        lp = RegionLP(a64[n], A[i], c[i], sign[i], norm=self.norm, nonnegative=self.nonnegative,
                                      slack=slack)
                        for j in carrying:
                            code, point = lp.nearest(weight[j], float(weight[j] @ a64[n] - r64[n, j]))
                            status[n, j] = code
                            if point is not None:
                                roots[n, j] = point
                    bar.update(1)
        status_t = torch.from_numpy(status).to(a.device)
        valid = (status_t == LPStatus.SOLVED) | (status_t == LPStatus.TRIVIAL)
        return RegionRootSet(a, torch.from_numpy(roots).to(dtype=a.dtype, device=a.device), valid, status_t)

    def describe(self, k: int) -> str:
        return f"RegionRoots(norm={self.norm!r})"


class RegionSamplingRoots(_InRegionFinder):
    """Roots on random rays from ``a`` that stay inside the input's linear region.

    The 2022 study's "interpolation" finder sampled random directions,
    bisected to the region's edge and handed every neuron the same
    candidate.  Here, for a batch of points at once: ``n_directions`` random
    unit directions ``d`` per point (a local generator seeded with ``seed``);
    the exact distance ``s_edge`` to the region's closure along each ray (the
    region is a polyhedron, so no bisection is needed), clamped to the domain
    ``root >= 0`` (directions are reflected upwards in the coordinates where
    ``a`` is 0, so the rays can leave it); and *per neuron* the point ``a + s d`` that solves that
    neuron's root equation on the ray, ``s = -R_j / (w_j . d)``, if
    ``0 <= s <= s_edge``.  Each neuron gets the nearest such point over the
    rays; no ray reaching its root inside the region means ``root_valid =
    False``.  Every root therefore satisfies its root equation exactly and
    lies in the region's closure.

    Parameters
    ----------
    n_directions
        Rays per point.
    seed
        Seed of the local generator of the directions (the global RNG is not
        used), an int in ``[0, 2**63 - 1]``; layer ``k`` uses
        ``(seed * 1009 + k) mod 2**63``.
    nonnegative
        Clamp the rays to the domain ``root >= 0``.
    memory_budget
        Bytes the work tensors of one chunk of points may take; points are
        processed in chunks (a multiple of 16 points), so memory stays flat
        in the batch size.  The roots are identical for every budget.  On a
        graph network a chunk's region rows ``(points, M, D)`` also fit
        :data:`dtd.graph.DENSE_LAYER_LIMIT` (a chunk then holds whole
        blocks of 16 normal values, as few points as that allows).

    Notes
    -----
    Searches on many points show a progress bar on a terminal (see
    :mod:`dtd.progress`).
    """

    def __init__(self, n_directions: int = 256, *, seed: int = 0, nonnegative: bool = True,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.n_directions = check_int(n_directions, "n_directions", minimum=1)
        self.seed = check_seed(seed)
        self.nonnegative = check_bool(nonnegative, "nonnegative")
        self.memory_budget = check_int(memory_budget, "memory_budget", minimum=1)

    def directions(
        self, n_points: int, width: int, layer: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The unit directions ``(n_points, n_directions, width)`` (float64), reproducible per layer.

        ``generator``: continue the stream of an earlier call of the same layer
        (the chunks of one search); default a fresh generator of the layer.
        """
        if generator is None:
            generator = torch.Generator().manual_seed(_layer_seed(self.seed, layer))
        d = torch.randn(n_points, self.n_directions, width, generator=generator, dtype=torch.float64)
        return d / d.norm(dim=-1, keepdim=True).clamp_min(DIVISION_GUARD)

    def chunk_points(self, n_rows: int, n_neurons: int, width: int) -> int:
        """Points per chunk: the ``(points, rays, rows + neurons + width)`` float64 work
        tensors, about four times over, fit the budget.

        A multiple of 16 points, so that drawing the directions chunk by chunk
        continues torch's normal stream exactly where one draw for all points
        would (its CPU sampler works in blocks of 16 values); with fewer than
        16 values per point the points are not split.
        """
        per_point = 4 * 8 * self.n_directions * (n_rows + n_neurons + width)
        if self.n_directions * width < 16:
            return -1
        return max(16, (self.memory_budget // per_point) // 16 * 16)

    def find(self, net: ReLUNetwork | GraphNetwork, k: int, a: torch.Tensor, relevance: torch.Tensor, *,
             output: int | torch.Tensor = 0, base: NodeValues | None = None) -> RootSet:
        a64 = a.detach().to(torch.float64).cpu()
        r64 = relevance.detach().to(torch.float64).cpu()
        w = net.weight(k).to(torch.float64).cpu()
        n_points, width = a64.shape
        n_rows = region_rows(net, k)
        chunk = self.chunk_points(n_rows, w.shape[0], width)
        chunk = n_points if chunk < 0 else chunk
        if _is_graph(net):  # the region's rows (points, M, D) too; whole blocks of 16 normal values per chunk
            step = 16 // math.gcd(16, self.n_directions * width)
            fit = (_dense_limit() // max(1, 8 * n_rows * width)) // step * step
            chunk = min(chunk, max(step, fit))
        generator = torch.Generator().manual_seed(_layer_seed(self.seed, k))
        slack = region_slack(a.dtype)
        roots = torch.empty(n_points, w.shape[0], width, dtype=torch.float64)
        valid = torch.empty(n_points, w.shape[0], dtype=torch.bool)
        with progress(n_points, f"RegionSamplingRoots layer {k}") as bar:
            for start in range(0, n_points, chunk):
                stop = min(n_points, start + chunk)
                d = self.directions(stop - start, width, k, generator)
                roots[start:stop], valid[start:stop] = self._search(
                    net, k, a64[start:stop], r64[start:stop], w, d, _chunk_output(output, start, stop), slack,
                    base_rows(base, start, stop)
                )
                bar.update(stop - start)
        return ExplicitRoots(a, roots.to(dtype=a.dtype, device=a.device), valid.to(a.device))

    def _search(self, net: ReLUNetwork | GraphNetwork, k: int, a64: torch.Tensor, r64: torch.Tensor, w: torch.Tensor,
                d: torch.Tensor, output: int | torch.Tensor, slack: float,
                base: NodeValues | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Roots ``(n, J, D)`` and validity ``(n, J)`` of the points ``a64``
        ``(n, D)`` along the rays ``d`` ``(n, K, D)``."""
        region = region_constraints(net, a64, k, output, base=base)
        if self.nonnegative:  # rays that leave a zero coordinate downwards would stop at once: reflect them
            d = torch.where((a64 <= 0).unsqueeze(1), d.abs(), d)
        # region rows along the ray: g + s h >= -slack with g = sign (A a + c), h = sign A d
        g = region.sign * (torch.einsum("nmd,nd->nm", region.A, a64) + region.c)  # (N, M)
        h = region.sign.unsqueeze(-1) * torch.einsum("nmd,nkd->nmk", region.A, d)  # (N, M, K)
        s_edge = edge_steps(g.unsqueeze(-1), h, slack).amin(1)  # (N, K)
        if self.nonnegative:
            to_zero = torch.where(d < 0, a64.unsqueeze(1) / -d.clamp(max=-DIVISION_GUARD),
                                  torch.full_like(d, float("inf")))
            s_edge = torch.minimum(s_edge, to_zero.amin(-1))
        wd = torch.einsum("jd,nkd->njk", w, d)  # (N, J, K)
        s = -r64.unsqueeze(-1) / torch.where(wd != 0, wd, torch.ones_like(wd))
        feasible = (wd != 0) & (s >= 0) & (s <= s_edge.unsqueeze(1))
        best = torch.where(feasible, s, torch.full_like(s, float("inf"))).min(-1)  # nearest root on any ray
        carries = r64 != 0
        valid = ~carries | torch.isfinite(best.values)
        step = torch.where(carries & valid, best.values, torch.zeros_like(best.values))  # (N, J)
        chosen = torch.gather(d, 1, best.indices.unsqueeze(-1).expand(-1, -1, d.shape[-1]))  # (N, J, D)
        return a64.unsqueeze(1) + step.unsqueeze(-1) * chosen, valid

    def describe(self, k: int) -> str:
        return f"RegionSamplingRoots(n_directions={self.n_directions}, seed={self.seed})"


class MetropolisHastingsRoots(_InRegionFinder):
    """Roots on Metropolis-Hastings random walks confined to the input's linear region.

    For every point, ``n_chains`` walks start at ``a`` and move inside the
    closure of its region of ``f_k`` (and the domain ``root >= 0``):
    Gaussian proposals (reflected at 0 in the domain, which keeps them
    symmetric) that leave the region are rejected, the others are accepted
    with the Metropolis probability of the target ``exp(-|x - a|_2 / scale)``
    (the walk stays near ``a``, where the nearest roots are).  Each chain's
    step size adapts towards ``target_acceptance`` with a gain that decays
    like ``t^-0.6``.

    The region and the domain are convex, so every segment the walk moves
    along (and every segment from ``a`` to a visited point) lies in them.
    Where such a segment crosses neuron ``j``'s root hyperplane
    ``w_j . (a - r) = R_j`` the crossing is an exact in-region root; each
    neuron gets the crossing nearest to ``a`` over all chains and steps, and
    ``root_valid = False`` if no walk crossed its hyperplane.  Roots thus
    satisfy their root equation up to rounding and lie in the region's
    closure by construction, like :class:`RegionSamplingRoots`; the walks
    reach roots that no straight ray from ``a`` reaches inside the region.

    Parameters
    ----------
    n_chains, n_steps
        Walks per point and moves per walk.
    scale
        Length scale of the target; ``None``: per point, the median over
        its relevant neurons of the distance ``|R_j| / |w_j|_2`` from ``a``
        to their root hyperplanes.
    target_acceptance
        Share of accepted moves the step sizes adapt to, in ``(0, 1)``.
    seed
        Seed of the local generator (the global RNG is not used).
    nonnegative
        Confine the walks to ``root >= 0``.

    Notes
    -----
    Every step is a few dozen batched tensor operations over all points and
    chains at once.  While those tensors are small (below
    :data:`SERIAL_WALK_ELEMENTS` entries) the walk runs on one intra-op
    thread and restores torch's thread count afterwards: synchronising
    threads costs more than such operations, and on a machine where another
    process takes a core it made the walk ~17x slower (72 s instead of 4 s
    for 50 points).  Long walks show a progress bar on a terminal.

    On a graph network, points whose region rows together would exceed
    :data:`dtd.graph.DENSE_LAYER_LIMIT` walk in chunks, one after another,
    continuing one generator's stream (reproducible for the same batch).
    """

    def __init__(
        self,
        n_chains: int = 16,
        n_steps: int = 200,
        *,
        scale: float | None = None,
        target_acceptance: float = 0.3,
        seed: int = 0,
        nonnegative: bool = True,
    ) -> None:
        self.n_chains = check_int(n_chains, "n_chains", minimum=1)
        self.n_steps = check_int(n_steps, "n_steps", minimum=1)
        self.scale = None if scale is None else check_number(scale, "scale", minimum=0.0, strict_minimum=True)
        self.target_acceptance = check_probability(target_acceptance, "target_acceptance")
        self.seed = check_seed(seed)
        self.nonnegative = check_bool(nonnegative, "nonnegative")

    def _scale(self, w: torch.Tensor, r64: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` length scale of the target at each point."""
        if self.scale is not None:
            return torch.full(r64.shape[:1], self.scale, dtype=torch.float64)
        distance = r64.abs() / w.norm(dim=1).clamp_min(DIVISION_GUARD)  # (N, J) distance to each root hyperplane
        distance = torch.where(r64 != 0, distance, torch.full_like(distance, float("nan")))
        median = distance.nanmedian(dim=1).values
        return torch.where(torch.isfinite(median) & (median > 0), median, torch.ones_like(median))

    def find(self, net: ReLUNetwork | GraphNetwork, k: int, a: torch.Tensor, relevance: torch.Tensor, *,
             output: int | torch.Tensor = 0, base: NodeValues | None = None) -> RootSet:
        n_points = a.shape[0]
        chunk = _region_chunk(net, k, a, output, base)
        if chunk >= n_points:
            return self._walk_here(net, k, a, relevance, output, base)
        # a graph layer whose region rows for every point at once would pass the dense limit: the points walk in
        # chunks, one after another, continuing one generator's stream
        generator = torch.Generator().manual_seed(_layer_seed(self.seed, k))
        parts = [
            self._walk_here(net, k, a[start:stop], relevance[start:stop], _chunk_output(output, start, stop),
                            base_rows(base, start, stop), generator)
            for start, stop in ((s, min(n_points, s + chunk)) for s in range(0, n_points, chunk))
        ]
        return WalkRootSet(a, torch.cat([p.roots() for p in parts]), torch.cat([p.valid for p in parts]),
                           torch.cat([p.acceptance for p in parts]))

    def _walk_here(self, net: ReLUNetwork | GraphNetwork, k: int, a: torch.Tensor, relevance: torch.Tensor,
                   output: int | torch.Tensor, base: NodeValues | None,
                   generator: torch.Generator | None = None) -> WalkRootSet:
        """:meth:`_walk`, on one intra-op thread while its tensors are small (see the class notes)."""
        rows = region_rows(net, k)
        if a.shape[0] * self.n_chains * max(rows, a.shape[1]) > SERIAL_WALK_ELEMENTS:
            return self._walk(net, k, a, relevance, output, base, generator)
        with one_thread():
            return self._walk(net, k, a, relevance, output, base, generator)

    def _walk(self, net: ReLUNetwork | GraphNetwork, k: int, a: torch.Tensor, relevance: torch.Tensor,
              output: int | torch.Tensor, base: NodeValues | None = None,
              generator: torch.Generator | None = None) -> WalkRootSet:
        a64 = a.detach().to(torch.float64).cpu()
        r64 = relevance.detach().to(torch.float64).cpu()
        w = net.weight(k).to(torch.float64).cpu()
        region = region_constraints(net, a64, k, output, base=base)
        # (N, M, D): inside iff A r + sc >= -slack (sign 0: a zero row, no constraint)
        A = region.sign.unsqueeze(-1) * region.A
        sc = region.sign * region.c
        slack = region_slack(a.dtype)
        if generator is None:
            generator = torch.Generator().manual_seed(_layer_seed(self.seed, k))
        n, d = a64.shape
        chains = self.n_chains
        scale = self._scale(w, r64)  # (N,)
        x = a64.unsqueeze(1).expand(n, chains, d).clone()  # (N, C, D)
        step = (scale / d**0.5).unsqueeze(1).expand(n, chains).clone()  # (N, C)
        energy = torch.zeros(n, chains, dtype=torch.float64)
        wa_r = a64 @ w.T - r64  # (N, J): w_j . a - R_j; the hyperplane is w_j . r = wa_r
        best = torch.full(r64.shape, float("inf"), dtype=torch.float64)  # (N, J) distance of the nearest root
        roots = a64.unsqueeze(1).expand(n, r64.shape[1], d).clone()  # (N, J, D)
        accepted = torch.zeros(n, chains, dtype=torch.float64)
        A_t = A.transpose(1, 2).contiguous()  # (N, D, M)
        g = (sc + torch.einsum("nmd,nd->nm", A, a64)).unsqueeze(1).expand(n, chains, -1).clone()  # rows at x: (N, C, M)
        carries = r64 != 0

        def record(start: torch.Tensor, end: torch.Tensor, ok: torch.Tensor) -> None:
            """Keep, per neuron, the crossing of its hyperplane on segments start
            -> end (where ``ok``) nearest to ``a``."""
            delta = end - start
            w_delta = delta @ w.T
            s = (wa_r.unsqueeze(1) - start @ w.T) / torch.where(w_delta != 0, w_delta, torch.ones_like(w_delta))
            hit = ok.unsqueeze(-1) & (w_delta != 0) & (s >= 0) & (s <= 1) & carries.unsqueeze(1)  # (N, C, J)
            e = start - a64.unsqueeze(1)  # |e + s delta|^2 without building the points
            dist2 = (
                (e * e).sum(-1, keepdim=True)
                + 2 * s * (e * delta).sum(-1, keepdim=True)
                + s * s * (delta * delta).sum(-1, keepdim=True)
            )
            nearest = torch.where(hit, dist2, torch.full_like(s, float("inf"))).min(1)  # over chains: (N, J)
            better = nearest.values < best
            if not bool(better.any()):
                return
            idx = nearest.indices.unsqueeze(-1).expand(-1, -1, d)  # (N, J, D)
            s_nearest = torch.gather(s, 1, nearest.indices.unsqueeze(1)).squeeze(1).unsqueeze(-1)  # (N, J, 1)
            chosen = torch.gather(start, 1, idx) + s_nearest * torch.gather(delta, 1, idx)
            roots.copy_(torch.where(better.unsqueeze(-1), chosen, roots))
            best.copy_(torch.where(better, nearest.values, best))

        bar = progress(self.n_steps, f"MetropolisHastingsRoots layer {k}")
        for t in range(self.n_steps):
            bar.update(1)
            proposal = x + step.unsqueeze(-1) * torch.randn(n, chains, d, generator=generator, dtype=torch.float64)
            if self.nonnegative:
                proposal = proposal.abs()  # reflection at 0: a symmetric proposal on the half-space
            # region rows along the move x -> proposal: g + s h >= -slack for s in [0, s_edge]
            h = torch.bmm(proposal - x, A_t)  # (N, C, M)
            s_edge = edge_steps(g, h, slack).amin(-1).clamp(max=1.0)  # (N, C); 1: the proposal is inside
            inside = s_edge >= 1
            # the part of every move that stays in the region is searched, accepted or not
            record(x, x + s_edge.unsqueeze(-1) * (proposal - x), s_edge > 0)
            new_energy = (proposal - a64.unsqueeze(1)).norm(dim=-1) / scale.unsqueeze(1)
            u = torch.rand(n, chains, generator=generator, dtype=torch.float64)
            accept = inside & (torch.log(u) < energy - new_energy)
            record(a64.unsqueeze(1).expand_as(proposal), proposal, accept)
            x = torch.where(accept.unsqueeze(-1), proposal, x)
            g = torch.where(accept.unsqueeze(-1), g + h, g)
            energy = torch.where(accept, new_energy, energy)
            accepted += accept
            gain = (t + 1) ** -0.6
            step = step * torch.exp(gain * (accept.to(torch.float64) - self.target_acceptance))
        bar.close()
        valid = ~carries | torch.isfinite(best)
        acceptance = (accepted.mean(1) / self.n_steps).to(a.device)
        return WalkRootSet(a, roots.to(dtype=a.dtype, device=a.device), valid.to(a.device), acceptance)

    def describe(self, k: int) -> str:
        return f"MetropolisHastingsRoots(n_chains={self.n_chains}, n_steps={self.n_steps}, seed={self.seed})"
