"""The model's preprocessing, and the geometry that maps its input back onto the photo.

Most classifiers resize the shorter side, then centre-crop (torchvision's weights transforms,
timm's data config with crop_mode 'center'); some squash the whole photo to the input size.
Both are done here with Pillow, so that `crop_box` knows exactly which pixels of the original
photo the feature map covers: the overlay is placed through that box, nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image

__all__ = ["Preprocess", "IMAGENET_MEAN", "IMAGENET_STD", "RESAMPLING"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

ResizeMode = Literal["shorter", "squash"]


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

    def model_view(self, image: Image.Image) -> Image.Image:
        """The RGB picture the model sees: resized and cropped, before normalisation."""
        resample = RESAMPLING[self.interpolation]
        resized = image.resize(self.resized_size(*image.size), resample)
        left, top = self.crop_offset(*image.size)
        ch, cw = self.input_size
        # Pillow fills a box that reaches outside the picture with zeros, like torchvision's pad.
        return resized.crop((left, top, left + cw, top + ch))

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
