"""Two runs compared: what `compare_runs` found (`Comparison`, its `Pair`s), its gates, and the
comparison.json it is saved as (`compare.save_comparison`).

The page of a comparison (`pages.comparison`) reads these types too; they import neither.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .mapstats import Box, Point, Spread, rounded
from .report import library_versions

__all__ = [
    "COMPARISON_SCHEMA_VERSION",
    "COMPARISON_NAME",
    "CompareGates",
    "Side",
    "Pair",
    "Comparison",
]

COMPARISON_SCHEMA_VERSION = 1
COMPARISON_NAME = "comparison.json"
SUMMARY_MEASURES = ("pearson", "spearman", "peak_shift", "energy_moved", "probability_change")


# -- the gates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareGates:
    """What a comparison must meet to pass; None: not checked.

    Per pair: `min_corr` (Pearson's), `max_shift` (photo pixels), `max_energy_moved` (0..1).
    Over the run: `max_top1_changes`, the images whose predicted class may change.
    """

    min_corr: float | None = None
    max_shift: float | None = None
    max_energy_moved: float | None = None
    max_top1_changes: int | None = None

    def __post_init__(self) -> None:
        _check_range("min_corr", self.min_corr, -1.0, 1.0, "a correlation")
        _check_range("max_shift", self.max_shift, 0.0, math.inf, "photo pixels")
        _check_range("max_energy_moved", self.max_energy_moved, 0.0, 1.0, "a share")
        top1 = self.max_top1_changes
        if top1 is not None and (isinstance(top1, bool) or not isinstance(top1, int) or top1 < 0):
            raise UsageError(f"max_top1_changes= takes a count of images, 0 or more, got {top1}")

    @property
    def active(self) -> bool:
        return any(value is not None for value in asdict(self).values())

    def shortfalls(self, pair: Pair, top1_changes: int) -> list[str]:
        """Why a pair fails the gates (empty when it passes). The top-1 rule is the run's: when
        more images changed their prediction than it allows, each changed pair fails it."""
        reasons = []
        if self.min_corr is not None and not _at_least(pair.pearson, self.min_corr):
            reasons.append(f"correlation {_shown(pair.pearson)} < {self.min_corr:g}")
        if self.max_shift is not None and not _at_most(pair.peak_shift, self.max_shift):
            reasons.append(f"peak moved {_shown(pair.peak_shift, ' px')} > {self.max_shift:g} px")
        if self.max_energy_moved is not None and not _at_most(
            pair.energy_moved, self.max_energy_moved
        ):
            reasons.append(f"energy moved {_shown(pair.energy_moved)} > {self.max_energy_moved:g}")
        top1 = self.max_top1_changes
        if top1 is not None and pair.top1_changed and top1_changes > top1:
            reasons.append(
                f"top-1 changed ({pair.base.top1['label']} → {pair.new.top1['label']}): "
                f"{top1_changes} images changed, more than {top1}"
            )
        return reasons


def _check_range(name: str, value: float | None, low: float, high: float, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        bounds = f"{low:g} to {high:g}" if math.isfinite(high) else f"{low:g} or more"
        raise UsageError(f"{name}= takes {what}, {bounds}, got {value}")


def _at_least(value: float | None, low: float) -> bool:
    return value is not None and value >= low


def _at_most(value: float | None, high: float) -> bool:
    return value is not None and value <= high


def _shown(value: float | None, unit: str = "") -> str:
    return "none (a blank map)" if value is None else f"{value:.3g}{unit}"


# -- pairs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One run's half of a pair, as its report recorded it (paths relative to its folder)."""

    target: Mapping  # {index, label, probability, score}
    layer: str
    raw: str
    overlay: str | None
    top1: Mapping  # the image's predicted class in this run: {index, label}
    peak: Point | None  # the map's maximum on the photo, pixels (x, y)
    box: Box | None = field(default=None, repr=False)  # the crop box the map covers
    size: tuple[int, int] | None = field(default=None, repr=False)  # the photo's (W, H)

    def to_dict(self) -> dict[str, object]:
        return {
            "target": dict(self.target),
            "layer": self.layer,
            "top1": dict(self.top1),
            "peak": [round(v, 2) for v in self.peak] if self.peak is not None else None,
            "raw": self.raw,
            "overlay": self.overlay,
        }


@dataclass(frozen=True)
class Pair:
    input: str
    match: str  # "class": the same class index; "top1": each run's predicted class
    base: Side
    new: Side
    grid: tuple[int, ...]
    pearson: float | None
    spearman: float | None
    peak_shift: float | None
    energy_moved: float | None
    probability_change: float | None  # the base target's probability: new − base
    localization: dict[str, Any] | None  # with masks in both runs
    gate: dict[str, Any] | None = None  # {passed, shortfalls} with gates, else None

    @property
    def layer(self) -> str:
        return self.base.layer

    @property
    def top1_changed(self) -> bool:
        return self.base.top1.get("index") != self.new.top1.get("index")

    @property
    def failed(self) -> bool:
        return self.gate is not None and self.gate["passed"] is False

    @property
    def shortfalls(self) -> list[str]:
        """Why the pair failed the gates; empty when it passed or had none."""
        return list((self.gate or {}).get("shortfalls", []))

    @property
    def layers(self) -> str:
        """'layer4', or 'layer3 → layer4' for a pair across layers (allow_method_change)."""
        if self.base.layer == self.new.layer:
            return self.base.layer
        return f"{self.base.layer} → {self.new.layer}"

    def where(self) -> str:
        """'cat.jpg [tabby @ layer4]', 'cat.jpg [tabby → tiger cat @ layer4]'."""
        labels = [self.base.target.get("label"), self.new.target.get("label")]
        target = labels[0] if labels[0] == labels[1] else f"{labels[0]} → {labels[1]}"
        return f"{self.input} [{target} @ {self.layers}]"

    def to_dict(self) -> dict[str, object]:
        return {
            "input": self.input,
            "layer": self.layer,
            "match": self.match,
            "top1_changed": self.top1_changed,
            "pearson": rounded(self.pearson),
            "spearman": rounded(self.spearman),
            "peak_shift": rounded(self.peak_shift, 2),
            "energy_moved": rounded(self.energy_moved),
            "probability_change": rounded(self.probability_change),
            "grid": list(self.grid),
            "base": self.base.to_dict(),
            "new": self.new.to_dict(),
            "localization": self.localization,
            "gate": self.gate,
        }


# -- the comparison ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Two runs compared: the pairs, worst first, and what could not be paired."""

    base_dir: Path
    new_dir: Path
    base: dict[str, object]  # each run described: folder, model, method, layers, preprocess
    new: dict[str, object]
    gates: CompareGates
    allow_method_change: bool
    pairs: tuple[Pair, ...]
    inputs_compared: int  # inputs explained in both runs
    only_in_base: tuple[str, ...]
    only_in_new: tuple[str, ...]
    failed: tuple[dict, ...]  # inputs of both runs that failed in one or both: {input, base, new}
    unpaired: tuple[dict, ...]  # explanations without a partner: {input, run, layer, target}
    top1_changes: int  # inputs whose predicted class changed
    seconds: float = 0.0

    @property
    def failures(self) -> list[Pair]:
        return [pair for pair in self.pairs if pair.failed]

    @property
    def lost(self) -> list[dict]:
        """Inputs explained in the base run that failed in the new one."""
        return [f for f in self.failed if f["base"] is None and f["new"] is not None]

    @property
    def passed(self) -> bool:
        """Every pair met the gates and, with gates, no input was lost."""
        return not self.failures and not (self.gates.active and self.lost)

    def summary(self) -> dict[str, object]:
        return {
            "pairs": len(self.pairs),
            "inputs_compared": self.inputs_compared,
            "only_in_base": len(self.only_in_base),
            "only_in_new": len(self.only_in_new),
            "failed_inputs": len(self.failed),
            "unpaired": len(self.unpaired),
            "top1_changes": self.top1_changes,
            "gate_failures": len(self.failures) + (len(self.lost) if self.gates.active else 0),
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            **{name: spread.to_dict() for name, spread in self.spreads().items()},
        }

    def spreads(self) -> dict[str, Spread]:
        """Each measure's median and 5th and 95th percentiles over the pairs."""
        return {
            name: Spread.of([getattr(pair, name) for pair in self.pairs])
            for name in SUMMARY_MEASURES
        }

    def to_dict(self, page: str | None = None) -> dict[str, object]:
        return {
            "schema_version": COMPARISON_SCHEMA_VERSION,
            "base": self.base,
            "new": self.new,
            "gates": asdict(self.gates),
            "allow_method_change": self.allow_method_change,
            "summary": self.summary(),
            "pairs": [pair.to_dict() for pair in self.pairs],
            "only_in_base": list(self.only_in_base),
            "only_in_new": list(self.only_in_new),
            "failed": list(self.failed),
            "unpaired": list(self.unpaired),
            "versions": library_versions(),
            "page": page,
        }

    def to_json(self, page: str | None = None) -> str:
        text = json.dumps(self.to_dict(page), indent=2, ensure_ascii=False, allow_nan=False)
        return text + "\n"

    def log_lines(self) -> list[str]:
        """What a person reads on stderr: each failing pair and lost input, what was not
        paired, and the figures."""
        lines = [f"gate failed: {p.where()}: {'; '.join(p.shortfalls)}" for p in self.failures]
        for lost in self.lost:
            failed = "gate failed: " if self.gates.active else ""
            lines.append(
                f"{failed}{lost['input']}: explained in the base run, failed in the new one: "
                f"{lost['new']}"
            )
        if self.only_in_base or self.only_in_new:
            lines.append(
                f"{len(self.only_in_base)} input(s) only in the base run, {len(self.only_in_new)} "
                f"only in the new one: not compared ({COMPARISON_NAME} lists them)"
            )
        if self.unpaired:
            lines.append(
                f"{len(self.unpaired)} explanation(s) without a partner of the same input, layer "
                f"and target: not compared ({COMPARISON_NAME} lists them)"
            )
        lines.append(self.figures())
        return lines

    def figures(self) -> str:
        """The measures in a line: medians, and the tail where it is bad."""
        spreads = self.spreads()
        return (
            f"{len(self.pairs)} pairs over {self.inputs_compared} inputs: "
            f"correlation {_spread_text(spreads['pearson'])}, rank correlation "
            f"{_spread_text(spreads['spearman'])}, peak shift "
            f"{_spread_text(spreads['peak_shift'], ' px', high=True)}, energy moved "
            f"{_spread_text(spreads['energy_moved'], high=True)}; top-1 changed on "
            f"{self.top1_changes} input(s)"
        )

    def verdict(self) -> str:
        if not self.gates.active:
            return "no gates set: measured only"
        if self.passed:
            return f"passed: {len(self.pairs)} pairs met the gates"
        parts = [f"{len(self.failures)} of {len(self.pairs)} pairs failed the gates"]
        if self.lost:
            parts.append(
                f"{len(self.lost)} input(s) explained in the base run failed in the new one"
            )
        return "failed: " + ", ".join(parts)


def _spread_text(spread: Spread, unit: str = "", high: bool = False) -> str:
    """'median 0.93 (5th percentile 0.61)'; for measures where high is bad, the 95th."""
    tail, name = (spread.p95, "95th") if high else (spread.p5, "5th")
    if spread.median is None or tail is None:
        return "not measured"
    return f"median {spread.median:.3g}{unit} ({name} percentile {tail:.3g}{unit})"
