"""Normalisation, colormaps, and putting the map on the user's photo at the right place."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from gradcam_cli import render
from gradcam_cli.errors import UsageError
from gradcam_cli.pngwrite import png_bytes
from gradcam_cli.preprocess import RESAMPLING, Preprocess
from gradcam_cli.render import (
    INTERPOLATIONS,
    NORMALIZATIONS,
    STORED_COLORMAPS,
    check_alpha,
    check_interpolation,
    colormap_lut,
    colormap_names,
    guided_picture,
    guided_rgb,
    heatmap_image,
    heatmap_palette_image,
    normalize_map,
    overlay_image,
    place_map,
)

RNG = np.random.default_rng(0)


def pixel_centres_inside(n: int, start: float, end: float) -> np.ndarray:
    centres = np.arange(n) + 0.5
    return (centres >= start) & (centres < end)


def pillow_resize(values: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    image = Image.fromarray(values.astype(np.float32))
    return np.asarray(image.resize(size, RESAMPLING[interpolation]))


# -- normalize_map -------------------------------------------------------------------------


def test_normalizations_scale_as_documented():
    raw = np.array([[1.0, 2.0], [3.0, 5.0]], dtype=np.float32)
    assert np.allclose(normalize_map(raw, "minmax"), [[0, 0.25], [0.5, 1]])
    assert np.allclose(normalize_map(raw, "max"), [[0.2, 0.4], [0.6, 1]])
    assert np.allclose(normalize_map(raw / 10, "none"), [[0.1, 0.2], [0.3, 0.5]])
    assert np.allclose(normalize_map(raw, "none"), [[1, 1], [1, 1]])  # clipped, not rescaled
    for mode in NORMALIZATIONS:
        assert normalize_map(raw, mode).dtype == np.float32


@pytest.mark.parametrize("mode", NORMALIZATIONS)
@pytest.mark.parametrize("fill", [0.0, np.nan, -2.0])
def test_zero_or_invalid_maps_give_zeros_never_nan(fill, mode):
    normalized = normalize_map(np.full((3, 3), fill, np.float32), mode)
    assert normalized.shape == (3, 3) and np.all(normalized == 0)


def test_constant_map():
    raw = np.full((3, 3), 7.0, np.float32)
    assert np.all(normalize_map(raw, "minmax") == 0)  # max - min = 0: nothing stands out
    assert np.all(normalize_map(raw, "max") == 1)  # 7 / 7, well defined
    assert np.all(normalize_map(raw, "none") == 1)  # clipped


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_non_finite_values_count_as_zero(mode):
    raw = np.array([[np.nan, np.inf], [-np.inf, 0.5]], dtype=np.float32)
    normalized = normalize_map(raw, mode)
    assert np.all(np.isfinite(normalized))
    assert normalized[1, 1] == (0.5 if mode == "none" else 1.0)
    assert np.all(normalized.ravel()[:3] == 0)


def test_extreme_span_does_not_overflow():
    raw = np.array([[-3e38, 3e38]], dtype=np.float32)
    assert normalize_map(raw, "minmax").tolist() == [[0.0, 1.0]]


def test_unknown_normalization_suggests_the_right_one():
    with pytest.raises(UsageError, match="Did you mean 'minmax'"):
        normalize_map(np.ones((2, 2)), "minmx")


# -- colormaps -----------------------------------------------------------------------------


def test_colormap_lut_matches_matplotlib():
    lut = colormap_lut("viridis")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    expected = np.rint(np.asarray(matplotlib.colormaps["viridis"].colors) * 255)
    assert np.array_equal(lut, expected)
    assert np.array_equal(colormap_lut("gray"), np.repeat(np.arange(256)[:, None], 3, axis=1))


def _matplotlib_table(name: str) -> np.ndarray:
    """What colormap_lut documents: matplotlib's map sampled at 256 points, rounded to uint8."""
    return np.rint(matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255)


def test_stored_colormaps_equal_matplotlibs_exactly():
    assert {"jet", "turbo", "viridis", "inferno", "magma", "plasma", "cividis"} <= set(
        STORED_COLORMAPS
    )
    with np.load(Path(render.__file__).with_name("colormaps.npz")) as stored:
        assert sorted(stored.files) == sorted(STORED_COLORMAPS)
        for name in STORED_COLORMAPS:
            table = stored[name]
            assert table.dtype == np.uint8 and table.shape == (256, 3), name
            # if this fails after a matplotlib upgrade: python -m gradcam_cli.render
            assert np.array_equal(table, _matplotlib_table(name)), name
            assert np.array_equal(colormap_lut(name), table), name
    assert np.array_equal(colormap_lut("hot"), _matplotlib_table("hot"))  # not stored


def test_stored_colormaps_need_no_matplotlib():
    code = (
        "import sys; from gradcam_cli.render import colormap_lut, STORED_COLORMAPS; "
        "[colormap_lut(name) for name in STORED_COLORMAPS]; "
        "sys.exit('matplotlib' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr or "matplotlib was imported"


def test_colormap_lut_is_cached_and_read_only():
    lut = colormap_lut("jet")
    assert colormap_lut("jet") is lut
    with pytest.raises(ValueError):
        lut[0, 0] = 1


def test_unknown_colormap_suggests_a_name():
    assert {"viridis", "jet", "turbo", "inferno"} <= set(colormap_names())
    with pytest.raises(UsageError, match="unknown colormap 'virdis'. Did you mean .*'viridis'"):
        colormap_lut("virdis")


# -- place_map: agreement with Pillow and with the convention ------------------------------


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize(
    ("map_hw", "photo_wh"), [((7, 7), (640, 480)), ((5, 9), (33, 17)), ((14, 14), (10, 8))]
)
def test_squash_box_equals_plain_resize(interpolation, map_hw, photo_wh):
    norm = RNG.random(map_hw, dtype=np.float32)
    width, height = photo_wh
    values, inside = place_map(norm, photo_wh, (0, 0, width, height), interpolation)
    expected = np.clip(pillow_resize(norm, photo_wh, interpolation), 0, 1)
    assert values.shape == (height, width) and values.dtype == np.float32
    assert np.abs(values - expected).max() < 1e-5
    assert inside.all()


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("box", [(-10, -20, 50, 60), (5, 3, 29, 27), (-8, 4, 36, 20)])
def test_box_offset_equals_cropping_a_resize_of_the_whole_box(interpolation, box):
    """A map covering an integer box: its values on the photo are that box's resize, cropped."""
    # Odd map sizes: no pixel centre falls exactly on a cell border, where Pillow's nearest
    # rounds either way (floating error) and ours picks the later cell.
    norm = RNG.random((5, 7), dtype=np.float32)
    photo_w, photo_h = 40, 30
    x0, y0, x1, y1 = box
    whole_box = np.clip(pillow_resize(norm, (x1 - x0, y1 - y0), interpolation), 0, 1)
    values, inside = place_map(norm, (photo_w, photo_h), box, interpolation)
    # Photo pixel (x, y) is box pixel (x - x0, y - y0); compare where both exist.
    ys, xs = np.nonzero(inside)
    assert np.abs(values[ys, xs] - whole_box[ys - y0, xs - x0]).max() < 1e-5
    assert np.all(values[~inside] == 0)
    assert np.array_equal(inside.any(axis=0), pixel_centres_inside(photo_w, x0, x1))
    assert np.array_equal(inside.any(axis=1), pixel_centres_inside(photo_h, y0, y1))


def test_nearest_follows_the_cell_convention_on_a_fractional_box():
    norm = np.arange(5 * 7, dtype=np.float32).reshape(5, 7) / 34
    box = (-10.5, 3.25, 650.2, 470.9)
    values, inside = place_map(norm, (640, 480), box, "nearest")
    x0, y0, x1, y1 = box
    cols = np.floor((np.arange(640) + 0.5 - x0) * 7 / (x1 - x0)).astype(int)
    rows = np.floor((np.arange(480) + 0.5 - y0) * 5 / (y1 - y0)).astype(int)
    ys, xs = np.nonzero(inside)
    assert np.array_equal(values[ys, xs], norm[rows[ys], cols[xs]])


def test_pixel_centre_on_a_cell_border_goes_to_the_later_cell():
    # Pixel 1's centre (1.5) is exactly on the border between the two cells (at 1.5).
    values, _ = place_map(np.array([[0.0, 1.0]], np.float32), (3, 1), (0, 0, 3, 1), "nearest")
    assert values.tolist() == [[0.0, 1.0, 1.0]]


def test_nearest_gives_blocks_of_the_cell_size():
    norm = np.arange(12, dtype=np.float32).reshape(3, 4) / 11
    values, _ = place_map(norm, (120, 60), (0, 0, 120, 60), "nearest")
    blocks = values.reshape(3, 20, 4, 30)  # 3 x 4 cells of 20 rows x 30 columns
    assert np.all(blocks == norm[:, None, :, None])


def test_bicubic_overshoot_is_clipped():
    checkerboard = (np.indices((6, 6)).sum(axis=0) % 2).astype(np.float32)
    overshoot = pillow_resize(checkerboard, (60, 60), "bicubic")
    assert overshoot.min() < 0 and overshoot.max() > 1  # the filter really overshoots
    values, _ = place_map(checkerboard, (60, 60), (0, 0, 60, 60), "bicubic")
    assert values.min() == 0 and values.max() == 1


# -- place_map: the model's preprocessing geometry -----------------------------------------


CENTRE_CROP = Preprocess(input_size=(224, 224), resize_shorter=256)


def test_crop_box_pixels_are_exactly_the_inside_mask():
    box = CENTRE_CROP.crop_box(640, 480)
    _, inside = place_map(np.ones((7, 7), np.float32), (640, 480), box, "bilinear")
    expected = pixel_centres_inside(480, box[1], box[3])[:, None] & pixel_centres_inside(
        640, box[0], box[2]
    )
    assert np.array_equal(inside, expected)
    assert 0 < inside.sum() < 640 * 480  # the sides were cut off


@pytest.mark.parametrize("cell", [(0, 0), (2, 5), (6, 3)])
def test_hot_cell_lands_inside_its_box_on_the_photo(cell):
    norm = np.zeros((7, 7), np.float32)
    norm[cell] = 1.0
    x0, y0, x1, y1 = CENTRE_CROP.crop_box(640, 480)
    cell_w, cell_h = (x1 - x0) / 7, (y1 - y0) / 7
    left, top = x0 + cell[1] * cell_w, y0 + cell[0] * cell_h
    in_cell = pixel_centres_inside(480, top, top + cell_h)[:, None] & pixel_centres_inside(
        640, left, left + cell_w
    )
    # bilinear: the peak pixel's centre lies in the cell's box.
    values, _ = place_map(norm, (640, 480), (x0, y0, x1, y1), "bilinear")
    y, x = np.unravel_index(np.argmax(values), values.shape)
    assert left <= x + 0.5 < left + cell_w and top <= y + 0.5 < top + cell_h
    # nearest: the hot pixels are exactly the cell's box.
    values, _ = place_map(norm, (640, 480), (x0, y0, x1, y1), "nearest")
    assert np.array_equal(values == 1, in_cell)


@pytest.mark.parametrize(
    "preprocess",
    [
        CENTRE_CROP,
        Preprocess(resize_mode="squash"),
        Preprocess(input_size=(256, 256), resize_shorter=224),
    ],
    ids=["centre-crop", "squash", "crop-larger-than-photo"],
)
def test_a_mask_seen_by_the_model_maps_back_onto_the_photo(preprocess):
    """Through the real preprocessing and back: the square is drawn where the model saw it."""
    photo = np.zeros((480, 640), np.uint8)
    photo[150:330, 380:560] = 255  # a bright square, off-centre
    view = preprocess.model_view(Image.fromarray(photo).convert("RGB"))
    seen = np.asarray(view, dtype=np.float32)[..., 0] / 255  # a map at input resolution
    box = preprocess.crop_box(640, 480)
    values, inside = place_map(seen, (640, 480), box, "bilinear")
    drawn, truth = values > 0.5, (photo > 0) & inside
    iou = (drawn & truth).sum() / (drawn | truth).sum()
    assert iou > 0.97
    if preprocess.input_size[0] > preprocess.resize_shorter:
        # The crop is taller than the resized photo: the box reaches past the top and bottom.
        assert box[1] < 0 and box[3] > 480 and inside.any(axis=1).all()


def test_bad_interpolation_and_box_are_refused():
    with pytest.raises(UsageError, match="Did you mean 'bilinear'"):
        place_map(np.ones((2, 2)), (4, 4), (0, 0, 4, 4), "bilinaer")
    with pytest.raises(UsageError, match="Did you mean 'nearest'"):
        check_interpolation("neareast")
    with pytest.raises(ValueError, match="x1 > x0"):
        place_map(np.ones((2, 2)), (4, 4), (4, 0, 0, 4), "bilinear")
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        place_map(np.ones((2, 2, 3)), (4, 4), (0, 0, 4, 4), "bilinear")


def test_place_map_is_fast_on_a_large_photo():
    norm = RNG.random((7, 7), dtype=np.float32)
    start = time.perf_counter()
    values, inside = place_map(norm, (4000, 3000), (-10.5, 0, 4010.2, 3000), "bicubic")
    elapsed = time.perf_counter() - start
    assert values.shape == inside.shape == (3000, 4000)
    assert elapsed < 2.0  # ~20 ms measured; a per-pixel Python loop would take minutes


# -- pictures ------------------------------------------------------------------------------


def _scene(height=30, width=40):
    photo = Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))
    values = RNG.random((height, width), dtype=np.float32)
    values[0, 5], values[0, 6] = 0.0, 1.0  # the colormap's two ends, inside the box
    inside = np.zeros((height, width), bool)
    inside[:, 5:35] = True
    return photo, values, inside


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_overlay_blends_inside_and_dims_outside(alpha):
    photo, values, inside = _scene()
    lut = colormap_lut("jet")
    overlay = overlay_image(photo, values, inside, lut, alpha, outside_dim=0.4)
    assert overlay.mode == "RGB" and overlay.size == photo.size
    got = np.asarray(overlay).astype(int)
    pixels = np.asarray(photo).astype(float)
    colours = lut[np.rint(values * 255).astype(int)].astype(float)
    expected_inside = (1 - alpha) * pixels + alpha * colours
    assert np.abs(got[inside] - expected_inside[inside]).max() <= 1  # rounding only
    assert np.abs(got[~inside] - 0.4 * pixels[~inside]).max() <= 0.5 + 1e-6
    if alpha == 0:
        assert np.array_equal(got[inside], pixels[inside])


def _float_overlay(photo, values, inside, lut, alpha, outside_dim):
    """The overlay as it was first written: the whole photo in float32, chosen by np.where."""
    pixels = np.asarray(photo).astype(np.float32)
    colours = lut[(np.clip(values, 0, 1) * np.float32(255) + np.float32(0.5)).astype(np.uint8)]
    mixed = pixels * np.float32(1 - alpha) + colours * np.float32(alpha)
    result = np.where(inside[..., None], mixed, pixels * np.float32(outside_dim)) + 0.5
    return result.astype(np.uint8)


@pytest.mark.parametrize("alpha", [0.0, 0.37, 0.5, 1.0])
@pytest.mark.parametrize("outside_dim", [0.5, 1 / 3])
@pytest.mark.parametrize("shape", ["box", "empty", "full", "ring", "edge box"])
def test_overlay_pixels_equal_the_float_formula_exactly(alpha, outside_dim, shape):
    photo, values, inside = _scene()
    inside[:] = False
    if shape == "box":  # what place_map makes: blended box, dimmed strips on all four sides
        inside[4:25, 5:35] = True
    elif shape == "full":
        inside[:] = True
    elif shape == "ring":  # not a rectangle: the pixel-by-pixel path
        inside[4:25, 5:35] = True
        inside[10:15, 10:20] = False
    elif shape == "edge box":
        inside[:, 5:] = True
    lut = colormap_lut("jet")
    got = np.asarray(overlay_image(photo, values, inside, lut, alpha, outside_dim=outside_dim))
    assert np.array_equal(got, _float_overlay(photo, values, inside, lut, alpha, outside_dim))


def test_overlay_accepts_grey_photos_and_refuses_mismatched_shapes():
    photo, values, inside = _scene()
    overlay = overlay_image(photo.convert("L"), values, inside, colormap_lut("jet"), 0.5)
    assert overlay.mode == "RGB"
    with pytest.raises(ValueError, match="must both be"):
        overlay_image(photo, values[:, :-1], inside, colormap_lut("jet"), 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_zero_one_is_a_usage_error(alpha):
    photo, values, inside = _scene()
    with pytest.raises(UsageError, match="alpha must be between 0 and 1"):
        check_alpha(alpha)
    with pytest.raises(UsageError):
        overlay_image(photo, values, inside, colormap_lut("jet"), alpha)


def test_heatmap_is_coloured_inside_and_transparent_outside():
    _, values, inside = _scene()
    lut = colormap_lut("inferno")
    heatmap = np.asarray(heatmap_image(values, inside, lut))
    assert heatmap.shape == (30, 40, 4)
    assert np.all(heatmap[inside, 3] == 255) and np.all(heatmap[~inside, 3] == 0)
    expected = lut[np.rint(values * 255).astype(int)]
    assert np.array_equal(heatmap[inside, :3], expected[inside])
    assert np.array_equal(heatmap[0, 5, :3], lut[0]) and np.array_equal(heatmap[0, 6, :3], lut[255])


def _heatmap_scene(levels: tuple[str, str], height=20, width=30):
    """Values that use every LUT entry ("all"), half of them ("half") or one ("zero"), in a box
    with an outside ("box", where place_map leaves 0) or filling the picture ("full")."""
    inside = np.ones((height, width), bool)
    if levels[1] == "box":
        inside[:2] = inside[-3:] = inside[:, :4] = inside[:, -1:] = False
    scale = {"all": 1.0, "half": 0.5, "zero": 0.0}[levels[0]]
    values = np.zeros((height, width), np.float32)
    values[inside] = np.linspace(0, scale, inside.sum(), dtype=np.float32)
    return values, inside


@pytest.mark.parametrize("colormap", ["jet", "viridis", "turbo", "inferno", "gray"])
@pytest.mark.parametrize(
    "levels", [("all", "box"), ("half", "box"), ("zero", "box"), ("all", "full")]
)
def test_palette_heatmap_png_decodes_to_the_rgba_heatmap_exactly(colormap, levels):
    values, inside = _heatmap_scene(levels)
    lut = colormap_lut(colormap)
    rgba = np.asarray(heatmap_image(values, inside, lut))
    picture = heatmap_palette_image(values, inside, lut)
    assert np.array_equal(np.asarray(picture.convert("RGBA")), rgba)
    decoded = Image.open(io.BytesIO(png_bytes(picture, smooth=True)))
    assert np.array_equal(np.asarray(decoded.convert("RGBA")), rgba)  # transparency included
    assert (rgba[~inside] == 0).all() and (rgba[inside, 3] == 255).all()
    # A palette whenever an entry is free for the outside: a repeated colour (jet has 4,
    # viridis 2), a colour the map does not use, or no outside at all. Only a map that uses
    # all 256 distinct colours of turbo, inferno or gray, beside an outside, stays RGBA.
    distinct = len(np.unique(lut, axis=0)) == 256
    expected = "RGBA" if distinct and levels == ("all", "box") else "P"
    assert picture.mode == decoded.mode == expected


def test_render_modules_import_neither_torch_nor_pyplot():
    code = (
        "import sys; import gradcam_cli.render as r, gradcam_cli.inputs, gradcam_cli.files; "
        "r.colormap_lut('jet'); "
        "bad = [m for m in ('torch', 'matplotlib.pyplot', 'cv2') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- guided backpropagation's picture ---------------------------------------------------------


def test_guided_rgb_is_grey_at_zero_and_keeps_the_sign():
    g = np.zeros((3, 4, 5), dtype=np.float32)
    g[0, 1, 1], g[2, 2, 2] = 1.0, -1.0
    rgb = guided_rgb(g)
    assert rgb.shape == (4, 5, 3)
    assert rgb[0, 0].tolist() == [0.5, 0.5, 0.5]
    assert rgb[1, 1, 0] > 0.5 > rgb[2, 2, 2]
    assert guided_rgb(np.zeros((3, 2, 2))).tolist() == np.full((2, 2, 3), 0.5).tolist()


def test_guided_picture_lies_on_the_photo_through_the_crop_and_is_transparent_outside():
    gradient = np.zeros((3, 8, 8), dtype=np.float32)
    gradient[0, :, :4] = 1.0  # positive red on the left half of what the model saw
    picture = guided_picture(gradient, (40, 20), (10.0, 0.0, 30.0, 20.0), "nearest")
    assert picture.mode == "RGBA" and picture.size == (40, 20)
    pixels = np.asarray(picture)
    assert not pixels[:, :10].any() and not pixels[:, 30:].any()  # outside the crop: clear
    assert (pixels[:, 10:30, 3] == 255).all()
    left, right = pixels[10, 12], pixels[10, 28]
    assert left[0] > 128 and left[1] == left[2] == 128  # red above grey, the rest grey
    assert right[:3].tolist() == [128, 128, 128]  # zero gradient: mid-grey
