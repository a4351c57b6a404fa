"""How alike two maps are, and how a measure spreads over images: NumPy alone.

Shared by `gradcam sanity` (a map against the map after randomising the model) and `gradcam
compare` (a run's map against another run's). scipy and scikit-image are not dependencies, so:

- `spearman`: Spearman's rank correlation, Pearson's correlation of the ranks with ties given
  their average rank (scipy.stats.spearmanr); NaN when a map is constant (nothing to rank);
- `ssim`: the mean structural similarity of Wang et al. 2004 with a Gaussian window σ = 1.5,
  K1 = 0.01, K2 = 0.03: scikit-image's `structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)`;
- `Spread`: median and 5th / 95th percentiles over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "rankdata",
    "spearman",
    "ssim",
    "gaussian_window",
    "unit_range",
    "rounded",
    "Spread",
]

# SSIM as Wang et al. 2004 and scikit-image (gaussian_weights=True)
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # the Gaussian window reaches 3.5 σ: 11×11 for σ = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a flat array, ties given their average rank (scipy's 'average')."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    # Runs of equal values: each gets the mean of the ranks it spans.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    average = (starts + ends + 1) / 2.0  # mean of (start+1 … end)
    ranks = np.empty(ordered.size, dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of the same shape (Pearson's of their ranks,
    ties averaged); NaN when either is constant (no ranking), as scipy.stats.spearmanr."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps of different sizes: {a.size} and {b.size} values")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    # Sums of products, not `@`: a BLAS dot may spin up threads, slow on a busy machine.
    denominator = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if denominator == 0.0:
        return math.nan
    return min(1.0, max(-1.0, float((ra * rb).sum()) / denominator))


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def _gaussian_filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable filter, borders mirrored (scipy.ndimage's 'reflect': d c b a | a b c d)."""
    radius = window.size // 2
    padded = np.pad(image, radius, mode="symmetric")
    h, w = image.shape
    rows = sum(weight * padded[k : k + h, :] for k, weight in enumerate(window))
    return sum(weight * rows[:, k : k + w] for k, weight in enumerate(window))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity of two 2-D maps (Wang et al. 2004), scikit-image's
    `structural_similarity(a, b, data_range=..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`: Gaussian-weighted local means, variances and covariance,
    averaged over the pixels whose window lies inside the map. Maps must be at least 11×11."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    window = gaussian_window()
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim takes two 2-D maps of one shape, got {a.shape} and {b.shape}")
    if min(a.shape) < window.size:
        raise ValueError(f"ssim needs maps of at least {window.size}×{window.size}, got {a.shape}")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _gaussian_filter(a, window), _gaussian_filter(b, window)
    var_a = _gaussian_filter(a * a, window) - mu_a * mu_a
    var_b = _gaussian_filter(b * b, window) - mu_b * mu_b
    cov = _gaussian_filter(a * b, window) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    pad = window.size // 2
    return float(s[pad:-pad, pad:-pad].mean())


def unit_range(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes zeros."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values, dtype=np.float64)
    return (values - low) / (high - low)


def rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


@dataclass(frozen=True)
class Spread:
    """A measure over the images at one stage: median and 5th / 95th percentiles."""

    median: float | None
    p5: float | None
    p95: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        known = np.array([v for v in values if v is not None], dtype=np.float64)
        if known.size == 0:
            return cls(None, None, None)
        p5, median, p95 = np.percentile(known, [5, 50, 95])
        return cls(float(median), float(p5), float(p95))

    def to_dict(self) -> dict[str, float | None]:
        return {"median": rounded(self.median), "p5": rounded(self.p5), "p95": rounded(self.p95)}
