"""`--resume` (`gradcam_cli.resume`): which report a run continues, which of its records it takes
over, the ledger of results in input order, and the checkpoints written while a run goes on.
Stopping a run (signals, SIGKILL) and resuming after it: test_interrupt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.errors import UsageError
from gradcam_cli.explainer import Explainer
from gradcam_cli.inputs import InputItem
from gradcam_cli.report import ImageResult
from gradcam_cli.resume import (
    CHECKPOINT_SECONDS,
    Checkpoints,
    Ledger,
    previous_report,
    reusable_results,
)

IMAGES = 12
ALL_INPUTS = [f"photos/img{i:02d}.png" for i in range(IMAGES)]


@pytest.fixture
def workspace(tmp_path):
    """IMAGES photos of a few heights (`seen` tells them apart), for the demo model."""
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(1)
    for i, name in enumerate(ALL_INPUTS):
        pixels = rng.integers(0, 256, (24 + i % 5, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / name)
    return tmp_path


def command(*extra: str) -> list[str]:
    return [
        *("explain", "photos", "--model", "demo:shapes", "--input-size", "32"),
        *("--layer", "features", "-b", "2", "--save-raw", "--out", "out", "--workers", "0"),
        *extra,
    ]


def explain(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def strict_report(out: Path) -> dict:
    def refuse(token):
        raise ValueError(token)

    return json.loads((out / "predictions.json").read_text(encoding="utf-8"), parse_constant=refuse)


def inputs_of(report: dict) -> list[str]:
    return [r["input"] for r in report["results"]]


# -- through the CLI: what --resume recomputes, and what it refuses -------------------------------


def with_options(args: list[str], change: list[str]) -> list[str]:
    """`args` with an option's value replaced (`-b 5`), or a flag added (`--no-heatmap`)."""
    args = list(args)
    if len(change) == 2 and change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
        return args
    return [*args, *change]


def test_resume_explains_exactly_the_missing_failed_and_deleted_images(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    assert explain(*command()).exit_code == 0
    first = strict_report(workspace / "out")
    # Another run left: one image missing from the report, one failed, one with a file deleted.
    first["results"] = [r for r in first["results"] if r["input"] != "photos/img03.png"]
    failed = next(r for r in first["results"] if r["input"] == "photos/img05.png")
    failed.update(status="error", error="cannot write its outputs: no space left on device")
    (workspace / "out" / first["results"][7]["explanations"][0]["heatmap"]).unlink()
    (workspace / "out" / "predictions.json").write_text(json.dumps(first))
    seen = []
    real = Explainer.explain

    def recording(self, images, **kwargs):
        seen.extend(image.size for image in images)
        return real(self, images, **kwargs)

    monkeypatch.setattr(Explainer, "explain", recording)
    result = explain(*command("--resume"))
    assert result.exit_code == 0, result.output
    sizes = {f"photos/img{i:02d}.png": (32, 24 + i % 5) for i in range(IMAGES)}
    redone = ["photos/img03.png", "photos/img05.png", first["results"][7]["input"]]
    assert sorted(seen) == sorted(sizes[name] for name in redone)
    final = strict_report(workspace / "out")
    assert inputs_of(final) == ALL_INPUTS and final["summary"]["resumed"] == IMAGES - 3


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--method", "layercam"], "method"),
        (["--topk", "2"], "--topk"),
        (["--colormap", "viridis"], "--colormap"),
        (["--no-heatmap"], "--heatmap"),
        (["--input-size", "40"], "preprocess"),
    ],
)
def test_resume_refuses_a_report_from_another_configuration(workspace, monkeypatch, change, named):
    monkeypatch.chdir(workspace)
    assert explain(*command()).exit_code == 0
    report = (workspace / "out" / "predictions.json").read_bytes()
    result = explain(*with_options(command("--resume"), change))
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("gradcam: error: --resume:") and "another configuration" in line
    assert named in line
    assert (workspace / "out" / "predictions.json").read_bytes() == report


def test_resume_may_change_batch_size_and_workers_and_needs_no_previous_report(
    workspace, monkeypatch
):
    monkeypatch.chdir(workspace)
    result = explain(*command("--resume"))  # nothing to resume: a normal run
    assert result.exit_code == 0 and "resumed" not in result.stderr
    result = explain(*with_options(command("--resume"), ["-b", "5"]))
    assert result.exit_code == 0, result.output
    assert f"resumed: {IMAGES} image(s)" in result.stderr
    assert strict_report(workspace / "out")["options"]["batch_size"] == 5


@pytest.mark.parametrize(("option", "key"), [("--panel", "panel"), ("--save-raw", "raw")])
def test_resume_redoes_an_image_whose_optional_file_is_gone(workspace, monkeypatch, option, key):
    """Every file a record names counts, not only overlay and heatmap: a missing panel or raw
    map makes --resume explain that image again."""
    monkeypatch.chdir(workspace)
    assert explain(*command(option)).exit_code == 0
    first = strict_report(workspace / "out")
    lost = first["results"][4]
    (workspace / "out" / lost["explanations"][0][key]).unlink()
    seen = []
    real = Explainer.explain

    def recording(self, images, **kwargs):
        seen.extend(images)
        return real(self, images, **kwargs)

    monkeypatch.setattr(Explainer, "explain", recording)
    result = explain(*command(option, "--resume"))
    assert result.exit_code == 0, result.output
    assert len(seen) == 1 and strict_report(workspace / "out")["summary"]["resumed"] == IMAGES - 1
    assert (workspace / "out" / lost["explanations"][0][key]).is_file()


# -- which report a run continues -----------------------------------------------------------------


def document(**changes: object) -> dict:
    options = {"topk": 1, "batch_size": 2, "workers": 0, "heatmap": True}
    return {
        "schema_version": 1, "model": {"name": "demo:shapes"}, "method": "gradcam",
        "method_options": {}, "layers": ["features"], "preprocess": {"input_size": [32, 32]},
        "options": options, "results": [], **changes,
    }  # fmt: skip


def test_a_report_of_the_same_configuration_is_continued_whatever_its_speed_options(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(document()))
    faster = document(options={**document()["options"], "batch_size": 64, "workers": 8})
    assert previous_report(path, faster) == document()


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"method": "layercam"}, "(different method)"),
        ({"layers": ["features.3"], "schema_version": 2}, "(different schema_version, layers)"),
        ({"options": {"topk": 3, "batch_size": 2, "workers": 0}}, "(different --heatmap, --topk)"),
    ],
)
def test_a_report_of_another_configuration_is_refused_naming_what_differs(tmp_path, changes, named):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(document()))
    with pytest.raises(UsageError) as refused:
        previous_report(path, document(**changes))
    message = str(refused.value)
    assert message.startswith(f"--resume: {path} comes from another configuration {named}")
    assert message.endswith("run with the same options, or use another --out")


@pytest.mark.parametrize(
    ("content", "reason"), [("{half", "cannot read"), ("[]", "is not a gradcam report")]
)
def test_an_unreadable_report_is_refused_with_what_to_do(tmp_path, content, reason):
    path = tmp_path / "predictions.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=f"^--resume: .*{reason}.*; delete it to start over$"):
        previous_report(path, document())


# -- which records it takes over ------------------------------------------------------------------


def record(key: str, status: str = "ok", curves: str | None = None) -> dict:
    return {
        "input": f"photos/{key}.png",
        "status": status,
        "explanations": [
            {
                "target": {"index": 1, "label": "circle"},
                "layer": "features",
                "overlay": f"{key}.overlay.png",
                "heatmap": f"{key}.heatmap.png",
                "raw": None,
                "faithfulness": None if curves is None else {"deletion": 0.1, "curves": curves},
            }
        ],
    }


def item(key: str) -> InputItem:
    return InputItem(f"photos/{key}.png", Path(f"photos/{key}.png"), key)


def files(out: Path, *names: str) -> None:
    for name in names:
        (out / name).write_bytes(b"whole")


def test_records_are_taken_over_only_with_all_their_files_and_their_input_s_key(tmp_path):
    files(tmp_path, "a.overlay.png", "a.heatmap.png", "b.overlay.png", "c.overlay.png")
    files(tmp_path, "c.heatmap.png", "d.overlay.png", "d.heatmap.png")
    previous = {
        "results": [
            record("a"),
            record("b"),  # its heatmap is gone
            record("c", status="error"),
            record("d", curves="d.curves.json"),  # its --metrics curves are gone
            "not a record",
        ]
    }
    items = [item("x"), item("d"), item("c"), item("b"), item("a")]
    reused = reusable_results(previous, items, tmp_path)
    assert list(reused) == [4]
    assert reused[4] == ImageResult.from_dict(record("a"))
    files(tmp_path, "d.curves.json")
    assert list(reusable_results(previous, items, tmp_path)) == [1, 4]
    # The inputs changed and keys moved: a.png's files now name another input's.
    moved = [InputItem("photos/a.png", Path("photos/a.png"), "a-1")]
    assert reusable_results(previous, moved, tmp_path) == {}


def test_a_record_naming_a_file_outside_the_output_folder_is_not_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    files(tmp_path, "a.overlay.png")
    (out / "a.overlay.png").symlink_to(tmp_path / "a.overlay.png")
    files(out, "a.heatmap.png")
    assert reusable_results({"results": [record("a")]}, [item("a")], out) == {}


# -- the ledger: results in input order -----------------------------------------------------------


def result(name: str) -> ImageResult:
    return ImageResult(name, "ok")


def test_the_ledger_keeps_the_results_in_input_order_around_those_taken_over():
    ledger = Ledger.start(5, {1: result("one"), 3: result("three")})
    assert ledger.todo == [0, 2, 4] and ledger.count == 2
    ledger.add([result("zero")])
    ledger.add([result("two"), result("four")])
    assert [r.input for r in ledger.results()] == ["zero", "one", "two", "three", "four"]
    assert ledger.count == 5


def test_an_unfinished_ledger_reports_what_it_has_in_order():
    ledger = Ledger.start(4, {2: result("two")})
    ledger.add([result("zero")])
    assert [r.input for r in ledger.results()] == ["zero", "two"] and ledger.count == 2


# -- checkpoints ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_checkpoints_wait_their_interval_and_grow_with_what_a_write_costs():
    clock, written = Clock(), []

    def write():
        written.append(clock.now)
        clock.now += 1.0  # a large report: 1 s to write

    checkpoints = Checkpoints(write, clock)
    clock.now = CHECKPOINT_SECONDS - 0.5
    checkpoints.maybe_write()
    assert written == []
    clock.now = CHECKPOINT_SECONDS
    checkpoints.maybe_write()
    assert written == [CHECKPOINT_SECONDS]
    assert checkpoints.interval == 20.0  # 20 times the write, not the 10 s floor
    clock.now += 19.0
    checkpoints.maybe_write()
    assert len(written) == 1
    clock.now += 1.0
    checkpoints.maybe_write()
    assert len(written) == 2


def test_a_checkpoint_that_cannot_be_written_is_tried_again_later():
    clock, attempts = Clock(), []

    def disk_full():
        attempts.append(clock.now)
        raise OSError(28, "No space left on device")

    checkpoints = Checkpoints(disk_full, clock)
    clock.now = CHECKPOINT_SECONDS
    checkpoints.maybe_write()  # no exception: the run goes on
    clock.now += CHECKPOINT_SECONDS
    checkpoints.maybe_write()
    assert attempts == [CHECKPOINT_SECONDS, 2 * CHECKPOINT_SECONDS]
