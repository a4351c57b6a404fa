"""--panel: the figure's layout, its colour bar, its caption, and the JSON `panel` keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.panel import (
    CHECKER,
    PANEL_SUFFIX,
    Pictures,
    caption_fields,
    draw_panel,
    tile_height,
)
from gradcam_cli.render import colormap_lut, heatmap_image, heatmap_palette_image

SCENES = Path(__file__).parents[1] / "sample_images" / "scenes"


def make_pictures(size=(300, 200), guided=False) -> Pictures:
    """A photo, an overlay, and a heatmap/guided image transparent outside a centred crop."""
    rng = np.random.default_rng(0)
    width, height = size
    photo = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    overlay = Image.fromarray(np.full((height, width, 3), (200, 40, 40), dtype=np.uint8))
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[:, width // 4 : 3 * width // 4] = (10, 200, 30, 255)  # opaque only in the "crop"
    heatmap = Image.fromarray(rgba, "RGBA")
    return Pictures(photo, overlay, heatmap, heatmap.copy() if guided else None)


FIELDS = caption_fields(
    input="photos/cat.jpg",
    size=(300, 200),
    predictions=[{"index": 281, "label": "tabby", "probability": 0.8731, "score": 9.1}],
    target={"index": 281, "label": "tabby"},
    method="gradcam",
    layer="layer4",
    localization={
        "mask": "m.png",
        "hit": False,
        "energy": 0.3123,
        "iou": 0.25,
        "mask_share": 0.08,
        "error": None,
        "passed": False,
        "shortfalls": ["the map's maximum is outside the mask"],
    },
    colormap="jet",
    normalize="minmax",
)


def test_caption_names_file_prediction_target_method_layer_mask_gate_and_colours():
    assert FIELDS == [
        "file: photos/cat.jpg (300x200)",
        "predicted: tabby 0.873",
        "target: 281 tabby (0.873)",
        "method: gradcam",
        "layer: layer4",
        "mask: miss, energy 0.312 (mask share 0.080), IoU 0.250",
        "gate: failed: the map's maximum is outside the mask",
        "colours: jet, minmax (0 = this map's minimum, 1 = its maximum)",
    ]


def test_tiles_share_one_height_in_order_and_show_the_pictures():
    pictures = make_pictures()
    panel = draw_panel(pictures, FIELDS, colormap_lut("jet"), "jet")
    assert list(panel.tiles) == ["photo", "heatmap", "overlay"]
    height = tile_height(200)
    assert height == 256  # small photos are enlarged to a legible height
    expected_width = round(300 * height / 200)
    pixels = np.asarray(panel.image)
    previous_right = 0
    for name, (x0, y0, x1, y1) in panel.tiles.items():
        assert (x1 - x0, y1 - y0) == (expected_width, height), name
        assert x0 > previous_right and x1 <= panel.colorbar[0], name
        previous_right = x1
    # The photo tile is the photo, resized.
    x0, y0, x1, y1 = panel.tiles["photo"]
    reference = np.asarray(pictures.photo.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS))
    assert np.abs(pixels[y0:y1, x0:x1].astype(int) - reference).mean() < 2
    # The heatmap tile: its colour inside the crop, the checkerboard where it is transparent.
    x0, y0, x1, y1 = panel.tiles["heatmap"]
    middle = pixels[(y0 + y1) // 2, (x0 + x1) // 2]
    assert tuple(middle) == (10, 200, 30)
    edge = {tuple(pixels[y, x0 + 2]) for y in range(y0, y1)}
    assert edge == set(CHECKER)
    x0, y0, x1, y1 = panel.tiles["overlay"]
    assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == (200, 40, 40)
    # The caption lies below the tiles, inside the picture.
    assert panel.caption[1] > y1 and panel.caption[3] <= panel.image.height


def test_a_palette_heatmap_draws_the_same_panel_as_its_rgba():
    """The run hands the panel render.heatmap_palette_image's picture: the panel must not
    show it any differently (Pillow resizes palette images with nearest-neighbour only)."""
    values = np.zeros((200, 300), np.float32)
    inside = np.zeros((200, 300), bool)
    inside[10:190, 60:240] = True
    values[inside] = np.linspace(0, 1, inside.sum(), dtype=np.float32)
    lut = colormap_lut("jet")
    rgba, palette = heatmap_image(values, inside, lut), heatmap_palette_image(values, inside, lut)
    assert palette.mode == "P"
    base = make_pictures()
    panels = [
        np.asarray(
            draw_panel(Pictures(base.photo, base.overlay, heatmap), FIELDS, lut, "jet").image
        )
        for heatmap in (rgba, palette)
    ]
    assert np.array_equal(*panels)


def test_large_photos_are_reduced_and_tall_ones_keep_their_aspect_ratio():
    assert tile_height(3000) == 512 and tile_height(300) == 300 and tile_height(40) == 256
    panel = draw_panel(make_pictures((100, 400)), FIELDS, colormap_lut("jet"), "jet")
    x0, y0, x1, y1 = panel.tiles["photo"]
    assert (x1 - x0, y1 - y0) == (100, 400)


def test_guided_methods_get_a_fourth_tile():
    panel = draw_panel(make_pictures(guided=True), FIELDS, colormap_lut("jet"), "jet")
    assert list(panel.tiles) == ["photo", "heatmap", "overlay", "guided"]
    x0, y0, x1, y1 = panel.tiles["guided"]
    assert x1 <= panel.colorbar[0]


def test_a_mask_adds_a_last_tile_the_photo_dimmed_outside_the_mask_and_outlined():
    from dataclasses import replace

    from gradcam_cli.panel import MASK_DIM, MASK_EDGE

    base = make_pictures(guided=True)
    mask = np.zeros((200, 300), dtype=bool)
    mask[40:160, 30:150] = True  # a box in the photo's left half
    panel = draw_panel(replace(base, mask=mask), FIELDS, colormap_lut("jet"), "jet")
    plain = draw_panel(base, FIELDS, colormap_lut("jet"), "jet")
    assert list(panel.tiles) == ["photo", "heatmap", "overlay", "guided", "mask"]
    assert {k: panel.tiles[k] for k in plain.tiles} == plain.tiles  # the others do not move
    x0, y0, x1, y1 = panel.tiles["mask"]
    photo_box = panel.tiles["photo"]
    assert (x1 - x0, y1 - y0) == (photo_box[2] - photo_box[0], photo_box[3] - photo_box[1])
    assert x1 <= panel.colorbar[0]
    gap = panel.tiles["heatmap"][0] - panel.tiles["photo"][2]
    assert panel.image.width - plain.image.width == (x1 - x0) + gap  # wider by one tile
    pixels = np.asarray(panel.image).astype(int)
    tile = pixels[y0:y1, x0:x1]
    photo = pixels[photo_box[1] : photo_box[3], photo_box[0] : photo_box[2]]
    scale = (y1 - y0) / 200  # photo pixels → tile pixels
    inner = (
        slice(round(50 * scale), round(150 * scale)),
        slice(round(40 * scale), round(140 * scale)),
    )
    assert np.abs(tile[inner] - photo[inner]).max() <= 1  # inside: the photo as it is
    outside = (slice(0, round(30 * scale)), slice(None))
    dimmed = np.rint(photo[outside] * MASK_DIM)
    assert np.abs(tile[outside] - dimmed).max() <= 1  # outside: dimmed
    # The outline: MASK_EDGE along the box's inner border, on every side.
    row, column = round(100 * scale), round(30 * scale) + 1
    assert tuple(tile[row, column]) == MASK_EDGE  # left side
    assert tuple(tile[round(40 * scale) + 1, round(90 * scale)]) == MASK_EDGE  # top
    assert (tile == MASK_EDGE).all(axis=2).sum() < 0.1 * tile.shape[0] * tile.shape[1]


def test_an_empty_mask_dims_the_whole_tile_and_a_full_one_has_no_outline():
    from dataclasses import replace

    from gradcam_cli.panel import MASK_DIM, MASK_EDGE

    base = make_pictures()  # random pixels: none is exactly MASK_EDGE
    for mask, factor in ((np.zeros((200, 300), bool), MASK_DIM), (np.ones((200, 300), bool), 1)):
        panel = draw_panel(replace(base, mask=mask), FIELDS, colormap_lut("jet"), "jet")
        pixels = np.asarray(panel.image).astype(int)
        x0, y0, x1, y1 = panel.tiles["mask"]
        p0, q0, p1, q1 = panel.tiles["photo"]
        expected = np.rint(pixels[q0:q1, p0:p1] * factor)
        # no outline: a mask that reaches the photo's border is outlined only where it ends
        assert np.abs(pixels[y0:y1, x0:x1] - expected).max() <= 1
        assert not (pixels[y0:y1, x0:x1] == MASK_EDGE).all(axis=2).any()


@pytest.mark.parametrize("colormap", ["jet", "viridis", "turbo"])
def test_colour_bar_is_the_colormaps_lookup_table_from_1_at_the_top_to_0(colormap):
    lut = colormap_lut(colormap)
    panel = draw_panel(make_pictures(), FIELDS, lut, colormap)
    x0, y0, x1, y1 = panel.colorbar
    bar = np.asarray(panel.image)[y0:y1, x0:x1]
    assert y1 - y0 == tile_height(200) and x1 - x0 >= 12
    expected = lut[np.rint(np.linspace(1.0, 0.0, y1 - y0) * 255).astype(int)]
    for column in range(x1 - x0):
        np.testing.assert_array_equal(bar[:, column], expected)
    assert tuple(bar[0, 0]) == tuple(lut[255]) and tuple(bar[-1, 0]) == tuple(lut[0])


def test_caption_rows_are_drawn_and_fit_the_panel():
    panel = draw_panel(make_pictures(), FIELDS, colormap_lut("jet"), "jet")
    assert " ".join(panel.lines).count("·") == len(FIELDS) - len(panel.lines)
    for field in FIELDS:
        assert field in " ".join(panel.lines)
    x0, y0, x1, y1 = panel.caption
    ink = np.asarray(panel.image.convert("L"))[y0:y1, x0:x1] < 128
    rows = np.array_split(ink, len(panel.lines))
    assert all(row.sum() > 50 for row in rows), "a caption row was not drawn"
    blank = draw_panel(make_pictures(), [], colormap_lut("jet"), "jet")
    assert blank.lines == [] and blank.image.height < panel.image.height


def test_a_name_too_long_for_a_row_is_cut_in_the_middle_and_accents_are_dropped():
    from gradcam_cli.panel import _font

    name = "café/" + "very_long_folder_name/" * 20 + "the_end.jpg"
    fields = [f"file: {name}", "method: gradcam", "scene 中"]
    panel = draw_panel(make_pictures(), fields, colormap_lut("jet"), "jet")
    font = _font(max(12, round(tile_height(200) / 16)))
    width = panel.caption[2] - panel.caption[0]
    assert all(font.getlength(line) <= width for line in panel.lines)
    first = panel.lines[0]
    assert first.startswith("file: cafe/very_long") and "…" in first
    assert first.endswith("the_end.jpg")  # the cut field fills its row alone
    assert "scene 中" in panel.lines[-1]  # no ASCII letter for it: kept (drawn as a box)


# -- through the CLI -------------------------------------------------------------------------


def test_demo_run_writes_one_panel_per_explanation_named_like_the_overlay(demo_run):
    out, result = demo_run
    report = json.loads((out / "predictions.json").read_text())
    assert report["options"]["panel"] is True
    explanations = [e for r in report["results"] for e in r["explanations"]]
    assert len(explanations) == 5
    for explanation in explanations:
        stem = explanation["overlay"].removesuffix(".overlay.png")
        assert explanation["panel"] == stem + PANEL_SUFFIX
        with Image.open(out / explanation["panel"]) as panel:
            assert panel.format == "PNG" and panel.height > 256 and panel.width > 3 * 256


def test_no_panel_without_the_option_and_guided_methods_get_four_tiles(tmp_path):
    runner = CliRunner()
    plain = tmp_path / "plain"
    args = [str(SCENES / "star.png"), "--model", "demo:shapes"]
    result = runner.invoke(app, ["explain", *args, "--out", str(plain)])
    assert result.exit_code == 0, result.output
    report = json.loads((plain / "predictions.json").read_text())
    assert report["options"]["panel"] is False
    assert report["results"][0]["explanations"][0]["panel"] is None
    assert not list(plain.glob(f"*{PANEL_SUFFIX}"))

    guided = tmp_path / "guided"
    result = runner.invoke(
        app,
        ["explain", *args, "--out", str(guided), "--method", "guided-gradcam", "--panel"]
        + ["--colormap", "viridis", "--no-heatmap"],
    )
    assert result.exit_code == 0, result.output
    [explanation] = json.loads((guided / "predictions.json").read_text())["results"][0][
        "explanations"
    ]
    assert explanation["heatmap"] is None  # --no-heatmap: not written, still in the panel
    with Image.open(guided / explanation["panel"]) as panel:
        pixels = np.asarray(panel.convert("RGB"))
    # Four 256-pixel tiles (photo, heatmap, overlay, guided), then the bar.
    assert pixels.shape[1] > 4 * 256
    assert _finds_bar(pixels, colormap_lut("viridis"), 256)
    assert not _finds_bar(pixels, colormap_lut("jet"), 256)


def _finds_bar(pixels: np.ndarray, lut: np.ndarray, height: int) -> bool:
    """Whether some column holds the colour bar of `lut` (1 at the top) `height` pixels tall."""
    expected = lut[np.rint(np.linspace(1.0, 0.0, height) * 255).astype(int)]
    for x in range(pixels.shape[1]):
        column = pixels[:, x]
        tops = np.flatnonzero((column == lut[255]).all(axis=1))
        for y in tops[tops + height <= len(column)]:
            if (column[y : y + height] == expected).all():
                return True
    return False
