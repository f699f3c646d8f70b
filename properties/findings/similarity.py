"""How alike two explanations are: cosine, Spearman rank correlation, SSIM, and a clustered interval for a median.

Batched over points (rows); every function returns one value per row and a
mask of the rows where the value is defined, so that a caller counts an
undefined similarity (an all-zero explanation, a constant map) explicitly
instead of meeting a NaN.  The slow references these must equal (scipy's
``spearmanr``, scikit-image's ``structural_similarity``, a per-row loop) are
in ``tests/test_similarity.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dtd.validation import check_seed

__all__ = ["cosine", "average_ranks", "spearman", "ssim", "median_interval", "SSIM_WINDOW", "SSIM_K1", "SSIM_K2",
           "BOOTSTRAP_RESAMPLES"]

#: SSIM's square window (scikit-image's default ``win_size=7``), its constants ``K1``, ``K2`` (Wang et al. 2004)
SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: cluster-bootstrap resamples behind :func:`median_interval`
BOOTSTRAP_RESAMPLES = 400


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"expected two tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"expected two tensors of one shape (points, ...), got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.flatten(1).double(), b.flatten(1).double()


def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of each row of ``a`` with the same row of ``b``.

    Parameters
    ----------
    a, b
        ``(N, ...)`` tensors of one shape (flattened per row).

    Returns
    -------
    values, defined
        ``(N,)`` float64 cosines (0 where undefined) and ``(N,)`` bool: both
        rows are non-zero.
    """
    a, b = _pair(a, b)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    defined = (na > 0) & (nb > 0)
    values = (a * b).sum(1) / torch.where(defined, na * nb, torch.ones_like(na))
    return torch.where(defined, values.clamp(-1.0, 1.0), torch.zeros_like(values)), defined


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` ranks 1..D of each row's entries, ties given the mean of their ranks (scipy's ``rankdata``)."""
    if x.dim() != 2:
        raise ValueError(f"average_ranks expects (N, D), got shape {tuple(x.shape)}")
    ordered = x.sort(dim=1).values.contiguous()
    below = torch.searchsorted(ordered, x.contiguous(), right=False)
    up_to = torch.searchsorted(ordered, x.contiguous(), right=True)
    return (below + up_to + 1).double() / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spearman rank correlation of each row pair (Pearson correlation of the average ranks).

    Returns
    -------
    values, defined
        ``(N,)`` float64 (0 where undefined) and ``(N,)`` bool: neither row
        is constant.
    """
    a, b = _pair(a, b)
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    sa, sb = ra.norm(dim=1), rb.norm(dim=1)
    defined = (sa > 0) & (sb > 0)
    values = (ra * rb).sum(1) / torch.where(defined, sa * sb, torch.ones_like(sa))
    return torch.where(defined, values.clamp(-1.0, 1.0), torch.zeros_like(values)), defined


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float) -> torch.Tensor:
    """Mean structural similarity of image pairs, as scikit-image computes it by default.

    A uniform :data:`SSIM_WINDOW` x :data:`SSIM_WINDOW` window, sample
    covariances (``N / (N - 1)``), ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2`` with
    ``L = data_range``, averaged over the windows that lie inside the image
    (scikit-image crops the border its reflected padding touches).

    Parameters
    ----------
    a, b
        ``(N, H, W)`` or ``(N, C, H, W)`` images (channels averaged after the
        per-channel SSIM, as ``channel_axis`` does), ``H, W >= 7``.
    data_range
        ``L``, the range the values can span (e.g. 2 for maps scaled to ``[-1, 1]``).

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64.
    """
    if not isinstance(data_range, (int, float)) or isinstance(data_range, bool) or not data_range > 0:
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")
    if a.shape != b.shape or a.dim() not in (3, 4):
        raise ValueError("ssim expects two (N, H, W) or (N, C, H, W) tensors of "
                         f"one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = a.double(), b.double()
    if x.dim() == 3:
        x, y = x.unsqueeze(1), y.unsqueeze(1)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    mean = lambda t: F.avg_pool2d(t, SSIM_WINDOW, stride=1)  # noqa: E731  windows inside the image only
    n = SSIM_WINDOW**2
    cov = n / (n - 1)
    mx, my = mean(x), mean(y)
    vx, vy = cov * (mean(x * x) - mx * mx), cov * (mean(y * y) - my * my)
    vxy = cov * (mean(x * y) - mx * my)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def median_interval(values: Sequence[torch.Tensor], confidence: float, *, seed: int = 0,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float | None, float | None, float | None]:
    """Median of all values with a percentile cluster-bootstrap interval (clusters resampled with replacement).

    Parameters
    ----------
    values
        One 1-D tensor per cluster (a network, a point): the values it contributed.
    confidence
        Of the interval.
    seed
        Of the local generator drawing the resamples.

    Returns
    -------
    median, low, high
        Floats, or three ``None`` without values.  With one cluster the
        interval is the median itself (nothing to resample).
    """
    clusters = [v.double().flatten() for v in values if v.numel()]
    if not clusters:
        return None, None, None
    every = torch.cat(clusters)
    median = float(every.median())
    if len(clusters) < 2:
        return median, median, median
    generator = torch.Generator().manual_seed(check_seed(seed))
    medians = []
    for _ in range(resamples):
        pick = torch.randint(len(clusters), (len(clusters),), generator=generator)
        medians.append(float(torch.cat([clusters[i] for i in pick.tolist()]).median()))
    ordered = sorted(medians)
    tail = (1 - confidence) / 2
    low = ordered[max(0, math.floor(tail * resamples))]
    high = ordered[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return median, min(low, median), max(high, median)
