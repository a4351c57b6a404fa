"""Does the map land on the object? Metrics against a true mask, and the CI gate built on them.

All three are measured on the photo's pixel grid, inside the crop the model saw (a mask pixel the
model never saw can be neither hit nor missed), with the raw map scaled by its maximum and
upsampled bilinearly — the same placement as the overlay, so the numbers describe the picture:

- hit (pointing game, Zhang et al. 2016): the map's maximum lies inside the mask;
- energy: the share of the map's mass inside the mask; its chance level is `mask_share`, the
  share of the seen pixels the mask covers (a uniform map scores exactly that);
- iou: intersection over union of the mask and the map thresholded at IOU_THRESHOLD × its max.

An all-zero map has no maximum and no mass: hit is false, energy and iou are 0.
"""

from __future__ import annotations

import math
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageReadError, UsageError
from .inputs import decode_reason, open_regular, refuse_over_pixel_limit
from .render import normalize_map, place_map

__all__ = [
    "IOU_THRESHOLD",
    "MASK_SUFFIXES",
    "Localization",
    "Gate",
    "MaskSource",
    "localize",
    "localization_record",
    "read_mask",
]

IOU_THRESHOLD = 0.5  # of the map's maximum, a common choice for CAM boxes (Zhou et al. 2016)
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Localization:
    mask: str  # the mask file, as found
    hit: bool
    energy: float
    iou: float
    mask_share: float


def read_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file → bool [H, W] for a photo of `size` (W, H).

    Inside is where the value is at least half the file's maximum, so 0/1 label images, 0/255
    masks and antialiased masks all work; a mask with transparency uses its alpha. A mask of
    another size but the photo's aspect ratio is resized (nearest); any other size is an error.
    """
    path = Path(path)
    try:
        mask = _decoded(path)
    except Exception as exc:  # a damaged file can make a Pillow plugin raise almost anything
        raise ImageReadError(f"cannot read mask {path}: {decode_reason(exc, path)}") from None
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        channel = mask.convert("RGBA").getchannel("A")
        if channel.getextrema()[0] == 255:  # opaque everywhere: the alpha says nothing
            channel = mask.convert("L")
    else:
        channel = mask.convert("L") if mask.mode not in ("I", "I;16", "F") else mask
    if channel.size != tuple(size):
        channel = _resize_to(channel, size, path)
    values = np.asarray(channel, dtype=np.float64)
    high = float(values.max(initial=0.0))
    return values >= high / 2 if high > 0 else np.zeros(values.shape, dtype=bool)


def _decoded(path: Path) -> Image.Image:
    """The mask file, fully loaded; never blocking on a FIFO, and refused from Pillow's pixel
    limit, not twice it: an image's own checks (inputs.decode_image)."""
    with open_regular(path) as handle, Image.open(handle) as opened:
        refuse_over_pixel_limit(opened)
        opened.load()
        return opened


def _resize_to(mask: Image.Image, size: tuple[int, int], path: Path) -> Image.Image:
    (mw, mh), (w, h) = mask.size, size
    if not math.isclose(mw / mh, w / h, rel_tol=0.01):
        raise ImageReadError(
            f"mask {path} is {mw}×{mh} but the image is {w}×{h}; "
            "a mask must have the image's size or at least its aspect ratio"
        )
    return mask.resize((w, h), Image.Resampling.NEAREST)


def localize(
    raw: np.ndarray,
    mask: np.ndarray,
    crop_box: tuple[float, float, float, float],
    mask_name: str = "",
) -> Localization:
    """The metrics of a raw map [h, w] against a mask [H, W] on the photo (see module doc)."""
    height, width = mask.shape
    values, seen = place_map(normalize_map(raw, "max"), (width, height), crop_box, "bilinear")
    values = np.where(seen, values, 0.0).astype(np.float64)
    inside = mask & seen
    seen_pixels = int(seen.sum())
    mask_share = inside.sum() / seen_pixels if seen_pixels else 0.0
    total = values.sum()
    if not total > 0:
        return Localization(mask_name, False, 0.0, 0.0, float(mask_share))
    peak = values.max()
    hit = bool(inside[np.unravel_index(np.argmax(values), values.shape)])
    region = values >= IOU_THRESHOLD * peak
    union = (region | inside).sum()
    iou = (region & inside).sum() / union if union else 0.0
    return Localization(
        mask_name, hit, float(values[inside].sum() / total), float(iou), float(mask_share)
    )


@dataclass(frozen=True)
class Gate:
    """--min-energy / --require-hit: what an explanation must reach for the run to pass."""

    min_energy: float | None = None
    require_hit: bool = False

    def __post_init__(self) -> None:
        if self.min_energy is not None and not 0.0 <= self.min_energy <= 1.0:
            raise UsageError(f"min_energy= is a share from 0 to 1, got {self.min_energy}")

    @property
    def active(self) -> bool:
        return self.require_hit or self.min_energy is not None

    def shortfalls(self, found: Localization | None) -> list[str]:
        """Why an explanation fails the gate (empty when it passes)."""
        if not self.active:
            return []
        if found is None:
            return ["no mask to measure against"]
        reasons = []
        if self.require_hit and not found.hit:
            reasons.append("the map's maximum is outside the mask")
        if self.min_energy is not None and found.energy < self.min_energy:
            reasons.append(f"energy in mask {found.energy:.3f} < {self.min_energy:g}")
        return reasons


def localization_record(
    found: Localization | None, gate: Gate, mask: str | None = None, error: str | None = None
) -> dict[str, object]:
    """The JSON `localization` of one explanation; the same keys whether measured or not."""
    shortfalls = gate.shortfalls(found) if error is None else [error]
    return {
        "mask": found.mask if found else mask,
        "hit": found.hit if found else None,
        "energy": round(found.energy, 6) if found else None,
        "iou": round(found.iou, 6) if found else None,
        "mask_share": round(found.mask_share, 6) if found else None,
        "error": error,
        "passed": not shortfalls if gate.active else None,
        "shortfalls": shortfalls if gate.active else [],
    }


def _check_mask_file(path: Path) -> None:
    """One mask for every input: decode it now, so that a file that is no image stops the run
    before the model loads (exit 2) instead of failing every explanation's localization."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise UsageError(f"mask='{path}' is not a regular file; give a mask image or a folder")
    try:
        _decoded(path)  # as read_mask reads it for every explanation
    except Exception as exc:  # Pillow's plugins raise many types for a damaged file
        raise UsageError(
            f"mask='{path}' cannot be read as an image ({decode_reason(exc, path)}); give a PNG "
            "mask (white inside the object) or a folder of them"
        ) from exc


class MaskSource:
    """Where the masks are: one file for every input, or a folder matched by the input's key.

    In a folder, the input `cats/tom.jpg` (key `cats/tom`) explained for class 281 'tabby cat'
    takes the first of `cats/tom.tabby_cat.*`, `cats/tom.281.*`, `cats/tom.*` — a mask per
    class first (a scene with two objects), then one per image — with any image suffix.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UsageError(f"mask='{self.path}': no such file or folder")
        self.is_folder = self.path.is_dir()  # asked once per explanation: stat only here
        self._index: dict[str, Path] | None = None
        if not self.is_folder:
            _check_mask_file(self.path)

    def find(self, key: str, class_index: int, class_slug: str) -> Path | None:
        if not self.is_folder:
            return self.path
        index = self._files()
        for stem in (f"{key}.{class_slug}", f"{key}.{class_index}", key):
            if stem in index:
                return index[stem]
        return None

    def _files(self) -> dict[str, Path]:
        """Relative POSIX stem → mask file, read once (a folder of a million masks is one walk)."""
        if self._index is None:
            self._index = {}
            for file in sorted(self.path.rglob("*")):
                if file.suffix.lower() in MASK_SUFFIXES and file.is_file():
                    stem = file.relative_to(self.path).with_suffix("").as_posix()
                    self._index.setdefault(stem, file)
        return self._index
