"""Maps scaled to [0, 1], each on its own: what several methods do to maps before they add,
multiply or mask with them (FullGrad, SESS, RefineCAM, Score-CAM's masks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


def unit_range(maps: Tensor, eps: float = 1e-7) -> Tensor:
    """Each map (the last two dimensions) minus its minimum, over its range plus `eps`: a
    constant map becomes 0. pytorch-grad-cam's `scale_cam_image` takes eps 1e-7; torchcam, and
    pytorch-grad-cam's Score-CAM masks and RefineCAM, 1e-8."""
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + eps)
