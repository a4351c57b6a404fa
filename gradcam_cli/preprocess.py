"""The model's preprocessing, and the geometry that maps its input back onto the photo.

Four ways to make a photo the model's input (`--resize`, `RESIZE_MODES`):

- crop: the shorter side resized, then the centre cropped (torchvision's weights transforms,
  timm's data config with crop_mode 'center'); the photo's sides are lost;
- squash: the whole photo resized to the input size, aspect not kept (`Resize((H, W))`, as many
  home-made models are trained; timm's crop_mode 'squash');
- pad: the photo scaled to fit inside the input, aspect kept, the rest filled with the mean
  colour (a letterbox, 0 once normalised; timm's crop_mode 'border').

All are done here with Pillow, so that `crop_box` knows exactly which pixels of the original
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

from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image

from .errors import ImageReadError, UsageError, did_you_mean

__all__ = [
    "Preprocess",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESAMPLING",
    "PIXEL_BUDGET",
    "RESIZE_MODES",
    "check_resize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

ResizeMode = Literal["shorter", "squash", "pad", "keep"]
# The `resize=` choices (`--resize`), and the `Preprocess.resize_mode` each is: crop is called
# "shorter" there, the name reports written before `--resize` existed record.
RESIZE_MODES: dict[str, ResizeMode] = {
    "crop": "shorter",
    "squash": "squash",
    "pad": "pad",
    "keep": "keep",
}

# The most pixels of any picture a run makes (see the module's docstring): Pillow's default
# Image.MAX_IMAGE_PIXELS, the limit that already bounds the photo. A constant, not read from
# Pillow at run time, so that raising Pillow's limit for huge photos does not raise this one.
PIXEL_BUDGET = 89_478_485
# Up to this many pixels (12 MB as RGB) the resized photo is made whole, as torchvision makes it:
# any photo up to an aspect ratio of 1:64 at a 256-pixel resize. Past it, `model_view`
# resamples the crop region alone.
WHOLE_RESIZE_PIXELS = 1 << 22


def check_resize(mode: object) -> str | None:
    """`resize=`: None (the model's own convention) or one of RESIZE_MODES."""
    if mode is None or (isinstance(mode, str) and mode in RESIZE_MODES):
        return mode
    raise UsageError(
        f"resize= takes {', '.join(RESIZE_MODES)} (how a photo becomes the model's input size), "
        f"got '{mode}'." + did_you_mean(str(mode), RESIZE_MODES)
    )


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the model's input tensor.

    `input_size` is (height, width) of the tensor; `resize_mode` says how the photo is brought
    to it, through the input size scaled by `resize_shorter / min(input_size)` (timm's
    1 / crop_pct, torchvision's resize_size / crop_size):

    - "shorter" (`resize='crop'`): the photo's shorter side resized to `resize_shorter`, aspect
      kept, then the centre `input_size` cropped;
    - "squash": the photo resized to that scaled input size, aspect not kept, then the centre
      cropped: nothing is cropped when `resize_shorter == min(input_size)` (`Resize((H, W))`),
      a margin when larger (timm's 'squash' with its crop_pct);
    - "pad": the photo scaled, aspect kept, to fit inside that scaled input size, then the centre
      cropped or padded to `input_size` with the mean colour, 0 once normalised: a letterbox of
      the whole photo when `resize_shorter == min(input_size)` (timm's 'border').

    - "keep": the photo's shorter side resized to `resize_shorter`, aspect kept, nothing
      cropped or padded; `resize_shorter` 0 leaves the photo at its own size (a detector's input,
      which the model resizes itself). `input_size` is then only the size of the probe image.

    Where a crop reaches past the resized photo in the other modes, the model sees black there,
    as torchvision's CenterCrop pads.
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
        if self.resize_mode not in RESIZE_MODES.values():
            raise ValueError("resize_mode must be 'shorter', 'squash', 'pad' or 'keep'")

    @classmethod
    def as_given(cls, probe_size: tuple[int, int] = (320, 320)) -> Preprocess:
        """The photo as it is, pixels in [0, 1]: a detector's input (torchvision's detectors
        resize and normalise it themselves). `probe_size`: the probe image's size only."""
        return cls(
            input_size=probe_size,
            resize_shorter=0,
            resize_mode="keep",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
        )

    @property
    def resize(self) -> str:
        """The mode as `resize=` names it: crop, squash, pad or keep."""
        return "crop" if self.resize_mode == "shorter" else self.resize_mode

    @property
    def fixed_size(self) -> bool:
        """Every photo becomes an input of `input_size` (all modes but keep): inputs stack."""
        return self.resize_mode != "keep"

    def with_resize(self, mode: str) -> Preprocess:
        """This preprocessing in `resize=` mode `mode`: crop keeps the model's resize-to-crop
        ratio; squash and pad show the model the whole photo (nothing cropped)."""
        check_resize(mode)
        if mode == "crop":
            return replace(self, resize_mode="shorter")
        if mode == "keep":
            return replace(self, resize_mode="keep")
        return replace(self, resize_mode=RESIZE_MODES[mode], resize_shorter=min(self.input_size))

    # -- geometry ---------------------------------------------------------------------------

    def _scaled_input(self) -> tuple[int, int]:
        """(width, height) that squash resizes to and pad fits inside (timm's scale_size)."""
        h, w = self.input_size
        short = min(h, w)
        return w * self.resize_shorter // short, h * self.resize_shorter // short

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the photo after the resize step (torchvision's, timm's rounding)."""
        if self.resize_mode == "squash":
            return self._scaled_input()
        if self.resize_mode == "pad":
            fit_width, fit_height = self._scaled_input()
            ratio = max(width / fit_width, height / fit_height)  # timm's ResizeKeepRatio
            return max(1, round(width / ratio)), max(1, round(height / ratio))
        if self.resize_mode == "keep" and self.resize_shorter == 0:
            return width, height
        short, long = (width, height) if width <= height else (height, width)
        new_short = self.resize_shorter
        new_long = int(new_short * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def crop_offset(self, width: int, height: int) -> tuple[int, int]:
        """(left, top) of the model's input inside the resized photo; negative means padding."""
        if self.resize_mode == "keep":
            return 0, 0
        rw, rh = self.resized_size(width, height)
        ch, cw = self.input_size
        return _centred(rw, cw), _centred(rh, ch)

    def photo_region(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the model's input that the resized photo fills, in input pixels;
        the rest is padding."""
        rw, rh = self.resized_size(width, height)
        if self.resize_mode == "keep":
            return 0, 0, rw, rh
        left, top = self.crop_offset(width, height)
        ch, cw = self.input_size
        return max(-left, 0), max(-top, 0), min(rw - left, cw), min(rh - top, ch)

    def model_input_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the model's input for a photo of this size."""
        if self.resize_mode == "keep":
            rw, rh = self.resized_size(width, height)
            return rh, rw
        return self.input_size

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The model's input as a box (x0, y0, x1, y1) in the original photo's pixel coordinates.

        The feature map covers exactly this box; it reaches past the photo's edges where the
        model saw padding: pad mode's letterbox, a crop larger than the resized photo.
        """
        rw, rh = self.resized_size(width, height)
        left, top = self.crop_offset(width, height)
        ch, cw = self.model_input_size(width, height)
        sx, sy = width / rw, height / rh
        return left * sx, top * sy, (left + cw) * sx, (top + ch) * sy

    # -- pixels -----------------------------------------------------------------------------

    def oversize_reason(self, width: int, height: int) -> str | None:
        """Why a photo of this size is refused, or None: its resized picture (shorter side to
        `resize_shorter`) would exceed PIXEL_BUDGET, so the model would see a sliver of it.
        Only crop mode makes such a picture: squash and pad resize to the input's scale."""
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
        """The RGB picture the model sees: resized, cropped and padded, before normalisation.

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
        if (rw, rh) == (width, height) and self.resize_mode == "keep":
            return image  # a detector's input: the photo as it is
        if rw * rh > WHOLE_RESIZE_PIXELS:
            return self._resample_crop_region(image)
        left, top = self.crop_offset(width, height)
        x0, y0, x1, y1 = self.photo_region(width, height)
        resized = image.resize((rw, rh), RESAMPLING[self.interpolation])
        return self._framed(resized.crop((x0 + left, y0 + top, x1 + left, y1 + top)), x0, y0)

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
        x0, y0, x1, y1 = self.photo_region(width, height)
        sx, sy = width / rw, height / rh
        box = ((x0 + left) * sx, (y0 + top) * sy, (x1 + left) * sx, (y1 + top) * sy)
        part = image.resize((x1 - x0, y1 - y0), RESAMPLING[self.interpolation], box=box)
        return self._framed(part, x0, y0)

    def _framed(self, part: Image.Image, x0: int, y0: int) -> Image.Image:
        """The model's view: `part`, the resized photo's part in it (`photo_region`), at
        (x0, y0), with padding around it."""
        if self.resize_mode == "keep":
            return part
        ch, cw = self.input_size
        if part.size == (cw, ch):
            return part
        colour = self._padding_colour() if part.mode == "RGB" else 0
        view = Image.new(part.mode, (cw, ch), colour)
        view.paste(part, (x0, y0))
        return view

    def _padding_colour(self) -> tuple[int, int, int]:
        """Pad mode's mean colour in levels (timm's fill); black in the others."""
        if self.resize_mode != "pad":
            return (0, 0, 0)
        r, g, b = (min(max(round(255 * value), 0), 255) for value in self.mean)
        return r, g, b

    def to_array(self, image: Image.Image) -> np.ndarray:
        """Normalised float32 array [3, H, W] for an RGB image; pad mode's padding is 0."""
        pixels = np.asarray(self.model_view(image), dtype=np.float32) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        array = ((pixels - mean) / std).transpose(2, 0, 1)
        if self.resize_mode == "pad":  # the mean colour exactly, not its nearest level
            x0, y0, x1, y1 = self.photo_region(*image.size)
            framed = np.zeros_like(array)
            framed[:, y0:y1, x0:x1] = array[:, y0:y1, x0:x1]
            array = framed
        return np.ascontiguousarray(array)

    def describe(self) -> dict[str, object]:
        """JSON-ready description (recorded in predictions.json); `resize_mode` "shorter" is
        `--resize crop`."""
        fields = asdict(self)
        fields["input_size"] = list(self.input_size)
        fields["mean"] = list(self.mean)
        fields["std"] = list(self.std)
        return fields


def _centred(size: int, crop: int) -> int:
    """Where a centred crop of `crop` starts along an axis of `size`; negative: the crop reaches
    past it, by half the excess rounded down before (as torchvision's CenterCrop and timm's
    CenterCropOrPad pad)."""
    if crop > size:
        return -((crop - size) // 2)
    return int(round((size - crop) / 2.0))
