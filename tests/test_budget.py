"""Thin images (issue 14): no picture a run makes grows with the photo's aspect ratio.

The decompression-bomb guard counts the photo's pixels, but resizing the shorter side of a
1×60000 strip to the model's input multiplies the long side: 128 × 7,680,000 pixels (3 GB) for
a file of a few hundred bytes. The model's view is now resampled straight from the crop region,
panels are capped, and what the model would see only a sliver of is refused with a reason.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradcam_cli.errors import ImageReadError
from gradcam_cli.inputs import InputItem
from gradcam_cli.panel import Pictures, draw_panel
from gradcam_cli.pipeline import _decode_one
from gradcam_cli.preprocess import PIXEL_BUDGET, RESAMPLING, WHOLE_RESIZE_PIXELS, Preprocess
from gradcam_cli.render import colormap_lut

DEMO = Preprocess((128, 128), 128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def whole_resize_then_crop(preprocess: Preprocess, image: Image.Image) -> Image.Image:
    """The model's view as it was made before: the whole photo resized, then cropped."""
    resized = image.resize(
        preprocess.resized_size(*image.size), RESAMPLING[preprocess.interpolation]
    )
    left, top = preprocess.crop_offset(*image.size)
    ch, cw = preprocess.input_size
    return resized.crop((left, top, left + cw, top + ch))


PREPROCESSES = {
    "resnet": Preprocess(),
    "demo": DEMO,
    "bicubic-oblong": Preprocess((224, 320), 256, interpolation="bicubic"),
    "nearest": Preprocess(interpolation="nearest"),
    "squash": Preprocess(resize_mode="squash"),
    "squash-crop": Preprocess((224, 224), 256, resize_mode="squash"),
    "padded": Preprocess((224, 224), 160),  # the crop reaches past the resized photo
}
PHOTOS = [(640, 480), (480, 640), (300, 300), (300, 1000), (1000, 333), (1, 1), (7, 3), (257, 256)]


@pytest.mark.parametrize("name", sorted(PREPROCESSES))
@pytest.mark.parametrize("size", PHOTOS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_models_view_of_a_photo_is_the_transforms_pixel_for_pixel(name, size):
    preprocess = PREPROCESSES[name]
    photo = noise(*size, seed=size[0] * 7 + size[1])
    view = preprocess.model_view(photo)
    assert view.tobytes() == whole_resize_then_crop(preprocess, photo).tobytes()


def near_equal(view: Image.Image, expected: Image.Image, mean: float = 0.5) -> None:
    assert view.size == expected.size
    difference = np.abs(np.asarray(view, np.int16) - np.asarray(expected, np.int16))
    assert difference.mean() <= mean, difference.mean()


@pytest.mark.parametrize("name", sorted(PREPROCESSES))
@pytest.mark.parametrize("size", PHOTOS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_resampling_the_crop_region_alone_gives_nearly_the_same_view(name, size):
    preprocess = PREPROCESSES[name]
    photo = noise(*size, seed=size[0] * 7 + size[1])
    view = preprocess._resample_crop_region(photo)
    expected = whole_resize_then_crop(preprocess, photo)
    if preprocess.interpolation == "nearest":  # a row may go to its neighbour at a tie
        same = (np.asarray(view) == np.asarray(expected)).all(axis=2).mean()
        assert same >= 0.99
    else:  # the rounding of the filter weights: one level, rarely
        difference = np.abs(np.asarray(view, np.int16) - np.asarray(expected, np.int16))
        assert difference.max() <= 1 and (difference != 0).mean() <= 0.005


@pytest.mark.parametrize("name", ["resnet", "demo", "bicubic-oblong", "padded"])
@pytest.mark.parametrize("size", [(20, 8000), (8000, 20)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_strip_past_the_whole_resize_limit_gets_nearly_the_same_view(name, size):
    preprocess = PREPROCESSES[name]
    photo = noise(*size)
    rw, rh = preprocess.resized_size(*size)
    assert rw * rh > WHOLE_RESIZE_PIXELS
    # Pillow may order its two passes differently for the crop region than for the whole
    # photo: the 8-bit rounding in between then differs (more where bicubic overshoot is
    # clipped, on this worst case of pure noise).
    near_equal(preprocess.model_view(photo), whole_resize_then_crop(preprocess, photo))


@pytest.mark.parametrize(("width", "height"), [(1, 60000), (60000, 1), (1, 3000)])
def test_a_photo_the_model_would_see_a_sliver_of_is_refused_with_a_reason(width, height):
    preprocess = Preprocess()  # resnet's: shorter side to 256, centre 224
    photo = Image.new("RGB", (width, height), (200, 30, 30))
    rw, rh = preprocess.resized_size(width, height)
    assert rw * rh > PIXEL_BUDGET
    reason = preprocess.oversize_reason(width, height)
    assert reason == (
        f"aspect ratio too extreme ({width}×{height}): the model's preprocessing (shorter side "
        f"to 256) would make it {rw:,}×{rh:,} pixels, over the {PIXEL_BUDGET:,}-pixel budget, "
        "and show the model 0.875×0.875 of its pixels; crop it nearer to square to explain it"
    )
    with pytest.raises(ImageReadError, match=re.escape(reason)):
        preprocess.to_array(photo)


def test_squash_preprocessing_sees_the_whole_strip_and_takes_it():
    preprocess = Preprocess(resize_mode="squash")
    assert preprocess.oversize_reason(1, 60000) is None
    array = preprocess.to_array(Image.new("RGB", (1, 60000), (200, 30, 30)))
    assert array.shape == (3, 224, 224)


def test_photos_of_usual_shapes_are_taken():
    for size in [(1, 1), (2, 2), (4000, 3000), (1000, 30000), (100, 3000), (30000, 1000)]:
        assert Preprocess().oversize_reason(*size) is None, size


def test_the_run_gives_the_refused_strip_an_error_result(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 60000), (200, 30, 30)).save(path)
    decoded = _decode_one(InputItem(str(path), path, "strip"), DEMO)
    assert decoded.image is None and decoded.array is None
    assert decoded.error is not None and "\n" not in decoded.error
    assert decoded.error.startswith(f"cannot read {path}: aspect ratio too extreme (1×60000)")


def test_budget_is_documented():
    import gradcam_cli.preprocess as module

    assert f"{PIXEL_BUDGET:,}" in (module.__doc__ or "") + (Preprocess.__doc__ or "")


@pytest.mark.parametrize("size", [(300, 1), (8000, 2), (60000, 1), (1, 60000)])
def test_a_panel_of_a_strip_stays_small_and_shows_every_tile(size):
    width, height = size
    photo = noise(width, height)
    heatmap = Image.new("RGBA", size, (10, 200, 30, 255))
    pictures = Pictures(photo, photo.copy(), heatmap)
    panel = draw_panel(pictures, ["file: strip.png"], colormap_lut("jet"), "jet")
    assert panel.image.width * panel.image.height <= 8 * 2**20
    for name, (x0, y0, x1, y1) in panel.tiles.items():
        assert 0 <= x0 < x1 <= panel.image.width and 0 <= y0 < y1 <= panel.image.height, name


# -- the whole run, measured ---------------------------------------------------------------

PEAK = """
import resource, runpy, sys
sys.argv = ["gradcam", *sys.argv[1:]]
try:
    runpy.run_module("gradcam_cli", run_name="__main__", alter_sys=True)
finally:
    print("PEAK-KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def peak_rss_kb(photo: Path, out: Path, *options: str) -> tuple[int, str]:
    """Peak resident memory of `gradcam explain photo` with the demo model, and its stderr."""
    command = [sys.executable, "-c", PEAK, "explain", str(photo), "--model", "demo:shapes"]
    command += ["--out", str(out), "--workers", "0", *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return int(re.search(r"PEAK-KB (\d+)", done.stderr)[1]), done.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kB on Linux")
@pytest.mark.parametrize("panel", [False, True], ids=["plain", "panel"])
def test_a_strip_costs_no_more_memory_than_a_normal_photo(tmp_path, panel):
    options = ("--panel",) if panel else ()
    noise(640, 480).save(tmp_path / "normal.png")
    normal, _ = peak_rss_kb(tmp_path / "normal.png", tmp_path / "out-normal", *options)
    for size in [(2, 8000), (8000, 2), (1, 60000), (60000, 1)]:
        name = f"strip-{size[0]}x{size[1]}.png"
        noise(*size).save(tmp_path / name)
        peak, stderr = peak_rss_kb(tmp_path / name, tmp_path / f"out-{name}", *options)
        assert peak <= 1.2 * normal, (name, peak, normal, stderr)
