"""SESS: a base method's maps of sliding windows over rescaled copies of the image, fused."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError
from .base import CamMethod, LayerView, MethodOption, get_method, register_method
from .scaling import unit_range

if TYPE_CHECKING:
    from torch import Tensor

# Patches per forward (and base method's backward), as pytorch-grad-cam batches them.
PATCH_CHUNK = 32
# The base methods SESS runs per patch: each costs one forward and a head-only backward (or no
# backward), so that SESS's cost note holds.
BASE_METHODS = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "gradcam-elementwise",
    "eigencam",
    "eigengradcam",
)
# The fused map's smoothing: the paper's and pytorch-grad-cam's 11×11 Gaussian, σ = 5.
BLUR_SIZE, BLUR_SIGMA = 11, 5.0


@register_method
class SESS(CamMethod):
    """Guo et al. 2023 (SESS: Saliency Enhancing with Scaling and Sliding): the image resized
    to several scales (its shorter side: the window, then larger by `scale_step` windows each),
    a window of the input's shorter side slid over each (windows at the far border moved back
    inside), the base method's map of every patch (its own target: the image's), upsampled to
    the window and min-max scaled, weighted by the patch's probability of the target over the
    highest kept one (the `keep_patches` highest-scoring patches are kept), laid back where the
    patch came from, fused (the mean over the patches whose map is positive there, or the max),
    then blurred (Gaussian, 11×11, σ = 5). At input resolution, like pytorch-grad-cam's SESS.
    The probability is the report's: the softmax of the logits, or the model's own output where
    it ends in a softmax (pytorch-grad-cam would apply a second one).

    Each patch costs one forward and the base method's head-only backward, batched: with the
    defaults (12 scales, side-by-side windows) 122 patches for a 224² image.
    """

    name = "sess"
    paper = "Guo et al. 2023"
    summary = (
        "SESS: a base method (Grad-CAM) over sliding windows of the image at several scales, "
        "fused (patches × forward + head-only backward)"
    )
    formula = (
        "blur(mean or max over patches p of up(w_p · minmax(up(base map of p)))), "
        "w_p = prob_y(p) / max_p prob_y(p); at input resolution"
    )
    needs_gradients = False
    explains_other_images = True
    options = (
        MethodOption("scales", 12, "sess: how many scales the image is resized to", integer=True),
        MethodOption(
            "scale_step",
            2 / 7,
            "sess: each scale's shorter side is this many windows larger than the last",
        ),
        MethodOption(
            "window_stride",
            1.0,
            "sess: the sliding window's stride, in windows (1: side by side)",
            maximum=1.0,
        ),
        MethodOption(
            "keep_patches",
            1.0,
            "sess: the share of the patches, highest probability of the target first, fused",
            maximum=1.0,
        ),
        MethodOption("fusion", "mean", "sess: how the patches' maps are fused", ("mean", "max")),
        MethodOption("base_method", "gradcam", "sess: the method run on each patch", BASE_METHODS),
    )

    def __init__(self, **settings: object):
        super().__init__(**settings)
        if self._number("scales") < 1:
            raise UsageError(f"scales= must be 1 or more, got {self.settings['scales']}")

    def check_task(self, task: str) -> None:
        if task != "classification":
            raise UsageError(
                f"method='sess' explains patches of the image, where only a classifier's "
                f"classes still mean the same (a detection or a region does not carry over); "
                f"task='{task}' needs another method"
            )

    def _number(self, key: str) -> float:
        return float(self.settings[key])  # type: ignore[arg-type]  # a checked number

    def maps(self, view: LayerView) -> Tensor:
        import torch

        assert view.explain_images is not None, "the engine hands it (explains_other_images)"
        images = view.images
        size = (images.shape[2], images.shape[3])
        grid = patch_grid(
            size,
            scales=int(self._number("scales")),
            scale_step=self._number("scale_step"),
            window_stride=self._number("window_stride"),
        )
        base = get_method(str(self.settings["base_method"]))
        maps, probabilities = [], []
        for scale in grid.scales:  # one resized copy of the batch at a time
            patch_maps, patch_probabilities = _explain_patches(view, base, grid, scale)
            maps.append(patch_maps)
            probabilities.append(patch_probabilities)
        weights = _patch_weights(torch.cat(probabilities, 1), self._number("keep_patches"))
        fused = _fuse(grid, maps, weights, str(self.settings["fusion"]), size)
        return gaussian_blur(fused).clamp(min=0)


@dataclass(frozen=True)
class Scale:
    """One resized copy of the image: its size and the windows' top-left corners in it."""

    size: tuple[int, int]  # (height, width)
    corners: tuple[tuple[int, int], ...]  # (y, x)


@dataclass(frozen=True)
class PatchGrid:
    window: int
    scales: tuple[Scale, ...]

    @property
    def patches(self) -> int:
        return sum(len(scale.corners) for scale in self.scales)


def patch_grid(
    size: tuple[int, int], *, scales: int, scale_step: float, window_stride: float
) -> PatchGrid:
    """The windows (the input's shorter side) over the image resized so that its shorter side
    is window + i · round(scale_step · window), i < scales; its longer side keeps the aspect
    (truncated, as torchvision's resize). Stride: round(window_stride · window), at least 1."""
    height, width = size
    window = min(height, width)
    step = round(window * scale_step)
    stride = max(1, round(window * window_stride))
    resized = []
    for i in range(scales):
        short = window + step * i
        long = int(short * max(height, width) / window)
        h, w = (short, long) if height <= width else (long, short)
        corners = tuple(
            (y, x)
            for y in window_starts(h, window, stride)
            for x in window_starts(w, window, stride)
        )
        resized.append(Scale((h, w), corners))
    return PatchGrid(window, tuple(resized))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Every stride from 0 while the window fits; the last window ends at the border."""
    starts = []
    for start in range(0, length, stride):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def _explain_patches(
    view: LayerView, base: CamMethod, grid: PatchGrid, scale: Scale
) -> tuple[Tensor, Tensor]:
    """The base method's maps [B, n, K, h, w] of the scale's n patches per image, and each
    patch's probabilities of the image's targets [B, n, K]."""
    import torch
    import torch.nn.functional as F

    assert view.explain_images is not None
    images, targets = view.images, view.targets
    batch, window = images.shape[0], grid.window
    shrinking = scale.size[0] < images.shape[2]
    resized = F.interpolate(
        images, size=scale.size, mode="bilinear", align_corners=False, antialias=shrinking
    )
    # (image, corner) pairs, image by image; a chunk's patches are cut when it runs, so that
    # memory holds one chunk of patches, not the scale's.
    pairs = [(b, y, x) for b in range(batch) for y, x in scale.corners]
    maps, probabilities = [], []
    for start in range(0, len(pairs), PATCH_CHUNK):
        chunk = pairs[start : start + PATCH_CHUNK]
        patches = torch.stack([resized[b, :, y : y + window, x : x + window] for b, y, x in chunk])
        rows = targets[torch.tensor([b for b, _, _ in chunk], device=targets.device)]
        patch_maps, patch_probabilities = view.explain_images(base, patches, rows)
        maps.append(patch_maps.float())
        probabilities.append(patch_probabilities.float().gather(1, rows))
    n = len(scale.corners)
    return (
        torch.cat(maps).unflatten(0, (batch, n)),
        torch.cat(probabilities).unflatten(0, (batch, n)),
    )


def _patch_weights(probabilities: Tensor, keep: float) -> Tensor:
    """[B, P, K] probabilities → weights: each over the highest, the lowest-scoring patches
    beyond the `keep` share set to 0 (all kept patches at 0: weight 1 each)."""
    import torch

    scores = probabilities.clamp(min=0)
    patches = scores.shape[1]
    kept = max(1, math.ceil(patches * keep - 1e-9))
    order = scores.argsort(dim=1, stable=True)  # ascending: the first P − kept are dropped
    keep_mask = torch.ones_like(scores, dtype=torch.bool)
    keep_mask.scatter_(1, order[:, : patches - kept], False)
    highest = scores.amax(dim=1, keepdim=True)
    weights = torch.where(highest > 0, scores / highest.clamp(min=1e-30), torch.ones_like(scores))
    return torch.where(keep_mask, weights, torch.zeros_like(weights))


def _fuse(
    grid: PatchGrid,
    maps: list[Tensor],
    weights: Tensor,
    fusion: str,
    size: tuple[int, int],
) -> Tensor:
    """[B, K, H, W]: every weighted patch map laid back into its scale's frame, that frame
    resized to the image's, fused pixel by pixel (the mean of the positive values, or the
    max)."""
    import torch
    import torch.nn.functional as F

    batch, _, ranks = weights.shape
    window = grid.window
    total = torch.zeros(batch, ranks, *size, device=weights.device)
    counts = torch.zeros_like(total)
    index = 0
    for scale, patch_maps in zip(grid.scales, maps, strict=True):
        for n, (y, x) in enumerate(scale.corners):
            patch = unit_range(
                F.interpolate(
                    patch_maps[:, n], size=(window, window), mode="bilinear", align_corners=False
                )
            )
            canvas = torch.zeros(batch, ranks, *scale.size, device=weights.device)
            canvas[:, :, y : y + window, x : x + window] = patch * weights[:, index, :, None, None]
            laid = F.interpolate(canvas, size=size, mode="bilinear", align_corners=False)
            if fusion == "max":
                total = torch.maximum(total, laid)
            else:
                positive = laid > 0
                total += torch.where(positive, laid, 0.0)
                counts += positive
            index += 1
    if fusion == "max":
        return total
    return torch.where(counts > 0, total / counts.clamp(min=1), 0.0)


def gaussian_blur(maps: Tensor) -> Tensor:
    """[B, K, H, W] blurred with the separable 11×11 Gaussian (σ = 5), mirrored at the border
    without repeating the edge pixel (OpenCV's default, BORDER_REFLECT_101)."""
    import torch
    import torch.nn.functional as F

    radius = BLUR_SIZE // 2
    offsets = torch.arange(BLUR_SIZE, dtype=torch.float64) - radius
    kernel = torch.exp(-(offsets**2) / (2 * BLUR_SIGMA**2))
    kernel = (kernel / kernel.sum()).to(maps)
    batch, ranks, height, width = maps.shape
    flat = maps.reshape(batch * ranks, 1, height, width)
    # A side shorter than the radius + 1 cannot be mirrored: repeat its edge instead.
    mode = "reflect" if min(height, width) > radius else "replicate"
    flat = F.pad(flat, (radius, radius, radius, radius), mode=mode)
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(batch, ranks, height, width)
