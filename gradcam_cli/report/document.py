"""The versioned report of a run: its records → a dict → `predictions.json` and `--json` stdout.

Keys named in docs/json.md are a public interface: they change only with a SCHEMA_VERSION bump.
Artifact paths are relative to the output folder, so the folder can be moved or archived whole.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from importlib import metadata

from .jsonfile import report_text
from .records import ExplanationRecord, ImageResult, result_dict
from .summary import (
    RunFacts,
    faithfulness_totals,
    gate_totals,
    localization_totals,
    stages_summary,
    summarize,
)

__all__ = ["SCHEMA_VERSION", "Report", "library_versions"]

SCHEMA_VERSION = 1


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
        results = [result_dict(result) for result in self.results]
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
            "results": results,
            "summary": summarize(results, self.facts()),
        }

    def facts(self) -> RunFacts:
        """What the summary says beyond the results."""
        return RunFacts(
            seconds=round(self.seconds, 3),
            interrupted=self.interrupted,
            resumed=self.resumed,
            in_progress=self.in_progress,
            batch_size_reduced_to=self.batch_size_reduced_to,
            stages=stages_summary(self.stages, self.seconds),
            measures_localization=self.measures_localization,
            measures_faithfulness=self.measures_faithfulness,
            gate_rules=self.gate_rules,
        )

    def to_json(self) -> str:
        return report_text(self.to_dict())

    # -- the summary's parts, for the closing lines (without writing every result out) -------

    def records(self) -> list[tuple[ImageResult, ExplanationRecord]]:
        return [(result, record) for result in self.results for record in result.explanations]

    def localized(self) -> list[tuple[ImageResult, ExplanationRecord]]:
        return [(res, record) for res, record in self.records() if record.localization is not None]

    def localization_summary(self) -> dict[str, object] | None:
        if not self.measures_localization:
            return None
        return localization_totals(
            [r.localization for _, r in self.records() if r.localization is not None]
        )

    def faithfulness_summary(self) -> dict[str, object] | None:
        if not self.measures_faithfulness:
            return None
        return faithfulness_totals(
            [r.faithfulness for _, r in self.records() if r.faithfulness is not None]
        )

    def gate_summary(self) -> dict[str, object] | None:
        if not self.gate_rules:
            return None
        gates = [record.gate for _, record in self.records() if record.gate is not None]
        return gate_totals(gates, self.gate_rules)

    @property
    def gate_failures(self) -> int:
        """Explanations that failed a gate: --min-energy/--require-hit, or a --gate rule."""
        return sum(_failed_a_gate(record) for _, record in self.records())


def _failed_a_gate(record: ExplanationRecord) -> bool:
    localization, gate = record.localization or {}, record.gate or {}
    return localization.get("passed") is False or gate.get("passed") is False
