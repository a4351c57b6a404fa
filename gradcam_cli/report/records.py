"""The records of a report's `results`: one per input, with its predictions and explanations.

Frozen dataclasses, written with `dataclasses.asdict` in field order (the JSON's key order) and
read back with `ImageResult.from_dict` (`--resume`). Non-finite numbers become None (null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = [
    "Prediction",
    "TargetRef",
    "ExplanationRecord",
    "ImageResult",
    "gate_record",
    "result_dict",
]

# Keys only a segmentation model's or a detector's records fill: left out where null, so that a
# classifier's report is what it was before those models could be explained.
TASK_KEYS = ("class_index", "box", "pixel_share")
TASK_FILES = ("region",)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _fields(
    index: int,
    label: str,
    probability: float,
    score: float,
    *,
    class_index: int | None = None,
    box: Sequence[float] | None = None,
    pixel_share: float | None = None,
) -> tuple:
    """A Prediction's or a TargetRef's fields, in order: numbers finite or None, a box's
    coordinates to the hundredth of a pixel."""
    return (
        int(index),
        label,
        _finite(probability),
        _finite(score),
        class_index,
        None if box is None else [round(float(v), 2) for v in box],
        None if pixel_share is None else _finite(pixel_share),
    )


@dataclass(frozen=True)
class Prediction:
    """What the model found: a class of a classifier (its probability and logit), a class of
    a segmentation model (its share of the pixels, the mean probability over them, the summed
    logits), or a detection (`index` numbers it; its class, box in photo pixels, score)."""

    index: int
    label: str
    probability: float | None
    score: float | None
    class_index: int | None = None  # detection: the class (index numbers the detection)
    box: list[float] | None = None  # detection: [x0, y0, x1, y1] in the photo's pixels
    pixel_share: float | None = None  # segmentation: share of the pixels predicted as it

    @classmethod
    def make(cls, index: int, label: str, probability: float, score: float, **task) -> Prediction:
        """With finite numbers or None; `task`: class_index, box, pixel_share."""
        return cls(*_fields(index, label, probability, score, **task))


@dataclass(frozen=True)
class TargetRef:
    """What an explanation is for, with the model's probability and score for it on that
    image, whether it was among the top-k or given with --target; None: not finite (or a report
    written before these were recorded). A class of a classifier or of a segmentation model
    (`pixel_share`), or a detection: `index` numbers it among the image's detections, by
    score, `class_index` is its class and `box` where it is."""

    index: int
    label: str
    probability: float | None = None
    score: float | None = None
    class_index: int | None = None
    box: list[float] | None = None
    pixel_share: float | None = None

    @classmethod
    def make(cls, index: int, label: str, probability: float, score: float, **task) -> TargetRef:
        """As Prediction.make."""
        return cls(*_fields(index, label, probability, score, **task))


@dataclass(frozen=True)
class ExplanationRecord:
    target: TargetRef
    layer: str
    overlay: str | None
    heatmap: str | None
    raw: str | None
    warnings: list[str] = field(default_factory=list)
    guided: str | None = None  # the guided image (guided methods), else null
    localization: dict[str, object] | None = None  # with --mask: localization.Localization
    panel: str | None = None  # with --panel: the figure of this explanation, else null
    # with --mask: the true mask as measured, in the photo's frame (PNG, one per image and
    # target), else null; `localization.mask` names the file it was read from
    mask: str | None = None
    # with --metrics: faithrun.metric_record (the metrics, the baselines', the curves' file)
    faithfulness: dict[str, object] | None = None
    # with --gate: {"passed": bool, "shortfalls": [...]} over the gate's rules, else null
    gate: dict[str, object] | None = None
    # segmentation: the pixels the target's logits are summed over (those predicted as the
    # class, or --region), a PNG in the photo's frame; else null
    region: str | None = None


@dataclass(frozen=True)
class ImageResult:
    input: str
    status: str  # "ok" | "error"
    error: str | None = None
    size: list[int] | None = None  # [width, height] of the original image
    predictions: list[Prediction] = field(default_factory=list)
    explanations: list[ExplanationRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # about the input (first frame only, ...)

    @classmethod
    def failed(cls, input: str, error: str, warnings: Sequence[str] = ()) -> ImageResult:
        return cls(input=input, status="error", error=error, warnings=list(warnings))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageResult:
        """A record read back from a report (`--resume`); keys this version does not know are
        dropped."""
        values = _known_fields(cls, data)
        predictions = [
            Prediction(**_known_fields(Prediction, p)) for p in data.get("predictions") or []
        ]
        values["predictions"] = predictions
        values["explanations"] = [
            ExplanationRecord(
                **{
                    **_known_fields(ExplanationRecord, e),
                    "target": _target_from_dict(e["target"], predictions),
                }
            )
            for e in data.get("explanations") or []
        ]
        return cls(**values)


def result_dict(result: ImageResult) -> dict[str, Any]:
    """A result as the report writes it: `asdict`, without the null task-only keys."""
    data = asdict(result)
    for prediction in data["predictions"]:
        _drop_nulls(prediction, TASK_KEYS)
    for record in data["explanations"]:
        _drop_nulls(record["target"], TASK_KEYS)
        _drop_nulls(record, TASK_FILES)
    return data


def _drop_nulls(data: dict[str, Any], keys: Sequence[str]) -> None:
    for key in keys:
        if data.get(key, 0) is None:
            del data[key]


def _target_from_dict(data: Mapping[str, Any], predictions: list[Prediction]) -> TargetRef:
    """A target read back; one from a report written before targets carried their probability
    and score takes them from its prediction when it is one of the top 5 (else None)."""
    target = TargetRef(**_known_fields(TargetRef, data))
    if "probability" in data or "score" in data:
        return target
    found = next((p for p in predictions if p.index == target.index), None)
    if found is None:
        return target
    return replace(target, probability=found.probability, score=found.score)


def _known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The items of `data` that name a field of the dataclass `cls` (values as read: Any)."""
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def gate_record(rules: Sequence, values: Mapping[str, object]) -> dict[str, object] | None:
    """An explanation's `gate`: whether every --gate rule holds for `values` (its metrics and
    localization figures by name), and the shortfalls; None without rules."""
    if not rules:
        return None
    shortfalls = [s for rule in rules if (s := rule.shortfall(values.get(rule.name))) is not None]
    return {"passed": not shortfalls, "shortfalls": shortfalls}
