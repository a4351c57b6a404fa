"""Decoding one image file to the RGB picture a viewer shows.

EXIF orientation applied, transparency on white, 16-bit scaled rather than clipped, the first
frame of an animation; a file that cannot be read raises ImageReadError with a one-line reason
(see `reasons`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageReadError
from .filekinds import open_regular
from .reasons import decode_reason

EXIF_ORIENTATION = 0x0112  # the tag whose values 5–8 turn a photo a quarter turn

_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded photo and what the user should know about how it was read."""

    image: Image.Image  # RGB, fully loaded
    warnings: tuple[str, ...] = ()  # e.g. only the first frame of an animation was used


def load_image(path: Path) -> Image.Image:
    """Decode `path` to a fully loaded RGB image; ImageReadError with a one-line reason otherwise.

    See `decode_image`, which also returns the warnings (such as "first frame only").
    """
    return decode_image(path).image


def photo_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of the photo at `path` as `decode_image` turns it upright (EXIF
    orientation), from its header; None when it cannot be read (its decoding will say why)."""
    try:
        with open_regular(path) as handle, Image.open(handle) as image:
            width, height = image.size
            turned = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except Exception:  # a damaged or hostile file: decode_image reports it, with its reason
        return None
    return (height, width) if turned else (width, height)


def decode_image(path: Path) -> DecodedImage:
    """Decode `path` as a viewer shows it; ImageReadError with a one-line reason otherwise.

    - EXIF orientation is applied, so the map lands on the photo as the user sees it.
    - Animated GIF/WebP/PNG and multi-page TIFF: the first frame, with a warning saying so.
    - Transparent pixels are composited onto white: their stored colour is arbitrary (often
      black or leftover paint), and the model should see what a viewer sees.
    - 16-bit images are scaled by 65535 (Pillow's convert would clip everything above 255 to
      white); float images by their maximum.
    - PNG checksums are verified (Pillow's decoder skips them; libpng and browsers do not).
    - Images over Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) are refused.
      Pillow itself only warns up to twice the limit, and decoding then takes gigabytes.
    """
    path = Path(path)
    try:
        with open_regular(path) as handle, Image.open(handle) as image:
            refuse_over_pixel_limit(image)
            if image.format == "PNG":
                _verify_png(path)
            frames = _frame_count(image)
            image.load()  # inside the try: truncated data fails here, not later in a worker
            upright = ImageOps.exif_transpose(image)
            return DecodedImage(_to_rgb(upright), _frames_warning(image.format, frames))
    # Every exception: a damaged file can make a Pillow plugin raise almost anything, and one
    # bad input must become one failed result, not the end of a run over a thousand images.
    except Exception as exc:
        raise ImageReadError(f"cannot read {path}: {decode_reason(exc, path)}") from exc


def refuse_over_pixel_limit(image: Image.Image) -> None:
    """Pillow raises DecompressionBombError only past twice its limit; raise it from the limit."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit and pixels > limit:
        raise Image.DecompressionBombError(f"Image size ({pixels} pixels) exceeds limit")


def _verify_png(path: Path) -> None:
    """Check every chunk's CRC (verify() needs a file of its own: it consumes the image)."""
    with open_regular(path) as handle, Image.open(handle) as check:
        check.verify()


def _frame_count(image: Image.Image) -> int:
    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1:
        image.seek(0)  # counting seeks through the file; decode the first frame
    return frames


def _frames_warning(image_format: str | None, frames: int) -> tuple[str, ...]:
    if frames <= 1:
        return ()
    unit = "pages" if image_format == "TIFF" else "frames"
    what = f"multi-page {image_format}" if unit == "pages" else f"animated {image_format}"
    return (f"{what} with {frames} {unit}: only the first was explained",)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _on_white(image.convert("RGBA"))
    if image.mode.startswith("I;16") or image.mode == "I":
        return _scaled_to_rgb(np.asarray(image, dtype=np.float64), 65535.0)
    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0)
        return _scaled_to_rgb(pixels, float(pixels.max(initial=0.0)))
    return image.convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scaled_to_rgb(pixels: np.ndarray, full_scale: float) -> Image.Image:
    """Grey levels in [0, full_scale] to an 8-bit RGB image (all black when full_scale <= 0)."""
    if full_scale <= 0:
        grey = np.zeros(pixels.shape, dtype=np.uint8)
    else:
        grey = np.rint(np.clip(pixels / full_scale, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
