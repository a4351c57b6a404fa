"""The map statistics (`mapstats`) against independent implementations: scipy's correlations,
SSIM by its definition, torch's resampling; two maps on one photo through their crop boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.stats import spearmanr

from gradcam_cli.mapstats import common_grid, energy_moved, measure_maps, pearson, spearman, ssim
from gradcam_cli.preprocess import Preprocess

# -- one map against another -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: (rng.random((16, 16)), rng.random((16, 16))),
        # ReLU'd maps: many tied zeros, as Grad-CAM's are
        lambda rng: (np.maximum(rng.normal(size=(20, 12)), 0), np.maximum(rng.normal(size=240), 0)),
        # few distinct values: ties everywhere
        lambda rng: (rng.integers(0, 4, 300), rng.integers(0, 3, 300)),
        lambda rng: (np.arange(50.0), -(np.arange(50.0) ** 3)),
    ],
)
def test_spearman_equals_scipy(make):
    a, b = make(np.random.default_rng(7))
    expected = spearmanr(np.ravel(a), np.ravel(b)).statistic
    assert spearman(a, b) == pytest.approx(expected, abs=1e-12)


def test_spearman_of_a_constant_map_is_undefined_as_in_scipy():
    with pytest.warns(Warning):
        assert math.isnan(spearmanr(np.zeros(9), np.arange(9.0)).statistic)
    assert math.isnan(spearman(np.zeros(9), np.arange(9.0)))


GAUSSIAN_SIGMA, GAUSSIAN_RADIUS = 1.5, 5  # int(3.5 σ + 0.5): scikit-image's 11×11 window


def ssim_by_definition(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Wang et al. 2004, eq. 13, pixel by pixel: Gaussian-weighted μ, σ², σxy over each 11×11
    window that lies inside the image, averaged over those windows (population statistics)."""
    offsets = np.arange(-GAUSSIAN_RADIUS, GAUSSIAN_RADIUS + 1)
    w = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * GAUSSIAN_SIGMA**2))
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    r = GAUSSIAN_RADIUS
    values = []
    for i in range(r, x.shape[0] - r):
        for j in range(r, x.shape[1] - r):
            px, py = (
                x[i - r : i + r + 1, j - r : j + r + 1],
                y[i - r : i + r + 1, j - r : j + r + 1],
            )
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(
                ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
    return float(np.mean(values))


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_equals_the_formula_computed_directly(seed):
    rng = np.random.default_rng(seed)
    x = rng.random((18, 23))
    y = np.clip(0.6 * x + 0.4 * rng.random((18, 23)), 0, 1)  # related, not equal
    assert ssim(x, y) == pytest.approx(ssim_by_definition(x, y), abs=1e-10)
    assert ssim(x, y, data_range=2.0) == pytest.approx(ssim_by_definition(x, y, 2.0), abs=1e-10)


def test_ssim_of_a_map_with_itself_is_one_and_of_unrelated_maps_near_zero():
    rng = np.random.default_rng(3)
    x = rng.random((40, 40))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert abs(ssim(x, rng.random((40, 40)))) < 0.1


# -- two maps on one photo ---------------------------------------------------------------------


def test_pearson_and_spearman_agree_with_scipy_on_maps_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = np.maximum(rng.normal(size=(7, 9)), 0.0)  # after a ReLU: many tied zeros
        b = np.maximum(a + rng.normal(scale=0.7, size=a.shape), 0.0)
        assert pearson(a, b) == pytest.approx(stats.pearsonr(a.ravel(), b.ravel())[0], abs=1e-12)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)
    assert math.isnan(pearson(np.zeros((3, 3)), rng.random((3, 3))))  # a blank map: no ranking


def test_maps_of_different_sizes_meet_on_the_finer_grid_as_torch_resamples():
    rng = np.random.default_rng(1)
    coarse, fine = rng.random((7, 7)), rng.random((14, 10))
    box = (0.0, 0.0, 224.0, 224.0)
    a, b, frame = common_grid(coarse, fine, box, box)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(coarse)[None, None], size=(14, 10), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert frame == box and b is fine
    np.testing.assert_allclose(a, expected, atol=1e-12)


def test_maps_are_compared_where_each_run_saw_the_photo():
    """Crop and squash of one 200×100 photo: the crop map covers the centre 100×100 only, so on
    the common grid it is 0 over the sides that only the squash map covers."""
    crop = Preprocess(input_size=(8, 8), resize_shorter=8).crop_box(200, 100)
    squash = Preprocess(input_size=(8, 8), resize_shorter=8, resize_mode="squash").crop_box(
        200, 100
    )
    assert crop == (50.0, 0.0, 150.0, 100.0) and squash == (0.0, 0.0, 200.0, 100.0)
    a, b, frame = common_grid(np.ones((8, 8)), np.ones((8, 8)), crop, squash)
    assert frame == squash and a.shape == b.shape == (8, 16)  # the crop map's density, wider
    assert (a[:, 4:12] == 1).all() and (a[:, :4] == 0).all() and (a[:, 12:] == 0).all()
    assert (b == 1).all()
    assert energy_moved(a, b) == pytest.approx(0.5)  # half of the squash map's energy is beside


def test_the_peak_shift_is_measured_in_photo_pixels_through_each_crop_box():
    base, new = np.zeros((4, 4)), np.zeros((4, 4))
    base[0, 0], new[3, 3] = 1.0, 1.0
    box = (50.0, 0.0, 150.0, 100.0)  # 100×100 photo pixels: a cell is 25 pixels wide
    measured = measure_maps(base, new, box, box)
    assert measured.peaks == ((62.5, 12.5), (137.5, 87.5))
    assert measured.peak_shift == pytest.approx(math.hypot(75, 75))
    assert measured.energy_moved == 1.0 and measured.pearson == pytest.approx(-1 / 15)
    same = measure_maps(base, base.copy(), box, box)
    assert (same.pearson, same.spearman, same.peak_shift, same.energy_moved) == (1.0, 1.0, 0, 0)
    blank = measure_maps(np.zeros((4, 4)), new, box, box)
    assert blank.pearson is None and blank.peak_shift is None and blank.energy_moved == 1.0
