"""What a model's output means and what one explanation is of: the task.

A classifier's target is one class's score. A segmentation model's is one class's logits summed
over a region (the pixels predicted as the class, or a mask given); a detector's is the score of
one of its detections. A task turns the model's raw output into a score matrix [N, T] over
*slots* — T classes, or the T detections of the first forward — so that the engine, every
method and the head-only re-runs see one shape: `scores.gather(1, targets)`.

`Task` is chosen once per explainer; `Scoring` is made for each batch: it watches the first
forward (`watch`), learns from its output what the slots are (`bind`), then scores any later
output against them (`scores`: the head-only re-runs, Score-CAM's masked images, the guided
forward) and picks the targets (`choose`).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["Task", "Scoring", "TargetRequest", "TargetDetails", "no_details"]


@dataclass(frozen=True)
class TargetRequest:
    """What to explain: these class indices, else the top-k; detectors' kept detections score
    at least `min_score`; segmentation's `regions` [B, H, W] (bool, the model-input frame)
    replace the predicted masks."""

    classes: tuple[int, ...] = ()
    topk: int = 1
    min_score: float | None = None
    regions: torch.Tensor | None = None


@dataclass(frozen=True)
class TargetDetails:
    """What a slot is, beyond its score: a detection's class and box (model-input pixels), a
    segmentation class's pixel share, mean probability and region [h, w] (bool, the output's
    grid over the model's input)."""

    class_index: int
    probability: float
    box: tuple[float, float, float, float] | None = None
    pixel_share: float | None = None
    region: Any = None  # np.ndarray [h, w] bool, segmentation only


def no_details(slots: Sequence[int]) -> list[TargetDetails | None]:
    """Slots that are classes and nothing more (a classifier's)."""
    return [None] * len(slots)


class Scoring(ABC):
    """One batch's targets: the slots learned from the first forward, scored on any output."""

    # A slot whose score is always 0: pads a batch whose images have fewer targets than others
    # (segmentation, detection); explanations of it are dropped.
    null_slot: int | None = None

    def watch(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        """Hooks needed while the first forward runs (a detector's own resizing)."""
        return contextlib.nullcontext()

    def frame_size(self) -> tuple[int, int] | None:
        """(H, W) of the tensor the layers saw, when the model resized its input itself."""
        return None

    @abstractmethod
    def bind(self, output: object) -> torch.Tensor:
        """After the first forward: learn the slots from its output; its scores [B, T]."""

    @abstractmethod
    def scores(self, output: object, rows: torch.Tensor) -> torch.Tensor:
        """Scores [N, T] of a later output whose row n belongs to image `rows[n]`."""

    @abstractmethod
    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """The slots to explain, [B, K] (the null slot pads)."""

    @abstractmethod
    def probabilities(self) -> torch.Tensor:
        """[B, T]: what the report calls each slot's probability."""

    def ranking(self) -> torch.Tensor:
        """[B, T]: what the report's predictions are ordered by (a segmentation model's
        classes by their pixel share)."""
        return self.probabilities()

    def frame(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps [B, K, h, w] in the frame of the model's input (a detector's padding cut)."""
        return maps

    def details(self, image: int, slots: Sequence[int]) -> list[TargetDetails | None]:
        """Per slot of image `image`: what it is (None: a class, nothing more to say)."""
        return no_details(slots)


class Task(ABC):
    """How one kind of model is explained."""

    name: ClassVar[str]

    @abstractmethod
    def scoring(self, request: TargetRequest, outputs_probabilities: bool) -> Scoring:
        """A Scoring for one batch."""

    @abstractmethod
    def probe_output(
        self, model: nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """Run the probe image x [1, 3, H, W]: a tensor [1, T, ...] that every layer worth
        explaining feeds, and the (H, W) the layers saw when the model resized x itself."""

    def default_scope(self, model: nn.Module) -> str | None:
        """The module whose layers the automatic choice picks from (None: the whole model)."""
        return None

    def num_classes(self, model: nn.Module, probed: torch.Tensor) -> int:
        """How many classes the model tells apart."""
        return probed.shape[1]
