"""Linear regions of ``f_k`` as linear constraints, and the linear programs over them.

Inside the input's linear region (the ReLU states of the layers ``>= k``
fixed) every pre-activation is affine in the layer-``k`` input ``r``:
``z_l(r) = A_l r + c_l``.  The closure of the region is then
``sign_m (A_m r + c_m) >= 0`` for every deciding neuron ``m`` (hidden ReLUs of
the layers ``>= k`` and the explained output neuron; other output neurons do
not enter ``f``), with ``sign = +1`` for neurons active at the input and
``-1`` for inactive ones.

On a :class:`~dtd.graph.GraphNetwork` the region of ``f_k`` is the input's
ReLU pattern *and* argmax pattern of the non-linearities ``f_k`` recomputes
(:meth:`~dtd.graph.GraphNetwork.deciding`): every deciding ReLU's
pre-activation is a row as above, and every window of a deciding max pool
adds ``z[argmax] - z[e] >= 0`` for each other element ``e`` of the window
(its argmax at the input stays a maximum).  Activations that ``f_k`` keeps
(a skip from below layer ``k``) are constants of ``c``.  These rows are dense
``(M, D_k)`` matrices per point, refused above
:data:`dtd.graph.DENSE_LAYER_LIMIT`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import math
import os
import sys
import threading
from collections.abc import Sequence

import highspy
import numpy as np
import torch

from . import graph as _graph
from .graph import (
    AffineNode,
    GraphNetwork,
    MaxPoolNode,
    Node,
    NodeValues,
    ReLUNode,
    dense_limit_error,
    pool_windows,
)
from .network import ReLUNetwork
from .operators import Operator
from .tolerances import DIVISION_GUARD, LP_FEASIBILITY_TOL, region_slack
from .validation import check_bool

__all__ = [
    "LPStatus",
    "RegionConstraints",
    "region_constraints",
    "region_rows",
    "check_dense_limits",
    "base_rows",
    "edge_steps",
    "RegionLP",
    "region_output_root",
]


class LPStatus(enum.IntEnum):
    """What the LP helpers report per problem (stored as ``int8`` in status tensors)."""

    SOLVED = 0
    #: ``R_j = 0``: the root is ``a`` itself, no program was solved
    TRIVIAL = 1
    #: no point of the region's closure satisfies the equality
    INFEASIBLE = 2
    #: HiGHS ended without an optimum or a proof of infeasibility
    FAILED = 3

    @property
    def label(self) -> str:
        """The name used in counts and reports: "solved", "trivial", "infeasible", "solver failed"."""
        return "solver failed" if self is LPStatus.FAILED else self.name.lower()


def edge_steps(g: torch.Tensor, h: torch.Tensor, slack: float) -> torch.Tensor:
    """Per region row ``g + s h >= -slack`` along a move: the step ``s`` where it is reached (inf if it never is).

    ``g`` is the row's value ``sign * (A r + c)`` at the start, ``h`` its change per unit step;
    broadcast together.  The smallest over the rows is how far the move stays in the region.
    """
    return torch.where(h < 0, (g + slack) / -h.clamp(max=-DIVISION_GUARD), torch.full_like(h, float("inf")))


@dataclasses.dataclass(frozen=True)
class RegionConstraints:
    """The closure of each point's region of ``f_k``: ``sign * (A r + c) >= 0``.

    Attributes (float64, one row per point)
    ----------------------------------------
    A : ``(batch, M, D)``; c, sign : ``(batch, M)``; output_row : index of the
    explained output's row in ``M`` (``z_out(r) = A[:, output_row] r + c[:, output_row]``).
    blocks : on a graph network, ``(kind, node id, start, stop)`` per group of
    rows in order -- ``"relu"`` (the ReLU's pre-activations), ``"max pool"``
    (``z[argmax] - z[e]`` for every output and each other element ``e`` of
    its window, in window order: ``K - 1`` rows per output for windows of
    up to ``K`` elements, sign 0 on the slots a smaller window lacks),
    ``"output"``; empty for a :class:`~dtd.ReLUNetwork`.
    """

    A: torch.Tensor
    c: torch.Tensor
    sign: torch.Tensor
    output_row: int
    blocks: tuple[tuple[str, int, int, int], ...] = ()


def region_rows(net: ReLUNetwork | GraphNetwork, layer: int) -> int:
    """How many region rows the finders budget for at layer ``layer`` (work chunks, the walk's threading).

    A :class:`~dtd.ReLUNetwork`: every neuron of the layers ``>= k``
    (``sum(net.sizes[k + 1:])``).  A graph network: every deciding ReLU's
    neurons, every deciding max pool's outputs times one less than its largest window, and
    the last layer's neurons -- on a chain of Linear layers the same count.
    """
    if not isinstance(net, GraphNetwork):
        return sum(net.sizes[layer + 1 :])
    _, live = net.live_nodes(layer)
    return _graph_region_rows(net, live) - 1 + net.out_features


def check_dense_limits(net: ReLUNetwork | GraphNetwork) -> None:
    """Raise the ``ValueError`` a decomposition with an in-region finder would meet at its first layer above
    :data:`dtd.graph.DENSE_LAYER_LIMIT` (its weight or its region's rows; layers in the order DTD visits them, the
    output's first), before any work is done; a :class:`~dtd.ReLUNetwork` has no limit."""
    if not isinstance(net, GraphNetwork):
        return
    limit = _graph.DENSE_LAYER_LIMIT
    for k in reversed(range(net.n_layers)):
        d = net.in_features(k)
        if net.out_features_of(k) * d * 8 > limit:
            raise dense_limit_error(net, k, "its weight", net.out_features_of(k), d)
        m = _graph_region_rows(net, net.live_nodes(k)[1])
        if m * d * 8 > limit:
            raise dense_limit_error(net, k, _REGION_WHAT.format(k=k), m, d)


_REGION_WHAT = "the region of f_{k} (its deciding ReLUs, max-pool windows and output)"


def base_rows(base: NodeValues | None, start: int, stop: int) -> NodeValues | None:
    """The rows ``start:stop`` of :meth:`GraphNetwork.run`'s ``(values, argmax)`` (views), or None."""
    if base is None:
        return None
    values, argmax = base
    return {i: v[start:stop] for i, v in values.items()}, {i: v[start:stop] for i, v in argmax.items()}


def region_constraints(
    net: ReLUNetwork | GraphNetwork, a: torch.Tensor, layer: int, output: int | torch.Tensor, *,
    base: NodeValues | None = None
) -> RegionConstraints:
    """Affine maps of every deciding pre-activation at the inputs ``a`` ``(batch, D_k)`` of layer ``layer``.

    The rows are every deciding ReLU's pre-activation (for an MLP: every
    neuron of the layers ``>= k`` but the last, whose explained output decides
    when it has a ReLU); a last layer without ReLU adds the explained output's
    row with sign 0 (no constraint), so ``z_out`` is always available at
    ``output_row``.  A :class:`~dtd.ReLUNetwork` is computed as its chain graph.

    On a :class:`~dtd.graph.GraphNetwork` (see the module docstring) the rows
    are the deciding ReLUs' pre-activations and max pools' window comparisons
    in topological order, then the output's row.  ``base``: ``net.run(x)`` at
    the same points (rows of ``a``), needed when ``f_k`` reads activations
    that do not depend on layer ``k``'s input (a skip from below it); its max
    pools' argmaxes are then the input's pattern (else ``a`` is run forward).
    ``ValueError`` (:func:`dtd.graph.dense_limit_error`) when the rows,
    ``M x D_k`` per point as float64, exceed :data:`dtd.graph.DENSE_LAYER_LIMIT`.
    """
    if isinstance(net, ReLUNetwork):  # one engine: an MLP's region is its chain graph's (the same rows, bit for bit)
        net.check_layer(layer)
        net.check_output(output, a.shape[0])
        net = net.graph()
    return _graph_region_constraints(net, a, layer, output, base)


def _push(op: Operator, A: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map ``(A, c)`` of an activation pushed through a branch operator: ``(op A, op c)``.

    A Linear composes as the dense engine does (``einsum`` over the rows, ``c @ W^T``), bit for bit;
    other operators take the map's ``D`` columns as a batch through their ``forward``.
    """
    w = op.flat_weight()
    if w is not None:
        return torch.einsum("ij,njd->nid", w, A), c @ w.T
    n, _, d = A.shape
    columns = A.permute(0, 2, 1).reshape((n * d,) + tuple(op.in_shape))
    A_out = op.forward(columns).reshape(n, d, -1).permute(0, 2, 1)
    return A_out, op.forward(c.reshape((n,) + tuple(op.in_shape))).reshape(n, -1)


def _graph_region_rows(net: GraphNetwork, live: Sequence[Node]) -> int:
    rows = 1
    for node in live:
        if isinstance(node, ReLUNode):
            rows += math.prod(node.shape)
        elif isinstance(node, MaxPoolNode):
            rows += math.prod(node.shape) * (pool_windows(node, net.nodes[node.source].shape).shape[1] - 1)
    return rows


def _graph_region_constraints(net: GraphNetwork, a: torch.Tensor, layer: int, output: int | torch.Tensor,
                              base: NodeValues | None) -> RegionConstraints:
    """:func:`region_constraints` on a graph network: the affine maps of ``f_k``'s live nodes, composed in order."""
    net.check_layer(layer)
    output = net.check_output(output, a.shape[0])
    n, d = a.shape
    if d != net.in_features(layer):
        raise ValueError(f"a must be layer {layer}'s inputs (batch, {net.in_features(layer)}), got {tuple(a.shape)}")
    overridden, live = net.live_nodes(layer)
    live_ids = {node.id for node in live}
    m = _graph_region_rows(net, live)
    if m * d * 8 > _graph.DENSE_LAYER_LIMIT:
        raise dense_limit_error(net, layer, _REGION_WHAT.format(k=layer), m, d)
    constants = sorted({s for node in live for s in net.sources(node) if s not in overridden and s not in live_ids})
    if constants and base is None:
        raise ValueError(
            f"the region of layer {layer} ({net.layer_names()[layer]!r}) reads activations that do not depend on "
            f"its input (nodes {constants}: a skip from below the layer); pass base=net.run(x) for the same points"
        )
    if base is not None and any(base[0][i].shape[0] != n for i in constants):
        raise ValueError(f"base holds the values of {base[0][0].shape[0]} points "
                         f"but a has {n} rows; give both for the same points")
    a_net = a.detach()
    a = a_net.to(torch.float64)
    node_k = net.layer(layer)
    pools = [node for node in live if isinstance(node, MaxPoolNode)]
    argmax: dict[int, torch.Tensor] = {}
    known = base[0] if base is not None else {}  # values of the nodes f_k keeps (checked above where it reads any)
    if pools:  # the input's argmax pattern: the network's own at these points
        if base is not None and all(p.id in base[1] for p in pools):
            argmax = {p.id: base[1][p.id] for p in pools}
        else:
            values = dict(zip([b.source for b in node_k.branches], net.split_input(layer, a_net.to(net.dtype)),
                              strict=True))
            with torch.no_grad():
                for node in live:
                    for s in net.sources(node):
                        if s not in values:
                            values[s] = known[s]
                    net._compute(node, values, argmax, check=False)
    offsets, start = {}, 0
    for branch in node_k.branches:
        offsets[branch.source] = (start, branch.op.in_features)
        start += branch.op.in_features
    maps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # node id -> (A (n, size, d), c (n, size)) of its value
    z_of: dict[int, torch.Tensor] = {}  # affine node id -> its pre-activations at a, from the map
    rows_a: list[torch.Tensor] = []
    rows_c: list[torch.Tensor] = []
    rows_s: list[torch.Tensor] = []
    blocks: list[tuple[str, int, int, int]] = []
    count = 0

    def add(kind: str, node_id: int, A: torch.Tensor, c: torch.Tensor, sign: torch.Tensor) -> None:
        nonlocal count
        rows_a.append(A)
        rows_c.append(c)
        rows_s.append(sign)
        blocks.append((kind, node_id, count, count + A.shape[1]))
        count += A.shape[1]

    def source_map(s: int) -> tuple[torch.Tensor, torch.Tensor]:
        if s not in maps:  # an overridden source read past layer k (a skip): its part of r
            first, size = offsets[s]
            select = a.new_zeros(size, d)
            select[:, first : first + size] = torch.eye(size, dtype=a.dtype, device=a.device)
            maps[s] = (select.unsqueeze(0).expand(n, -1, -1), a.new_zeros(n, size))
        return maps[s]

    with torch.no_grad():
        for node in live:
            if isinstance(node, AffineNode):
                if node.id == node_k.id:
                    A = net.weight(layer).to(torch.float64).unsqueeze(0).expand(n, -1, -1)  # (N, J, D)
                    c = net.bias(layer).to(torch.float64).unsqueeze(0).expand(n, -1)
                else:
                    A_sum: torch.Tensor | None = None
                    c_sum: torch.Tensor | None = None
                    for branch, op in zip(node.branches, net.float64_operators(node), strict=True):
                        if branch.source in live_ids or branch.source in overridden:
                            A_b, c_b = _push(op, *source_map(branch.source))
                            A_sum = A_b if A_sum is None else A_sum + A_b
                        else:
                            c_b = op.forward(known[branch.source].to(torch.float64)).reshape(n, -1)
                        c_sum = c_b if c_sum is None else c_sum + c_b
                    if A_sum is None or c_sum is None:  # a live node reads a live (or overridden) source
                        raise ValueError(f"node {node.id} of the region of layer {layer} reads no live source")
                    A, c = A_sum, c_sum + node.bias.to(torch.float64).reshape(1, -1)
                maps[node.id] = (A, c)
                z_of[node.id] = c + torch.einsum("njd,nd->nj", A, a)
            elif isinstance(node, ReLUNode):
                A, c = source_map(node.source)
                z = z_of[node.source] if node.source in z_of else c + torch.einsum("njd,nd->nj", A, a)
                add("relu", node.id, A, c, torch.where(z > 0, 1.0, -1.0).to(torch.float64))
                active = (z > 0).to(torch.float64)
                maps[node.id] = (active.unsqueeze(-1) * A, active * c)
            elif isinstance(node, MaxPoolNode):  # the input is never live: it has no sources
                A, c = source_map(node.source)
                source_shape = net.nodes[node.source].shape
                windows = pool_windows(node, source_shape).to(a.device)  # (P, K)
                plane = math.prod(source_shape[-node.dim :])
                channels = A.shape[1] // plane
                P, K = windows.shape
                A4 = A.reshape(n, channels, plane, d)
                c3 = c.reshape(n, channels, plane)
                chosen = argmax[node.id].reshape(n, channels, P)
                A_out = A4.gather(2, chosen.unsqueeze(-1).expand(-1, -1, -1, d))  # (N, C, P, D)
                c_out = c3.gather(2, chosen)
                others = windows.unsqueeze(0).unsqueeze(0).expand(n, channels, P, K)
                keep = (others >= 0) & (others != chosen.unsqueeze(-1))  # (N, C, P, K)
                # the window's other elements first, in window order: K - 1 slots (the argmax is in its window)
                order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., : K - 1]
                others, keep = others.gather(-1, order), keep.gather(-1, order)
                flat = others.clamp_min(0).reshape(n, channels, P * (K - 1))
                A_e = A4.gather(2, flat.unsqueeze(-1).expand(-1, -1, -1, d)).reshape(n, channels, P, K - 1, d)
                c_e = c3.gather(2, flat).reshape(n, channels, P, K - 1)
                weight = keep.to(torch.float64)
                # z[arg] - z[e] >= 0 in a max pooling's windows, <= 0 in a min pooling's (MaxPoolNode.signs)
                oriented = weight
                if node.signs is not None:
                    signs = torch.tensor(node.signs, dtype=torch.float64, device=a.device)
                    oriented = weight * signs.repeat_interleave(channels // len(node.signs)).reshape(1, channels, 1, 1)
                add("max pool", node.id, ((A_out.unsqueeze(3) - A_e) * oriented.unsqueeze(-1)).reshape(n, -1, d),
                    ((c_out.unsqueeze(3) - c_e) * oriented).reshape(n, -1), weight.reshape(n, -1))
                maps[node.id] = (A_out.reshape(n, -1, d), c_out.reshape(n, -1))
        last = net.layer_ids[-1]
        A, c = maps[last]
        z = z_of[last]
        rows = torch.arange(n, device=a.device)
        explained = output.to(a.device) if isinstance(output, torch.Tensor) else torch.full_like(rows, output)
        sign = torch.where(z[rows, explained] > 0, 1.0, -1.0).to(torch.float64).unsqueeze(1)
        output_row = count
        add("output", last, A[rows, explained].unsqueeze(1), c[rows, explained].unsqueeze(1),
            sign if net.final_relu else torch.zeros_like(sign))
    return RegionConstraints(torch.cat(rows_a, 1), torch.cat(rows_c, 1), torch.cat(rows_s, 1), output_row,
                             tuple(blocks))


_BANNER_LOCK = threading.Lock()
_banner_shown = False


def _new_highs() -> highspy.Highs:
    """A ``highspy.Highs`` whose one-time start-up banner does not reach the caller's stdout.

    HiGHS prints its banner from C++ on file descriptor 1 when the process
    creates its first solver; the first creation therefore runs with fd 1
    pointed at ``os.devnull`` (C buffers flushed before it is restored).
    """
    global _banner_shown
    with _BANNER_LOCK:
        if _banner_shown:
            return highspy.Highs()
        sys.stdout.flush()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            h = highspy.Highs()
            _flush_c_stdout()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)
        _banner_shown = True
        return h


def _flush_c_stdout() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to flush (the banner then goes wherever C stdio puts it)
        pass


def lp_rows(a: np.ndarray, A_region: np.ndarray, c_region: np.ndarray, sign: np.ndarray, *, norm: str,
            slack: float) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:class:`RegionLP`'s rows in compressed sparse row form: ``(n_rows, lower, upper, starts, index, value)``.

    Columns ``r`` (``D``) then the distance variables ``u`` (``D`` for L1,
    one for L-infinity).  Rows: the region's (``sign != 0``; ``sign * A r >=
    -sign * c - slack``), ``r - u <= a``, ``-r - u <= -a``, and the equality
    row (every ``r`` coefficient 1, rewritten per solve).  Zero coefficients
    are left out; within a row, columns ascend.  Built from the non-zeros
    only, so memory grows with them, not with ``(M + 2D) x 2D``.
    """
    d = a.shape[0]
    inf = highspy.kHighsInf
    keep = sign != 0
    region = sign[keep, None] * A_region[keep]
    nonzero = region != 0
    i = np.arange(d)
    distance = d + i if norm == "l1" else np.full(d, d)
    pairs = np.stack([i, distance], 1).reshape(-1)
    counts = np.concatenate([nonzero.sum(1), np.full(2 * d, 2), [d]])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    index = np.concatenate([np.nonzero(nonzero)[1], pairs, pairs, i]).astype(np.int32)
    value = np.concatenate([region[nonzero], np.tile([1.0, -1.0], d), np.tile([-1.0, -1.0], d), np.ones(d)]).astype(
        np.float64
    )
    lower = np.concatenate([-(sign[keep] * c_region[keep]) - slack, np.full(2 * d, -inf), [0.0]])
    upper = np.concatenate([np.full(int(keep.sum()), inf), a, -a, [0.0]])
    return counts.shape[0], lower, upper, starts, index, value


class RegionLP:
    """Nearest points to ``a`` in one region's closure, one linear program per equality constraint.

    The region rows, the distance variables and the domain are built once
    (HiGHS through ``highspy``); each :meth:`nearest` call only rewrites the
    equality row ``eq_lhs . r = eq_rhs`` and re-solves from the previous
    basis, so the neurons of one point cost a fraction of separate solves.

    Parameters
    ----------
    a : ``(D,)``; A_region : ``(M, D)``; c_region, sign : ``(M,)``
        The point and its region's closure ``sign * (A r + c) >= 0``; rows
        with ``sign = 0`` are no constraint.
    norm
        ``"l1"`` (minimise ``sum |r - a|``) or ``"linf"`` (``max |r - a|``).
    nonnegative
        Require ``r >= 0``.
    slack
        The closure is ``sign * (A r + c) >= -slack`` (the finders use
        :func:`region_slack`), so that a root which the
        network's own rounding puts a hair outside a boundary (the top
        layer's root lies exactly on the output's hinge) still counts, as in
        the region checks.
    """

    def __init__(
        self, a: np.ndarray, A_region: np.ndarray, c_region: np.ndarray, sign: np.ndarray, *, norm: str,
        nonnegative: bool, slack: float = 0.0
    ) -> None:
        if norm not in ("l1", "linf"):
            raise ValueError(f"norm must be 'l1' or 'linf', got {norm!r}")
        d = a.shape[0]
        inf = highspy.kHighsInf
        extra = d if norm == "l1" else 1
        n_rows, lower, upper, starts, index, value = lp_rows(a, A_region, c_region, sign, norm=norm, slack=slack)
        h = _new_highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("primal_feasibility_tolerance", LP_FEASIBILITY_TOL)
        h.setOptionValue("dual_feasibility_tolerance", LP_FEASIBILITY_TOL)
        cost = np.concatenate([np.zeros(d), np.ones(extra)])
        col_lower = np.concatenate([np.full(d, 0.0 if nonnegative else -inf), np.zeros(extra)])
        empty_i, empty_f = np.array([], dtype=np.int32), np.array([], dtype=np.float64)
        h.addCols(d + extra, cost, col_lower, np.full(d + extra, inf), 0, empty_i, empty_i, empty_f)
        h.addRows(n_rows, lower, upper, int(value.shape[0]), starts, index, value)
        self._h, self._d, self._eq_row = h, d, n_rows - 1
        self._optimal = highspy.HighsModelStatus.kOptimal
        self._infeasible = highspy.HighsModelStatus.kInfeasible

    def nearest(self, eq_lhs: np.ndarray, eq_rhs: float) -> tuple[LPStatus, np.ndarray | None]:
        """``(SOLVED, r)`` for the nearest feasible ``r``; ``(INFEASIBLE, None)`` or ``(FAILED, None)`` otherwise."""
        h = self._h
        for i in range(self._d):
            h.changeCoeff(self._eq_row, i, float(eq_lhs[i]))
        h.changeRowBounds(self._eq_row, eq_rhs, eq_rhs)
        h.run()
        status = h.getModelStatus()
        if status == self._optimal:
            return LPStatus.SOLVED, np.array(h.getSolution().col_value[: self._d])
        return (LPStatus.INFEASIBLE if status == self._infeasible else LPStatus.FAILED), None


def region_output_root(net: ReLUNetwork | GraphNetwork, x: torch.Tensor, *, layer: int = 0, output: int = 0,
                       norm: str = "l1", nonnegative: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Does the input's linear region of ``f_k`` contain a point where the explained output is zero?

    The notebook's question 3 asked of the whole region instead of one root:
    for each row of ``x`` (inputs of layer ``layer``), the point nearest to
    it in the closure of its region (up to a tenth of ``pattern_tol``; and ``>= 0`` if ``nonnegative``) with
    ``z_out = 0`` -- where ``f_k = relu(z_out)`` reaches zero.

    On a :class:`~dtd.graph.GraphNetwork` ``x`` is the network's input
    ``(batch, *input_shape)`` (what layer ``k`` reads is computed from it,
    with every activation ``f_k`` keeps), the region is its ReLU and argmax
    pattern (:func:`region_constraints`) and the roots are layer ``k``'s
    inputs ``(batch, D_k)``.

    Returns ``(exists (batch,) bool, roots (batch, D), status (batch,) int8)``
    (:class:`LPStatus` values); ``roots`` holds the input where no such
    point exists.
    """
    net.check_layer(layer)
    net.check_output(output)
    check_bool(nonnegative, "nonnegative")
    if isinstance(net, GraphNetwork):
        x = net.check_input(x)
        base = net.run(x)
        x = net.layer_input(base[0], layer)
        region = region_constraints(net, x, layer, output, base=base)
    else:
        x = net.check_input(x, from_layer=layer)
        region = region_constraints(net, x, layer, output)
    slack = region_slack(x.dtype)
    A, c, sign = (t.cpu().numpy() for t in (region.A, region.c, region.sign))
    a64 = x.to(torch.float64).cpu().numpy()
    roots = a64.copy()
    status = np.zeros(a64.shape[0], dtype=np.int8)
    row = region.output_row
    for n in range(a64.shape[0]):
        lp = RegionLP(a64[n], A[n], c[n], sign[n], norm=norm, nonnegative=nonnegative, slack=slack)
        code, point = lp.nearest(A[n, row], float(-c[n, row]))
        status[n] = code
        if point is not None:
            roots[n] = point
    status_t = torch.from_numpy(status).to(x.device)
    return status_t == LPStatus.SOLVED, torch.from_numpy(roots).to(dtype=x.dtype, device=x.device), status_t
