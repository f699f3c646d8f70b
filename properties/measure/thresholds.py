"""Every threshold of the suite's judgements, in one place.

The library's own numerical tolerances (denominators, pattern closure, equation
residuals, LP feasibility) live in :mod:`dtd.tolerances`; these are the suite's
choices of what counts as "holds".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the CLI reads these numbers without importing torch
    import torch

__all__ = ["PROPERTY_ATOL", "ZERO_OUTPUT_ULPS", "zero_output_tolerance", "CONSERVED_SHARE", "ROUNDING64",
           "CONDITIONING_FACTOR", "NEARER_RTOL", "NEARER_ATOL", "INSENSITIVE_COSINE", "INVARIANT_RTOL",
           "SIMILAR_SPEARMAN", "SIMILAR_SSIM"]

#: absolute tolerance of the seed notebook's questions ("output unchanged", "gradient differs"): the paper's
#: number, applied as given so that our rates answer the same questions
PROPERTY_ATOL: float = 1e-6

#: a subject's zero-output question allows the rounding of f(x) itself: this many units in the last place of
#: |f(x)| in the model's dtype (a float32 logit of 12.7 is only known to ~1e-6 and its recomputation at a root sums
#: terms of that size), and never less than PROPERTY_ATOL; the notebook's rows keep the paper's absolute 1e-6
ZERO_OUTPUT_ULPS: float = 64.0


def zero_output_tolerance(f_x: torch.Tensor) -> torch.Tensor:
    """``max(PROPERTY_ATOL, ZERO_OUTPUT_ULPS * eps(dtype) * |f(x)|)`` per point, for a tensor ``f(x)`` ``(batch,)``."""
    import torch

    return (ZERO_OUTPUT_ULPS * torch.finfo(f_x.dtype).eps * f_x.abs()).clamp_min(PROPERTY_ATOL)


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

#: two input relevances with cosine similarity at or above this are "the same explanation" (class-insensitive):
#: Sixt, Granz & Landgraf (2020) call explanations converged when their cosine approaches 1
INSENSITIVE_COSINE: float = 0.99

#: a shifted input's relevance is "unchanged" when max |R' - R| is at most this share of max |R|: far above the
#: float32 rounding of the shifted network's first layer (b - W c), far below what a rule that reads a changes
INVARIANT_RTOL: float = 1e-4

#: after re-initialising top layers, an explanation "still looks the same" when its Spearman rank correlation
#: (or SSIM, for images) with the original model's is at least this (Adebayo et al. 2018 read such values as failures)
SIMILAR_SPEARMAN: float = 0.9
SIMILAR_SSIM: float = 0.9
