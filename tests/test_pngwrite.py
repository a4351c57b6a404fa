"""The fast PNG encoder: files that Pillow reads back to exactly the pixels written."""

from __future__ import annotations

import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from gradcam_cli import pngwrite
from gradcam_cli.pngwrite import png_bytes

RNG = np.random.default_rng(0)
SIZES = [(1, 1), (1, 7), (9, 1), (13, 5), (64, 48)]


def _picture(mode: str, size: tuple[int, int]) -> Image.Image:
    """Noise in the photo's half, a smooth ramp in the other: every filter byte is exercised."""
    channels = len(mode) if mode != "P" else 1
    width, height = size
    pixels = RNG.integers(0, 256, (height, width, channels), dtype=np.uint8)
    ramp = (np.arange(width)[None, :, None] * 7 + np.arange(height)[:, None, None] * 3) % 256
    pixels[height // 2 :] = ramp[height // 2 :]
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, None)
    if mode == "P":
        image.putpalette(RNG.integers(0, 256, 768, dtype=np.uint8).tobytes())
    return image


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P"])
def test_pillow_reads_back_exactly_the_pixels_written(mode, size, smooth):
    image = _picture(mode, size)
    data = png_bytes(image, smooth)
    Image.open(io.BytesIO(data)).verify()  # chunk order and CRCs
    decoded = _decoded(data)
    assert decoded.mode == mode and decoded.size == size
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    if mode == "P":
        assert decoded.getpalette() == image.getpalette()


@pytest.mark.parametrize("smooth", [False, True])
def test_rows_are_filtered_across_band_boundaries(monkeypatch, smooth):
    monkeypatch.setattr(pngwrite, "_BAND_BYTES", 100)  # a band of a few rows, then the next
    image = _picture("RGB", (13, 40))
    assert np.array_equal(np.asarray(_decoded(png_bytes(image, smooth))), np.asarray(image))


def test_a_transparent_palette_entry_is_kept():
    image = _picture("P", (13, 5))
    image.info["transparency"] = 7
    decoded = _decoded(png_bytes(image))
    assert decoded.info["transparency"] == 7
    assert np.array_equal(np.asarray(decoded.convert("RGBA")), np.asarray(image.convert("RGBA")))


def test_other_modes_and_what_else_pillow_writes_go_through_pillow():
    grey16 = Image.fromarray(RNG.integers(0, 65536, (5, 7), dtype=np.uint16))
    with_profile, with_colour_key = _picture("RGB", (7, 5)), _picture("RGB", (7, 5))
    with_profile.info["icc_profile"] = b"not really a profile"
    with_colour_key.info["transparency"] = (1, 2, 3)
    for image in (grey16, with_profile, with_colour_key):
        decoded = _decoded(png_bytes(image))
        assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert _decoded(png_bytes(with_profile)).info["icc_profile"] == b"not really a profile"
    assert _decoded(png_bytes(with_colour_key)).info["transparency"] == (1, 2, 3)


def test_photos_use_the_average_filter_and_maps_the_up_filter():
    image = _picture("RGB", (13, 5))
    for smooth, filter_type in ((False, 3), (True, 2)):
        chunks = _chunks(png_bytes(image, smooth))
        rows = zlib.decompress(b"".join(data for kind, data in chunks if kind == b"IDAT"))
        assert rows[:: 13 * 3 + 1] == bytes([filter_type]) * 5


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def test_a_saved_explanation_holds_exactly_the_pictures_the_library_renders(
    tmp_path, gap_linear_model, rgb_image
):
    """The run writes the heatmap as a palette PNG and the overlay with this encoder: decoded,
    they are ImageExplanation.pictures()' RGBA heatmap and overlay, pixel for pixel."""
    import gradcam_cli as gc

    cam = gc.Explainer(gap_linear_model, layers="2", preprocess=gc.Preprocess((48, 48), 56))
    result = cam.explain(rgb_image)  # 160×120: the centre crop leaves both sides outside
    report = json.loads(result.save(tmp_path).read_text())
    [explanation] = report["results"][0]["explanations"]
    overlay, heatmap = result.pictures()
    with Image.open(tmp_path / explanation["heatmap"]) as written:
        assert written.mode == "P"  # jet repeats colours: one entry is free for the outside
        decoded = np.asarray(written.convert("RGBA"))
    assert np.array_equal(decoded, np.asarray(heatmap))
    assert (decoded[..., 3] == 0).any() and (decoded[..., 3] == 255).any()
    with Image.open(tmp_path / explanation["overlay"]) as written:
        assert np.array_equal(np.asarray(written), np.asarray(overlay))
