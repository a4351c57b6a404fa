"""`gradcam merge DIR`: the reports of a run split with `--shard K/N`, as one report.

Each share wrote `predictions.K-of-N.json` into the same folder. The merged report is an ordinary
`predictions.json`: the shares' results one after another (share 1 first), the summary made
again over them (`seconds` is the slowest share's: they ran side by side; `stages` are the
shares' added up), `options.shard` null. Shares that are missing, or that come from different
runs (another model, method, layers or schema), are refused: a merged report must describe one
run. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..timing import STAGES
from .jsonfile import read_report_file, write_report_file
from .names import REPORT_NAME, SHARD_REPORT
from .samerun import run_differences
from .summary import RunFacts, stages_summary, summarize

__all__ = ["merge_shards", "merged_document"]


def merge_shards(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Merge FOLDER/predictions.K-of-N.json into FOLDER/predictions.json; returns its path and
    the merged document."""
    folder = Path(folder)
    paths = [path for _, path in sorted(_find_shares(folder).items())]
    documents = [read_report_file(path) for path in paths]
    _check_same_run(documents, paths)
    merged = merged_document(documents)
    target = folder / REPORT_NAME
    write_report_file(target, merged)
    return target, merged


def merged_document(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report of the whole run, from its shares' reports in order (the first one's keys,
    in its order)."""
    merged = dict(documents[0])
    merged["options"] = {**documents[0]["options"], "shard": None}
    merged["results"] = [result for doc in documents for result in doc["results"]]
    merged["summary"] = summarize(merged["results"], _merged_facts(documents))
    return merged


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


def _check_same_run(documents: Sequence[Mapping[str, Any]], paths: Sequence[Path]) -> None:
    first = documents[0]
    for doc, path in zip(documents[1:], paths[1:], strict=True):
        differs = run_differences(first, doc)
        if differs:
            raise UsageError(
                f"{path.name} comes from another run than {paths[0].name} "
                f"(different {', '.join(differs)}); merge only the shares of one run"
            )


def _merged_facts(documents: Sequence[Mapping[str, Any]]) -> RunFacts:
    """What the shares' summaries say of the whole run: they ran side by side."""
    summaries = [doc["summary"] for doc in documents]
    reduced = [s["batch_size_reduced_to"] for s in summaries if s.get("batch_size_reduced_to")]
    return RunFacts(
        seconds=max(s["seconds"] for s in summaries),
        interrupted=any(s["interrupted"] for s in summaries),
        resumed=sum(s.get("resumed", 0) for s in summaries),
        in_progress=any(s.get("in_progress", False) for s in summaries),
        batch_size_reduced_to=min(reduced) if reduced else None,
        stages=_stages(summaries),
        measures_localization=any(s.get("localization") is not None for s in summaries),
        measures_faithfulness=any(s.get("faithfulness") is not None for s in summaries),
        gate_rules=(summaries[0].get("gate") or {}).get("rules") or (),
    )


def _stages(summaries: Sequence[Mapping[str, Any]]) -> dict[str, object] | None:
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
