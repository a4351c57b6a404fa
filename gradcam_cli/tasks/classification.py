"""Image classifiers: a target is one class's score (the logit, or the model's probability)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TargetError
from ..logits import class_probabilities, class_scores, extract_logits
from .base import Scoring, TargetRequest, Task

__all__ = ["ClassificationTask", "choose_classes"]


def choose_classes(scores: torch.Tensor, classes: tuple[int, ...], topk: int) -> torch.Tensor:
    """[B, K]: the given class indices for every image, else each image's top-k."""
    num_classes = scores.shape[1]
    if classes:
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise TargetError(
                f"class index {bad[0]} is out of range: the model has "
                f"{num_classes} classes (0–{num_classes - 1})"
            )
        wanted = torch.as_tensor(list(classes), device=scores.device)
        return wanted.unsqueeze(0).expand(scores.shape[0], -1)
    return scores.topk(min(topk, num_classes), dim=1).indices


class _ClassScoring(Scoring):
    def __init__(self, request: TargetRequest, outputs_probabilities: bool):
        self.request, self.outputs_probabilities = request, outputs_probabilities
        self.logits: torch.Tensor | None = None

    def bind(self, output: object) -> torch.Tensor:
        logits = extract_logits(output)
        self.logits = logits.detach()
        return class_scores(logits, self.outputs_probabilities)

    def scores(self, output: object, rows: torch.Tensor) -> torch.Tensor:
        return class_scores(extract_logits(output), self.outputs_probabilities)

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        return choose_classes(scores, self.request.classes, self.request.topk)

    def probabilities(self) -> torch.Tensor:
        assert self.logits is not None, "bind() first"
        return class_probabilities(self.logits, self.outputs_probabilities)


class ClassificationTask(Task):
    name = "classification"

    def scoring(self, request: TargetRequest, outputs_probabilities: bool) -> Scoring:
        return _ClassScoring(request, outputs_probabilities)

    def probe_output(
        self, model: nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        return extract_logits(model(x)), None
