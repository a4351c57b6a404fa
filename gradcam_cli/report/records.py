"""The records of a report's `results`: one per input, with its predictions and explanations.

Frozen dataclasses, written with `dataclasses.asdict` in field order (the JSON's key order) and
read back with `ImageResult.from_dict` (`--resume`). Non-finite numbers become None (null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Prediction", "TargetRef", "ExplanationRecord", "ImageResult", "gate_record"]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float | None
    score: float | None

    @classmethod
    def make(cls, index: int, label: str, probability: float, score: float) -> Prediction:
        return cls(int(index), label, _finite(probability), _finite(score))


@dataclass(frozen=True)
class TargetRef:
    """The class an explanation is for, with the model's probability and score (logit) for it
    on that image, whether it was among the top-k or given with --target; None: not finite (or
    a report written before these were recorded)."""

    index: int
    label: str
    probability: float | None = None
    score: float | None = None

    @classmethod
    def make(cls, index: int, label: str, probability: float, score: float) -> TargetRef:
        return cls(int(index), label, _finite(probability), _finite(score))


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


def _target_from_dict(data: Mapping[str, Any], predictions: list[Prediction]) -> TargetRef:
    """A target read back; one from a report written before targets carried their probability
    and score takes them from its prediction when it is one of the top 5 (else None)."""
    target = TargetRef(**_known_fields(TargetRef, data))
    if "probability" in data or "score" in data:
        return target
    found = next((p for p in predictions if p.index == target.index), None)
    if found is None:
        return target
    return TargetRef(target.index, target.label, found.probability, found.score)


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
