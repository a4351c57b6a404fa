"""Runs nobody watches (issue 14): stdout stays data while the user's model prints, a closed
pipe ends us quietly, one run owns its --out, a stop ends in bounded time with a report and the
exact command that finishes the run, and a run refused up front leaves nothing on disk."""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from helpers import GRADCAM, SCENES, explain, noise_photos, overlays, wait_for
from PIL import Image
from terminal import read_until_closed, screen

from gradcam_cli.outlock import LOCK_NAME, OutputLockedError, check_unlocked, output_lock

MODELS = textwrap.dedent(
    """
    import os
    import sys
    import time

    import torch
    from torch import nn

    print("noise: module imported")


    class Net(nn.Module):
        def __init__(self, delay=0.0):
            super().__init__()
            torch.manual_seed(0)
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
            self.fc = nn.Linear(8, 4)
            self.delay = delay

        def forward(self, x):
            time.sleep(self.delay)
            return self.fc(self.features(x).mean((2, 3)))


    class Noisy(Net):
        def __init__(self):
            print("noise: constructor")
            super().__init__()

        def forward(self, x):
            print("noise: forward")
            sys.stdout.flush()
            os.write(1, b"noise: os.write(1)\\n")
            os.system("echo noise: child process")
            return super().forward(x)


    def slow():
        return Net(delay=0.25)  # a signal or a second run always lands mid-run


    class ExitsOnPairs(Net):
        # The probe passes one image; a batch of two makes it exit or raise.
        how = "exit"

        def forward(self, x):
            if x.shape[0] == 2:
                if self.how == "exit":
                    sys.exit(0)
                if self.how == "interrupt":
                    raise KeyboardInterrupt
                raise ValueError("the user's forward does not like pairs")
            return super().forward(x)


    class InterruptsOnPairs(ExitsOnPairs):
        how = "interrupt"


    class RaisesOnPairs(ExitsOnPairs):
        how = "raise"
    """
)

NET = ["--input-size", "32", "--layer", "features", "--workers", "0"]


@pytest.fixture
def workspace(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    noise_photos(tmp_path / "photos", 3)
    return tmp_path


def gradcam(*args: str, cwd: Path, timeout: float = 120, **streams) -> subprocess.CompletedProcess:
    """The installed `gradcam` in a process of its own, as a script or CI job runs it."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **streams}
    return subprocess.run(
        [GRADCAM, *args], cwd=cwd, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **streams
    )


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("gradcam: error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return lines[0]


# -- item 4: stdout is the JSON alone, whatever the model prints -------------------------------


def test_json_parses_while_the_model_prints_at_import_construction_forward_and_in_a_child(
    workspace,
):
    done = gradcam(
        "explain", "photos", "--model", "models.py:Noisy", *NET, "--json", "--out", "out",
        cwd=workspace,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # nothing before or after the document
    assert report["summary"]["ok"] == 3
    for noise in ("module imported", "constructor", "forward", "os.write(1)", "child process"):
        assert f"noise: {noise}" in done.stderr  # the user's text is kept, on stderr


def test_layers_prints_only_the_table_while_the_model_prints(workspace):
    done = gradcam("layers", "models.py:Noisy", "--input-size", "32", cwd=workspace)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# custom:") and not any("noise" in line for line in lines)
    assert any(line.split()[1:2] == ["features"] for line in lines[1:]), done.stdout
    assert "noise: constructor" in done.stderr


# -- item 8: a closed pipe ends the command quietly, like `ls | head` -------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["models", "resnet*"],
        ["layers", "demo:shapes"],
        ["explain", "photos", "--model", "demo:shapes", "--json", "--out", "out"],
    ],
    ids=["models", "layers", "explain-json"],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(workspace, args):
    read, write = os.pipe()
    os.close(read)  # `| head -1` that has already exited: every write to stdout fails
    try:
        done = gradcam(*args, cwd=workspace, stdout=write)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr  # 128 + SIGPIPE, what the shell shows for ls
    assert "BrokenPipe" not in done.stderr and "error" not in done.stderr, done.stderr


# -- items 5 and 6 (during a batch): the user's forward exits, raises, interrupts -----------


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("ExitsOnPairs", "the model's code called sys.exit(0)"),
        ("InterruptsOnPairs", "KeyboardInterrupt raised by the model's code"),
        ("RaisesOnPairs", "ValueError: the user's forward does not like pairs"),
    ],
)
def test_a_forward_that_exits_or_raises_fails_its_batch_and_the_run_goes_on(
    workspace, monkeypatch, model, reason
):
    monkeypatch.chdir(workspace)
    result = explain("photos", "--model", f"models.py:{model}", *NET, "-b", "2", "--out", "out")
    assert result.exit_code == 1, result.output
    report = json.loads((workspace / "out" / "predictions.json").read_text())
    statuses = [(r["status"], r["error"]) for r in report["results"]]
    failed = f"the model failed on this batch: {reason}"
    assert statuses == [("error", failed), ("error", failed), ("ok", None)]
    assert "internal error" not in result.stderr


# -- item 12: one run owns --out ------------------------------------------------------------


def test_a_second_run_into_a_held_out_is_refused_naming_the_first(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    with output_lock(workspace / "out"):
        result = explain("photos", "--model", "demo:shapes", "--out", "out")
        assert result.exit_code == 2
        line = error_line(result.stderr)
        assert f"--out out is in use by another gradcam run (pid {os.getpid()})" in line
        assert sorted(p.name for p in (workspace / "out").iterdir()) == [LOCK_NAME]
    assert not (workspace / "out" / LOCK_NAME).exists()  # released, and removed


def test_a_lock_left_by_a_dead_run_is_taken_over(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    out = workspace / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("999999999\n")  # no such pid; nobody holds the flock
    result = explain("photos", "--model", "demo:shapes", "--out", "out")
    assert result.exit_code == 0, result.output
    assert not (out / LOCK_NAME).exists()


def test_shares_of_one_run_share_out_but_not_a_share(tmp_path):
    with output_lock(tmp_path, (1, 2)):
        check_unlocked(tmp_path, (2, 2))  # another share: fine
        with output_lock(tmp_path, (2, 2)):
            pass
        with pytest.raises(OutputLockedError, match=r"in use .*\(pid \d+\)"):
            check_unlocked(tmp_path, (1, 2))
        with pytest.raises(OutputLockedError, match=r"in use by another gradcam run \(a --shard"):
            check_unlocked(tmp_path)  # a plain run waits for every share
    with output_lock(tmp_path):
        with pytest.raises(OutputLockedError):
            check_unlocked(tmp_path, (1, 2))


def test_two_real_runs_into_one_out_the_second_exits_2_and_the_first_reports_all(workspace):
    photos = noise_photos(workspace / "many", 30, seed=1)
    first = subprocess.Popen(
        [GRADCAM, "explain", str(photos), "--model", "models.py:slow", *NET, "-b", "2",
         "--out", "out"],
        cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: overlays(workspace / "out"), first, timeout=60)
        second = gradcam("explain", "photos", "--model", "demo:shapes", "--out", "out",
                         cwd=workspace)  # fmt: skip
        assert first.poll() is None  # still running: the two overlapped
        assert second.returncode == 2
        assert f"(pid {first.pid})" in error_line(second.stderr)
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    report = json.loads((workspace / "out" / "predictions.json").read_text())
    assert report["summary"]["ok"] == 30
    written = {p.name for p in overlays(workspace / "out")}
    assert written == {e["overlay"] for r in report["results"] for e in r["explanations"]}


# -- items 11, 15, 16: refused up front, nothing left on disk, one error style ---------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input-size", "100000"], "--input-size"),
        (["--input-size", "3"], "--input-size"),
        (["--num-classes", "0"], "--num-classes"),
        (["--batch-size", "1000000"], "--batch-size must be 1–4096"),
        (["--workers", "1000"], "--workers must be 0 (decode in a thread) to 64, got 1000"),
        (["--device", "cuda:7"], "cuda"),
        (["--mask", "not_a_mask.png"], "--mask not_a_mask.png cannot be read as an image"),
        (["--mask", "fifo.png"], "--mask fifo.png is not a regular file"),
        (["--bogus"], "No such option: --bogus"),
        (["--batch-size", "many"], "--batch-size must be a whole number or 'auto', got 'many'"),
    ],
)
def test_a_run_refused_before_it_starts_leaves_no_out_and_one_error_line(
    workspace, monkeypatch, args, expected
):
    monkeypatch.chdir(workspace)
    (workspace / "not_a_mask.png").write_text("hello")
    os.mkfifo(workspace / "fifo.png")
    started = time.monotonic()
    result = explain("photos", "--model", "models.py:Net", "--input-size", "32", *args,
                     "--out", "out")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert expected in error_line(result.stderr)
    assert not (workspace / "out").exists()
    assert result.stdout == ""
    assert time.monotonic() - started < 30  # no allocation of 120 GB attempted


def test_inputs_that_all_do_not_exist_exit_2_and_write_nothing(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    result = explain("nope.jpg", "--model", "demo:shapes")
    assert result.exit_code == 2
    assert "no such file or directory: 'nope.jpg'" in error_line(result.stderr)
    assert not (workspace / "gradcam_out").exists()


@pytest.mark.parametrize("kind", ["file", "dangling symlink"])
def test_an_out_that_cannot_be_a_folder_is_one_error_line(workspace, monkeypatch, kind):
    monkeypatch.chdir(workspace)
    if kind == "file":
        (workspace / "out").write_text("x")
        expected = "--out out is a file, not a directory"
    else:
        (workspace / "out").symlink_to(workspace / "gone")
        expected = "--out out is a symlink to"
    result = explain("photos", "--model", "demo:shapes", "--out", "out")
    assert result.exit_code == 2
    assert expected in error_line(result.stderr)


# -- item 14 (the CLI's half): every result's warning is one line naming its file -----------


def test_result_warnings_are_one_stderr_line_each_naming_the_file(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    frames = [Image.new("RGB", (32, 24), colour) for colour in ("red", "blue")]
    frames[0].save(workspace / "anim.gif", save_all=True, append_images=frames[1:])
    result = explain("anim.gif", "--model", "demo:shapes", "--out", "out")
    assert result.exit_code == 0, result.output
    assert (
        "gradcam: warning: anim.gif: animated GIF with 2 frames: only the first was explained"
        in result.stderr.splitlines()
    )


# -- items 2 and 13: a stop ends in bounded time, says what is done and how to finish --------

# Makes the reads (decode) or the writes (pictures) of the input img09_hang block for ever, as on a
# hung network file system: in this process and in decode worker processes alike (they run
# sitecustomize too). Blocking = opening a FIFO that nobody writes to.
STUCK = textwrap.dedent(
    """
    import builtins
    import os

    STAGE = os.environ.get("GRADCAM_TEST_STUCK")
    _os_open, _open = os.open, builtins.open


    def _marked(path):
        return "img09_hang" in os.path.basename(os.fsdecode(path))


    def _block():
        with _open(os.environ["GRADCAM_TEST_FIFO"], "rb") as fifo:
            fifo.read()


    def _os_open_blocking(path, flags, *args, **kwargs):
        writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if _marked(path) and bool(writes) == (STAGE == "write"):
            _block()
        return _os_open(path, flags, *args, **kwargs)


    def _open_blocking(file, mode="r", *args, **kwargs):
        if STAGE == "read" and isinstance(file, (str, bytes, os.PathLike)):
            if _marked(file) and "r" in mode:
                _block()
        return _open(file, mode, *args, **kwargs)


    if STAGE:
        os.open, builtins.open = _os_open_blocking, _open_blocking
    """
)


@pytest.mark.parametrize(("stage", "workers"), [("read", "0"), ("read", "1"), ("write", "0")])
def test_sigterm_ends_a_run_stuck_in_a_read_or_a_write_within_10_s(workspace, stage, workers):
    photos = noise_photos(workspace / "many", 12, seed=1)
    Image.open(photos / "img00.png").save(photos / "img09_hang.png")
    hooks = workspace / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(STUCK)
    os.mkfifo(workspace / "never_written")
    env = {
        **os.environ,
        "PYTHONPATH": str(hooks),
        "GRADCAM_TEST_FIFO": str(workspace / "never_written"),
        "GRADCAM_TEST_STUCK": stage,
    }
    proc = subprocess.Popen(
        [GRADCAM, "explain", str(photos), "--model", "models.py:Net", "--input-size", "32",
         "--layer", "features", "-b", "2", "--workers", workers, "--out", "out"],
        cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(overlays(workspace / "out")) >= 8, proc, timeout=90)
        time.sleep(1.0)  # the run now waits for the stuck image
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"SIGTERM to exit, stuck in a {stage} (--workers {workers}): {took:.2f} s")
    assert proc.returncode == 143, stderr
    assert took < 10
    report = json.loads((workspace / "out" / "predictions.json").read_text())
    assert report["summary"]["interrupted"] is True
    done = [r["input"] for r in report["results"]]
    assert all(r["status"] == "ok" for r in report["results"])
    assert 8 <= len(done) < 13 and not [name for name in done if "hang" in name]


def test_after_ctrl_c_the_progress_line_ends_and_the_resume_command_finishes_the_run(workspace):
    photos = noise_photos(workspace / "many", 40, seed=1)
    primary, secondary = pty.openpty()  # stderr a terminal: the progress line is drawn
    argv = ["explain", str(photos), "--model", "models.py:slow", *NET, "-b", "2", "--out", "o u t"]
    proc = subprocess.Popen(
        [GRADCAM, *argv], cwd=workspace, stdout=subprocess.PIPE, stderr=secondary,
        start_new_session=True,
    )  # fmt: skip
    os.close(secondary)
    try:
        wait_for(lambda: len(overlays(workspace / "o u t")) >= 6, proc, timeout=60)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        stderr = read_until_closed(primary)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    lines = screen(stderr)  # what the terminal shows: the progress bar is cleared
    assert not [line for line in lines if "images/s" in line], lines
    closing = next(line for line in lines if line.startswith("gradcam: interrupted: "))
    done = int(re.search(r"interrupted: (\d+) of 40 images explained", closing).group(1))
    assert 6 <= done < 40
    command = closing.split("finish with: ", 1)[1]
    assert command == shlex.join(["gradcam", *argv, "--resume"])
    finish = gradcam(*shlex.split(command)[1:], cwd=workspace)
    assert finish.returncode == 0, finish.stderr
    assert f"resumed: {done} image(s) already done" in finish.stderr
    report = json.loads((workspace / "o u t" / "predictions.json").read_text())
    assert report["summary"]["ok"] == 40


# -- item 1 (through the CLI): a run never explains its own outputs -------------------------


def test_explaining_a_folder_twice_finds_the_same_images_not_the_first_runs_outputs(
    tmp_path, monkeypatch
):
    import shutil

    shutil.copytree(SCENES, tmp_path / "scenes")
    monkeypatch.chdir(tmp_path / "scenes")
    first = explain(".", "--model", "demo:shapes")  # --out gradcam_out, inside the input folder
    assert first.exit_code == 0, first.output
    second = explain(".", "--model", "demo:shapes", "--out", "runs/b")
    assert second.exit_code == 0, second.output
    report = json.loads((tmp_path / "scenes" / "runs" / "b" / "predictions.json").read_text())
    assert sorted(r["input"] for r in report["results"]) == sorted(
        f"./{p.name}" for p in SCENES.glob("*.png")
    )
    skipped = [line for line in second.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "12 files" in skipped[0], second.stderr


def test_a_file_system_without_locks_warns_and_runs(workspace, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.chdir(workspace)
    result = explain("photos", "--model", "demo:shapes", "--out", "out")
    assert result.exit_code == 0, result.output
    assert "does not support file locks" in result.stderr
    assert not (workspace / "out" / LOCK_NAME).exists()
