"""`--panel`: one explanation as a single figure — photo, heatmap, overlay (the guided image for
the guided methods, and with --mask the true mask) side by side at a common height, a colour
bar, and a caption.

Pillow only (no pyplot): the tiles are the pictures the run already rendered, resized; the colour
bar is the colormap's lookup table itself, so it shows exactly the colours of the heatmap.

    +--------+  +--------+  +--------+  +--------+  +--------+  +-+ 1
    | photo  |  | heatmap|  | overlay|  | guided |  |  mask  |  | |
    |        |  |        |  |        |  |        |  |        |  | | 0.5
    +--------+  +--------+  +--------+  +--------+  +--------+  +-+ 0
    file: …   predicted: …   target: …   method: …   layer: …   mask: …   colours: …
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .captions import (
    NORMALIZATION_MEANINGS,
    baselines_text,
    faithfulness_text,
    gate_text,
    localization_text,
    prediction_text,
    rules_text,
    target_text,
)
from .files import resolve_inside, write_bytes_atomic
from .pngwrite import png_bytes

__all__ = [
    "PANEL_SUFFIX",
    "TILE_MAX_WIDTH",
    "Pictures",
    "Panel",
    "tile_height",
    "mask_tile",
    "caption_fields",
    "draw_panel",
    "save_panel",
]

PANEL_SUFFIX = ".panel.png"
# Tiles are the photo's height, brought into this range: small inputs (a 128-pixel scene) are
# enlarged so the caption stays legible, large photos reduced so a panel stays a few MB at most.
TILE_HEIGHTS = (256, 512)
# and no wider than this: a 60000×1 strip at the tile height would be 15 million pixels wide (a
# panel of gigabytes). A picture that would be wider is drawn this wide, its aspect kept, and
# centred in its slot: a panel stays under 10 million pixels, far below preprocess.PIXEL_BUDGET.
TILE_MAX_WIDTH = 2048
BACKGROUND = (255, 255, 255)
INK = (32, 32, 32)
CHECKER = ((200, 200, 200), (232, 232, 232))  # shows where heatmap and guided are transparent
# The mask tile: the photo, dimmed to this share outside the mask and outlined in MASK_EDGE
# around it, the outline MASK_EDGE_SHARE of the tile's height thick (at least 1 pixel).
MASK_DIM = 0.3
MASK_EDGE = (255, 255, 255)
MASK_EDGE_SHARE = 1 / 128

SEPARATOR = "   ·   "  # between caption fields on one row

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Pictures:
    """One explanation's pictures at the photo's own size, as `ImageExplanation` renders them."""

    photo: Image.Image  # RGB
    overlay: Image.Image  # RGB
    # RGBA, transparent outside the crop the model saw, or the palette image that converts to it
    # (render.heatmap_palette_image)
    heatmap: Image.Image | None
    guided: Image.Image | None = None  # RGBA; guided-backprop / guided-gradcam only
    mask: np.ndarray | None = None  # bool [H, W]: the true mask as measured (--mask)
    # bool [H, W]: segmentation, the pixels the target's logits were summed over
    region: np.ndarray | None = None


@dataclass(frozen=True)
class Panel:
    image: Image.Image
    # "photo", "heatmap", "overlay" (and "region", "guided", "mask") → where each was drawn
    tiles: dict[str, Box]
    colorbar: Box
    caption: Box
    lines: list[str]  # the caption as drawn, one string per row


def tile_height(photo_height: int) -> int:
    low, high = TILE_HEIGHTS
    return min(max(int(photo_height), low), high)


def caption_fields(
    *,
    input: str,
    size: Sequence[int],
    predictions: Sequence[Mapping],
    target: Mapping,
    method: str,
    layer: str,
    localization: Mapping | None,
    colormap: str,
    normalize: str,
    faithfulness: Mapping | None = None,
    gate: Mapping | None = None,
) -> list[str]:
    """The caption's fields, in reading order; `draw_panel` packs them into rows."""
    fields = [
        f"file: {input} ({size[0]}x{size[1]})",
        f"predicted: {prediction_text(predictions)}",
        f"target: {target_text(target, predictions)}",
        f"method: {method}",
        f"layer: {layer}",
    ]
    measured = localization_text(localization)
    if measured is not None:
        fields.append(f"mask: {measured}")
    for label, text in (
        ("gate", gate_text(localization)),
        ("faithfulness", faithfulness_text(faithfulness)),
        ("baselines", baselines_text(faithfulness)),
        ("gate", rules_text(gate)),
    ):
        if text is not None:
            fields.append(f"{label}: {text}")
    meaning = NORMALIZATION_MEANINGS.get(normalize, normalize)
    fields.append(f"colours: {colormap}, {normalize} ({meaning})")
    return fields


def draw_panel(pictures: Pictures, fields: Sequence[str], lut: np.ndarray, colormap: str) -> Panel:
    """Lay the tiles out at a common height, add the colour bar of `lut` and the caption."""
    height = tile_height(pictures.photo.height)
    size = max(12, round(height / 16))  # text size follows the tiles
    font = _font(size)
    margin, gap = size, size // 2
    line = _line_height(font)
    tiles = _tiles(pictures, height)
    bar_width = size
    tick_labels = ("1", "0.5", "0")
    bar_column = max(
        bar_width + gap + max(round(font.getlength(t)) for t in tick_labels),
        round(font.getlength(colormap)),
    )
    row_width = sum(tile.width for _, tile in tiles) + gap * len(tiles) + bar_column
    width = margin + row_width + margin
    lines = _wrap([_drawable(f) for f in fields], font, width - 2 * margin, SEPARATOR)
    top = margin + line + gap // 2  # below the titles
    caption_top = top + height + margin
    total = caption_top + len(lines) * round(line * 1.25) + margin
    canvas = Image.new("RGB", (width, total), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    boxes: dict[str, Box] = {}
    x = margin
    for title, tile in tiles:
        y = top + (height - tile.height) // 2  # a letterboxed strip is centred in its slot
        canvas.paste(tile, (x, y))
        draw.text((x, margin), title, font=font, fill=INK)
        boxes[title] = (x, y, x + tile.width, y + tile.height)
        x += tile.width + gap
    colorbar = (x, top, x + bar_width, top + height)
    canvas.paste(_colorbar(lut, bar_width, height), colorbar[:2])
    draw.text((x, margin), colormap, font=font, fill=INK)
    _draw_ticks(draw, font, colorbar, tick_labels, gap)
    for row, text in enumerate(lines):
        draw.text((margin, caption_top + row * round(line * 1.25)), text, font=font, fill=INK)
    caption = (margin, caption_top, width - margin, total - margin)
    return Panel(canvas, boxes, colorbar, caption, lines)


def save_panel(
    out_dir: Path,
    stem: str,
    pictures: Pictures,
    fields: Sequence[str],
    lut: np.ndarray,
    colormap: str,
) -> str:
    """Draw the panel and write it as `STEM.panel.png` (atomically, inside `out_dir`); returns
    its path relative to `out_dir`."""
    path = f"{stem}{PANEL_SUFFIX}"
    panel = draw_panel(pictures, fields, lut, colormap)
    write_bytes_atomic(resolve_inside(out_dir, path), png_bytes(panel.image))
    return path


# -- pieces ----------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font at `size` (no font files needed). A new object per panel: panels are
    drawn on several writer threads at once."""
    return ImageFont.load_default(size=size)


def _drawable(text: str) -> str:
    """Pillow's built-in font covers ASCII (and a little punctuation): letters with accents
    lose them ('é' → 'e') rather than become boxes; other scripts stay as they are (boxes)."""
    if text.isascii():
        return text
    return "".join(_ascii_letter(char) for char in text)


def _ascii_letter(char: str) -> str:
    if char.isascii() or char in "…·":
        return char
    base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    return base if base and base.isascii() else char


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Hgjy|")
    return bottom + max(0, top)


def _tiles(pictures: Pictures, height: int) -> list[tuple[str, Image.Image]]:
    photo = _resized(pictures.photo, height)
    tiles = [("photo", photo)]
    if pictures.region is not None:
        tiles.append(("region", mask_tile(photo, pictures.region)))
    if pictures.heatmap is not None:
        # RGBA first: Pillow resizes a palette image with nearest-neighbour sampling only
        heatmap = pictures.heatmap.convert("RGBA")
        tiles.append(("heatmap", _on_checker(_resized(heatmap, height))))
    tiles.append(("overlay", _resized(pictures.overlay, height)))
    if pictures.guided is not None:
        tiles.append(("guided", _on_checker(_resized(pictures.guided, height))))
    if pictures.mask is not None:
        tiles.append(("mask", mask_tile(photo, pictures.mask)))
    return tiles


def mask_tile(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """The photo's tile with the mask [H, W] (bool, on the photo's pixels) drawn on it: the photo
    as it is inside the mask, dimmed outside, and the mask's outline in MASK_EDGE. An empty mask
    dims the whole tile."""
    width, height = photo.size
    levels = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, "L")
    if levels.size != (width, height):
        levels = levels.resize((width, height), Image.Resampling.BILINEAR)
    inside = np.asarray(levels) >= 128
    pixels = np.asarray(photo.convert("RGB"), dtype=np.float32)
    drawn = np.where(inside[..., None], pixels, pixels * MASK_DIM)
    thickness = max(1, round(height * MASK_EDGE_SHARE))
    drawn[inside & ~_eroded(inside, thickness)] = MASK_EDGE
    return Image.fromarray(np.rint(drawn).astype(np.uint8), "RGB")


def _eroded(region: np.ndarray, steps: int) -> np.ndarray:
    """`region` shrunk by `steps` pixels (4-neighbour erosion); the picture's border does not
    erode it: a mask that reaches the edge is outlined only where it meets the background."""
    for _ in range(steps):
        padded = np.pad(region, 1, mode="edge")
        region = (
            region & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        )
    return region


def _resized(picture: Image.Image, height: int) -> Image.Image:
    """`picture` at `height`, aspect kept; no wider than TILE_MAX_WIDTH (then less high)."""
    width = max(1, round(picture.width * height / picture.height))
    if width > TILE_MAX_WIDTH:
        width = TILE_MAX_WIDTH
        height = max(1, round(picture.height * TILE_MAX_WIDTH / picture.width))
    if picture.size == (width, height):
        return picture
    # RGBA is resized premultiplied by Pillow, so transparent edges do not bleed black.
    return picture.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)


def _on_checker(picture: Image.Image, cell: int = 8) -> Image.Image:
    """An RGBA picture composited onto a light checkerboard: transparent reads as 'nothing'."""
    width, height = picture.size
    rows = (np.arange(height) // cell)[:, None]
    cols = (np.arange(width) // cell)[None, :]
    dark = ((rows + cols) % 2 == 0)[..., None]
    board = np.where(dark, np.array(CHECKER[0], np.uint8), np.array(CHECKER[1], np.uint8))
    background = Image.fromarray(board.astype(np.uint8), "RGB").convert("RGBA")
    return Image.alpha_composite(background, picture.convert("RGBA")).convert("RGB")


def _colorbar(lut: np.ndarray, width: int, height: int) -> Image.Image:
    """The LUT as a vertical bar: 1 at the top, 0 at the bottom, the entry each value selects."""
    values = np.linspace(1.0, 0.0, height)
    column = np.asarray(lut, dtype=np.uint8)[np.rint(values * 255.0).astype(np.int64)]
    return Image.fromarray(np.repeat(column[:, None, :], width, axis=1), "RGB")


def _draw_ticks(draw: ImageDraw.ImageDraw, font, bar: Box, labels: Sequence[str], gap: int):
    x0, y0, x1, y1 = bar
    for position, label in zip((0.0, 0.5, 1.0), labels, strict=True):
        y = round(y0 + position * (y1 - 1 - y0))
        draw.line([(x1, y), (x1 + gap // 2, y)], fill=INK, width=1)
        draw.text((x1 + gap, y), label, font=font, fill=INK, anchor="lm")


def _wrap(fields: Sequence[str], font, width: int, separator: str) -> list[str]:
    """Pack fields into rows no wider than `width`; a field too wide alone is cut in the middle."""
    lines: list[str] = []
    for field in fields:
        field = _fit(field, font, width)
        candidate = f"{lines[-1]}{separator}{field}" if lines else field
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(field)
    return lines


def _fit(text: str, font, width: int) -> str:
    """`text`, or its start and end around '…' so that it fits `width` pixels."""
    if font.getlength(text) <= width:
        return text
    low, high = 0, len(text)  # the number of characters kept: the largest that fits
    while low < high:
        keep = (low + high + 1) // 2
        if font.getlength(_middle_cut(text, keep)) <= width:
            low = keep
        else:
            high = keep - 1
    return _middle_cut(text, low)


def _middle_cut(text: str, keep: int) -> str:
    head = (keep + 1) // 2
    return f"{text[:head]}…{text[len(text) - (keep - head) :]}"
