"""Where a batch run's time goes: seconds per stage, and the stage that held the run back.

    decode + preprocess  ──▶  model (+ metrics)  ──▶  render (draw the pictures)  +  write

`metrics` (--metrics) is the model again, on each map's perturbed copies, on the model's loop.

The stages overlap (`pipeline`): decoding runs ahead in workers while the model works, and the
writer threads draw and save the previous images meanwhile. So two kinds of figures:

- busy seconds per stage, added up over every process and thread that did that work (a run with
  4 decode workers can have more decode seconds than wall seconds). `write` is encoding and
  writing the overlays, heatmaps and guided images (`writing`); the rest of a writer job is
  `render`, panels and thumbnails included (each drawn and written in one call);
- what the model's loop waited for: decoded images (`waited.decode`; not the first batch, which
  nothing can overlap whatever the workers), or room in the writer's queue and the last pictures
  at the end (`waited.output`). The model's own seconds are spent on that loop too.

Busy seconds say what costs the most work; waiting says what bounds throughput: a stage that runs
beside the model costs nothing until the model has to wait for it. So `slowest_stage` compares
the loop's parts — waiting for decoding, the model, the metrics, waiting for the output — and
names the largest, when it is a large enough share of a long enough run to be worth acting on.
Torch-free.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "STAGES",
    "MIN_RUN_SECONDS",
    "MIN_SHARE",
    "RunStatus",
    "StageTimes",
    "slowest_stage",
    "writing",
    "seconds_writing",
]

STAGES = ("decode", "model", "metrics", "render", "write")
# A stage is named only in runs of at least this long (start-up and the first batch dominate
# shorter ones) and when the loop spent at least this share of the run on it.
MIN_RUN_SECONDS = 2.0
MIN_SHARE = 1 / 3


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, as its images are finished (`Job.run(on_status=...)`)."""

    done: int  # inputs with a result, those taken over by resume= included
    total: int
    errors: int  # results with status "error" so far
    resumed: int  # results taken over from the previous report (not explained now)
    seconds: float  # since the run started


class StageTimes:
    """Busy seconds per stage and the model loop's waits, added up from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.busy = dict.fromkeys(STAGES, 0.0)
        self.waited = {"decode": 0.0, "output": 0.0}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.busy[stage] += seconds

    def wait(self, side: str, seconds: float) -> None:
        with self._lock:
            self.waited[side] += seconds

    @contextmanager
    def busy_in(self, stage: str) -> Iterator[None]:
        """Count the time inside as `stage`'s work."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    @contextmanager
    def waiting_for(self, side: str) -> Iterator[None]:
        """Count the time inside as the model's loop waiting for `side` (decode or output)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.wait(side, time.perf_counter() - start)

    def record(self) -> dict[str, object]:
        """The report's `summary.stages`, without `slowest` (the report adds it)."""
        with self._lock:
            figures: dict[str, object] = {name: round(s, 3) for name, s in self.busy.items()}
            figures["waited"] = {name: round(s, 3) for name, s in self.waited.items()}
        return figures


def slowest_stage(stages: Mapping[str, Any] | None, seconds: float) -> str | None:
    """`decode`, `model`, `metrics`, `render` or `write`: the stage the run's throughput was bound
    by, or None when the run is too short to tell or no part of the loop took MIN_SHARE of it.

    `stages` as `StageTimes.record` gives it. The loop's parts are the model's seconds and its
    waits; waiting for the output is laid on rendering or writing, whichever kept the writer
    threads busier.
    """
    if not stages or seconds < MIN_RUN_SECONDS:
        return None
    waited = stages["waited"]
    parts = {
        "decode": waited["decode"],
        "model": stages["model"],
        "metrics": stages.get("metrics", 0.0),  # --metrics: the model again, on the loop
        "output": waited["output"],
    }
    name = max(parts, key=lambda part: float(parts[part]))
    if parts[name] < MIN_SHARE * seconds:
        return None
    if name == "output":
        return "render" if stages["render"] >= stages["write"] else "write"
    return name


# Seconds this thread spent encoding and writing files (the rest of a save job is drawing).
class _Clock(threading.local):
    seconds = 0.0


_writing = _Clock()


@contextmanager
def writing() -> Iterator[None]:
    """Count the time inside as writing (encoding and saving a file) on this thread."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _writing.seconds += time.perf_counter() - start


def seconds_writing() -> float:
    """This thread's writing seconds so far: a save job reads it before and after."""
    return _writing.seconds
