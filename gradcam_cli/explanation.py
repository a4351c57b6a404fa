"""One image's explanation: its predictions and raw maps, and the pictures drawn from them.

    result = explainer.explain("cat.jpg")    # an ImageExplanation
    result.raw(), result.overlay(), result.pictures(), result.localize(target, mask)
    result.save("runs/cat")                  # the files of `gradcam explain cat.jpg`

The Explainer makes it (explainer.py); the runner, the device renderer and the metrics read it;
`save` asks the Explainer that made it to write it (`Explainer.save`, through `outputs`), so
nothing here reaches up to the model or the files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from .errors import TargetError, UsageError
from .localization import Localization, localize
from .render import (
    colormap_lut,
    draw_box,
    guided_picture,
    heatmap_image,
    normalize_map,
    overlay_image,
    place_map,
    region_picture,
)
from .report import Prediction, TargetRef

__all__ = ["ImageExplanation", "RenderOptions", "Maker"]


@dataclass(frozen=True)
class RenderOptions:
    """How a raw map becomes pictures (README "Rendering")."""

    colormap: str = "jet"
    alpha: float = 0.5
    interpolation: str = "bilinear"
    normalize: str = "minmax"


@dataclass(frozen=True)
class ImageExplanation:
    """One image's predictions and raw maps; renders its pictures on demand."""

    image: Image.Image  # the original photo (RGB, EXIF-rotated)
    crop_box: tuple[float, float, float, float]  # what the model saw, in photo pixels
    predictions: list[Prediction]
    targets: list[TargetRef]  # each with the model's probability and score for it
    maps: dict[tuple[int, str], np.ndarray]  # (class index, layer) → raw map [h, w] float32
    # Guided methods only: (class index, layer) → signed input-resolution image [3, H, W].
    guided: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    method: str = ""  # the method's name, for captions (`--panel`)
    source: str | None = None  # the file it was read from, when it was given as a path
    # The Explainer that made it and what was asked of it (class indices, or top-k): what
    # `save` records about the model, method, layers and options.
    explainer: Maker | None = field(default=None, repr=False, compare=False)
    request: tuple[tuple[int, ...], int] = field(default=((), 1), repr=False, compare=False)
    # Segmentation: target index → the pixels its logits were summed over, bool [h, w] on the
    # model's output grid (which covers crop_box).
    regions: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def save(
        self,
        out: str | os.PathLike,
        *,
        render: RenderOptions = RenderOptions(),
        overlay_format: str = "png",
        heatmap: bool = True,
        save_raw: bool = False,
        panel: bool = False,
        report: bool = False,
    ) -> Path:
        """Write what `gradcam explain` writes for this image into the folder `out`: overlay,
        heatmap (raw .npy, panel, page with the options that say so) and predictions.json.
        Returns the report's path. The file names start with the photo's name ('image' for an
        array or a PIL image). The Explainer that made it writes them (`Explainer.save`)."""
        if self.explainer is None:
            raise UsageError("this explanation was not made by an Explainer: nothing to save")
        return self.explainer.save(
            [self],
            out,
            render=render,
            overlay_format=overlay_format,
            heatmap=heatmap,
            save_raw=save_raw,
            panel=panel,
            report=report,
        )

    def raw(self, target: TargetRef | int | None = None, layer: str | None = None) -> np.ndarray:
        """The raw map [h, w] (float32, after ReLU) of `target` (default: the first explained,
        the predicted class unless targets were given) at `layer` (default: the first)."""
        index = self._index(target)
        layer = layer or next(name for (i, name) in self.maps if i == index)
        return self.maps[(index, layer)]

    def _index(self, target: TargetRef | int | None) -> int:
        if target is None:
            return self.targets[0].index
        index = target.index if isinstance(target, TargetRef) else int(target)
        if index not in {t.index for t in self.targets}:
            explained = ", ".join(str(t.index) for t in self.targets)
            raise TargetError(
                f"class {index} was not explained for this image (explained: {explained}); "
                "pass targets=[...] to explain()"
            )
        return index

    def _repr_png_(self) -> bytes:
        """Jupyter shows the result as its overlay."""
        buffer = io.BytesIO()
        self.overlay().save(buffer, format="PNG")
        return buffer.getvalue()

    def placed(
        self,
        target: TargetRef | int | None = None,
        layer: str | None = None,
        options: RenderOptions = RenderOptions(),
    ) -> tuple[np.ndarray, np.ndarray]:
        """The normalised map on the photo's pixel grid, and the mask of what the model saw."""
        norm = normalize_map(self.raw(target, layer), options.normalize)
        return place_map(norm, self.image.size, self.crop_box, options.interpolation)

    def pictures(
        self,
        target: TargetRef | int | None = None,
        layer: str | None = None,
        options: RenderOptions = RenderOptions(),
    ) -> tuple[Image.Image, Image.Image]:
        """(overlay on the photo, RGBA heatmap), both at the photo's own size; the map is
        placed once for both."""
        values, inside = self.placed(target, layer, options)
        lut = colormap_lut(options.colormap)
        overlay = overlay_image(self.image, values, inside, lut, options.alpha)
        return self.with_box(overlay, target), heatmap_image(values, inside, lut)

    def overlay(
        self,
        target: TargetRef | int | None = None,
        layer: str | None = None,
        options: RenderOptions = RenderOptions(),
    ) -> Image.Image:
        """The overlay alone (no heatmap is rendered)."""
        values, inside = self.placed(target, layer, options)
        overlay = overlay_image(
            self.image, values, inside, colormap_lut(options.colormap), options.alpha
        )
        return self.with_box(overlay, target)

    def target(self, target: TargetRef | int | None = None) -> TargetRef:
        """The TargetRef explained for `target` (an index, or None: the first)."""
        index = self._index(target)
        return next(t for t in self.targets if t.index == index)

    def with_box(self, overlay: Image.Image, target: TargetRef | int | None) -> Image.Image:
        """A detection's overlay with its box and label drawn; others as they are."""
        found = self.target(target)
        if found.box is None:
            return overlay
        caption = found.label
        if found.probability is not None:
            caption += f" {found.probability:.2f}"
        return draw_box(overlay, found.box, caption)

    def region(self, target: TargetRef | int | None = None) -> np.ndarray | None:
        """Segmentation: the pixels the target's logits were summed over, bool [H, W] on the
        photo (outside what the model saw: False); None for other models."""
        grid = self.regions.get(self._index(target))
        if grid is None:
            return None
        return region_picture(grid, self.image.size, self.crop_box)

    def encoded_overlay(
        self,
        target: TargetRef | int | None = None,
        layer: str | None = None,
        options: RenderOptions = RenderOptions(),
    ) -> Image.Image | None:
        """The overlay already drawn and encoded for these options, to be written as it is (a
        JPEG made on the device: devicerender.DeviceExplanation); None: draw it."""
        return None

    def localize(
        self, target: TargetRef | int | None, mask: np.ndarray, layer: str | None = None
    ) -> Localization:
        """Hit, energy and IoU of this map against a bool mask [H, W] on the photo."""
        return localize(self.raw(target, layer), mask, self.crop_box)

    def guided_picture(
        self,
        target: TargetRef | int | None = None,
        layer: str | None = None,
        options: RenderOptions = RenderOptions(),
    ) -> Image.Image | None:
        """Guided methods: the guided image on the photo (RGBA, grey = zero gradient,
        transparent outside the crop); None for other methods."""
        index = self._index(target)
        layer = layer or next((name for (i, name) in self.guided if i == index), None)
        gradient = self.guided.get((index, layer)) if layer else None
        if gradient is None:
            return None
        return guided_picture(gradient, self.image.size, self.crop_box, options.interpolation)


class Maker(Protocol):
    """What made an explanation, as `ImageExplanation.save` needs it: explainer.Explainer."""

    def save(
        self,
        explanations: Sequence[ImageExplanation],
        out: str | os.PathLike,
        *,
        render: RenderOptions = ...,
        overlay_format: str = ...,
        heatmap: bool = ...,
        save_raw: bool = ...,
        panel: bool = ...,
        report: bool = ...,
    ) -> Path: ...
