"""Linear regions of ``f_k`` as linear constraints, and the linear programs over them.

Inside the input's linear region (the ReLU states of the layers ``>= k``
fixed) every pre-activation is affine in the layer-``k`` input ``r``:
``z_l(r) = A_l r + c_l``.  The closure of the region is then
``sign_m (A_m r + c_m) >= 0`` for every deciding neuron ``m`` (hidden ReLUs of
the layers ``>= k`` and the explained output neuron; other output neurons do
not enter ``f``), with ``sign = +1`` for neurons active at the input and
``-1`` for inactive ones.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import os
import sys
import threading
from typing import Optional

import highspy
import numpy as np
import torch

from .graph import dense_only
from .network import output_column
from .tolerances import DIVISION_GUARD, LP_FEASIBILITY_TOL, region_slack
from .validation import check_bool

__all__ = [
    "LPStatus",
    "deciding_layers",
    "region_pre_activations",
    "RegionConstraints",
    "region_constraints",
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


def deciding_layers(net, layer: int) -> list[int]:
    """The layers whose ReLU states decide the linear region of ``f_k`` (``k = layer``), lowest first.

    Every hidden layer ``>= k`` (all its neurons: each has a ReLU) and the
    last layer when it has a ReLU -- of that layer only the explained output
    neuron decides (other output neurons do not enter ``f``).  A last layer
    without ReLU has no state and is left out.
    """
    return [k for k in range(layer, net.n_layers) if net.has_relu(k)]


def region_pre_activations(net, zs: list[torch.Tensor], layer: int, output: "int | torch.Tensor") -> torch.Tensor:
    """The deciding pre-activations (:func:`deciding_layers`) side by side: ``(rows, M)``.

    ``zs`` are the pre-activations of layers ``layer ...`` (as
    :meth:`~dtd.ReLUNetwork.pre_activations`), each ``(rows, J)``; ``output``
    an int or a ``(rows,)`` tensor of per-row explained outputs.
    """
    last = net.n_layers - 1
    parts = [output_column(zs[k - layer], output).unsqueeze(1) if k == last else zs[k - layer] for k in deciding_layers(net, layer)]
    return torch.cat(parts, dim=1) if parts else zs[0][:, :0]


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
    """

    A: torch.Tensor
    c: torch.Tensor
    sign: torch.Tensor
    output_row: int


def region_constraints(net, a: torch.Tensor, layer: int, output: "int | torch.Tensor") -> RegionConstraints:
    """Affine maps of every deciding pre-activation at the inputs ``a`` ``(batch, D_k)`` of layer ``layer``.

    The rows are those of :func:`deciding_layers`; a last layer without
    ReLU adds the explained output's row with sign 0 (no constraint), so
    ``z_out`` is always available at ``output_row``.
    """
    dense_only(net, "region_constraints")
    net.check_layer(layer)
    output = net.check_output(output, a.shape[0])
    a = a.detach().to(torch.float64)
    deciding = set(deciding_layers(net, layer))
    last = net.n_layers - 1
    rows = torch.arange(a.shape[0], device=a.device)
    # the explained output's row of every point (a per-point output picks each point's own)
    explained = output.to(a.device) if isinstance(output, torch.Tensor) else torch.full_like(rows, output)
    rows_a, rows_c, rows_s = [], [], []
    A = net.weight(layer).to(torch.float64).unsqueeze(0).expand(a.shape[0], -1, -1)  # (N, J, D)
    c = net.bias(layer).to(torch.float64).unsqueeze(0).expand(a.shape[0], -1)
    z = c + torch.einsum("njd,nd->nj", A, a)
    output_row = -1
    for k in range(layer, net.n_layers):
        if k == last:  # the explained output's row; a constraint only if it has a ReLU
            output_row = sum(r.shape[1] for r in rows_a)
            rows_a.append(A[rows, explained].unsqueeze(1))
            rows_c.append(c[rows, explained].unsqueeze(1))
            sign = torch.where(z[rows, explained] > 0, 1.0, -1.0).to(torch.float64).unsqueeze(1)
            rows_s.append(sign if k in deciding else torch.zeros_like(sign))  # a zero sign makes the row no constraint
        elif k in deciding:
            rows_a.append(A)
            rows_c.append(c)
            rows_s.append(torch.where(z > 0, 1.0, -1.0).to(torch.float64))
        if k < last:
            active = (z > 0).to(torch.float64)
            w = net.weight(k + 1).to(torch.float64)
            A = torch.einsum("ij,njd->nid", w, active.unsqueeze(-1) * A)
            c = (active * c) @ w.T + net.bias(k + 1).to(torch.float64)
            z = c + torch.einsum("njd,nd->nj", A, a)
    return RegionConstraints(torch.cat(rows_a, 1), torch.cat(rows_c, 1), torch.cat(rows_s, 1), output_row)


_BANNER_LOCK = threading.Lock()
_banner_shown = False


def _new_highs() -> "highspy.Highs":
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
        self, a: np.ndarray, A_region: np.ndarray, c_region: np.ndarray, sign: np.ndarray, *, norm: str, nonnegative: bool, slack: float = 0.0
    ):
        if norm not in ("l1", "linf"):
            raise ValueError(f"norm must be 'l1' or 'linf', got {norm!r}")
        d = a.shape[0]
        inf = highspy.kHighsInf
        keep = sign != 0
        extra = d if norm == "l1" else 1
        eye = np.eye(d)
        distance = -eye if norm == "l1" else -np.ones((d, 1))
        rows = np.vstack([
            np.hstack([sign[keep, None] * A_region[keep], np.zeros((int(keep.sum()), extra))]),
            np.hstack([eye, distance]),  # r - u <= a
            np.hstack([-eye, distance]),  # -r - u <= -a
            np.concatenate([np.ones(d), np.zeros(extra)])[None],  # equality row, rewritten per solve
        ])
        lower = np.concatenate([-(sign[keep] * c_region[keep]) - slack, np.full(2 * d, -inf), [0.0]])
        upper = np.concatenate([np.full(int(keep.sum()), inf), a, -a, [0.0]])
        h = _new_highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("primal_feasibility_tolerance", LP_FEASIBILITY_TOL)
        h.setOptionValue("dual_feasibility_tolerance", LP_FEASIBILITY_TOL)
        cost = np.concatenate([np.zeros(d), np.ones(extra)])
        col_lower = np.concatenate([np.full(d, 0.0 if nonnegative else -inf), np.zeros(extra)])
        empty_i, empty_f = np.array([], dtype=np.int32), np.array([], dtype=np.float64)
        h.addCols(d + extra, cost, col_lower, np.full(d + extra, inf), 0, empty_i, empty_i, empty_f)
        nonzero = rows != 0
        starts = np.concatenate([[0], np.cumsum(nonzero.sum(1))[:-1]]).astype(np.int32)
        h.addRows(rows.shape[0], lower, upper, int(nonzero.sum()), starts, np.nonzero(nonzero)[1].astype(np.int32), rows[nonzero])
        self._h, self._d, self._eq_row = h, d, rows.shape[0] - 1
        self._optimal = highspy.HighsModelStatus.kOptimal
        self._infeasible = highspy.HighsModelStatus.kInfeasible

    def nearest(self, eq_lhs: np.ndarray, eq_rhs: float) -> tuple[LPStatus, Optional[np.ndarray]]:
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


def region_output_root(net, x: torch.Tensor, *, layer: int = 0, output: int = 0, norm: str = "l1", nonnegative: bool = True):
    """Does the input's linear region of ``f_k`` contain a point where the explained output is zero?

    The notebook's question 3 asked of the whole region instead of one root:
    for each row of ``x`` (inputs of layer ``layer``), the point nearest to
    it in the closure of its region (up to a tenth of ``pattern_tol``; and ``>= 0`` if ``nonnegative``) with
    ``z_out = 0`` -- where ``f_k = relu(z_out)`` reaches zero.

    Returns ``(exists (batch,) bool, roots (batch, D), status (batch,) int8)``
    (:class:`LPStatus` values); ``roots`` holds the input where no such
    point exists.
    """
    dense_only(net, "region_output_root")
    net.check_layer(layer)
    net.check_output(output)
    check_bool(nonnegative, "nonnegative")
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
