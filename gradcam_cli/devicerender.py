"""JPEG overlays drawn and encoded on the device, for photos decoded there (devicedecode).

On a GPU the writer threads, not the model, bound a run: drawing an overlay at the photo's size
takes ~10 ms of CPU. When a run writes JPEG overlays (`--format jpg`) of photos already on the
device, `encode_overlays` places each map on the photo there, colours it through the colormap's
lookup table, blends it and encodes the batch with `torchvision.io.encode_jpeg` (nvjpeg on
CUDA): the writers only write bytes. The formula is `render.overlay_image`'s, in the same
float32 steps; the map is placed with `render.place_map`'s own resampling weights.

The overlays travel as `DeviceExplanation`s, which answer `overlay()` (and the overlay of
`pictures()`) with the encoded JPEG (`files.EncodedJpeg`) for the options they were drawn with,
and draw anything else on the CPU as any explanation does. Panels are drawn from the exact
pixels, so with `--panel` everything stays on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from .explanation import ImageExplanation, RenderOptions
from .files import JPEG_QUALITY, EncodedJpeg
from .render import _axis_weights, check_alpha, colormap_lut, heatmap_image, normalize_map

__all__ = ["DeviceExplanation", "encode_overlays", "overlay_pixels"]

OUTSIDE_DIM = 0.5  # render.overlay_image's default: what lies outside the crop, dimmed

_Key = tuple[int, str, RenderOptions]  # (class index, layer, options)


@dataclass(frozen=True)
class DeviceExplanation(ImageExplanation):
    """An explanation whose JPEG overlays were drawn and encoded on the device."""

    encoded: dict[_Key, EncodedJpeg] = field(default_factory=dict, repr=False, compare=False)

    def overlay(self, target=None, layer=None, options: RenderOptions = RenderOptions()):
        found = self.encoded_overlay(target, layer, options)
        return found if found is not None else super().overlay(target, layer, options)

    def pictures(self, target=None, layer=None, options: RenderOptions = RenderOptions()):
        found = self.encoded_overlay(target, layer, options)
        if found is None:
            return super().pictures(target, layer, options)
        values, inside = self.placed(target, layer, options)
        return found, heatmap_image(values, inside, colormap_lut(options.colormap))

    def encoded_overlay(
        self, target=None, layer=None, options: RenderOptions = RenderOptions()
    ) -> EncodedJpeg | None:
        index = self._index(target)
        layer = layer or next(name for (i, name) in self.maps if i == index)
        return self.encoded.get((index, layer, options))


def encode_overlays(
    decoded: Sequence, explained: list, options
) -> list[ImageExplanation | DeviceExplanation | str]:
    """The batch runner's outcomes, with the explanations of photos decoded on the device
    turned into DeviceExplanations when the run writes JPEG overlays (`options`: RunOptions).

    `decoded` are the batch's `pipeline.Decoded`s, `explained` the outcomes of its readable
    ones, in order. A failure on the device (out of memory) leaves the overlays to the CPU.
    """
    if options.overlay_format != "jpg" or options.panel:
        return explained
    readable = [d for d in decoded if d.error is None]
    chosen = [
        (i, d.pixels)
        for i, (d, outcome) in enumerate(zip(readable, explained, strict=True))
        if d.pixels is not None and isinstance(outcome, ImageExplanation)
    ]
    if not chosen:
        return explained
    try:
        with torch.no_grad():
            jobs = [(explained[i], pixels) for i, pixels in chosen]
            encoded = _encode_batch(jobs, options.render)
    except RuntimeError:  # CUDA out of memory, an encoder failure: drawn on the CPU instead
        return explained
    done = list(explained)
    for (i, _), overlays in zip(chosen, encoded, strict=True):
        base = explained[i]
        done[i] = DeviceExplanation(
            **{f.name: getattr(base, f.name) for f in fields(ImageExplanation)}, encoded=overlays
        )
    return done


def _encode_batch(
    jobs: list[tuple[ImageExplanation, torch.Tensor]], render: RenderOptions
) -> list[dict[_Key, EncodedJpeg]]:
    """Each explanation's overlays, one per (class, layer), encoded in one call."""
    from torchvision.io import encode_jpeg

    lut = torch.from_numpy(np.array(colormap_lut(render.colormap)))
    keys: list[list[_Key]] = []
    pictures = []
    for explanation, pixels in jobs:
        keys.append([(index, layer, render) for index, layer in explanation.maps])
        for index, layer in explanation.maps:
            pictures.append(overlay_pixels(explanation, index, layer, pixels, lut, render))
    data = iter(encode_jpeg(pictures, quality=JPEG_QUALITY))
    return [{key: EncodedJpeg(next(data).cpu().numpy().tobytes()) for key in ks} for ks in keys]


def overlay_pixels(
    explanation: ImageExplanation,
    index: int,
    layer: str,
    pixels: torch.Tensor,
    lut: torch.Tensor,
    render: RenderOptions,
) -> torch.Tensor:
    """`render.overlay_image` of one map on the photo `pixels` (uint8 [3, H, W] on the device):
    the overlay as uint8 [3, H, W] there. `lut`: the colormap, uint8 [256, 3]."""
    alpha = check_alpha(render.alpha)
    device = pixels.device
    height, width = pixels.shape[1:]
    norm = normalize_map(explanation.maps[(index, layer)], render.normalize)
    x0, y0, x1, y1 = (float(v) for v in explanation.crop_box)
    rows, inside_y = _axis_weights(height, norm.shape[0], y0, y1, render.interpolation)
    cols, inside_x = _axis_weights(width, norm.shape[1], x0, x1, render.interpolation)
    # render.place_map: [H, h] @ [h, w] @ [w, W], clipped to [0, 1]
    placed = torch.from_numpy(rows).to(device) @ torch.from_numpy(norm).to(device)
    placed = (placed @ torch.from_numpy(cols).to(device).T).clamp_(0.0, 1.0)
    inside = torch.from_numpy(inside_y[:, None] & inside_x[None, :]).to(device)
    # render._lut_index: round(values * 255); then the colours, channels first
    colours = lut.to(device)[(placed * 255.0 + 0.5).to(torch.uint8).long()].permute(2, 0, 1)
    photo = pixels.float()
    mixed = photo * (1.0 - alpha) + colours * alpha
    blended = torch.where(inside, mixed, photo * OUTSIDE_DIM)
    return (blended + 0.5).to(torch.uint8)
