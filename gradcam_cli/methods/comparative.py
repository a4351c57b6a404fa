"""Comparative objectives: explain a class against the classes the model almost chose instead.

Finer-CAM changes what the gradient is taken of, not how a map is made from it: its base is
Grad-CAM (pytorch-grad-cam's and torchcam's default base), on s = y_c − α · (the similar classes'
scores). s is a function of the scores, so the backward still runs through the head only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UsageError
from .base import MethodOption, refuse_comparing_classes, register_method
from .gradient import GradCAM

if TYPE_CHECKING:
    from torch import Tensor

WEIGHTINGS = ("softmax", "mean")


@register_method
class FinerCAM(GradCAM):
    """Zhang et al. 2025, Finer-CAM (CVPR): Grad-CAM of the target's score minus α times the
    scores of the n classes whose scores are nearest the target's (ranks 1…n by |y_d − y_c|,
    the target excluded). `softmax` (the authors' weighted target, as pytorch-grad-cam 1.5.7
    ships it): s = Σ_d p_d (y_c − α y_d) / Σ_d p_d with p = softmax(y), p differentiated with
    the rest; `mean` (torchcam 0.5, and the authors' default target): s = y_c − α · mean_d y_d.
    Features shared with the similar classes cancel; those that tell the target apart remain."""

    name = "finercam"
    paper = "Zhang et al. 2025"
    summary = "Finer-CAM: Grad-CAM of the target's score minus α · its nearest classes' scores"
    formula = (
        "Grad-CAM of s = Σ_d p_d (y_c − α y_d) / Σ_d p_d, d: the n classes scored nearest y_c, "
        "p = softmax(y); α = 1, n = 3"
    )
    options = (
        MethodOption(
            "comparison_strength",
            1.0,
            "finercam: α, how much of the similar classes' scores is taken away",
        ),
        MethodOption(
            "comparisons",
            3,
            "finercam: how many similar classes (those scored nearest the target), 1 or more",
            integer=True,
        ),
        MethodOption(
            "comparison_weights",
            "softmax",
            "finercam: how the similar classes are weighed (softmax: pytorch-grad-cam's; "
            "mean: torchcam's)",
            choices=WEIGHTINGS,
        ),
    )

    def __init__(self, **settings: object):
        super().__init__(**settings)
        self.alpha = float(self.settings["comparison_strength"])  # type: ignore[arg-type]  # checked
        self.comparisons = int(self.settings["comparisons"])  # type: ignore[call-overload]
        if self.comparisons < 1:
            raise UsageError("comparisons= must be 1 or more for method='finercam', got 0")

    def check_task(self, task: str) -> None:
        refuse_comparing_classes(self, task)

    def objective(self, scores: Tensor, targets: Tensor, rank: int) -> Tensor:
        target = targets[:, rank : rank + 1]
        similar = nearest_classes(scores.detach(), target, self.comparisons)
        differences = scores.gather(1, target) - self.alpha * scores.gather(1, similar)  # [B, n]
        if self.settings["comparison_weights"] == "mean":
            return differences.mean(dim=1)
        weights = scores.softmax(dim=1).gather(1, similar)
        return (weights * differences).sum(dim=1) / (weights.sum(dim=1) + 1e-9)


def nearest_classes(scores: Tensor, target: Tensor, n: int) -> Tensor:
    """The n classes [B, n] whose scores are nearest the target's [B, 1], nearest first, the
    target itself excluded; fewer where the model has fewer other classes."""
    import torch

    distance = (scores - scores.gather(1, target)).abs()
    distance = distance.scatter(1, target, torch.inf)
    count = min(n, scores.shape[1] - 1)
    return distance.topk(count, dim=1, largest=False, sorted=True).indices
