"""From a raw class-activation map to pictures on the user's photo (NumPy + Pillow, no torch).

The pipeline, in this order:

1. `normalize_map` at feature-map resolution (minmax, max or none), to [0, 1];
2. `place_map` upsamples it onto the photo's pixels through the crop box the model saw
   (bilinear, bicubic or nearest), then clips to [0, 1] because bicubic overshoots;
3. `overlay_image` / `heatmap_image` colour it with a matplotlib colormap used as a lookup table.

A guided method's signed input-resolution gradient is drawn by `guided_picture`, through the
same crop geometry.

Normalising first means the normalised values do not depend on the photo's resolution or on
the interpolation: the same map gives the same numbers on a thumbnail and on a 12-megapixel
original. Outside the crop box the model saw nothing: the overlay leaves those pixels
uncoloured and dims them, the heatmap makes them transparent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import UsageError, did_you_mean

__all__ = [
    "NORMALIZATIONS",
    "INTERPOLATIONS",
    "check_normalization",
    "check_interpolation",
    "check_alpha",
    "normalize_map",
    "STORED_COLORMAPS",
    "colormap_names",
    "colormap_lut",
    "place_map",
    "overlay_image",
    "heatmap_image",
    "heatmap_palette_image",
    "guided_rgb",
    "guided_picture",
]

NORMALIZATIONS = ("minmax", "max", "none")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

Box = tuple[float, float, float, float]
Kernel = Callable[[np.ndarray], np.ndarray]

# Rows blended at a time by overlay_image: float temporaries stay near 12 MB each on a
# 4000-pixel-wide photo instead of 150 MB each for the whole picture at once.
_BAND_ROWS = 256


# -- option checks -------------------------------------------------------------------------


def check_normalization(mode: str) -> str:
    """Return `mode` if it is one of NORMALIZATIONS; UsageError (with a suggestion) otherwise."""
    return _check_choice("normalization", mode, NORMALIZATIONS)


def check_interpolation(name: str) -> str:
    """Return `name` if it is one of INTERPOLATIONS; UsageError (with a suggestion) otherwise."""
    return _check_choice("interpolation", name, INTERPOLATIONS)


def check_alpha(alpha: float) -> float:
    """Return `alpha` if it is within [0, 1]; UsageError otherwise."""
    return _check_fraction("alpha", alpha)


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UsageError(
            f"{option} '{value}' is not one of {', '.join(choices)}.{did_you_mean(value, choices)}"
        )
    return value


def _check_fraction(option: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:  # also False for NaN
        raise UsageError(f"{option} must be between 0 and 1, got {value}")
    return float(value)


# -- normalisation -------------------------------------------------------------------------


def normalize_map(raw: np.ndarray, mode: str) -> np.ndarray:
    """Scale a raw map (>= 0, [h, w]) to float32 in [0, 1].

    minmax: (m - min) / (max - min); max: m / max; none: clip(m, 0, 1). Non-finite values count
    as 0. Where the division is undefined (an all-zero map; a constant one under minmax) the
    result is all zeros, never NaN: nothing stands out, so nothing is coloured.
    """
    check_normalization(mode)
    values = np.nan_to_num(np.asarray(raw, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if mode == "none" or values.size == 0:
        return np.clip(values, 0.0, 1.0)
    high = float(values.max())
    low = float(values.min()) if mode == "minmax" else 0.0
    span = high - low
    if not span > 0.0 or not np.isfinite(span):
        return np.zeros_like(values)
    # float64 arithmetic: a span near float32's limit must not overflow to inf.
    scaled = (values.astype(np.float64) - low) / span
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


# -- colormaps -----------------------------------------------------------------------------


def colormap_names() -> list[str]:
    """Every colormap name matplotlib knows (its registry, plugins included), sorted."""
    import matplotlib  # lazy: importing this module must stay cheap for `gradcam --help`

    return sorted(matplotlib.colormaps)


@functools.lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """A matplotlib colormap as a read-only uint8 lookup table [256, 3] (RGB).

    The common maps (STORED_COLORMAPS) come from a table shipped with the package, so a run with
    them never imports matplotlib (about 0.4 s); any other name is looked up in matplotlib.
    """
    lut = _stored_luts().get(name)
    if lut is None:
        lut = _matplotlib_lut(name)
    lut.setflags(write=False)  # cached and shared between callers
    return lut


# Written by `python -m gradcam_cli.render` from matplotlib's registry; tests/test_render.py
# checks that every stored table still equals matplotlib's.
STORED_COLORMAPS = ("jet", "turbo", "viridis", "cividis", "inferno", "magma", "plasma")
_COLORMAP_FILE = Path(__file__).with_name("colormaps.npz")


@functools.cache
def _stored_luts() -> dict[str, np.ndarray]:
    with np.load(_COLORMAP_FILE, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def _matplotlib_lut(name: str) -> np.ndarray:
    import matplotlib

    if name not in matplotlib.colormaps:
        raise UsageError(
            f"unknown colormap '{name}'.{did_you_mean(name, colormap_names())} "
            "Any matplotlib colormap name works, e.g. jet, viridis, inferno, turbo"
        )
    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    return np.rint(rgba[:, :3] * 255.0).astype(np.uint8)


def _write_stored_colormaps() -> None:
    tables: dict[str, Any] = {name: _matplotlib_lut(name) for name in STORED_COLORMAPS}
    np.savez(_COLORMAP_FILE, **tables)


# -- geometry ------------------------------------------------------------------------------


def place_map(
    norm: np.ndarray,
    photo_size: tuple[int, int],
    box: Box,
    interpolation: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Upsample a normalised map [h, w] onto a photo of `photo_size` (W, H) through `box`.

    `box` = (x0, y0, x1, y1) in photo pixel coordinates is the region the map covers
    (`Preprocess.crop_box`); it may reach past the photo's edges. Map cell (i, j) covers
    x0 + j*(x1-x0)/w ... x0 + (j+1)*(x1-x0)/w, likewise in y, and a photo pixel is sampled at
    its centre (+0.5): the align_corners=False convention. The filters are Pillow's (bicubic
    a = -0.5, taps past the map's edge dropped and the rest renormalised, antialiased when
    shrinking), so a box of (0, 0, W, H) gives exactly Pillow's `resize`.

    Returns (values float32 [H, W] clipped to [0, 1], inside bool [H, W]); pixels whose centre
    lies outside the box have inside False and value 0.
    """
    check_interpolation(interpolation)
    values = np.asarray(norm, dtype=np.float32)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"place_map needs a non-empty [h, w] map, got shape {values.shape}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):  # also False for NaN
        raise ValueError(f"place_map needs a box with x1 > x0 and y1 > y0, got {box}")
    width, height = photo_size
    cols, inside_x = _axis_weights(width, values.shape[1], x0, x1, interpolation)
    rows, inside_y = _axis_weights(height, values.shape[0], y0, y1, interpolation)
    # Separable resampling as two small matrix products: [H, h] @ [h, w] @ [w, W].
    placed = (rows @ values) @ cols.T
    np.clip(placed, 0.0, 1.0, out=placed)
    inside = inside_y[:, None] & inside_x[None, :]
    return placed, inside


def _axis_weights(
    n_pixels: int, n_cells: int, start: float, end: float, interpolation: str
) -> tuple[np.ndarray, np.ndarray]:
    """Resampling weights [n_pixels, n_cells] along one axis and which pixels are in the box.

    Rows of pixels outside [start, end) are zero, so their values come out 0.
    """
    pixel_centres = np.arange(n_pixels, dtype=np.float64) + 0.5
    inside = (pixel_centres >= start) & (pixel_centres < end)
    scale = n_cells / (end - start)  # map cells per photo pixel
    # Pixel centres in map coordinates. Multiply before dividing: exact for integer and
    # half-pixel boxes, so a centre on a cell border goes to the later cell (half-open cells).
    centres = (pixel_centres - start) * n_cells / (end - start)
    if interpolation == "nearest":
        weights = _nearest_weights(centres, n_cells)
    else:
        weights = _filter_weights(centres, n_cells, scale, _KERNELS[interpolation])
    weights[~inside] = 0.0
    return weights.astype(np.float32), inside


def _nearest_weights(centres: np.ndarray, n_cells: int) -> np.ndarray:
    cells = np.clip(np.floor(centres).astype(np.int64), 0, n_cells - 1)
    weights = np.zeros((centres.size, n_cells), dtype=np.float64)
    weights[np.arange(centres.size), cells] = 1.0
    return weights


def _filter_weights(centres: np.ndarray, n_cells: int, scale: float, kernel: Kernel) -> np.ndarray:
    """Pillow's precompute_coeffs: kernel weights, widened when shrinking, rows summing to 1.

    Taps beyond the map's edge simply do not exist (no edge padding); the remaining weights are
    renormalised, exactly as Pillow does.
    """
    widen = max(scale, 1.0)  # shrinking: widen the kernel to antialias, as Pillow does
    cell_centres = np.arange(n_cells, dtype=np.float64) + 0.5
    weights = kernel((cell_centres[None, :] - centres[:, None]) / widen)
    totals = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, totals, out=np.zeros_like(weights), where=totals != 0.0)


def _bilinear(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


_KERNELS: dict[str, Kernel] = {"bilinear": _bilinear, "bicubic": _bicubic}


# -- pictures ------------------------------------------------------------------------------


def overlay_image(
    photo: Image.Image,
    values: np.ndarray,
    inside: np.ndarray,
    lut: np.ndarray,
    alpha: float,
    outside_dim: float = 0.5,
) -> Image.Image:
    """Blend the coloured map onto the photo; dim what lies outside the box the model saw.

    Inside: (1 - alpha) * photo + alpha * lut[round(values * 255)]; outside: photo * outside_dim.
    Returns an RGB image the size of the photo.
    """
    check_alpha(alpha)
    _check_fraction("outside_dim", outside_dim)
    pixels = np.asarray(photo if photo.mode == "RGB" else photo.convert("RGB"), dtype=np.uint8)
    _check_shapes(pixels.shape[:2], values, inside)
    box = _filled_box(inside)
    if box is None:
        return Image.fromarray(_overlay_by_mask(pixels, values, inside, lut, alpha, outside_dim))
    # The box place_map makes: blend the box, dim the four strips around it, and never select
    # pixel by pixel (np.where over [H, W, 3] took half the time of the whole overlay).
    rows, cols = box
    blended = np.empty_like(pixels)
    dimmed = _dim_table(outside_dim)
    everything = slice(None)
    for strip in (
        (slice(0, rows.start), everything),
        (slice(rows.stop, None), everything),
        (rows, slice(0, cols.start)),
        (rows, slice(cols.stop, None)),
    ):
        blended[strip] = np.take(dimmed, pixels[strip])  # a uint8 table: no float copy
    for top in range(rows.start, rows.stop, _BAND_ROWS):
        band = slice(top, min(top + _BAND_ROWS, rows.stop))
        colours = np.take(lut, _lut_index(values[band, cols]), axis=0)  # 3x faster than lut[...]
        blended[band, cols] = _mix(pixels[band, cols], colours, alpha)
    return Image.fromarray(blended)


def _filled_box(inside: np.ndarray) -> tuple[slice, slice] | None:
    """(rows, cols) of the rectangle that `inside` fills exactly (empty when nothing is
    inside), or None when `inside` is some other shape."""
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    box = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    return box if inside[box].all() else None


def _overlay_by_mask(
    pixels: np.ndarray,
    values: np.ndarray,
    inside: np.ndarray,
    lut: np.ndarray,
    alpha: float,
    outside_dim: float,
) -> np.ndarray:
    """overlay_image for an `inside` of any shape: each pixel chosen blended or dimmed."""
    blended = np.empty_like(pixels)
    dimmed = _dim_table(outside_dim)
    for top in range(0, pixels.shape[0], _BAND_ROWS):
        band = slice(top, top + _BAND_ROWS)
        colours = np.take(lut, _lut_index(values[band]), axis=0)
        mixed = _mix(pixels[band], colours, alpha)
        blended[band] = np.where(inside[band][..., None], mixed, np.take(dimmed, pixels[band]))
    return blended


def _mix(pixels: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """round((1 - alpha) * pixels + alpha * colours) in float32, as uint8."""
    mixed = pixels.astype(np.float32)
    mixed *= np.float32(1.0 - alpha)
    mixed += colours * np.float32(alpha)
    mixed += 0.5  # values are >= 0, so truncating x + 0.5 rounds to nearest
    return mixed.astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _dim_table(outside_dim: float) -> np.ndarray:
    """round(v * outside_dim) for every uint8 v, with the float32 arithmetic of _mix."""
    dimmed = np.arange(256, dtype=np.float32) * np.float32(outside_dim)
    dimmed += 0.5
    return dimmed.astype(np.uint8)


def heatmap_image(values: np.ndarray, inside: np.ndarray, lut: np.ndarray) -> Image.Image:
    """The coloured map alone as RGBA: opaque inside the box, transparent (0, 0, 0, 0) outside."""
    _check_shapes(values.shape, values, inside)
    # One 32-bit word per pixel (its 4 bytes are R, G, B, A): a single gather instead of
    # strided writes into a [H, W, 4] array, about 3x faster on a 12-megapixel photo.
    opaque = np.take(_rgba_words(lut), _lut_index(values))
    words = np.where(inside, opaque, np.uint32(0))
    return Image.fromarray(words.view(np.uint8).reshape(*words.shape, 4))


def heatmap_palette_image(values: np.ndarray, inside: np.ndarray, lut: np.ndarray) -> Image.Image:
    """heatmap_image as an 8-bit palette image ("P"): one byte per pixel, the LUT as palette,
    and one palette entry, (0, 0, 0) and transparent (PNG tRNS), for the pixels outside the box.

    `.convert("RGBA")` gives heatmap_image's pixels exactly; as a PNG it is a quarter of the
    bytes to deflate. The transparent entry is a LUT entry no pixel needs: a repeated colour
    (jet has four) or, when all 256 colours differ, one the map does not use. When the map uses
    all 256 distinct colours and some pixels are outside the box, no entry is free: the RGBA
    heatmap_image is returned.
    """
    _check_shapes(values.shape, values, inside)
    index = _lut_index(values)
    palette = np.array(lut, dtype=np.uint8)
    if inside.all():
        return _palette_image(index, palette, transparent=None)
    words = _rgba_words(lut)
    _, first = np.unique(words, return_index=True)  # the first entry of each distinct colour
    if first.size < 256:  # a repeated colour: its later entry becomes the transparent one
        spare = int(np.setdiff1d(np.arange(256), first)[0])
        twin = int(np.flatnonzero(words == words[spare])[0])
        index[index == spare] = twin
    else:
        unused = np.flatnonzero(np.bincount(index.ravel(), minlength=256) == 0)
        if unused.size == 0:
            return heatmap_image(values, inside, lut)
        spare = int(unused[0])
    palette[spare] = 0
    return _palette_image(np.where(inside, index, np.uint8(spare)), palette, transparent=spare)


def _palette_image(index: np.ndarray, palette: np.ndarray, transparent: int | None) -> Image.Image:
    image = Image.fromarray(index)  # "L"; putpalette makes it "P"
    image.putpalette(palette.tobytes())
    if transparent is not None:
        image.info["transparency"] = transparent
    return image


def _rgba_words(lut: np.ndarray) -> np.ndarray:
    """A [256, 3] uint8 LUT as [256] uint32 words holding the bytes R, G, B, 255."""
    rgba = np.full((256, 4), 255, dtype=np.uint8)
    rgba[:, :3] = lut
    return rgba.view(np.uint32)[:, 0]


def _lut_index(values: np.ndarray) -> np.ndarray:
    """round(values * 255) as uint8; values outside [0, 1] are clipped, NaN counts as 0."""
    unit = np.fmin(np.fmax(np.asarray(values, dtype=np.float32), 0.0), 1.0)  # fmax: NaN -> 0
    unit *= 255.0
    unit += 0.5
    return unit.astype(np.uint8)


def _check_shapes(size_hw: tuple[int, ...], values: np.ndarray, inside: np.ndarray) -> None:
    if tuple(values.shape) != tuple(size_hw) or tuple(inside.shape) != tuple(size_hw):
        raise ValueError(
            f"values {values.shape} and inside {inside.shape} must both be [H, W] = {size_hw}"
        )


# -- guided backpropagation's picture (guided.py computes the gradient) ---------------------------


def guided_rgb(gradient: np.ndarray, spread: float = 0.1) -> np.ndarray:
    """A signed gradient [3, H, W] → RGB values [H, W, 3] in [0, 1], grey where it is zero.

    0.5 + spread · g / rms(g), over all channels and pixels together (one scale, so the colours
    keep their balance): zero gradient is mid-grey, one root-mean-square is ±0.1, and values
    past ±5 rms are clipped. This is the Keras example's `deprocess_image` (article 002) and
    pytorch-grad-cam's, centred on zero instead of the mean, so grey always means "no effect".
    """
    values = np.nan_to_num(np.asarray(gradient, dtype=np.float64))
    rms = float(np.sqrt(np.mean(values * values))) if values.size else 0.0
    scaled = values * (spread / rms) if rms > 0 else np.zeros_like(values)
    return np.clip(0.5 + scaled, 0.0, 1.0).transpose(1, 2, 0).astype(np.float32)


def guided_picture(
    gradient: np.ndarray,
    photo_size: tuple[int, int],
    box: tuple[float, float, float, float],
    interpolation: str = "bilinear",
) -> Image.Image:
    """The guided image on the photo's pixel grid (RGBA): the crop the model saw, through the
    same geometry as the maps (`place_map`); transparent outside it."""
    rgb = guided_rgb(gradient)
    channels = [place_map(rgb[..., c], photo_size, box, interpolation) for c in range(3)]
    inside = channels[0][1]
    pixels = np.stack([values for values, _ in channels], axis=-1)
    rgba = np.zeros((*inside.shape, 4), dtype=np.uint8)
    rgba[..., :3] = np.rint(pixels * 255.0).astype(np.uint8)
    rgba[..., 3] = np.where(inside, 255, 0)
    rgba[~inside, :3] = 0
    return Image.fromarray(rgba, "RGBA")


if __name__ == "__main__":  # python -m gradcam_cli.render: rewrite the stored colormap tables
    _write_stored_colormaps()


# -- segmentation regions and detection boxes ---------------------------------------------------

BOX_COLOUR = (255, 255, 255)  # on any colormap: a white line edged in black
BOX_EDGE = (0, 0, 0)


def region_picture(grid: np.ndarray, photo_size: tuple[int, int], box: Box) -> np.ndarray:
    """A bool region [h, w] over `box` → bool [H, W] on the photo (nearest cell; False where
    the model saw nothing of the photo)."""
    values, inside = place_map(np.asarray(grid, dtype=np.float32), photo_size, box, "nearest")
    return (values >= 0.5) & inside


def draw_box(picture: Image.Image, box: Sequence[float], caption: str) -> Image.Image:
    """A copy of `picture` with a detection's box (photo pixels) and its caption drawn: a white
    line edged in black, the caption on a black tab above the box (inside it at the top edge)."""
    from PIL import ImageDraw, ImageFont

    drawn = picture.convert("RGB")
    draw = ImageDraw.Draw(drawn)
    side = min(drawn.size)
    line = max(1, round(side / 250))
    x0, y0, x1, y1 = (float(v) for v in box)
    draw.rectangle((x0 - line, y0 - line, x1 + line, y1 + line), outline=BOX_EDGE, width=line)
    draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR, width=line)
    font = ImageFont.load_default(size=max(10, round(side / 40)))
    left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
    pad = max(1, line)
    height = bottom - top + 2 * pad
    tab_top = y0 - height if y0 - height >= 0 else y0
    draw.rectangle((x0, tab_top, x0 + right - left + 2 * pad, tab_top + height), fill=BOX_EDGE)
    draw.text((x0 + pad - left, tab_top + pad - top), caption, fill=BOX_COLOUR, font=font)
    return drawn
