"""Several layers' maps made into one.

The engine explains every layer given in one pass (the earliest is where the graph starts, so
one backward through the model after it gives every layer's gradient); a method that
`combines_layers` then turns the maps by layer into one map, reported under the layers' names
joined by '+' (`layer2+layer3+layer4`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import register_method
from .gradient import GradCAMPlusPlus
from .scaling import unit_range

if TYPE_CHECKING:
    from torch import Tensor


@register_method
class RefineCAM(GradCAMPlusPlus):
    """RefineCAM (arXiv 2605.14641, pytorch-grad-cam's and torchcam's RefineCAM): each layer's
    Grad-CAM++ map scaled to [0, 1], upsampled (bilinear) to the largest of the maps, and the
    maps multiplied: a position stays where every layer agrees, which denoises the early
    layers' fine maps with the late layers' class evidence. Needs two layers or more."""

    name = "refinecam"
    paper = "arXiv 2605.14641 (2026)"
    summary = "RefineCAM: the product of several layers' Grad-CAM++ maps, each scaled to [0, 1]"
    formula = "Π_layers up(minmax(Grad-CAM++ map)), up: bilinear to the largest layer's map"
    combines_layers = True

    def combine_layers(self, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"+".join(maps): multiplied(list(maps.values()))}


def multiplied(maps: list[Tensor], size: tuple[int, int] | None = None) -> Tensor:
    """The product of maps [B, K, h_i, w_i], each min-max scaled per image and target and
    upsampled bilinearly (half-pixel centres) to `size` (default: the largest h and w)."""
    import torch.nn.functional as F

    size = size or (max(m.shape[2] for m in maps), max(m.shape[3] for m in maps))
    batch, targets = maps[0].shape[:2]
    product = maps[0].new_ones((batch, targets, *size), dtype=maps[0].dtype).float()
    if targets == 0:  # nothing to explain in this batch (a detector that kept no detection)
        return product
    for one in maps:
        scaled = unit_range(one.float(), eps=1e-8)  # as the peers
        if tuple(scaled.shape[2:]) != size:
            scaled = F.interpolate(scaled, size=size, mode="bilinear", align_corners=False)
        product = product * scaled
    return product
