"""Guided backpropagation and Guided Grad-CAM: a full backward to the pixels (engine, guided.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import CamMethod, LayerView, register_method
from .gradient import GradCAM

if TYPE_CHECKING:
    from torch import Tensor


@register_method
class GuidedBackprop(CamMethod):
    """Springenberg et al. 2015: ∂y/∂x with every ReLU passing only positive gradients back.

    The map is the gradient's magnitude per pixel (max over RGB), at input resolution; the
    signed RGB gradient is the guided image. Neither depends on the layer.
    """

    name = "guided-backprop"
    paper = "Springenberg et al. 2015"
    summary = "guided backpropagation: ∂y/∂x through ReLUs that pass positive gradients only"
    formula = "image: guided ∂y/∂x; map: max_RGB abs(guided ∂y/∂x), at input resolution"
    needs_gradients = False
    guided = True
    guided_layer_free = True
    supports_eigen_smooth = False

    def maps(self, view: LayerView) -> Tensor:
        import torch

        return torch.stack([g.float().abs().amax(dim=1) for g in view.guided_gradients], 1)

    def guided_images(self, guided_gradients: list[Tensor], maps: Tensor) -> Tensor:
        import torch

        return torch.stack([g.float() for g in guided_gradients], dim=1)


@register_method
class GuidedGradCAM(GradCAM):
    """Selvaraju et al. 2017: guided backpropagation times the upsampled Grad-CAM map."""

    name = "guided-gradcam"
    paper = "Selvaraju et al. 2017"
    summary = "Guided Grad-CAM: guided backpropagation ⊙ bilinearly upsampled Grad-CAM"
    formula = "image: guided ∂y/∂x ⊙ up(Grad-CAM); map: Grad-CAM"
    guided = True

    def guided_images(self, guided_gradients: list[Tensor], maps: Tensor) -> Tensor:
        import torch
        import torch.nn.functional as F

        size = tuple(guided_gradients[0].shape[2:])
        upsampled = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)
        gradients = torch.stack([g.float() for g in guided_gradients], dim=1)  # [B, K, 3, H, W]
        return gradients * upsampled[:, :, None]
