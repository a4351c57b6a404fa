"""`gradcam merge DIR`: the reports of a run split with `--shard K/N`, as one report.

Each share wrote `predictions.K-of-N.json` into the same folder. The merged report is an ordinary
`predictions.json`: the shares' results one after another (share 1 first), the summary added up
(`seconds` is the slowest share's: they ran side by side; `stages` are the shares' added up),
`options.shard` null. Shares that are missing, or that come from different runs (another model,
method, layers or schema), are refused: a merged report must describe one run. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UsageError
from .files import write_text_atomic
from .report import (
    REPORT_NAME,
    SAME_RUN_KEYS,
    SHARD_REPORT,
    faithfulness_totals,
    gate_totals,
    localization_totals,
    read_report_file,
    stages_summary,
)
from .timing import STAGES

__all__ = ["merge_shards"]


def merge_shards(folder: str | Path) -> tuple[Path, dict]:
    """Merge FOLDER/predictions.K-of-N.json into FOLDER/predictions.json; returns its path and
    the merged document."""
    folder = Path(folder)
    shares = _find_shares(folder)
    documents = [read_report_file(path) for _, path in sorted(shares.items())]
    _check_same_run(documents, sorted(shares.values()))
    merged = dict(documents[0])
    merged["options"] = {**documents[0]["options"], "shard": None}
    merged["results"] = [result for doc in documents for result in doc["results"]]
    merged["summary"] = _summary(documents, merged["results"])
    target = folder / REPORT_NAME
    text = json.dumps(merged, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    write_text_atomic(target, text)
    return target, merged


def _find_shares(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give the --out folder the shares wrote to")
    found: dict[int, dict[int, Path]] = {}
    for path in folder.iterdir():
        match = SHARD_REPORT.fullmatch(path.name)
        if match:
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    if not found:
        raise UsageError(f"no predictions.K-of-N.json in {folder}: nothing to merge")
    if len(found) > 1:
        splits = ", ".join(f"{n} shares" for n in sorted(found))
        raise UsageError(f"{folder} holds reports of different splits ({splits}); keep one")
    ((total, shares),) = found.items()
    missing = sorted(set(range(1, total + 1)) - set(shares))
    if missing:
        names = ", ".join(f"{k}/{total}" for k in missing)
        raise UsageError(f"missing shares {names} in {folder}: run them, then merge again")
    return shares


def _check_same_run(documents: list[dict], paths: list[Path]) -> None:
    first = documents[0]
    for doc, path in zip(documents[1:], paths[1:], strict=True):
        differs = [key for key in SAME_RUN_KEYS if doc.get(key) != first.get(key)]
        if differs:
            raise UsageError(
                f"{path.name} comes from another run than {paths[0].name} "
                f"(different {', '.join(differs)}); merge only the shares of one run"
            )


def _summary(documents: list[dict], results: list[dict]) -> dict:
    summaries = [doc["summary"] for doc in documents]
    localizations = [
        explanation["localization"]
        for result in results
        for explanation in result.get("explanations", [])
        if explanation.get("localization") is not None
    ]
    measured = any(s.get("localization") is not None for s in summaries)
    records = [e for result in results for e in result.get("explanations", [])]
    faithful = [e["faithfulness"] for e in records if e.get("faithfulness") is not None]
    rules = (summaries[0].get("gate") or {}).get("rules")
    reduced = [s["batch_size_reduced_to"] for s in summaries if s.get("batch_size_reduced_to")]
    return {
        "images": sum(s["images"] for s in summaries),
        "ok": sum(s["ok"] for s in summaries),
        "errors": sum(s["errors"] for s in summaries),
        "seconds": max(s["seconds"] for s in summaries),
        "interrupted": any(s["interrupted"] for s in summaries),
        "localization": localization_totals(localizations) if measured else None,
        "resumed": sum(s.get("resumed", 0) for s in summaries),
        "in_progress": any(s.get("in_progress", False) for s in summaries),
        "batch_size_reduced_to": min(reduced) if reduced else None,
        "stages": _stages(summaries),
        "faithfulness": (
            faithfulness_totals(faithful)
            if any(s.get("faithfulness") is not None for s in summaries)
            else None
        ),
        "gate": gate_totals([e["gate"] for e in records if e.get("gate")], rules)
        if rules
        else None,
    }


def _stages(summaries: list[dict]) -> dict | None:
    """The shares' stage seconds added up, and the slowest stage over them all (against the
    shares' seconds added up too: each share's loop waited on its own)."""
    timed = [s for s in summaries if s.get("stages")]
    if not timed:  # shares written before the stages were recorded
        return None
    total: dict[str, object] = {
        name: round(sum(s["stages"].get(name, 0.0) for s in timed), 3) for name in STAGES
    }
    total["waited"] = {
        side: round(sum(s["stages"]["waited"][side] for s in timed), 3)
        for side in ("decode", "output")
    }
    return stages_summary(total, sum(s["seconds"] for s in timed))
