"""A report's `summary`: counts and figures over its results, built in one place for a run's
report and for the report `gradcam merge` makes of the shares', so the two cannot drift.

Everything here works on the results as they are written (dicts): a run passes its records
through `dataclasses.asdict`, merge passes what it read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..timing import slowest_stage

__all__ = [
    "RunFacts",
    "summarize",
    "localization_totals",
    "faithfulness_totals",
    "gate_totals",
    "stages_summary",
]


@dataclass(frozen=True)
class RunFacts:
    """What the summary says that the results do not."""

    seconds: float  # rounded as written
    interrupted: bool = False
    resumed: int = 0
    in_progress: bool = False
    batch_size_reduced_to: int | None = None
    stages: dict[str, object] | None = None  # as `stages_summary` makes it
    measures_localization: bool = False  # --mask given: a localization part
    measures_faithfulness: bool = False  # --metrics given: a faithfulness part
    gate_rules: Sequence[str] = ()  # --gate's rules: a gate part


def summarize(results: Sequence[Mapping[str, Any]], run: RunFacts) -> dict[str, object]:
    """The `summary` of a report with these results (its key order is the schema's)."""
    explanations = [e for result in results for e in result.get("explanations") or []]

    def present(key: str) -> list[dict[str, Any]]:
        return [e[key] for e in explanations if e.get(key) is not None]

    errors = sum(result["status"] != "ok" for result in results)
    return {
        "images": len(results),
        "ok": len(results) - errors,
        "errors": errors,
        "seconds": run.seconds,
        "interrupted": run.interrupted,
        "localization": (
            localization_totals(present("localization")) if run.measures_localization else None
        ),
        "resumed": run.resumed,
        "in_progress": run.in_progress,
        "batch_size_reduced_to": run.batch_size_reduced_to,
        "stages": run.stages,
        "faithfulness": (
            faithfulness_totals(present("faithfulness")) if run.measures_faithfulness else None
        ),
        "gate": gate_totals(present("gate"), run.gate_rules) if run.gate_rules else None,
    }


def localization_totals(localizations: Sequence[Mapping[str, Any]]) -> dict[str, object]:
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
        "gate_failures": sum(m["passed"] is False for m in localizations),
    }


def faithfulness_totals(records: Sequence[Mapping[str, Any]]) -> dict[str, object]:
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


def _means(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    names = [key for key in (records[0] if records else {}) if key not in ("baselines", "curves")]
    means: dict[str, float | None] = {}
    for name in names:
        values = [record[name] for record in records if record.get(name) is not None]
        means[name] = round(sum(values) / len(values), 6) if values else None
    return means


def gate_totals(gates: Sequence[Mapping[str, Any]], rules: Sequence[str]) -> dict[str, object]:
    """The --gate rules and how many explanations failed them."""
    return {
        "rules": list(rules),
        "explanations": len(gates),
        "failures": sum(gate["passed"] is False for gate in gates),
    }


def stages_summary(stages: Mapping[str, Any] | None, seconds: float) -> dict[str, object] | None:
    """`summary.stages`: the seconds per stage, what the model waited for, and the slowest stage
    (`timing`); None for a report not made by a batch run."""
    if stages is None:
        return None
    return {**stages, "slowest": slowest_stage(stages, seconds)}
