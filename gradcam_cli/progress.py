"""What `gradcam explain` shows of a run while it goes on, and its pace at the end.

On a terminal, one line on stderr, redrawn in place and cleared when the run ends:

    gradcam ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╺━━━━━━━  32/60 images  4.1 images/s  ETA 0:07  1 error

drawn by rich (Typer's own dependency), imported only when a bar is shown: `gradcam --help` and
runs whose stderr is a log or a pipe never load it. Lines logged while the bar is up
(`active().print`) are printed above it, and so is what the user's model prints from Python,
so the two never run together. Without a terminal nothing is drawn: a CI log gets the closing
summary only.

`pace_note` is the closing summary's last part: the stage that held the run back, when it is not
the model, with the option that speeds it up (`timing.slowest_stage` decides which).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TextIO

from .timing import RunStatus

__all__ = ["ProgressBar", "on_terminal", "active", "pace_note"]

_active: ProgressBar | None = None


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default sys.stderr) is a terminal someone watches."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):  # closed, or no such method
        return False


def active() -> ProgressBar | None:
    """The bar drawn now, if any."""
    return _active


class ProgressBar:
    """`with ProgressBar(total) as bar: job.run(on_status=bar.update)`: the run's line on a
    terminal; on anything else it draws nothing and `update` costs nothing."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self._display: Any = None  # rich's Progress, or the plain line without rich

    def __enter__(self) -> ProgressBar:
        global _active
        if on_terminal(self.stream) and _active is None:
            self._display = _start(self.total, self.stream)
            _active = self
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        global _active
        if self._display is not None:
            self._display.stop()  # clears the line: the closing summary takes its place
            self._display = None
            _active = None

    def update(self, status: RunStatus) -> None:
        if self._display is not None:
            self._display.show(status)

    def print(self, line: str) -> None:
        if self._display is not None:
            self._display.print(line)
        else:
            print(line, file=self.stream, flush=True)


def _start(total: int, stream: TextIO):
    try:
        return _RichLine(total, stream)
    except ImportError:  # Typer without rich (typer-slim): the counter alone
        return _PlainLine(total, stream)


def _pace(status: RunStatus | None, total: int) -> tuple[str, str]:
    """Images per second over the images explained now (those taken over by a resume cost
    nothing), and the time left at that pace; dashes before the first batch."""
    if status is None or status.seconds <= 0 or status.done <= status.resumed:
        return "–", "–"
    rate = (status.done - status.resumed) / status.seconds
    shown = f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"
    return shown, _clock((total - status.done) / rate)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _errors(count: int) -> str:
    return f"{count} error" if count == 1 else f"{count} errors"


# A redraw costs about 0.6 ms of the model's thread: at most this often (and at the end).
REDRAW_SECONDS = 0.1


class _RichLine:
    """The bar, drawn by rich when images are done (at most every REDRAW_SECONDS: a burst of
    them is drawn once, a moment after) or a line is printed above it. Nothing on it moves in
    between, so nothing is written to the terminal while the run waits."""

    def __init__(self, total: int, stream: TextIO):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        console = Console(file=stream, highlight=False)
        self.total = total
        self.progress = Progress(
            TextColumn("gradcam"),
            BarColumn(bar_width=None),
            TextColumn(
                "{task.completed}/{task.total} images  {task.fields[rate]} images/s  "
                "ETA {task.fields[eta]}  {task.fields[errors]}"
            ),
            console=console,
            transient=True,  # cleared at the end
            auto_refresh=False,
            expand=False,
        )
        rate, eta, errors = self._fields(None)
        self.task = self.progress.add_task("", total=total, rate=rate, eta=eta, errors=errors)
        self.progress.start()  # draws the line at once: 0/N images
        self.drawn = time.monotonic()
        self.later: threading.Timer | None = None  # the draw of a burst's last update
        self.lock = threading.Lock()

    def _fields(self, status: RunStatus | None) -> tuple[str, str, str]:
        """Images per second, the time left, the errors so far (in red when there are)."""
        rate, eta = _pace(status, self.total)
        errors = 0 if status is None else status.errors
        return rate, eta, f"[red]{_errors(errors)}[/]" if errors else _errors(errors)

    def show(self, status: RunStatus) -> None:
        rate, eta, errors = self._fields(status)
        self.progress.update(self.task, completed=status.done, rate=rate, eta=eta, errors=errors)
        wait = self.drawn + REDRAW_SECONDS - time.monotonic()
        if wait <= 0 or status.done >= self.total:
            self._draw()
            return
        with self.lock:
            if self.later is None:
                self.later = threading.Timer(wait, self._draw)
                self.later.daemon = True
                self.later.start()

    def _draw(self) -> None:
        with self.lock:
            if self.later is not None:
                self.later.cancel()
                self.later = None
        self.progress.refresh()
        self.drawn = time.monotonic()

    def print(self, line: str) -> None:
        # Not markup, not highlighted, not wrapped by rich: the line as `gradcam` wrote it.
        self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        with self.lock:
            if self.later is not None:
                self.later.cancel()
        self.progress.stop()


class _PlainLine:
    """`gradcam: 32/60 images, 4.1 images/s, ETA 0:07, 1 error` rewritten with \\r, for a
    Typer installed without rich; any other line first clears it."""

    def __init__(self, total: int, stream: TextIO):
        self.total, self.stream = total, stream
        self.open = False

    def show(self, status: RunStatus) -> None:
        rate, eta = _pace(status, self.total)
        text = f"\rgradcam: {status.done}/{self.total} images, {rate} images/s, ETA {eta}"
        text += f", {_errors(status.errors)}"
        print(text + "\x1b[K", end="", file=self.stream, flush=True)
        self.open = True

    def print(self, line: str) -> None:
        self.stop()
        print(line, file=self.stream, flush=True)

    def stop(self) -> None:
        if self.open:
            print("\r\x1b[2K", end="", file=self.stream, flush=True)
            self.open = False


# -- the closing summary's hint -------------------------------------------------------------

_WAITED_FOR = {"decode": "images", "render": "the pictures", "write": "the files"}


def pace_note(summary: Mapping[str, Any], run_options: Any, device: str = "cpu") -> str | None:
    """`slowest stage: decode (the model waited 12.3s of 20.1s for images) — try --workers 4`,
    or None when the model itself was the slowest or the run too short to tell
    (`summary.stages.slowest`, from `timing.slowest_stage`). `run_options`: the RunOptions the
    run had, `device` the model's."""
    stages = summary.get("stages")
    stage = stages["slowest"] if stages else None
    if stages is None or stage in (None, "model"):
        return None
    if stage == "metrics":  # on the model's loop: no wait, its own seconds
        return (
            f"slowest stage: metrics ({stages['metrics']:.1f}s of {summary['seconds']:.1f}s: "
            "the model on each map's perturbed copies) — measure fewer --metrics or "
            "--baselines, or fewer --metric-steps"
        )
    side = "decode" if stage == "decode" else "output"
    note = (
        f"slowest stage: {stage} (the model waited {stages['waited'][side]:.1f}s of "
        f"{summary['seconds']:.1f}s for {_WAITED_FOR[stage]})"
    )
    remedies = _remedies(stage, run_options, device)
    return note + (f" — try {' or '.join(remedies)}" if remedies else "")


def _remedies(stage: str, options: Any, device: str) -> list[str]:
    """The options that take work off `stage`, of those this run does not use already: more
    decode workers (up to a core each); no heatmap to draw and deflate; JPEG overlays, which
    encode several times faster than PNG, and are drawn on a CUDA GPU that decodes the photos;
    no panels, each a figure drawn and deflated."""
    if stage == "decode":
        more = min(max(2, 2 * options.workers), _cores())
        return [f"--workers {more}"] if more > options.workers else []
    jpeg = ["--format jpg"] if options.overlay_format == "png" else []
    no_heatmap = ["--no-heatmap"] if options.heatmap else []
    if stage == "write":
        return jpeg + no_heatmap
    if options.panel:  # the heatmap is drawn for the panel anyway
        return ["without --panel"]
    drawn_on_gpu = device.startswith("cuda") and options.decode != "cpu"
    return no_heatmap + (jpeg if drawn_on_gpu else [])


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
