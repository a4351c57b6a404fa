"""The versioned JSON report: frozen records → a dict → `predictions.json` and `--json` stdout.

Keys named in the README are a public interface: they change only with a SCHEMA_VERSION bump.
Artifact paths are relative to the output folder, so the folder can be moved or archived whole.
Non-finite numbers become null: the document is strict JSON (`allow_nan=False`).
"""

from __future__ import annotations

import json
import math
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path

from .errors import UsageError
from .timing import slowest_stage

__all__ = [
    "SCHEMA_VERSION",
    "REPORT_NAME",
    "SHARD_REPORT",
    "SAME_RUN_KEYS",
    "shard_report_name",
    "read_report_file",
    "Prediction",
    "TargetRef",
    "ExplanationRecord",
    "ImageResult",
    "Report",
    "library_versions",
    "localization_totals",
    "stages_summary",
]

SCHEMA_VERSION = 1
REPORT_NAME = "predictions.json"
# The top-level keys that say what a run computes: two reports that differ in one of these
# describe different runs (`gradcam merge`, `--resume`).
SAME_RUN_KEYS = ("schema_version", "model", "method", "method_options", "layers", "preprocess")
# One share of a run split with --shard K/N; `gradcam merge` finds them by this pattern.
SHARD_REPORT = re.compile(r"predictions\.(\d+)-of-(\d+)\.json")


def shard_report_name(shard: tuple[int, int] | None) -> str:
    """`predictions.json`, or `predictions.K-of-N.json` for one shard of a split run."""
    return REPORT_NAME if shard is None else f"predictions.{shard[0]}-of-{shard[1]}.json"


def read_report_file(path: Path) -> dict:
    """A report written by gradcam (predictions.json or a share's), as a dict; UsageError
    saying why not otherwise. Callers add what the report was read for."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
        raise UsageError(f"cannot read {path} ({reason})") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise UsageError(f"{path} is not a gradcam report (no 'results' list)")
    return document


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
    def from_dict(cls, data: Mapping[str, object]) -> ImageResult:
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


def _target_from_dict(data: Mapping[str, object], predictions: list[Prediction]) -> TargetRef:
    """A target read back; one from a report written before targets carried their probability
    and score takes them from its prediction when it is one of the top 5 (else None)."""
    target = TargetRef(**_known_fields(TargetRef, data))
    if "probability" in data or "score" in data:
        return target
    found = next((p for p in predictions if p.index == target.index), None)
    if found is None:
        return target
    return TargetRef(target.index, target.label, found.probability, found.score)


def _known_fields(cls: type, data: Mapping[str, object]) -> dict[str, object]:
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def localization_totals(localizations: list[dict]) -> dict[str, object]:
    """Over the explanations measured against a mask: hit rate, mean energy and the mean
    share of the mask (energy's chance level), mean IoU, and how many failed the gate."""
    measured = [m for m in localizations if m["hit"] is not None]

    def mean(key: str) -> float | None:
        return round(sum(m[key] for m in measured) / len(measured), 6) if measured else None

    return {
        "explanations": len(localizations),
        "measured": len(measured),
        "hit_rate": mean("hit"),
        "mean_energy": mean("energy"),
        "mean_iou": mean("iou"),
        "mean_mask_share": mean("mask_share"),
        "gate_failures": _gate_failures(localizations),
    }


def _gate_failures(localizations: list[dict]) -> int:
    return sum(m["passed"] is False for m in localizations)


def _failed_a_gate(record: ExplanationRecord) -> bool:
    localization, gate = record.localization or {}, record.gate or {}
    return localization.get("passed") is False or gate.get("passed") is False


def faithfulness_totals(records: list[dict]) -> dict[str, object]:
    """Over the explanations measured with --metrics: each metric's mean (over the finite
    values), and each baseline's."""
    return {
        "explanations": len(records),
        "means": _means(records),
        "baselines": {
            name: _means([record["baselines"][name] for record in records])
            for name in (records[0]["baselines"] if records else {})
        },
    }


def _means(records: list[dict]) -> dict[str, float | None]:
    names = [key for key in (records[0] if records else {}) if key not in ("baselines", "curves")]
    means: dict[str, float | None] = {}
    for name in names:
        values = [record[name] for record in records if record.get(name) is not None]
        means[name] = round(sum(values) / len(values), 6) if values else None
    return means


def gate_totals(gates: list[dict], rules: Sequence[str]) -> dict[str, object]:
    """The --gate rules and how many explanations failed them."""
    return {
        "rules": list(rules),
        "explanations": len(gates),
        "failures": sum(gate["passed"] is False for gate in gates),
    }


def gate_record(rules: Sequence, values: Mapping[str, object]) -> dict[str, object] | None:
    """An explanation's `gate`: whether every --gate rule holds for `values` (its metrics and
    localization figures by name), and the shortfalls; None without rules."""
    if not rules:
        return None
    shortfalls = [s for rule in rules if (s := rule.shortfall(values.get(rule.name))) is not None]
    return {"passed": not shortfalls, "shortfalls": shortfalls}


def stages_summary(stages: Mapping[str, object] | None, seconds: float) -> dict | None:
    """`summary.stages`: the seconds per stage, what the model waited for, and the slowest stage
    (`timing`); None for a report not made by a batch run."""
    if stages is None:
        return None
    return {**stages, "slowest": slowest_stage(stages, seconds)}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("gradcam-cli", "torch", "torchvision", "timm"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


@dataclass
class Report:
    """The whole run. `results` keep the order of the inputs."""

    model: dict[str, object]
    method: str
    layers: list[str]
    device: str
    out: str
    preprocess: dict[str, object]
    options: dict[str, object]
    results: list[ImageResult] = field(default_factory=list)
    method_options: dict[str, object] = field(default_factory=dict)  # aug_smooth, eigen_smooth
    seconds: float = 0.0
    interrupted: bool = False
    measures_localization: bool = False  # --mask given: the summary gets a localization part
    resumed: int = 0  # results taken over from the previous report (--resume)
    in_progress: bool = False  # a checkpoint written while the run goes on
    batch_size_reduced_to: int | None = None  # after running out of memory
    write_error: str | None = None  # why the report file could not be written (not in JSON)
    stages: dict[str, object] | None = None  # timing.StageTimes.record(): where the time went
    measures_faithfulness: bool = False  # --metrics given: the summary gets a faithfulness part
    gate_rules: list[str] = field(default_factory=list)  # --gate's rules, as written

    @property
    def errors(self) -> int:
        return sum(result.status != "ok" for result in self.results)

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "method": self.method,
            "method_options": self.method_options,
            "layers": self.layers,
            "device": self.device,
            "out": self.out,
            "preprocess": self.preprocess,
            "options": self.options,
            "versions": library_versions(),
            "results": [asdict(result) for result in self.results],
            "summary": {
                "images": len(self.results),
                "ok": len(self.results) - self.errors,
                "errors": self.errors,
                "seconds": round(self.seconds, 3),
                "interrupted": self.interrupted,
                "localization": self.localization_summary(),
                "resumed": self.resumed,
                "in_progress": self.in_progress,
                "batch_size_reduced_to": self.batch_size_reduced_to,
                "stages": stages_summary(self.stages, self.seconds),
                "faithfulness": self.faithfulness_summary(),
                "gate": self.gate_summary(),
            },
        }

    def records(self) -> list[tuple[ImageResult, ExplanationRecord]]:
        return [(result, record) for result in self.results for record in result.explanations]

    def faithfulness_summary(self) -> dict[str, object] | None:
        if not self.measures_faithfulness:
            return None
        measured = [r.faithfulness for _, r in self.records() if r.faithfulness is not None]
        return faithfulness_totals(measured)

    def gate_summary(self) -> dict[str, object] | None:
        if not self.gate_rules:
            return None
        gates = [record.gate for _, record in self.records() if record.gate is not None]
        return gate_totals(gates, self.gate_rules)

    def localized(self) -> list[tuple[ImageResult, ExplanationRecord]]:
        return [
            (result, record)
            for result in self.results
            for record in result.explanations
            if record.localization is not None
        ]

    @property
    def gate_failures(self) -> int:
        """Explanations that failed a gate: --min-energy/--require-hit, or a --gate rule."""
        return sum(_failed_a_gate(record) for _, record in self.records())

    def localization_summary(self) -> dict[str, object] | None:
        if not self.measures_localization:
            return None
        return localization_totals([record.localization for _, record in self.localized()])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
