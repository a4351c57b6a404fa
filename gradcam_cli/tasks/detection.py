"""Object detection: a target is the score of one detection.

The slots are the detections of the first forward, in the model's order (by score). Any later
output (a head-only re-run, Score-CAM's masked images, the guided forward) is scored against
them: the detection of the same class whose box overlaps the slot's most, with IoU ≥
MATCH_IOU, gives its score, none gives 0. In the first forward every detection matches itself
(IoU 1; non-maximum suppression leaves no same-class twin), so the gradient is that of the
detection's own score. Unlike pytorch-grad-cam's FasterRCNNBoxScoreTarget, the IoU is not added
to the target: the map explains the class score, not where the box was drawn.

What a detection's score is, per torchvision family: Faster/Mask R-CNN, the softmax over
classes of the box head's logits for the region (RoIAlign of the FPN levels at the proposal);
RetinaNet, the sigmoid of its class logit at one anchor; FCOS, √(sigmoid(class) ·
sigmoid(centerness)) at one location; SSD, the softmax over classes at one default box. The
proposals and anchors themselves are fixed: torchvision detaches the RPN's boxes, so no gradient
flows through where a region was proposed.

A detector resizes and pads its input itself (torchvision's GeneralizedRCNNTransform): the
layers see a padded tensor of another size. The transform's output is watched, and the maps are
cut to the photo's part of it (`frame`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..errors import LayerError, UsageError
from ..modelstate import removing
from .base import Scoring, TargetDetails, TargetRequest, Task

__all__ = ["DetectionTask", "MATCH_IOU", "detections_of", "check_min_score"]

MATCH_IOU = 0.5  # a re-run's detection stands for a slot when it overlaps it at least this much


def check_min_score(min_score: float | None) -> None:
    """min_score= is a detection score: 0 to 1 (None: every detection the model kept)."""
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise UsageError(f"min_score= is a detection score, 0 to 1; got {min_score}")


def detections_of(output: object) -> list[dict[str, torch.Tensor]]:
    """Per image {boxes [D, 4] (x0, y0, x1, y1), labels [D], scores [D]} of a detector's output:
    torchvision's list of dicts (a scripted model's (losses, detections) too)."""
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], list):
        output = output[1]
    if isinstance(output, list) and all(
        isinstance(d, dict) and {"boxes", "labels", "scores"} <= d.keys() for d in output
    ):
        return output
    raise LayerError(
        f"the model returned {type(output).__name__}, not detections (a list of dicts with "
        "boxes, labels and scores, as torchvision's detectors return); task detection "
        "explains object detectors"
    )


class _DetectionScoring(Scoring):
    def __init__(self, request: TargetRequest):
        self.request = request
        self.reference: list[dict[str, torch.Tensor]] = []  # detached, per image
        self.padded: tuple[int, int] | None = None  # (H, W) the layers saw
        self.sizes: list[tuple[int, int]] = []  # per image, the part of it that is the photo

    @contextlib.contextmanager
    def watch(self, model: nn.Module) -> Iterator[None]:
        transform = getattr(model, "transform", None)
        if not isinstance(transform, nn.Module):
            yield
            return
        with removing([transform.register_forward_hook(self._seen)]):
            yield

    def _seen(self, module: nn.Module, args: object, output: object) -> None:
        images = output[0] if isinstance(output, tuple) and output else output
        tensors, sizes = getattr(images, "tensors", None), getattr(images, "image_sizes", None)
        if isinstance(tensors, torch.Tensor) and sizes is not None:
            self.padded = (int(tensors.shape[-2]), int(tensors.shape[-1]))
            self.sizes = [(int(h), int(w)) for h, w in sizes]

    def frame_size(self) -> tuple[int, int] | None:
        return self.padded

    def bind(self, output: object) -> torch.Tensor:
        found = detections_of(output)
        keys = ("boxes", "labels", "scores")
        self.reference = [{key: d[key].detach() for key in keys} for d in found]
        self.null_slot = max((len(d["scores"]) for d in self.reference), default=0)
        rows = torch.arange(len(found))
        return self.scores(output, rows)

    def scores(self, output: object, rows: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import box_iou

        assert self.null_slot is not None, "bind() first"
        found = detections_of(output)
        out = []
        for detections, image in zip(found, rows.tolist(), strict=True):
            slots = self.reference[image]
            scores = detections["scores"]
            row = scores.new_zeros(self.null_slot + 1)
            if len(slots["scores"]) and len(scores):
                boxes = detections["boxes"].detach().to(slots["boxes"].device)
                iou = box_iou(slots["boxes"], boxes)
                same = slots["labels"][:, None] == detections["labels"].to(iou.device)[None]
                best, index = torch.where(same, iou, torch.zeros_like(iou)).max(dim=1)
                matched = scores[index.to(scores.device)]
                hit = (best >= MATCH_IOU).to(scores.device)
                row = torch.cat([torch.where(hit, matched, 0.0), row[len(slots["scores"]) :]])
            out.append(row)
        return torch.stack(out)

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        assert self.null_slot is not None
        chosen = [self._kept(slots) for slots in self.reference]
        width = max((len(c) for c in chosen), default=0)
        padded = [c + [self.null_slot] * (width - len(c)) for c in chosen]
        return torch.as_tensor(padded, dtype=torch.long, device=scores.device).reshape(
            len(chosen), width
        )

    def _kept(self, slots: dict[str, torch.Tensor]) -> list[int]:
        """This image's detections to explain: of the classes asked for, scoring at least
        min_score, the top-k by score."""
        wanted = set(self.request.classes)
        floor = self.request.min_score
        order = slots["scores"].argsort(descending=True, stable=True).tolist()
        kept = [
            d
            for d in order
            if (not wanted or int(slots["labels"][d]) in wanted)
            and (floor is None or float(slots["scores"][d]) >= floor)
        ]
        return kept[: self.request.topk]

    def probabilities(self) -> torch.Tensor:
        assert self.null_slot is not None
        width = self.null_slot + 1
        rows = [torch.zeros(width) for _ in self.reference]
        for row, found in zip(rows, self.reference, strict=True):
            row[: len(found["scores"])] = found["scores"].float().cpu()
        return torch.stack(rows)

    def frame(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps over the padded, resized tensor → over the photo's part of it, resampled
        (RoIAlign, half-pixel aligned) to the cells that part spans."""
        if self.padded is None or not self.sizes or maps.shape[1] == 0:
            return maps
        from torchvision.ops import roi_align

        (height, width), (h, w) = self.padded, maps.shape[2:]
        if all(size == self.padded for size in self.sizes):  # nothing padded: the maps as they are
            return maps
        framed = []
        for image, (rh, rw) in enumerate(self.sizes[: maps.shape[0]]):
            x1, y1 = w * rw / width, h * rh / height  # the photo's part, in map cells
            size = (max(1, round(y1)), max(1, round(x1)))
            box = torch.tensor([[0.0, 0.0, 0.0, x1, y1]], dtype=maps.dtype, device=maps.device)
            cells = maps[image].unsqueeze(0).transpose(0, 1).contiguous()  # [K, 1, h, w]
            boxes = box.expand(cells.shape[0], -1).clone()
            boxes[:, 0] = torch.arange(cells.shape[0], dtype=maps.dtype)
            # one bilinear sample per output cell, at its centre: a near-identity resampling
            framed.append(roi_align(cells, boxes, size, 1.0, 1, aligned=True)[:, 0])
        return torch.stack(framed)

    def details(self, image: int, slots: Sequence[int]) -> list[TargetDetails | None]:
        reference = self.reference[image]
        found: list[TargetDetails | None] = []
        for slot in slots:
            if slot >= len(reference["scores"]):
                found.append(None)
                continue
            x0, y0, x1, y1 = (float(v) for v in reference["boxes"][slot])
            found.append(
                TargetDetails(
                    class_index=int(reference["labels"][slot]),
                    probability=float(reference["scores"][slot]),
                    box=(x0, y0, x1, y1),
                )
            )
        return found


class DetectionTask(Task):
    name = "detection"

    def scoring(self, request: TargetRequest, outputs_probabilities: bool) -> Scoring:
        return _DetectionScoring(request)

    def probe_output(
        self, model: nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """The backbone's features (every FPN level), flattened: random weights or a noise
        image give no detection above the model's threshold, so the detections cannot tell
        which layers matter; every layer the detection heads read feeds the backbone's output."""
        scoring = _DetectionScoring(TargetRequest())
        features: list[torch.Tensor] = []
        backbone = getattr(model, "backbone", None)
        hooks = []
        if isinstance(backbone, nn.Module):
            hooks.append(backbone.register_forward_hook(lambda m, a, out: features.append(out)))
        with removing(hooks), scoring.watch(model):
            output = model(x)
        if features:
            return _flat(features[0], x.shape[0]), scoring.frame_size()
        found = detections_of(output)
        return torch.stack([torch.cat([d["scores"], d["boxes"].flatten()]) for d in found]), (
            scoring.frame_size()
        )

    def default_scope(self, model: nn.Module) -> str | None:
        """The backbone's feature extractor before its FPN (`backbone.body`, torchvision's
        R-CNNs, RetinaNet, FCOS), else the backbone (SSD)."""
        backbone = getattr(model, "backbone", None)
        if isinstance(getattr(backbone, "body", None), nn.Module):
            return "backbone.body"
        if isinstance(getattr(backbone, "features", None), nn.Module):
            return "backbone.features"
        return "backbone" if isinstance(backbone, nn.Module) else None

    def num_classes(self, model: nn.Module, probed: torch.Tensor) -> int:
        return detector_classes(model) or 0


def _flat(features: object, batch: int) -> torch.Tensor:
    """A backbone's output (a tensor, or a dict or list of them: FPN levels) as [B, N]."""
    if isinstance(features, torch.Tensor):
        return features.reshape(batch, -1)
    if isinstance(features, dict):
        features = list(features.values())
    if not isinstance(features, list | tuple):
        raise LayerError(f"the detector's backbone returned {type(features).__name__}")
    return torch.cat([_flat(v, batch) for v in features], dim=1)


def detector_classes(model: nn.Module) -> int | None:
    """The class count of a torchvision detector (background included), None when unknown."""
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    score = getattr(predictor, "cls_score", None)
    if isinstance(score, nn.Linear):
        return score.out_features
    head = getattr(getattr(model, "head", None), "classification_head", None)
    for name in ("num_classes", "num_columns"):
        value = getattr(head, name, None)
        if isinstance(value, int):
            return value
    return None
