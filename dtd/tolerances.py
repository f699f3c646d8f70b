"""Named numerical tolerances, tied to the floating-point type.

Every comparison in :mod:`dtd` and :mod:`properties` takes its tolerance from
here, so that float32 and float64 runs are judged on the same footing and no
literal is scattered over the code.
"""

from __future__ import annotations

import torch

__all__ = [
    "PROPERTY_ATOL",
    "denominator_eps",
    "equation_rtol",
    "pattern_tol",
]

#: Absolute tolerance of the seed notebook's questions ("output unchanged",
#: "gradient differs") -- the paper's number, applied as given.
PROPERTY_ATOL: float = 1e-6

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
