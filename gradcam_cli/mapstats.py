"""How alike two maps are, and how a measure spreads over images: NumPy alone.

Shared by `gradcam sanity` (a map against the map after randomising the model) and `gradcam
compare` (a run's map against another run's). scipy and scikit-image are not dependencies, so:

- `spearman`: Spearman's rank correlation, Pearson's correlation of the ranks with ties given
  their average rank (scipy.stats.spearmanr); NaN when a map is constant (nothing to rank);
- `pearson`: Pearson's correlation (scipy.stats.pearsonr); NaN when a map is constant;
- `ssim`: the mean structural similarity of Wang et al. 2004 with a Gaussian window σ = 1.5,
  K1 = 0.01, K2 = 0.03: scikit-image's `structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)`;
- `energy_moved`: 1 − the histogram intersection of two maps, each scaled to sum 1;
- `common_grid`: two maps, each covering its own box of the photo, resampled onto one grid
  (bilinear, align_corners=False, as torch's `interpolate`); `measure_maps` compares them there;
- `Spread`: median and 5th / 95th percentiles over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Box",
    "Point",
    "UNIT_BOX",
    "rankdata",
    "spearman",
    "pearson",
    "ssim",
    "gaussian_window",
    "energy_moved",
    "common_grid",
    "MapMeasures",
    "measure_maps",
    "unit_range",
    "rounded",
    "Spread",
]

# SSIM as Wang et al. 2004 and scikit-image (gaussian_weights=True)
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # the Gaussian window reaches 3.5 σ: 11×11 for σ = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
MAX_GRID = 1024  # cells a side: a tiny box next to a huge one must not make a huge grid

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) on the photo, pixels
Point = tuple[float, float]
UNIT_BOX: Box = (0.0, 0.0, 1.0, 1.0)  # the geometry is unknown: both maps cover one region


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


def rounded(value: float | None, digits: int = 6) -> float | None:
    """For JSON: rounded, and None for a value that is missing or not finite."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


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


# -- two maps on one photo ------------------------------------------------------------------


@dataclass(frozen=True)
class MapMeasures:
    grid: tuple[int, ...]  # (h, w) of the grid the maps were compared on
    pearson: float | None
    spearman: float | None
    energy_moved: float | None
    peaks: tuple[Point | None, Point | None]  # on the photo, pixels (x, y); None: blank map
    peak_shift: float | None  # photo pixels; None: a blank map, or the geometry is unknown


def measure_maps(
    base: np.ndarray, new: np.ndarray, base_box: Box | None = None, new_box: Box | None = None
) -> MapMeasures:
    """Compare two raw maps [h, w]; each covers its box (x0, y0, x1, y1) of the photo
    (`Preprocess.crop_box`). Without boxes both are taken to cover one region, and the peak's
    shift is not measured."""
    base, new = _as_map(base), _as_map(new)
    placed = base_box is not None and new_box is not None
    base_frame = _as_box(base_box) if base_box is not None and placed else UNIT_BOX
    new_frame = _as_box(new_box) if new_box is not None and placed else UNIT_BOX
    a, b, _ = common_grid(base, new, base_frame, new_frame)
    base_peak = _peak(base, base_frame) if placed else None
    new_peak = _peak(new, new_frame) if placed else None
    peaks = base_peak, new_peak
    if base_frame == new_frame and base.shape == new.shape and np.array_equal(base, new):
        return MapMeasures(a.shape, 1.0, 1.0, 0.0, peaks, 0.0)
    shift = math.dist(base_peak, new_peak) if base_peak and new_peak else None
    return MapMeasures(
        grid=a.shape,
        pearson=_finite(pearson(a, b)),
        spearman=_finite(spearman(a, b)),
        energy_moved=energy_moved(a, b),
        peaks=peaks,
        peak_shift=shift,
    )


def _as_map(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"a raw map is a non-empty [h, w] array, got shape {array.shape}")
    return np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)


def common_grid(
    base: np.ndarray, new: np.ndarray, base_box: Box, new_box: Box
) -> tuple[np.ndarray, np.ndarray, Box]:
    """Both maps on one grid, and the box it covers: the union of their boxes, as many cells a
    side as the finer map has over that extent. Maps of one box and size come back as they are."""
    if base_box == new_box and base.shape == new.shape:
        return base, new, base_box
    frame = (
        min(base_box[0], new_box[0]),
        min(base_box[1], new_box[1]),
        max(base_box[2], new_box[2]),
        max(base_box[3], new_box[3]),
    )
    maps = ((base, base_box), (new, new_box))
    rows, cols = (
        _cells(_span(frame, axis), [(m.shape[1 - axis], _span(box, axis)) for m, box in maps])
        for axis in (1, 0)
    )
    return (
        _resampled(base, base_box, frame, (rows, cols)),
        _resampled(new, new_box, frame, (rows, cols)),
        frame,
    )


def _as_box(box: Sequence[float]) -> Box:
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0, y0, x1, y1


def _span(box: Box, axis: int) -> tuple[float, float]:
    """Where a box starts and ends along x (axis 0) or y (axis 1)."""
    return box[axis], box[axis + 2]


def _cells(extent: tuple[float, float], maps: list[tuple[int, tuple[float, float]]]) -> int:
    """The grid's cells along one axis of `extent`: as dense as the denser map, whose n cells
    span (start, end)."""
    density = max(n / (end - start) for n, (start, end) in maps)
    return int(min(MAX_GRID, max(1, round(density * (extent[1] - extent[0])))))


def _resampled(values: np.ndarray, box: Box, frame: Box, shape: tuple[int, int]) -> np.ndarray:
    if box == frame and values.shape == shape:  # on the grid already: exactly as it is
        return values
    rows = _axis_weights(shape[0], _span(frame, 1), values.shape[0], _span(box, 1))
    cols = _axis_weights(shape[1], _span(frame, 0), values.shape[1], _span(box, 0))
    return rows @ values @ cols.T  # separable: [H, h] @ [h, w] @ [w, W]


def _axis_weights(
    n_out: int, extent: tuple[float, float], n_cells: int, span: tuple[float, float]
) -> np.ndarray:
    """Bilinear weights [n_out, n_cells] from a map's cells spanning `span` to the grid's
    cells spanning `extent`, sampled at cell centres (align_corners=False, edges clamped, as
    torch's interpolate); grid cells whose centre is outside the map's span get 0."""
    (out_start, out_end), (start, end) = extent, span
    centres = out_start + (np.arange(n_out) + 0.5) * (out_end - out_start) / n_out
    inside = (centres >= start) & (centres < end)
    position = np.clip((centres - start) * n_cells / (end - start) - 0.5, 0.0, n_cells - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, n_cells - 1)
    frac = position - low
    weights = np.zeros((n_out, n_cells))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, high), frac)
    weights[~inside] = 0.0
    return weights


def _peak(values: np.ndarray, box: Box) -> Point | None:
    """The centre of the map's highest cell on the photo; None for a map with nothing > 0."""
    if not values.max() > 0.0:
        return None
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    x0, y0, x1, y1 = box
    height, width = values.shape
    return x0 + (col + 0.5) * (x1 - x0) / width, y0 + (row + 0.5) * (y1 - y0) / height


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation of two maps of one shape; NaN when either is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if denominator == 0.0:
        return math.nan
    return min(1.0, max(-1.0, float((a * b).sum()) / denominator))


def energy_moved(a: np.ndarray, b: np.ndarray) -> float:
    """1 − the histogram intersection of two maps of one shape, each scaled to sum 1 (negative
    values count as 0). A blank map against another: 1 (all of it moved); two blank maps: 0."""
    p = np.clip(np.asarray(a, dtype=np.float64), 0.0, None)
    q = np.clip(np.asarray(b, dtype=np.float64), 0.0, None)
    p_total, q_total = float(p.sum()), float(q.sum())
    if p_total <= 0.0 or q_total <= 0.0:
        return 0.0 if p_total <= 0.0 and q_total <= 0.0 else 1.0
    shared = float(np.minimum(p / p_total, q / q_total).sum())
    return min(1.0, max(0.0, 1.0 - shared))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
