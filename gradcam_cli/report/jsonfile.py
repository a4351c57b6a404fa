"""Reading and writing a report file: the one place that turns a report into text, and text
back into a report.

The text is strict JSON (`allow_nan=False`: non-finite numbers were made null before), indented,
UTF-8 as written (`ensure_ascii=False`), ending in a newline. Writes are atomic (`files`): a
reader, or a run that crashed mid-write, sees the previous report or the new one, whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..files import write_text_atomic
from .names import REPORT_NAME, has_shard_reports

__all__ = [
    "REPORT_HEAD_BYTES",
    "report_text",
    "write_report_file",
    "read_report_file",
    "read_run_report",
    "is_report_head",
]

# How much of a file `is_report_head` needs: a report this small is parsed whole; of a larger
# one, only its start is matched (the images of a folder are not read to find reports).
REPORT_HEAD_BYTES = 1 << 20
_REPORT_START = re.compile(rb'\A\s*\{\s*"schema_version"\s*:\s*\d+\s*,')
# The list a gradcam document holds: a run's report its "results", a comparison its "pairs",
# a `gradcam concepts` report its "concepts".
_DOCUMENT_LISTS = {
    "results": re.compile(rb'"results"\s*:\s*\['),
    "pairs": re.compile(rb'"pairs"\s*:\s*\['),
    "concepts": re.compile(rb'"concepts"\s*:\s*\['),  # `gradcam concepts`' concepts.json
}


def report_text(document: Mapping[str, object]) -> str:
    """The text of a report file (and of `--json` on stdout)."""
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_report_file(path: Path, document: Mapping[str, object]) -> None:
    write_text_atomic(path, report_text(document))


def read_report_file(path: Path) -> dict[str, Any]:
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


def read_run_report(out_dir: str | Path) -> dict[str, Any]:
    """OUT/predictions.json as a dict; UsageError (exit 2) when there is none to read, saying
    what to run first."""
    out_dir = Path(out_dir)
    path = out_dir / REPORT_NAME
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir} is not a folder; give the --out folder of a gradcam run")
    if not path.is_file():
        if has_shard_reports(out_dir):
            raise UsageError(
                f"no {REPORT_NAME} in {out_dir}, only the shares of a --shard run: "
                f"run `gradcam merge {out_dir}` first, then `gradcam report {out_dir}`"
            )
        raise UsageError(
            f"no {REPORT_NAME} in {out_dir}: run `gradcam explain ... --out {out_dir}` first"
        )
    return read_report_file(path)


def is_report_head(head: bytes, list_key: str = "results") -> bool:
    """Whether a file is a gradcam report (`list_key` "results"; "pairs": a comparison), from
    its first REPORT_HEAD_BYTES + 1 bytes (or all of it, when shorter): parsed whole when that
    is all of it, by how it starts otherwise."""
    if len(head) <= REPORT_HEAD_BYTES:
        try:
            document = json.loads(head)
        except ValueError:
            return False
        return (
            isinstance(document, dict)
            and isinstance(document.get("schema_version"), int)
            and isinstance(document.get(list_key), list)
        )
    return bool(_REPORT_START.match(head) and _DOCUMENT_LISTS[list_key].search(head))
