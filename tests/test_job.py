"""The batch job as a library call (issue 15): `run_job` does what `gradcam explain` does and
returns the same report; `JobOptions` refuses a bad value with the CLI's own message; a refused
job loads no model and leaves nothing on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.errors import UsageError, as_cli_flags
from gradcam_cli.job import JobOptions, prepare_job, run_job
from gradcam_cli.outlock import OutputLockedError, output_lock

SAMPLES = Path(__file__).parents[1] / "sample_images"
SCENES, MASKS = str(SAMPLES / "scenes"), str(SAMPLES / "masks")


def cli(*args: str):
    return CliRunner().invoke(app, ["explain", *args], catch_exceptions=False)


def comparable(document: dict) -> dict:
    """A report without what differs between two runs of one job: times, the folder's name."""
    document = {k: v for k, v in document.items() if k != "out"}
    times = ("seconds", "stages")
    document["summary"] = {k: v for k, v in document["summary"].items() if k not in times}
    return document


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_run_job_writes_and_returns_what_the_cli_writes(tmp_path):
    args = ["--mask", MASKS, "--topk", "2", "--panel", "--save-raw", "--workers", "0"]
    result = cli(SCENES, "--model", "demo:shapes", *args, "--json", "--out", str(tmp_path / "cli"))
    assert result.exit_code == 0, result.output

    notes: list[str] = []
    seen: list[tuple[int, int]] = []
    report = run_job(
        SCENES,
        "demo:shapes",
        out=tmp_path / "lib",
        mask=MASKS,
        topk=2,
        panel=True,
        save_raw=True,
        workers=0,
        on_note=notes.append,
        progress=lambda done, total: seen.append((done, total)),
    )
    from_cli = json.loads(result.stdout)
    assert comparable(report.to_dict()) == comparable(from_cli)
    written = json.loads((tmp_path / "lib" / "predictions.json").read_text(encoding="utf-8"))
    assert comparable(written) == comparable(from_cli)
    assert files_under(tmp_path / "lib") == files_under(tmp_path / "cli")
    # What the CLI logs before the run reaches the caller too, and progress counts every image.
    assert notes == [
        "no layers= given: using 'features' (the last spatial layer the logits depend on)"
    ]
    assert seen and seen[-1] == (6, 6)


def test_a_prepared_job_has_written_nothing_and_knows_its_share(tmp_path):
    job = prepare_job([SCENES], "demo:shapes", out=tmp_path / "out", shard="1/2", layers="features")
    assert not (tmp_path / "out").exists()
    assert (
        job.options.shard == (1, 2) and job.report_path == tmp_path / "out/predictions.1-of-2.json"
    )
    assert 0 < len(job.items) < 6
    report = job.run()
    assert [r.input for r in report.results] == [item.source for item in job.items]
    assert job.report_path.is_file()


@pytest.mark.parametrize(
    ("options", "flags"),
    [
        ({"method": "gradcamm"}, ["--method", "gradcamm"]),
        (
            {"method": "guided-backprop", "eigen_smooth": True},
            ["--method", "guided-backprop", "--eigen-smooth"],
        ),
        ({"interpolation": "cubic"}, ["--interpolation", "cubic"]),
        ({"normalize": "mean"}, ["--normalize", "mean"]),
        ({"colormap": "no-such-map"}, ["--colormap", "no-such-map"]),
        ({"alpha": 1.5}, ["--alpha", "1.5"]),
        ({"overlay_format": "gif"}, ["--format", "gif"]),
        ({"topk": 0}, ["--topk", "0"]),
        ({"targets": ["circle"], "topk": 2}, ["--target", "circle", "--topk", "2"]),
        ({"input_size": 3}, ["--input-size", "3"]),
        ({"num_classes": 0}, ["--num-classes", "0"]),
        ({"shard": "3/2"}, ["--shard", "3/2"]),
        ({"workers": "many"}, ["--workers", "many"]),
        ({"workers": 1000}, ["--workers", "1000"]),
        ({"batch_size": 0}, ["--batch-size", "0"]),
        ({"resize": "sqush"}, ["--resize", "sqush"]),
        ({"min_energy": 0.5}, ["--min-energy", "0.5"]),
        ({"require_hit": True}, ["--require-hit"]),
        ({"mask": MASKS, "min_energy": 50.0}, ["--mask", MASKS, "--min-energy", "50"]),
    ],
)
def test_a_bad_option_fails_the_same_way_from_python_and_from_the_shell(
    tmp_path, monkeypatch, options, flags
):
    import gradcam_cli.sources

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded for a job refused by its options")

    monkeypatch.setattr(gradcam_cli.sources, "load_model", no_loading)
    out = tmp_path / "out"
    with pytest.raises(UsageError) as raised:
        JobOptions(out=out, **options)
    result = cli(SCENES, "--model", "demo:shapes", *flags, "--out", str(out))
    assert result.exit_code == 2
    # The same error; the library names its parameters (method=), the CLI its flags (--method).
    assert result.stderr == f"gradcam: error: {as_cli_flags(str(raised.value))}\n"
    with pytest.raises(UsageError) as from_the_call:
        run_job(SCENES, "demo:shapes", out=out, **options)
    assert str(from_the_call.value) == str(raised.value)
    assert not out.exists()


def test_keywords_override_an_options_object_and_are_checked_too():
    base = JobOptions(topk=2, workers="0", shard=(2, 4))
    assert (base.workers, base.shard) == (0, (2, 4))
    with pytest.raises(UsageError, match="topk= must be at least 1, got 0"):
        prepare_job(SCENES, "demo:shapes", base, topk=0)
    with pytest.raises(TypeError):
        JobOptions(no_such_option=1)  # type: ignore[call-arg]


def test_a_refused_job_creates_nothing_and_loads_no_model(tmp_path, monkeypatch):
    import gradcam_cli.sources

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded for a refused job")

    monkeypatch.setattr(gradcam_cli.sources, "load_model", no_loading)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="no such file or directory: 'nope.jpg'"):
        run_job(["nope.jpg"], "demo:shapes", out=out)
    with pytest.raises(UsageError, match="mask=.* no such file or folder"):
        run_job(SCENES, "demo:shapes", out=out, mask=tmp_path / "no-masks")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        run_job(SCENES, "demo:shapes", out=tmp_path / "file")
    assert not out.exists()
    with output_lock(out), pytest.raises(OutputLockedError, match="is in use by another"):
        run_job(SCENES, "demo:shapes", out=out)
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_model_already_loaded_refuses_the_options_that_build_one(tmp_path):
    from gradcam_cli.sources import load_model

    loaded = load_model("demo:shapes")
    with pytest.raises(UsageError, match="^input_size= build a model named by a string"):
        run_job(SCENES, loaded, out=tmp_path / "out", input_size=64)
    report = run_job(SCENES, loaded, out=tmp_path / "out", topk=2, workers=0)
    assert report.errors == 0 and len(report.results) == 6


def test_importing_the_job_module_does_not_import_torch():
    code = "import sys, gradcam_cli.job; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
