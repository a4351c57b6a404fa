"""Semantic segmentation: a target is one class's logits summed over a region.

The region is the pixels the model predicts as the class (its argmax), or a mask the user gives
(`--region`), as pytorch-grad-cam's SemanticSegmentationTarget: the map then says what made the
model call those pixels the class. The regions are fixed by the first forward, so every re-run
(Ablation-CAM's head, Score-CAM's masked images) is scored over the same pixels.

A model's output is its per-pixel logits [B, C, H, W]: a tensor, the `out` of torchvision's
dict (its `aux` head is not used), or `.logits` (Hugging Face; their grid may be coarser than
the input: regions are taken on the output's own grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LayerError
from .base import Scoring, TargetDetails, TargetRequest, Task
from .classification import choose_classes

__all__ = ["SegmentationTask", "segmentation_logits"]


def segmentation_logits(output: object) -> torch.Tensor:
    """The per-pixel logits [B, C, H, W] of a segmentation model's output."""
    if isinstance(output, dict) and "out" in output:
        output = output["out"]
    elif not isinstance(output, torch.Tensor) and isinstance(
        getattr(output, "logits", None), torch.Tensor
    ):
        output = output.logits  # type: ignore[attr-defined]  # checked on the line above
    if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[1] >= 2:
        return output
    shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    raise LayerError(
        f"the model returned {shape}, not per-pixel logits [batch, classes, H, W] (or a dict "
        "with 'out'); task segmentation explains semantic segmentation models"
    )


class _SegmentationScoring(Scoring):
    def __init__(self, request: TargetRequest, background: tuple[int, ...]):
        self.request, self.background = request, background
        self.masks: torch.Tensor | None = None  # [B, C, h, w] float 0/1: each class's region
        self.shares: torch.Tensor | None = None  # [B, C]
        self.confidence: torch.Tensor | None = None  # [B, C] mean probability on its pixels

    def bind(self, output: object) -> torch.Tensor:
        logits = segmentation_logits(output).detach()
        batch, classes, h, w = logits.shape
        self.null_slot = classes
        predicted = logits.argmax(dim=1)  # [B, h, w]
        inside = self._inside(batch, (h, w), logits.device)  # [B, h, w] where shares count
        one_hot = F.one_hot(predicted, classes).permute(0, 3, 1, 2).bool() & inside[:, None]
        counts = one_hot.sum(dim=(2, 3)).float()
        self.shares = counts / inside.sum(dim=(1, 2)).clamp(min=1)[:, None].float()
        probabilities = logits.float().softmax(dim=1)
        self.confidence = (probabilities * one_hot).sum(dim=(2, 3)) / counts.clamp(min=1)
        if self.request.regions is not None:
            regions = inside[:, None].expand(-1, classes, -1, -1)  # the given region, any class
        else:
            regions = one_hot
        self.masks = regions.to(logits.dtype)
        return self.scores(output, torch.arange(batch, device=logits.device))

    def _inside(self, batch: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        regions = self.request.regions
        if regions is None:
            return torch.ones(batch, *size, dtype=torch.bool, device=device)
        regions = regions.to(device)
        if tuple(regions.shape[-2:]) != size:  # the input's frame → the output's grid
            regions = F.interpolate(regions[:, None].float(), size=size, mode="nearest")[:, 0]
        return regions.bool().expand(batch, -1, -1)

    def scores(self, output: object, rows: torch.Tensor) -> torch.Tensor:
        assert self.masks is not None, "bind() first"
        logits = segmentation_logits(output)
        masks = self.masks[rows.to(self.masks.device)].to(logits.device, logits.dtype)
        return _with_null_slot((logits * masks).sum(dim=(2, 3)))

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        assert self.shares is not None and self.null_slot is not None
        classes = self.null_slot
        if self.request.classes:  # as a classifier's: checked, the same for every image
            return choose_classes(scores[:, :classes], self.request.classes, 1)
        # The classes covering the most pixels, only those that cover any; the background
        # after every other class present (the only one explained when nothing else is there).
        shares = self.shares.to(scores.device)
        foreground = torch.ones(classes, dtype=torch.bool, device=shares.device)
        foreground[[c for c in self.background if 0 <= c < classes]] = False
        rank = torch.where(shares > 0, shares + foreground.float(), 0.0)
        k = min(self.request.topk, classes)
        top = rank.topk(k, dim=1)
        chosen = torch.where(top.values > 0, top.indices, torch.full_like(top.indices, classes))
        kept = int((top.values > 0).sum(dim=1).max())
        return chosen[:, : max(kept, 1)]

    def probabilities(self) -> torch.Tensor:
        assert self.confidence is not None
        return _with_null_slot(self.confidence)

    def ranking(self) -> torch.Tensor:
        assert self.shares is not None
        return _with_null_slot(self.shares)

    def details(self, image: int, slots: Sequence[int]) -> list[TargetDetails | None]:
        assert self.masks is not None and self.shares is not None and self.confidence is not None
        found: list[TargetDetails | None] = []
        for slot in slots:
            if slot == self.null_slot:
                found.append(None)
                continue
            found.append(
                TargetDetails(
                    class_index=slot,
                    probability=float(self.confidence[image, slot]),
                    pixel_share=float(self.shares[image, slot]),
                    region=self.masks[image, slot].bool().cpu().numpy(),
                )
            )
        return found


def _with_null_slot(per_class: torch.Tensor) -> torch.Tensor:
    """[B, C] → [B, C + 1]: the null slot's column, always 0, appended."""
    return torch.cat([per_class, per_class.new_zeros(per_class.shape[0], 1)], dim=1)


class SegmentationTask(Task):
    """`background`: the classes top-k explains only after every other class present (a
    "background" class: what a user asks about is what is in front of it)."""

    name = "segmentation"

    def __init__(self, background: tuple[int, ...] = ()):
        self.background = background

    def scoring(self, request: TargetRequest, outputs_probabilities: bool) -> Scoring:
        return _SegmentationScoring(request, self.background)

    def probe_output(
        self, model: nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        return segmentation_logits(model(x)), None

    def default_scope(self, model: nn.Module) -> str | None:
        """torchvision's fcn/deeplabv3/lraspp: the backbone's last stage (`backbone.layer4`),
        as for a classifier; the head's last conv would only repeat the logits."""
        return "backbone" if isinstance(getattr(model, "backbone", None), nn.Module) else None
