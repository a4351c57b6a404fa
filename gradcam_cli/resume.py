"""What a run has done, kept safe: checkpoints of the report, and `--resume` from one.

While a run goes on, its report is written every so often (atomically, `summary.in_progress`
true), so that a crash, a SIGKILL or a power cut loses only the last few seconds of work.
`--resume` reads the report back (a finished, interrupted or checkpointed one), refuses it if it
comes from another configuration (`report.samerun`: only the speed options may change), and
takes over every `ok` record whose files are all still there: those images are neither decoded
nor explained again. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .files import resolve_inside
from .inputs import InputItem
from .report import ImageResult, option_differences, read_report_file, run_differences

__all__ = [
    "CHECKPOINT_SECONDS",
    "Checkpoints",
    "Ledger",
    "previous_report",
    "reusable_results",
]

# At least this long between two checkpoints, and at least 20 times what the last one took to
# write: a report of a million results takes seconds to write, and must not slow the run down.
CHECKPOINT_SECONDS = 10.0
_CHECKPOINT_COST_FACTOR = 20.0

# The keys of an explanation record that name files; a record is reused only if all exist.
ARTIFACT_KEYS = ("overlay", "heatmap", "raw", "guided", "panel", "mask")


def previous_report(path: Path, current: Mapping[str, object]) -> dict[str, Any]:
    """The report at `path` that `current` (this run's report, so far) continues; UsageError
    when it cannot be read, or was written by another configuration (naming what differs)."""
    try:
        previous = read_report_file(path)
    except UsageError as exc:
        raise UsageError(f"--resume: {exc}; delete it to start over") from None
    differs = run_differences(previous, current) + option_differences(previous, current)
    if differs:
        raise UsageError(
            f"--resume: {path} comes from another configuration (different "
            f"{', '.join(differs)}); run with the same options, or use another --out"
        )
    return previous


def reusable_results(
    previous: Mapping, items: Sequence[InputItem], out_dir: Path
) -> dict[int, ImageResult]:
    """Index in `items` → the previous `ok` record of that input, if all its files exist.

    A record is reused only when its files carry the input's current key: when the list of
    inputs changed and keys moved, the image is explained again rather than risk two inputs
    sharing files.
    """
    done = {
        record.get("input"): record
        for record in previous.get("results", [])
        if isinstance(record, dict) and record.get("status") == "ok"
    }
    reused = {}
    for index, item in enumerate(items):
        record = done.get(item.source)
        if record is not None and _files_complete(record, item.key, out_dir):
            reused[index] = ImageResult.from_dict(record)
    return reused


def _curves_file(explanation: Mapping) -> object:
    """The --save-raw curves file of an explanation measured with --metrics, else None."""
    faithfulness = explanation.get("faithfulness")
    return faithfulness.get("curves") if isinstance(faithfulness, dict) else None


def _files_complete(record: Mapping, key: str, out_dir: Path) -> bool:
    explanations = record.get("explanations") or []
    paths = [e.get(name) for e in explanations for name in ARTIFACT_KEYS if e.get(name)]
    paths += [curves for e in explanations if (curves := _curves_file(e))]
    if not explanations or not all(
        isinstance(path, str) and path.startswith(f"{key}.") for path in paths
    ):
        return False
    try:  # writes are atomic (temporary file, then rename): a file that exists is whole
        return all(resolve_inside(out_dir, path).is_file() for path in paths)
    except UsageError:
        return False


@dataclass
class Ledger:
    """Results in input order: those taken over (`--resume`) and those of this run so far."""

    slots: list[ImageResult | None]
    todo: list[int]  # indices of the inputs this run explains, in order
    filled: int = 0

    @classmethod
    def start(cls, count: int, reused: Mapping[int, ImageResult]) -> Ledger:
        slots = [reused.get(index) for index in range(count)]
        return cls(slots, [index for index in range(count) if index not in reused])

    def add(self, done: Sequence[ImageResult]) -> None:
        for result in done:
            self.slots[self.todo[self.filled]] = result
            self.filled += 1

    def results(self) -> list[ImageResult]:
        return [result for result in self.slots if result is not None]

    @property
    def count(self) -> int:
        return len(self.slots) - len(self.todo) + self.filled


class Checkpoints:
    """Writes the report now and then while the run goes on; a failed write is retried later
    (the previous checkpoint stays whole: writes are atomic)."""

    def __init__(self, write: Callable[[], None], clock: Callable[[], float] = time.monotonic):
        self.write, self.clock = write, clock
        self.interval = CHECKPOINT_SECONDS
        self.last = clock()

    def maybe_write(self) -> None:
        if self.clock() - self.last < self.interval:
            return
        start = self.clock()
        try:
            self.write()
        except OSError:
            pass  # e.g. disk full: the last checkpoint is still there; the final write reports
        took = self.clock() - start
        self.last = self.clock()
        self.interval = max(CHECKPOINT_SECONDS, _CHECKPOINT_COST_FACTOR * took)
