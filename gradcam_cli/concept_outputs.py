"""The files of `gradcam concepts` (concepts.py): each image's concept overlay, each concept's
figure, and concepts.json — NumPy and Pillow, no pyplot, no OpenCV.

- Colours: matplotlib's gist_rainbow as a lookup table, concept j of k (from 0) taking entry
  ⌊256 j / k⌋, the colours of pytorch-grad-cam's `show_factorization_on_image` (and of the DFF
  authors' code).
- The overlay (`<key>.concepts.png`), as pytorch-grad-cam draws one: each concept's map scaled
  to [0, 1] in the image (min-max) and laid on the photo through the crop the model saw
  (bilinear); each pixel takes the colour of the concept strongest there, times that concept's
  value, mixed with the photo at 0.3 (its tutorial's image weight); outside the crop the photo is
  dimmed, as on every overlay. A legend on the right: each concept's colour, its votes, and its
  share of this image.
- A concept's figure (`concept-N.png`): the images where it has the largest share (at most
  SHEET_IMAGES), each with that concept alone blended in its colour (opacity 0.75 × its value),
  under a title with the concept's votes.
- concepts.json is written last: a reader that finds it finds every picture.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .captions import without_accents
from .conceptresult import CONCEPTS_NAME, ConceptResult, ImageConcepts
from .render import colormap_lut, normalize_map, place_map

__all__ = [
    "CONCEPTS_NAME",
    "IMAGE_WEIGHT",
    "concept_colours",
    "concept_overlay",
    "concept_figure",
    "write_files",
]

IMAGE_WEIGHT = 0.3  # the photo's part of an overlay (pytorch-grad-cam's tutorial)
SHEET_OPACITY = 0.75  # a concept's colour over the photo where its map is 1, on its figure
OUTSIDE_DIM = 0.5  # the photo outside the crop the model saw, as on explain's overlays
THUMBNAIL = 176  # a side of an image's square on a concept's figure
COLUMNS = 4
INK, BACKGROUND, MUTED = (32, 32, 32), (255, 255, 255), (110, 110, 110)


def concept_colours(k: int) -> np.ndarray:
    """[k, 3] uint8: gist_rainbow at ⌊256 j / k⌋ for concept j (from 0)."""
    lut = colormap_lut("gist_rainbow")
    return np.stack([lut[min(255, (256 * j) // k)] for j in range(k)])


def _photo(record: ImageConcepts) -> Image.Image:
    from .explainer import _as_photo

    return _as_photo(record.image if record.image is not None else record.input)


def _placed(record: ImageConcepts, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """([k, H, W] each map min-max scaled and laid on a photo of `size`, inside [H, W])."""
    placed = [
        place_map(normalize_map(m, "minmax"), size, record.crop_box, "bilinear")
        for m in record.maps
    ]
    return np.stack([values for values, _ in placed]), placed[0][1]


def concept_overlay(result: ConceptResult, index: int) -> Image.Image:
    """Image `index`'s concepts on its photo, with the legend (module docstring)."""
    record = result.images[index]
    photo = _photo(record)
    values, inside = _placed(record, photo.size)
    colours = concept_colours(result.k).astype(np.float32)
    strongest = values.argmax(axis=0)
    value = np.take_along_axis(values, strongest[None], axis=0)[0]
    pixels = np.asarray(photo, dtype=np.float32)
    mixed = pixels * IMAGE_WEIGHT + colours[strongest] * value[..., None] * (1 - IMAGE_WEIGHT)
    picture = np.where(inside[..., None], mixed, pixels * OUTSIDE_DIM)
    drawn = Image.fromarray(np.clip(picture + 0.5, 0, 255).astype(np.uint8))
    return _with_legend(drawn, result, record)


def _with_legend(picture: Image.Image, result: ConceptResult, record: ImageConcepts) -> Image.Image:
    size = max(12, min(36, picture.height // 14))
    font = _font(size)
    colours = concept_colours(result.k)
    lines = [
        (f"{concept.number}  {_votes_text(concept.votes)}", f"{100 * share:.0f}%")
        for concept, share in zip(result.concepts, record.shares, strict=True)
    ]
    swatch, gap = size, size // 2
    text_width = max(font.getlength(f"{text}  {share}") for text, share in lines)
    width = int(swatch + gap + text_width + 2 * gap)
    row = int(size * 1.5)
    height = max(picture.height, row * len(lines) + 2 * gap)
    canvas = Image.new("RGB", (picture.width + width, height), BACKGROUND)
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, (text, share) in enumerate(lines):
        x, y = picture.width + gap, gap + j * row
        draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(int(c) for c in colours[j]))
        draw.text((x + swatch + gap, y), without_accents(text), font=font, fill=INK)
        share_x = x + swatch + gap + font.getlength(without_accents(text)) + gap
        draw.text((share_x, y), share, font=font, fill=MUTED)
    return canvas


def concept_figure(result: ConceptResult, number: int) -> Image.Image:
    """Concept `number`'s images, where its share is largest, each with its map alone."""
    concept = result.concepts[number - 1]
    colour = concept_colours(result.k)[number - 1].astype(np.float32)
    font, small = _font(16), _font(12)
    shown = concept.strongest or ()
    columns = max(1, min(COLUMNS, len(shown)))
    rows = max(1, -(-len(shown) // columns))
    cell_h = THUMBNAIL + 22
    top = 56
    width = max(columns * (THUMBNAIL + 8) + 8, 480)
    canvas = Image.new("RGB", (width, top + rows * cell_h + 8), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    title = f"concept {number} of {result.k} at {result.layer}: {_votes_text(concept.votes)}"
    draw.text((8, 8), without_accents(title), font=font, fill=INK)
    draw.rectangle((8, 32, 8 + 16, 32 + 16), fill=tuple(int(c) for c in colour))
    note = f"the {len(shown)} image(s) where it has the largest share" if shown else "in no image"
    draw.text((32, 34), note, font=small, fill=MUTED)
    for slot, i in enumerate(shown):
        record = result.images[i]
        x = 8 + (slot % columns) * (THUMBNAIL + 8)
        y = top + (slot // columns) * cell_h
        canvas.paste(_thumbnail(record, number - 1, colour), (x, y))
        caption = f"{Path(record.input).name}  {100 * record.shares[number - 1]:.0f}%"
        draw.text((x, y + THUMBNAIL + 4), _fitted(caption, small, THUMBNAIL), font=small, fill=INK)
    return canvas


def _thumbnail(record: ImageConcepts, j: int, colour: np.ndarray) -> Image.Image:
    """The photo fitted in a THUMBNAIL square, concept j's map blended in its colour."""
    photo = _photo(record)
    scale = THUMBNAIL / max(photo.size)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    small = photo.resize(size, Image.Resampling.LANCZOS)
    x0, y0, x1, y1 = (float(v) * scale for v in record.crop_box)
    values, inside = place_map(
        normalize_map(record.maps[j], "minmax"), size, (x0, y0, x1, y1), "bilinear"
    )
    pixels = np.asarray(small, dtype=np.float32)
    opacity = (SHEET_OPACITY * values)[..., None]
    blended = pixels * (1 - opacity) + colour * opacity
    picture = np.where(inside[..., None], blended, pixels * OUTSIDE_DIM)
    square = Image.new("RGB", (THUMBNAIL, THUMBNAIL), BACKGROUND)
    square.paste(
        Image.fromarray(np.clip(picture + 0.5, 0, 255).astype(np.uint8)),
        ((THUMBNAIL - size[0]) // 2, (THUMBNAIL - size[1]) // 2),
    )
    return square


def _votes_text(votes) -> str:
    return ", ".join(f"{vote.label} {vote.probability:.2f}" for vote in votes)


def _font(size: int):
    return ImageFont.load_default(size=size)


def _fitted(text: str, font, width: float) -> str:
    """`text` cut to `width` pixels, with '...' where it was cut."""
    text = without_accents(text)
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


# -- the files -------------------------------------------------------------------------------------


def write_files(result: ConceptResult, out: Path, *, save_raw: bool = False) -> dict[str, Path]:
    """Every picture, then concepts.json; the caller holds `out`'s lock. Returns the report's
    path as {'json': path}."""
    from .files import resolve_inside, write_bytes_atomic, write_npy_atomic, write_text_atomic
    from .inputs import output_keys
    from .pngwrite import png_bytes

    keys = output_keys([record.input for record in result.images])
    files: dict[str, dict[int, str]] = {"overlay": {}, "raw": {}, "figure": {}}
    for i, key in enumerate(keys):
        name = f"{key}.concepts.png"
        write_bytes_atomic(resolve_inside(out, name), png_bytes(concept_overlay(result, i)))
        files["overlay"][i] = name
        if save_raw:
            raw = f"{key}.concepts.npy"
            write_npy_atomic(resolve_inside(out, raw), result.images[i].maps.astype(np.float32))
            files["raw"][i] = raw
    for concept in result.concepts:
        name = f"concept-{concept.number}.png"
        write_bytes_atomic(
            resolve_inside(out, name), png_bytes(concept_figure(result, concept.number))
        )
        files["figure"][concept.number] = name
    document = result.to_dict(files)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    write_text_atomic(resolve_inside(out, CONCEPTS_NAME), text)
    return {"json": out / CONCEPTS_NAME}
