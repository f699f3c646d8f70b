"""How the roots of one layer are held: all (point, neuron) roots of a batch.

Roots are ``(batch, J, D)`` -- for a 512-wide layer on 784 inputs that is
1.6 MB per point -- so the closed-form rules keep only what determines them
and materialise roots on demand, for a slice of points at a time:

* :class:`AffineRoots` -- ``root_j = a - t_j v_j`` with a direction affine
  in the activations, ``v_j = a * P_j + Q_j`` (every neuron rule of DTD);
* :class:`SharedRoots` -- one root per point for the whole layer (pinv);
* :class:`ExplicitRoots` -- roots given as a tensor (any other finder);
  :class:`RegionRootSet` and :class:`WalkRootSet` add what the in-region
  finders report about each root.

Each computes the relevances ``R_i = sum_j valid_j w_ji (a - root_j)_i``
in the cheapest exact way its form allows.  :func:`root_equation_residual`
is the one measure of how well a root solves its root equation.
"""

from __future__ import annotations

import abc

import torch

from .regions import LPStatus
from .tolerances import EQUATION_SCALE_FLOOR

__all__ = [
    "RootSet",
    "AffineRoots",
    "SharedRoots",
    "ExplicitRoots",
    "RegionRootSet",
    "WalkRootSet",
    "affine_direction",
    "root_equation_residual",
]


def root_equation_residual(delta: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """``|w_j . (a - root_j) - R_j|`` relative to the terms' scale: ``(batch, J)``.

    Parameters
    ----------
    delta
        ``a - root``: ``(batch, J, D)`` with one root per neuron, or
        ``(batch, D)`` with one root shared by the whole layer.
    weight
        ``(J, D)``.
    relevance
        ``R_j``: ``(batch, J)``.

    Returns
    -------
    torch.Tensor
        ``(batch, J)``: the residual divided by ``max(1, sum_i |w_ji| |delta_ji| + |R_j|)``
        (:data:`~dtd.tolerances.EQUATION_SCALE_FLOOR`), so it is comparable
        with :func:`~dtd.tolerances.equation_rtol` whatever the magnitudes.
    """
    if delta.dim() == 2:
        reached = delta @ weight.T
        scale = delta.abs() @ weight.abs().T
    else:
        reached = torch.einsum("njd,jd->nj", delta, weight)
        scale = torch.einsum("njd,jd->nj", delta.abs(), weight.abs())
    scale = scale + relevance.abs()
    return (reached - relevance).abs() / scale.clamp_min(EQUATION_SCALE_FLOOR)


def affine_direction(a: torch.Tensor, p: torch.Tensor | None, q: torch.Tensor | None) -> torch.Tensor:
    """``v = a * P + Q`` ``(batch, J, D)`` for activations ``a`` ``(batch, D)``; None means zero."""
    if p is None:
        if q is None:
            raise TypeError("a direction v = a * P + Q needs P or Q; both are None")
        return q.unsqueeze(0).expand(a.shape[0], -1, -1)
    v = a.unsqueeze(1) * p
    return v if q is None else v + q


class RootSet(abc.ABC):
    """The roots of every (point, neuron) of one layer for a batch of points."""

    #: ``(batch, J)``: whether each root exists
    valid: torch.Tensor
    #: ``(batch, D)``: the layer's input activations
    input: torch.Tensor

    @abc.abstractmethod
    def roots(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Roots ``(stop - start, J, D)`` of the points ``start:stop`` (a new tensor)."""

    def relevance(self, weight: torch.Tensor) -> torch.Tensor:
        """``R_i = sum_j valid_j w_ji (a - root_j)_i``: ``(batch, D)``."""
        delta = self.input.unsqueeze(1) - self.roots()
        return torch.einsum("njd,jd->nd", delta * self.valid.unsqueeze(-1).to(delta.dtype), weight)


class AffineRoots(RootSet):
    """``root_j = a - t_j (a * P_j + Q_j)``; ``P``, ``Q`` ``(J, D)`` (None means zero).

    ``t`` ``(batch, J)`` is 0 wherever the root is invalid.
    """

    def __init__(self, a: torch.Tensor, t: torch.Tensor, valid: torch.Tensor, p: torch.Tensor | None,
                 q: torch.Tensor | None):
        self.input, self.t, self.valid, self.p, self.q = a, t, valid, p, q

    def roots(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        a = self.input[start:stop]
        return a.unsqueeze(1) - self.t[start:stop].unsqueeze(-1) * affine_direction(a, self.p, self.q)

    def relevance(self, weight: torch.Tensor) -> torch.Tensor:
        # sum_j t_j w_ji (a_i P_ji + Q_ji) = a_i (t @ (W*P))_i + (t @ (W*Q))_i: two matmuls, no (batch, J, D) tensor
        result = torch.zeros_like(self.input)
        if self.p is not None:
            result = self.input * (self.t @ (weight * self.p))
        if self.q is not None:
            result = result + self.t @ (weight * self.q)
        return result


class SharedRoots(RootSet):
    """One root per point for all neurons: ``root = a - delta``, ``delta`` ``(batch, D)``."""

    def __init__(self, a: torch.Tensor, delta: torch.Tensor, valid: torch.Tensor):
        self.input, self.delta, self.valid = a, delta, valid

    def roots(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        root = self.input[start:stop] - self.delta[start:stop]
        return root.unsqueeze(1).expand(-1, self.valid.shape[1], -1).clone()

    def relevance(self, weight: torch.Tensor) -> torch.Tensor:
        return self.delta * (self.valid.to(weight.dtype) @ weight)


class ExplicitRoots(RootSet):
    """Roots held as a ``(batch, J, D)`` tensor."""

    def __init__(self, a: torch.Tensor, roots: torch.Tensor, valid: torch.Tensor):
        if (
            roots.dim() != 3
            or roots.shape[0] != a.shape[0]
            or roots.shape[2] != a.shape[1]
            or roots.shape[:2] != valid.shape
        ):
            raise ValueError(
                f"roots must be (batch, J, D) = {(a.shape[0], valid.shape[1], a.shape[1])}, got {tuple(roots.shape)}"
            )
        self.input, self._roots, self.valid = a, roots, valid

    def roots(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self._roots[start:stop].clone()


class RegionRootSet(ExplicitRoots):
    """Roots found by a linear program, with why each (point, neuron) has or lacks one.

    ``status`` ``(batch, J)`` int8: the :class:`~dtd.regions.LPStatus` of each
    (point, neuron) -- solved, trivial (``R_j = 0``: the root is ``a``), no
    root in the region, or the solver failed.
    """

    def __init__(self, a: torch.Tensor, roots: torch.Tensor, valid: torch.Tensor, status: torch.Tensor):
        super().__init__(a, roots, valid)
        self.status = status

    def counts(self) -> dict[str, int]:
        """How many (point, neuron) pairs ended in each status, keyed by :attr:`LPStatus.label`."""
        return {code.label: int((self.status == code).sum()) for code in LPStatus}


class WalkRootSet(ExplicitRoots):
    """Roots found on random walks; ``acceptance`` ``(batch,)`` is each point's share of accepted moves."""

    def __init__(self, a: torch.Tensor, roots: torch.Tensor, valid: torch.Tensor, acceptance: torch.Tensor):
        super().__init__(a, roots, valid)
        self.acceptance = acceptance
