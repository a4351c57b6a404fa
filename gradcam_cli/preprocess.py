"""The model's preprocessing, and the geometry that maps its input back onto the photo.

Most classifiers resize the shorter side, then centre-crop (torchvision's weights transforms,
timm's data config with crop_mode 'center'); some squash the whole photo to the input size.
Both are done here with Pillow, so that `crop_box` knows exactly which pixels of the original
photo the feature map covers: the overlay is placed through that box, nothing else.

Memory: no picture a run makes has more than PIXEL_BUDGET = 89,478,485 pixels (Pillow's default
decompression-bomb limit, about 256 MB as 8-bit RGB), whatever the photo's aspect ratio:

- the photo itself is refused past Image.MAX_IMAGE_PIXELS (`inputs.decode_image`), and the
  placed map, overlay, heatmap and guided image have the photo's size;
- the resized photo of the preprocessing is made only up to WHOLE_RESIZE_PIXELS; past that
  the model's view is resampled straight from the photo's crop region (`model_view`). It
  would be large for a thin strip: shorter side 1 → 128 makes a 1×60000 photo 128 × 7,680,000
  pixels (3 GB);
- panels are capped (`panel.TILE_MAX_WIDTH`);
- a photo whose resized picture, as the preprocessing defines it, would exceed the budget is
  refused (`oversize_reason`): the model would see a sliver of it, under a pixel wide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image

from .errors import ImageReadError

__all__ = ["Preprocess", "IMAGENET_MEAN", "IMAGENET_STD", "RESAMPLING", "PIXEL_BUDGET"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

ResizeMode = Literal["shorter", "squash"]

# The most pixels of any picture a run makes (see the module's docstring): Pillow's default
# Image.MAX_IMAGE_PIXELS, the limit that already bounds the photo. A constant, not read from
# Pillow at run time, so that raising Pillow's limit for huge photos does not raise this one.
PIXEL_BUDGET = 89_478_485
# Up to this many pixels (12 MB as RGB) the resized photo is made whole, as torchvision makes it:
# any photo up to an aspect ratio of 1:64 at a 256-pixel resize. Past it, `model_view`
# resamples the crop region alone.
WHOLE_RESIZE_PIXELS = 1 << 22


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the model's input tensor.

    `input_size` is (height, width) of the tensor. In `shorter` mode the photo's shorter side is
    resized to `resize_shorter` (aspect kept); in `squash` mode the photo is resized, aspect not
    kept, to `input_size` scaled so that its shorter side is `resize_shorter` (timm's 'squash').
    Then the centre `input_size` is cropped; `resize_shorter == min(input_size)` crops nothing
    in squash mode.
    """

    input_size: tuple[int, int] = (224, 224)
    resize_shorter: int = 256
    resize_mode: ResizeMode = "shorter"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in RESAMPLING:
            raise ValueError(f"interpolation must be one of {sorted(RESAMPLING)}")
        if self.resize_mode not in ("shorter", "squash"):
            raise ValueError("resize_mode must be 'shorter' or 'squash'")

    # -- geometry ---------------------------------------------------------------------------

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the photo after the resize step (torchvision's rounding)."""
        if self.resize_mode == "squash":
            h, w = self.input_size
            short = min(h, w)
            return w * self.resize_shorter // short, h * self.resize_shorter // short
        short, long = (width, height) if width <= height else (height, width)
        new_short = self.resize_shorter
        new_long = int(new_short * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def crop_offset(self, width: int, height: int) -> tuple[int, int]:
        """(left, top) of the centre crop inside the resized photo; negative means padding."""
        rw, rh = self.resized_size(width, height)
        ch, cw = self.input_size
        return int(round((rw - cw) / 2.0)), int(round((rh - ch) / 2.0))

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The model's input as a box (x0, y0, x1, y1) in the original photo's pixel coordinates.

        The feature map covers exactly this box; it may reach past the photo's edges when the
        crop is larger than the resized photo (the model then saw zero padding there).
        """
        rw, rh = self.resized_size(width, height)
        left, top = self.crop_offset(width, height)
        ch, cw = self.input_size
        sx, sy = width / rw, height / rh
        return left * sx, top * sy, (left + cw) * sx, (top + ch) * sy

    # -- pixels -----------------------------------------------------------------------------

    def oversize_reason(self, width: int, height: int) -> str | None:
        """Why a photo of this size is refused, or None: its resized picture (shorter side to
        `resize_shorter`) would exceed PIXEL_BUDGET, so the model would see a sliver of it."""
        rw, rh = self.resized_size(width, height)
        if rw * rh <= PIXEL_BUDGET:
            return None
        x0, y0, x1, y1 = self.crop_box(width, height)
        return (
            f"aspect ratio too extreme ({width}×{height}): the model's preprocessing (shorter "
            f"side to {self.resize_shorter}) would make it {rw:,}×{rh:,} pixels, over the "
            f"{PIXEL_BUDGET:,}-pixel budget, and show the model {x1 - x0:.3g}×{y1 - y0:.3g} of "
            "its pixels; crop it nearer to square to explain it"
        )

    def model_view(self, image: Image.Image) -> Image.Image:
        """The RGB picture the model sees: resized and cropped, before normalisation.

        ImageReadError when `oversize_reason` says so. Up to WHOLE_RESIZE_PIXELS, the whole
        photo is resized, then cropped: the very pixels of torchvision's transforms. Past it (a
        thin strip), only the crop region is resampled, straight to the input size: the same
        pixels up to rounding (see `_resample_crop_region`), with nothing as large as the
        resized photo ever made.
        """
        width, height = image.size
        reason = self.oversize_reason(width, height)
        if reason is not None:
            raise ImageReadError(reason)
        rw, rh = self.resized_size(width, height)
        if rw * rh > WHOLE_RESIZE_PIXELS:
            return self._resample_crop_region(image)
        resized = image.resize((rw, rh), RESAMPLING[self.interpolation])
        left, top = self.crop_offset(width, height)
        ch, cw = self.input_size
        # Pillow fills a box that reaches outside the picture with zeros, like torchvision's pad.
        return resized.crop((left, top, left + cw, top + ch))

    def _resample_crop_region(self, image: Image.Image) -> Image.Image:
        """`model_view` from the crop region alone (Pillow's `resize(box=...)`).

        The filters' weights come from box coordinates that Pillow holds as 32-bit floats, and
        Pillow picks the order of its two passes (horizontal, vertical) by the sizes at hand:
        against resizing the whole photo, a level differs here and there (more where bicubic
        overshoot is clipped between the passes), and nearest may pick the neighbouring row
        where a pixel centre falls exactly on a border.
        """
        width, height = image.size
        rw, rh = self.resized_size(width, height)
        left, top = self.crop_offset(width, height)
        ch, cw = self.input_size
        # The part of the crop that lies on the resized photo; the rest is zero padding.
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + cw, rw), min(top + ch, rh)
        sx, sy = width / rw, height / rh
        box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)  # that part, in the photo's coordinates
        part = image.resize((x1 - x0, y1 - y0), RESAMPLING[self.interpolation], box=box)
        if part.size == (cw, ch):
            return part
        view = Image.new(part.mode, (cw, ch))
        view.paste(part, (x0 - left, y0 - top))
        return view

    def to_array(self, image: Image.Image) -> np.ndarray:
        """Normalised float32 array [3, H, W] for an RGB image."""
        pixels = np.asarray(self.model_view(image), dtype=np.float32) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def describe(self) -> dict[str, object]:
        """JSON-ready description (recorded in predictions.json)."""
        fields = asdict(self)
        fields["input_size"] = list(self.input_size)
        fields["mean"] = list(self.mean)
        fields["std"] = list(self.std)
        return fields
