"""The run report: the versioned JSON a run writes (`predictions.json`), and everything that
reads, writes, checks, sums up or merges it. Torch-free.

| module | what lives there |
|---|---|
| `records` | one input's record: predictions, explanations (frozen dataclasses) |
| `document` | the whole run's `Report`, SCHEMA_VERSION, the library versions |
| `summary` | the `summary` over the results, for a run and for a merge alike |
| `jsonfile` | the one writer and the one reader of a report file (atomic writes) |
| `samerun` | whether two reports describe the same run (`merge`, `--resume`) |
| `names` | `predictions.json` and a share's `predictions.K-of-N.json` |
| `merge` | `gradcam merge`: the shares' reports as one |
"""

from __future__ import annotations

from .document import SCHEMA_VERSION, Report, library_versions
from .jsonfile import (
    REPORT_HEAD_BYTES,
    is_report_head,
    read_report_file,
    read_run_report,
    report_text,
    write_report_file,
)
from .merge import merge_shards, merged_document
from .names import REPORT_NAME, SHARD_REPORT, has_shard_reports, is_report_name, shard_report_name
from .records import ExplanationRecord, ImageResult, Prediction, TargetRef, gate_record
from .samerun import SAME_RUN_KEYS, SPEED_OPTIONS, option_differences, run_differences
from .summary import (
    RunFacts,
    faithfulness_totals,
    gate_totals,
    localization_totals,
    stages_summary,
    summarize,
)

__all__ = [
    # the document
    "SCHEMA_VERSION",
    "Report",
    "library_versions",
    "Prediction",
    "TargetRef",
    "ExplanationRecord",
    "ImageResult",
    "gate_record",
    # its summary
    "RunFacts",
    "summarize",
    "localization_totals",
    "faithfulness_totals",
    "gate_totals",
    "stages_summary",
    # its file
    "REPORT_NAME",
    "SHARD_REPORT",
    "shard_report_name",
    "is_report_name",
    "has_shard_reports",
    "REPORT_HEAD_BYTES",
    "is_report_head",
    "report_text",
    "write_report_file",
    "read_report_file",
    "read_run_report",
    # same run, merged
    "SAME_RUN_KEYS",
    "SPEED_OPTIONS",
    "run_differences",
    "option_differences",
    "merge_shards",
    "merged_document",
]
