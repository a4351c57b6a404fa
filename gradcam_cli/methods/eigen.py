"""Principal components of the activations (or of g ⊙ A): Eigen-CAM and its kin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import CamMethod, LayerView, MethodOption, register_method
from .projection import first_principal_component, kernel_principal_component

if TYPE_CHECKING:
    from torch import Tensor


@register_method
class EigenCAM(CamMethod):
    """Muhammad & Yeasin 2020: the activations' first principal component (class-agnostic)."""

    name = "eigencam"
    paper = "Muhammad & Yeasin 2020"
    summary = "Eigen-CAM: first principal component of A (no gradients, same for every class)"
    formula = "ReLU(PC1(A))"
    needs_gradients = False
    projects = True

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.activations.float()


@register_method
class EigenGradCAM(CamMethod):
    """Eigen-CAM on gradient ⊙ activation: class-specific."""

    name = "eigengradcam"
    paper = "pytorch-grad-cam's variant"
    summary = "Eigen-Grad-CAM: first principal component of g ⊙ A"
    formula = "ReLU(PC1(g ⊙ A))"
    projects = True

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.gradients[rank].float() * view.activations.float()


@register_method
class SegEigenCAM(CamMethod):
    """Chung & Ying 2025, for segmentation models (pytorch-grad-cam's SegEigenCAM): the first
    principal component of |g| ⊙ A, its sign chosen so that the larger extreme is positive."""

    name = "seg-eigencam"
    paper = "Chung & Ying 2025"
    summary = "Seg-Eigen-CAM: first principal component of |g| ⊙ A, larger extreme positive"
    formula = "ReLU(±PC1(|g| ⊙ A)), the sign that makes max ≥ |min|"
    supports_eigen_smooth = False  # it always projects, with a sign rule of its own

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.gradients[rank].float().abs() * view.activations.float()

    def combine(self, view: LayerView, contributions: Tensor) -> Tensor:
        import torch

        projection = first_principal_component(contributions)  # [B, h, w]
        low = projection.flatten(1).amin(dim=1).abs()
        high = projection.flatten(1).amax(dim=1).abs()
        sign = torch.where(low > high, -1.0, 1.0)[:, None, None]  # the paper's Eq. 13
        return (projection * sign).clamp(min=0)


KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


@register_method
class KPCACAM(CamMethod):
    """Karmani et al. 2024, KPCA-CAM (pytorch-grad-cam's KPCA_CAM): Eigen-CAM with kernel PCA,
    scikit-learn's definition (kernel centred, first component scaled by √λ, the sign that
    makes the largest value positive), computed here with torch. No gradients."""

    name = "kpcacam"
    paper = "Karmani et al. 2024"
    summary = "KPCA-CAM: first kernel principal component of A (no gradients, any class)"
    formula = "ReLU(KPC1(A)), kernel sigmoid: tanh(γ a·b + 1), γ = 1/C"
    needs_gradients = False
    supports_eigen_smooth = False  # it is a projection already
    options = (
        MethodOption("kernel", "sigmoid", "kpcacam: the kernel", choices=KERNELS),
        MethodOption("kernel_gamma", None, "kpcacam: the kernel's γ (default 1 / channels)"),
    )

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.activations.float()

    def combine(self, view: LayerView, contributions: Tensor) -> Tensor:
        kernel, gamma = str(self.settings["kernel"]), self.settings["kernel_gamma"]
        return kernel_principal_component(contributions, kernel, gamma).clamp(min=0)
