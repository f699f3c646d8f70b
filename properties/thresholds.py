"""Every threshold of the suite's judgements, in one place.

The library's own numerical tolerances (denominators, pattern closure, equation
residuals, LP feasibility) live in :mod:`dtd.tolerances`; these are the suite's
choices of what counts as "holds".
"""

from __future__ import annotations

__all__ = ["PROPERTY_ATOL", "CONSERVED_SHARE", "ROUNDING64", "CONDITIONING_FACTOR", "NEARER_RTOL", "NEARER_ATOL", "ROUNDING_ULPS"]

#: absolute tolerance of the seed notebook's questions ("output unchanged", "gradient differs"): the paper's
#: number, applied as given so that our rates answer the same questions
PROPERTY_ATOL: float = 1e-6

#: full-backward DTD (and a subject's decomposition) counts a point as conserving when |f(x) - sum_i R_i| is at
#: most this share of f(x): 1 % separates "conserves up to rounding and small losses" from "loses relevance"
CONSERVED_SHARE: float = 0.01

#: float64 rounding allowance (absolute) when comparing relevances of order 1-10 after a few layers with
#: another implementation: ~1e5 ulps, far below any real disagreement, far above summation-order noise
ROUNDING64: float = 1e-11

#: a point is "conditioned" for an agreement check when every relevant denominator exceeds this many times the
#: library's stabiliser: below that the stabiliser, not the rule, decides the relevance
CONDITIONING_FACTOR: float = 2.0

#: "the in-region root is no farther than the closed-form root" allows this relative and absolute slack: the two
#: L1 distances come from different float64 computations (an LP and a closed form)
NEARER_RTOL: float = 1e-9
NEARER_ATOL: float = 1e-12

#: a subject's top-layer zero_output is also judged at ``PROPERTY_ATOL + ROUNDING_ULPS * eps(dtype) * |f(x)|``
#: (subset ``dtype_scaled``): what the rounding of a logit f(x) alone can leave of a root that zeroes it exactly
ROUNDING_ULPS: int = 8
