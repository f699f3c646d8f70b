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

import dataclasses
from typing import Optional

import numpy as np
import torch

__all__ = ["RegionConstraints", "region_constraints", "edge_steps", "RegionLP", "region_output_root", "LP_STATUS"]

#: what the LP helpers report per problem
LP_STATUS = {0: "solved", 1: "trivial", 2: "infeasible", 3: "solver failed"}

# HiGHS feasibility tolerance asked for; solutions satisfy constraints to about this
_LP_TOLERANCE = 1e-10


def region_slack(dtype: torch.dtype) -> float:
    """How far outside a boundary the finders' LPs may go: a tenth of what the region checks accept."""
    from .tolerances import pattern_tol

    return pattern_tol(dtype) / 10


def edge_steps(g: torch.Tensor, h: torch.Tensor, slack: float) -> torch.Tensor:
    """Per region row ``g + s h >= -slack`` along a move: the step ``s`` where it is reached (inf if it never is).

    ``g`` is the row's value ``sign * (A r + c)`` at the start, ``h`` its change per unit step;
    broadcast together.  The smallest over the rows is how far the move stays in the region.
    """
    return torch.where(h < 0, (g + slack) / -h.clamp(max=-1e-300), torch.full_like(h, float("inf")))


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


def region_constraints(net, a: torch.Tensor, layer: int, output: int) -> RegionConstraints:
    """Affine maps of every deciding pre-activation at the inputs ``a`` ``(batch, D_k)`` of layer ``layer``."""
    net.check_layer(layer)
    output = net.check_output(output, a.shape[0])
    a = a.detach().to(torch.float64)
    if isinstance(output, torch.Tensor):  # each point's own output row (``keep`` below picks it)
        output = output.to(a.device)
    rows_a, rows_c, rows_s = [], [], []
    A = net.weight(layer).to(torch.float64).unsqueeze(0).expand(a.shape[0], -1, -1)  # (N, J, D)
    c = net.bias(layer).to(torch.float64).unsqueeze(0).expand(a.shape[0], -1)
    z = c + torch.einsum("njd,nd->nj", A, a)
    output_row = -1
    for k in range(layer, net.n_layers):
        last = k == net.n_layers - 1
        keep = slice(output, output + 1) if last else slice(None)
        if last and isinstance(output, torch.Tensor):
            rows = torch.arange(a.shape[0], device=a.device)
            A, c, z = A[rows, output].unsqueeze(1), c[rows, output].unsqueeze(1), z[rows, output].unsqueeze(1)
            keep = slice(None)
        if net.has_relu(k):
            if last:
                output_row = sum(r.shape[1] for r in rows_a)
            rows_a.append(A[:, keep])
            rows_c.append(c[:, keep])
            rows_s.append(torch.where(z[:, keep] > 0, 1.0, -1.0).to(torch.float64))
        elif last:  # no ReLU on the output: z_out is still the explained quantity
            output_row = sum(r.shape[1] for r in rows_a)
            rows_a.append(A[:, keep])
            rows_c.append(c[:, keep])
            rows_s.append(torch.zeros_like(c[:, keep]))  # a zero sign makes the row no constraint
        if not last:
            active = (z > 0).to(torch.float64)
            w = net.weight(k + 1).to(torch.float64)
            A = torch.einsum("ij,njd->nid", w, active.unsqueeze(-1) * A)
            c = (active * c) @ w.T + net.bias(k + 1).to(torch.float64)
            z = c + torch.einsum("njd,nd->nj", A, a)
    return RegionConstraints(torch.cat(rows_a, 1), torch.cat(rows_c, 1), torch.cat(rows_s, 1), output_row)


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
        import highspy

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
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("primal_feasibility_tolerance", _LP_TOLERANCE)
        h.setOptionValue("dual_feasibility_tolerance", _LP_TOLERANCE)
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

    def nearest(self, eq_lhs: np.ndarray, eq_rhs: float) -> tuple[int, Optional[np.ndarray]]:
        """``(0, r)`` for the nearest feasible ``r``; ``(2, None)`` if infeasible, ``(3, None)`` if the solver failed."""
        h = self._h
        for i in range(self._d):
            h.changeCoeff(self._eq_row, i, float(eq_lhs[i]))
        h.changeRowBounds(self._eq_row, eq_rhs, eq_rhs)
        h.run()
        status = h.getModelStatus()
        if status == self._optimal:
            return 0, np.array(h.getSolution().col_value[: self._d])
        return (2 if status == self._infeasible else 3), None


def region_output_root(net, x: torch.Tensor, *, layer: int = 0, output: int = 0, norm: str = "l1", nonnegative: bool = True):
    """Does the input's linear region of ``f_k`` contain a point where the explained output is zero?

    The notebook's question 3 asked of the whole region instead of one root:
    for each row of ``x`` (inputs of layer ``layer``), the point nearest to
    it in the closure of its region (up to a tenth of ``pattern_tol``; and ``>= 0`` if ``nonnegative``) with
    ``z_out = 0`` -- where ``f_k = relu(z_out)`` reaches zero.

    Returns ``(exists (batch,) bool, roots (batch, D), status (batch,) int8)``;
    ``roots`` holds the input where no such point exists (status 2).
    """
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
    return status_t == 0, torch.from_numpy(roots).to(dtype=x.dtype, device=x.device), status_t
