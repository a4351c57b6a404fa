"""Stopping a run and finishing it (issue 7): Ctrl-C, SIGTERM and even SIGKILL leave only whole
files and a report of what was done; `--resume` explains only what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import GRADCAM, overlays, sleepy_net_source, strict_report, wait_for
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.signals import Terminated

IMAGES = 40

# A model slow enough (50 ms a forward) that a signal always lands mid-run.
SLOW_MODEL = sleepy_net_source("Slow", 0.05)


@pytest.fixture
def workspace(tmp_path):
    (tmp_path / "slow_model.py").write_text(SLOW_MODEL)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        pixels = rng.integers(0, 256, (24 + i % 5, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"img{i:02d}.png")
    return tmp_path


def command(*extra: str, workers: str = "0") -> list[str]:
    return [
        *("explain", "photos", "--model", "slow_model.py:Slow", "--input-size", "32"),
        *("--layer", "features", "-b", "2", "--save-raw", "--out", "out", "--workers", workers),
        *extra,
    ]


def start(workspace: Path, argv: list[str], python: str | None = None) -> subprocess.Popen:
    """The real `gradcam` in its own process group, as a shell would start it."""
    program = [GRADCAM] if python is None else [sys.executable, "-c", python]
    return subprocess.Popen(
        [*program, *argv],
        cwd=workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def files_of(report: dict) -> set[str]:
    return {
        e[key]
        for r in report["results"]
        for e in r["explanations"]
        for key in ("overlay", "heatmap", "raw")
    }


def assert_everything_on_disk_is_whole_and_reported(out: Path) -> dict:
    """No temporary file; every picture and map decodes to the end; the report's ok records are
    exactly the images whose files are on disk."""
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    on_disk = set()
    for path in out.iterdir():
        if path.suffix == ".png":
            with Image.open(path) as picture:
                picture.load()
        elif path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        if path.name != "predictions.json":
            on_disk.add(path.name)
    report = strict_report(out)
    assert all(r["status"] == "ok" for r in report["results"])
    assert files_of(report) == on_disk
    return report


def file_ids(out: Path, names: set[str]) -> dict[str, tuple[int, int]]:
    return {name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) for name in names}


def inputs_of(report: dict) -> list[str]:
    return [r["input"] for r in report["results"]]


ALL_INPUTS = [f"photos/img{i:02d}.png" for i in range(IMAGES)]


@pytest.mark.parametrize(
    ("stop", "code", "workers"),
    [
        pytest.param(signal.SIGINT, 130, "2", id="ctrl-c-to-the-process-group-with-workers"),
        pytest.param(signal.SIGTERM, 143, "0", id="sigterm"),
    ],
)
def test_a_signal_mid_run_stops_cleanly_and_resume_finishes_only_what_is_missing(
    workspace, stop, code, workers
):
    out = workspace / "out"
    proc = start(workspace, command(workers=workers))
    wait_for(lambda: len(overlays(out)) >= 4, proc)
    if stop == signal.SIGINT:
        os.killpg(proc.pid, stop)  # what Ctrl-C in a terminal does: every process of the job
    else:
        proc.send_signal(stop)  # what `kill`, systemd or Kubernetes does
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr

    first = assert_everything_on_disk_is_whole_and_reported(out)
    done = len(first["results"])
    assert first["summary"]["interrupted"] is True and first["summary"]["in_progress"] is False
    assert 4 <= done < IMAGES
    assert inputs_of(first) == ALL_INPUTS[:done]  # the first images, in order, each once
    kept = file_ids(out, files_of(first))

    proc = start(workspace, command("--resume", workers=workers))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"resumed: {done} image(s) already done" in stderr
    assert f"{IMAGES - done} explained now" in stderr
    final = assert_everything_on_disk_is_whole_and_reported(out)
    assert inputs_of(final) == ALL_INPUTS
    assert final["summary"] == {
        **final["summary"],
        "images": IMAGES,
        "ok": IMAGES,
        "resumed": done,
        "interrupted": False,
    }
    assert final["results"][:done] == first["results"]
    assert file_ids(out, files_of(first)) == kept  # not rewritten: same inodes, same mtimes


def test_after_a_sigkill_the_last_checkpoint_is_whole_and_resume_uses_it(workspace):
    out = workspace / "out"
    # The real command, with checkpoints every 0.3 s instead of every 10 s.
    python = (
        "import gradcam_cli.resume as resume; resume.CHECKPOINT_SECONDS = 0.3; "
        "from gradcam_cli.cli import main; main()"
    )
    proc = start(workspace, command(), python=python)

    def checkpointed() -> bool:
        try:
            return len(strict_report(out)["results"]) >= 4
        except (OSError, ValueError):
            return False

    wait_for(checkpointed, proc)
    proc.send_signal(signal.SIGKILL)  # no handler runs: only what is on disk counts
    proc.communicate(timeout=60)
    checkpoint = strict_report(out)  # whole: written atomically
    assert checkpoint["summary"]["in_progress"] is True
    assert checkpoint["summary"]["interrupted"] is False
    done = len(checkpoint["results"])
    assert inputs_of(checkpoint) == ALL_INPUTS[:done]
    for name in files_of(checkpoint):
        assert (out / name).is_file()

    proc = start(workspace, command("--resume"))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    final = strict_report(out)
    assert inputs_of(final) == ALL_INPUTS
    assert final["summary"]["resumed"] >= done and final["summary"]["in_progress"] is False


# -- in-process: a stop before the first image --------------------------------------------------


def explain(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt, 130), (Terminated, 143)])
def test_a_stop_before_any_image_exits_with_its_signal_code_and_one_line(
    workspace, monkeypatch, stop, code
):
    import gradcam_cli.sources

    def interrupted(*args, **kwargs):
        raise stop

    monkeypatch.setattr(gradcam_cli.sources, "load_model", interrupted)
    monkeypatch.chdir(workspace)
    result = explain(*command())
    assert result.exit_code == code
    assert result.stderr == "gradcam: interrupted\n"  # not click's "Aborted!" and exit 1
