"""Watching a run (issue 19, items 11-12): on a terminal a one-line progress bar (done/total,
images/s, ETA, errors so far) cleared at the end, and "loading MODEL…" before the model loads;
nothing of that in a pipe or a log. The closing summary names the stage that held the run back
when it is not the model, with the option that helps."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import console_script, noise_photos, sleepy_net_source
from terminal import read_until_closed, screen
from typer.testing import CliRunner

import gradcam_cli.outputs as outputs
import gradcam_cli.pipeline as pipeline
import gradcam_cli.runner as runner
import gradcam_cli.timing as timing
from gradcam_cli.cli import app
from gradcam_cli.job import run_job
from gradcam_cli.outputs import RunOptions
from gradcam_cli.progress import pace_note
from gradcam_cli.timing import RunStatus, slowest_stage

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CLOSING = re.compile(r"^gradcam: 6/7 images explained in [\d.]+s; report: out/predictions\.json")
# `gradcam explain` as the console script runs it, then whether rich was imported.
MAIN = console_script(
    "print('rich imported:', any(name.split('.')[0] == 'rich' for name in sys.modules))\n"
)
# A small model whose batches come far enough apart for the bar to draw each.
MODELS = sleepy_net_source("Net", 0.15)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Six photos and a file that is not one (an error result); models.py beside them."""
    (tmp_path / "models.py").write_text(MODELS)
    folder = noise_photos(tmp_path / "photos", 6, width=64, height=48)
    (folder / "7_broken.png").write_text("not an image")
    return folder


EXPLAIN = ["explain", "photos", "-m", "models.py:Net", "--input-size", "32", "--layer", "features"]
EXPLAIN += ["-b", "2", "--workers", "0", "--out", "out"]


def run_on_terminal(cwd: Path) -> tuple[str, str]:
    """The command with stderr on a pseudo-terminal: what it wrote there, and stdout."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "140"}
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, *EXPLAIN], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=secondary, text=True,
    )  # fmt: skip
    os.close(secondary)
    written: list[str] = []
    reader = threading.Thread(target=lambda: written.append(read_until_closed(primary)))
    reader.start()  # read as it comes: a full pty buffer would block the run
    try:
        stdout, _ = proc.communicate(timeout=120)
        reader.join(timeout=30)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    return "".join(written), stdout


def test_on_a_terminal_a_one_line_bar_counts_images_and_errors_and_is_cleared(photos):
    written, stdout = run_on_terminal(photos.parent)
    assert "exit 1" in stdout  # one input failed
    assert "rich imported: True" in stdout
    drawn = ESCAPES.sub("", written).replace("\r\n", "\n")
    # Each state of the bar, as drawn and redrawn in place (\r) on one line.
    parts = [part for line in drawn.split("\n") for part in line.split("\r")]
    states = [part for part in parts if part.startswith("gradcam ") and "/7 images" in part]
    assert "0/7 images  – images/s  ETA –  0 errors" in states[0], states
    last = states[-1]
    assert "7/7 images" in last and re.search(r"[\d.]+ images/s  ETA 0:00  1 error$", last), last
    assert any(re.search(r"[1-6]/7 images  [\d.]+ images/s  ETA \d+:\d\d", s) for s in states)
    # What stays on the screen: the loading line first, the closing summary, no bar.
    lines = screen(written)
    assert lines[0] == "gradcam: loading models.py:Net…", lines
    assert any(CLOSING.match(line) for line in lines), lines
    assert lines[-1].startswith("gradcam: 6/7 images explained"), lines
    assert not [line for line in lines if "images/s" in line], lines
    assert "gradcam: photos/7_broken.png: cannot read" in "\n".join(lines)


def test_in_a_pipe_only_the_closing_lines_no_bar_and_no_rich(photos):
    proc = subprocess.run(
        [sys.executable, "-c", MAIN, *EXPLAIN], cwd=photos.parent, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert "exit 1" in proc.stdout and "rich imported: False" in proc.stdout, proc.stdout
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert "loading" not in proc.stderr and "images/s" not in proc.stderr
    assert any(CLOSING.match(line) for line in proc.stderr.splitlines()), proc.stderr
    # A log reader finds the figures in the report instead.
    report = json.loads((photos.parent / "out" / "predictions.json").read_text())
    assert report["summary"]["stages"]["slowest"] in (None, "model")  # a small model's run
    assert report["summary"]["stages"]["model"] > 0


def test_the_library_reports_errors_so_far_beside_a_tqdm_style_progress(photos, tmp_path):
    seen: list[tuple[int, int]] = []
    statuses: list[RunStatus] = []
    report = run_job(
        photos, "demo:shapes", out=tmp_path / "out", workers=0, batch_size=2,
        progress=lambda done, total: seen.append((done, total)), on_status=statuses.append,
    )  # fmt: skip
    assert seen[-1] == (7, 7) and [(s.done, s.total) for s in statuses] == seen
    assert statuses[-1].errors == report.errors == 1 and statuses[-1].resumed == 0
    assert [s.errors for s in statuses] == sorted(s.errors for s in statuses)
    assert all(b.seconds >= a.seconds > 0 for a, b in zip(statuses, statuses[1:], strict=False))
    stages = report.to_dict()["summary"]["stages"]
    assert set(stages) == {"decode", "model", "metrics", "render", "write", "waited", "slowest"}
    assert stages["model"] > 0 and stages["decode"] > 0 and stages["write"] > 0


# -- the slowest stage --------------------------------------------------------------------------


def figures(
    decode=0.0, model=0.0, render=0.0, write=0.0, waited_decode=0.0, waited_output=0.0, **more
):
    return {
        "decode": decode, "model": model, "render": render, "write": write,
        "waited": {"decode": waited_decode, "output": waited_output}, **more,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("stages", "seconds", "slowest"),
    [
        (figures(model=8, decode=30, waited_decode=1), 10, "model"),  # busy decode, in parallel
        (figures(model=3, decode=9, waited_decode=6), 10, "decode"),
        (figures(model=3, render=5, write=2, waited_output=6), 10, "render"),
        (figures(model=3, render=2, write=5, waited_output=6), 10, "write"),
        (figures(model=2, metrics=7), 10, "metrics"),  # --metrics: the model again, on copies
        (figures(model=3, waited_decode=3, waited_output=3), 10, None),  # none takes a third
        (figures(model=0.2, waited_decode=1.5), 1.9, None),  # too short to tell
        (None, 100, None),  # a report not made by a batch run
    ],
)
def test_the_slowest_stage_is_what_the_model_loop_spent_most_on(stages, seconds, slowest):
    assert slowest_stage(stages, seconds) == slowest


def run_options(**values) -> RunOptions:
    return RunOptions(out_dir=Path("out"), **values)


def test_the_hint_names_only_options_the_run_does_not_use_already():
    def note(stages, device="cpu", **options):
        stages = {**stages, "slowest": slowest_stage(stages, 10.0)}
        return pace_note({"seconds": 10.0, "stages": stages}, run_options(**options), device)

    decode = figures(model=3, waited_decode=6.04)
    assert note(decode, workers=0).startswith(
        "slowest stage: decode (the model waited 6.0s of 10.0s for images) — try --workers "
    )
    assert note(figures(model=9)) is None
    assert note(figures(model=2, metrics=7)).startswith(
        "slowest stage: metrics (7.0s of 10.0s: the model on each map's perturbed copies) — "
        "measure fewer --metrics"
    )
    rendering = figures(model=3, render=5, write=2, waited_output=6)
    assert note(rendering).endswith("for the pictures) — try --no-heatmap")
    # JPEG overlays are drawn on a CUDA GPU that decodes the photos; a panel needs the heatmap.
    assert note(rendering, "cuda:0").endswith("— try --no-heatmap or --format jpg")
    assert note(rendering, "cuda:0", decode="cpu").endswith("— try --no-heatmap")
    assert note(rendering, panel=True).endswith("— try without --panel")
    writing = figures(model=3, render=2, write=5, waited_output=6)
    assert note(writing).endswith("for the files) — try --format jpg or --no-heatmap")
    assert note(writing, overlay_format="jpg").endswith("— try --no-heatmap")
    assert note(writing, overlay_format="jpg", heatmap=False).endswith("for the files)")


def slowly(function, seconds: float):
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return function(*args, **kwargs)

    return slow


@pytest.mark.parametrize(
    ("module", "name", "delay", "expected"),
    [
        (outputs, "png_bytes", 0.5, "write (the model waited {}s of {}s for the files) — try "
         "--format jpg or --no-heatmap"),
        (outputs, "heatmap_palette_image", 1.0, "render (the model waited {}s of {}s for the "
         "pictures) — try --no-heatmap"),
        (pipeline, "_decode_one", 1.0, "decode (the model waited {}s of {}s for images) — try "
         "--workers"),
        (runner, "_explain_batch", 0.7, None),
    ],
)  # fmt: skip
def test_the_closing_summary_names_a_slow_stage_with_its_remedy_but_not_the_model(
    photos, tmp_path, monkeypatch, module, name, delay, expected
):
    monkeypatch.setattr(module, name, slowly(getattr(module, name), delay))
    monkeypatch.setattr(pipeline, "default_write_threads", lambda: 1)  # the same on any machine
    monkeypatch.setattr(timing, "MIN_RUN_SECONDS", 1.0)  # shorter runs, the same decision
    (photos / "7_broken.png").unlink()
    for extra in sorted(photos.iterdir())[3:]:  # 3 batches of 1: 3 s of the slow stage
        extra.unlink()
    args = [str(photos), "-m", "demo:shapes", "--input-size", "32", "-b", "1", "--workers", "0"]
    args += ["--device", "cpu"]  # the model's own seconds small beside the delay, on any machine
    result = CliRunner().invoke(app, ["explain", *args, "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    stages = summary["stages"]
    [closing] = [line for line in result.stderr.splitlines() if "images explained in" in line]
    if expected is None:
        assert stages["slowest"] == "model" and "slowest stage" not in closing, (stages, closing)
        return
    stage = expected.split(" ")[0]
    assert stages["slowest"] == stage, stages
    side = "decode" if stage == "decode" else "output"
    waited = expected.format(f"{stages['waited'][side]:.1f}", f"{summary['seconds']:.1f}")
    assert re.search(re.escape(f"; slowest stage: {waited}") + r"( \d+)?$", closing), closing
    assert stages["waited"][side] > stages["model"], stages


def test_a_burst_of_updates_is_drawn_once_its_last_state_a_moment_later():
    import io

    from gradcam_cli.progress import ProgressBar

    stream = io.StringIO()
    stream.isatty = lambda: True  # type: ignore[method-assign]
    with ProgressBar(1000, stream) as bar:
        time.sleep(0.15)  # the first update after a pause is drawn at once
        for done in range(1, 201):  # then a burst: results collected one after another
            bar.update(RunStatus(done=done, total=1000, errors=done // 100, resumed=0, seconds=2))
        drawn = stream.getvalue()
        assert "1/1000 images  0.5 images/s  ETA 33:18  0 errors" in ESCAPES.sub("", drawn)
        assert "200/1000" not in drawn  # not yet: at most one draw per 0.1 s
        time.sleep(0.3)
        assert "200/1000 images  100 images/s  ETA 0:08  2 errors" in screen(stream.getvalue())[0]
        assert stream.getvalue().count("/1000 images") <= 4  # the start, 1, 200: not 200 draws
    assert screen(stream.getvalue()) == []  # cleared


def test_without_rich_the_line_is_a_counter_that_other_lines_clear(monkeypatch):
    import io

    import gradcam_cli.progress as progress

    def no_rich(total, stream):
        raise ImportError("No module named 'rich'")

    monkeypatch.setattr(progress, "_RichLine", no_rich)
    stream = io.StringIO()
    stream.isatty = lambda: True  # type: ignore[method-assign]
    with progress.ProgressBar(4, stream) as bar:
        bar.update(RunStatus(done=2, total=4, errors=1, resumed=0, seconds=1.0))
        assert progress.active() is bar
        bar.print("gradcam: warning: a line above the counter")
        bar.update(RunStatus(done=4, total=4, errors=1, resumed=0, seconds=2.0))
        assert "4/4 images, 2.0 images/s, ETA 0:00, 1 error" in screen(stream.getvalue())[-1]
    assert progress.active() is None
    assert screen(stream.getvalue()) == ["gradcam: warning: a line above the counter"]
    assert "2/4 images, 2.0 images/s, ETA 0:01, 1 error" in stream.getvalue()
