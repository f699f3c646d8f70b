"""Named numerical tolerances of the library, tied to the floating-point type.

Every numeric tolerance of :mod:`dtd` lives here, each with one line saying
what it protects and why it has its value, so that float32 and float64 runs
are judged on the same footing and no literal is scattered over the code.
The suite's own thresholds (what counts as "holds") are in
:mod:`properties.thresholds`.
"""

from __future__ import annotations

import torch

__all__ = [
    "DIVISION_GUARD",
    "EQUATION_SCALE_FLOOR",
    "LP_FEASIBILITY_TOL",
    "denominator_eps",
    "equation_rtol",
    "pattern_tol",
    "region_slack",
]

# |w_j . v_j| at or below this makes a closed-form root undefined (the root
# would lie at infinity).  float32 keeps ~7 significant digits, so anything
# below 1e-6 is indistinguishable from rounding noise of an O(1) product.
_DENOMINATOR_EPS = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}

# Relative tolerance of equalities that hold by construction (root equation,
# conservation), relative to the magnitude of the terms that were summed.
_EQUATION_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

# A pre-activation with |z| at or below this counts as on the boundary of its
# linear region (closure of the region): it matches either side.
_PATTERN_TOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


#: Magnitude a divisor known to be non-zero (or whose quotient is masked out by
#: ``torch.where``) is clamped away from 0 with: it only keeps the discarded branch
#: free of 0/0; far below every real float64 value a quotient is taken of (smallest normal ~2.2e-308).
DIVISION_GUARD: float = 1e-300

#: Floor of the scale a residual is divided by (``max(1, terms)``): below it the
#: residual is absolute, so identities between terms near 0 are not judged on noise.
EQUATION_SCALE_FLOOR: float = 1.0

#: Primal/dual feasibility tolerance asked of HiGHS for the region LPs: a hundred
#: times above float64 rounding of O(1) rows, well below the smallest region slack (float64: 1e-10).
LP_FEASIBILITY_TOL: float = 1e-10

# How far outside a region boundary an in-region finder's root may lie, as pattern_tol
# divided by this: the network's own rounding puts roots a hair outside a boundary they lie
# on (every top-layer root sits on the output's hinge); a tenth of what the closure
# accepts keeps such roots while any root the finders return still counts as in the closure.
_REGION_SLACK_DIVISOR = 10


def _lookup(table: dict, dtype: torch.dtype, what: str) -> float:
    try:
        return table[dtype]
    except KeyError:
        raise TypeError(f"no {what} defined for dtype {dtype}; use a floating dtype") from None


def denominator_eps(dtype: torch.dtype) -> float:
    """Smallest ``|w_j . v_j|`` for which a closed-form root exists."""
    return _lookup(_DENOMINATOR_EPS, dtype, "denominator eps")


def equation_rtol(dtype: torch.dtype) -> float:
    """Relative tolerance of identities that hold by construction."""
    return _lookup(_EQUATION_RTOL, dtype, "equation tolerance")


def pattern_tol(dtype: torch.dtype) -> float:
    """Pre-activations within this of zero match either ReLU state."""
    return _lookup(_PATTERN_TOL, dtype, "pattern tolerance")


def region_slack(dtype: torch.dtype) -> float:
    """How far outside a region's boundary the in-region finders' roots may lie: a tenth of :func:`pattern_tol`."""
    return pattern_tol(dtype) / _REGION_SLACK_DIVISOR
