"""Second-order weights: the gradient corrected by a Hessian-vector product.

The engine differentiates the head's backward graph once more (create_graph on the head only)
for methods that say `second_order`; every other method pays nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import CamMethod, LayerView, MethodOption, refuse_comparing_classes, register_method

if TYPE_CHECKING:
    from torch import Tensor

OBJECTIVES = ("logit", "rest")


@register_method
class ShapleyCAM(CamMethod):
    """Cai et al. 2025, ShapleyCAM (pytorch-grad-cam's ShapleyCAM): channel weights from a
    second-order approximation of each channel's Shapley value, w_k = mean_ij (g − ½ H·A)_kij,
    H = ∂²s/∂A². `logit` (pytorch-grad-cam's default target): s = y_c — on a head that is
    piecewise linear in A (ReLU, pooling, linear, eval-mode batch norm) H = 0 and the map is
    Grad-CAM's; `rest` (the paper's ReST, pytorch-grad-cam's ClassifierOutputReST):
    s = y_c − CE(y, c) = 2 y_c − logsumexp(y), whose Hessian is not zero there."""

    name = "shapleycam"
    paper = "Cai et al. 2025"
    summary = "ShapleyCAM: weights from the gradient and a Hessian-vector product"
    formula = "ReLU(Σ_k w_k A_k), w_k = mean_ij (g − ½ H·A)_kij, H = ∂²y/∂A² (or ReST's)"
    second_order = True
    options = (
        MethodOption(
            "objective",
            "logit",
            "shapleycam: the score differentiated (logit: y_c, pytorch-grad-cam's default; "
            "rest: 2 y_c − logsumexp(y), the paper's ReST)",
            choices=OBJECTIVES,
        ),
    )

    def check_task(self, task: str) -> None:
        if self.settings["objective"] == "rest":  # the logit alone means the same for any task
            refuse_comparing_classes(self, task)

    def objective(self, scores: Tensor, targets: Tensor, rank: int) -> Tensor:
        score = super().objective(scores, targets, rank)
        if self.settings["objective"] == "rest":
            return 2 * score - scores.logsumexp(dim=1)
        return score

    def weights(self, view: LayerView, rank: int) -> Tensor:
        corrected = view.gradients[rank].float() - 0.5 * view.hessian_products[rank].float()
        return corrected.mean(dim=(2, 3))
