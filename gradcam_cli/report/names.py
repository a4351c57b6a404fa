"""The report's file names: `predictions.json`, and `predictions.K-of-N.json` for one share of a
run split with `--shard K/N` (`gradcam merge` finds the shares by this name); and `concepts.json`,
`gradcam concepts`' report (a later search for inputs leaves a folder holding one alone)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "REPORT_NAME",
    "SHARD_REPORT",
    "shard_report_name",
    "is_report_name",
    "has_shard_reports",
    "CONCEPTS_NAME",
]

REPORT_NAME = "predictions.json"
SHARD_REPORT = re.compile(r"predictions\.(\d+)-of-(\d+)\.json")
CONCEPTS_NAME = "concepts.json"


def shard_report_name(shard: tuple[int, int] | None) -> str:
    """`predictions.json`, or `predictions.K-of-N.json` for one shard of a split run."""
    return REPORT_NAME if shard is None else f"predictions.{shard[0]}-of-{shard[1]}.json"


def is_report_name(name: str) -> bool:
    """Whether a file of this name may be a report, a whole run's or a share's."""
    return name == REPORT_NAME or SHARD_REPORT.fullmatch(name) is not None


def has_shard_reports(folder: Path) -> bool:
    """Whether `folder` (which exists) holds the report of a share: then the run was split, and
    `gradcam merge` makes its predictions.json."""
    return any(SHARD_REPORT.fullmatch(path.name) for path in folder.iterdir())
