"""`gradcam merge`: the reports of a run split with --shard K/N, as one predictions.json
(`gradcam_cli.report.merge`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.report import (
    ExplanationRecord,
    ImageResult,
    Report,
    TargetRef,
    merged_document,
)

SCENES = Path(__file__).resolve().parents[1] / "sample_images" / "scenes"


def run_demo(out: Path, *args: str):
    return CliRunner().invoke(
        app, ["explain", *args, "--model", "demo:shapes", "--out", str(out)], catch_exceptions=False
    )


@pytest.fixture
def with_a_broken_file(tmp_path) -> Path:
    """Two scenes and a file that is no picture: one share of two fails an input."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for scene in sorted(SCENES.iterdir())[:2]:
        shutil.copy(scene, folder / scene.name)
    (folder / "broken.png").write_bytes(b"not a picture")
    return folder


def merge(*args: str):
    return CliRunner().invoke(app, ["merge", *args], catch_exceptions=False)


def test_merge_joins_the_shares_into_one_report(tmp_path):
    out = tmp_path / "out"
    masks = str(SCENES.parent / "masks")
    for k in (1, 2, 3):
        assert run_demo(out, str(SCENES), "--shard", f"{k}/3", "--mask", masks).exit_code == 0
    shares = [json.loads((out / f"predictions.{k}-of-3.json").read_text()) for k in (1, 2, 3)]
    result = merge(str(out))
    assert result.exit_code == 0, result.stderr
    merged = json.loads((out / "predictions.json").read_text())
    assert merged["results"] == [r for share in shares for r in share["results"]]
    assert merged["summary"]["images"] == 6 == len(list(SCENES.iterdir()))
    assert merged["summary"]["ok"] == sum(s["summary"]["ok"] for s in shares)
    assert merged["summary"]["seconds"] == max(s["summary"]["seconds"] for s in shares)
    assert merged["options"]["shard"] is None
    assert merged["summary"]["localization"]["measured"] == 6
    assert set(merged) == set(shares[0])
    assert "merged 6 images (6 ok, 0 failed)" in result.stderr


def test_merge_refuses_missing_shares_and_other_runs(tmp_path):
    out = tmp_path / "out"
    assert run_demo(out, str(SCENES), "--shard", "1/2").exit_code == 0
    result = merge(str(out))
    assert result.exit_code == 2 and "missing shares 2/2" in result.stderr
    assert run_demo(out, str(SCENES), "--shard", "2/2", "--method", "layercam").exit_code == 0
    result = merge(str(out))
    assert result.exit_code == 2 and "different method" in result.stderr
    assert not (out / "predictions.json").exists()
    result = merge(str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "not a folder" in result.stderr


@pytest.mark.parametrize(
    ("content", "reason"),
    [("{not json", "cannot read"), ('{"results": 3}', "is not a gradcam report")],
)
def test_merge_refuses_a_damaged_share_in_one_line(tmp_path, content, reason):
    out = tmp_path / "out"
    assert run_demo(out, str(SCENES), "--shard", "1/2").exit_code == 0
    (out / "predictions.2-of-2.json").write_text(content)
    result = merge(str(out))
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "predictions.2-of-2.json" in line and reason in line
    assert not (out / "predictions.json").exists()


def test_merge_exits_1_when_a_share_had_failures(tmp_path, with_a_broken_file):
    out = tmp_path / "out"
    for k in (1, 2):
        run_demo(out, str(with_a_broken_file), "--shard", f"{k}/2")
    result = merge(str(out))
    assert result.exit_code == 1
    assert json.loads((out / "predictions.json").read_text())["summary"]["errors"] == 1


# -- the merged document ---------------------------------------------------------------------------


def share_summary(seconds: float, stages: dict | None) -> dict:
    return {
        "images": 0, "ok": 0, "errors": 0, "seconds": seconds, "interrupted": False,
        "localization": None, "resumed": 0, "in_progress": False,
        "batch_size_reduced_to": None, "stages": stages,
    }  # fmt: skip


def stage_figures(decode, model, render, write, waited_output) -> dict:
    return {
        "decode": decode, "model": model, "render": render, "write": write,
        "waited": {"decode": 0.0, "output": waited_output}, "slowest": None,
    }  # fmt: skip


def share(k: int, summary: dict) -> dict:
    return {"options": {"shard": [k, 2]}, "results": [], "summary": summary}


def test_merged_shares_add_their_stages_up_and_decide_again():
    one = share_summary(2.0, stage_figures(1, 0.5, 0.2, 1.5, 1.2))
    two = share_summary(1.5, stage_figures(1, 0.4, 0.3, 1.0, 1.0))
    merged = merged_document([share(1, one), share(2, two)])["summary"]["stages"]
    assert merged == {
        "decode": 2.0, "model": 0.9, "metrics": 0.0, "render": 0.5, "write": 2.5,
        "waited": {"decode": 0.0, "output": 2.2}, "slowest": "write",
    }  # fmt: skip
    untimed = {**one, "stages": None}  # a share written before the stages were recorded
    assert merged_document([share(1, untimed)])["summary"]["stages"] is None


def explanation(i: int) -> ExplanationRecord:
    failed = i % 3 == 0
    return ExplanationRecord(
        target=TargetRef(i, f"class {i}", 0.5, 2.0),
        layer="features",
        overlay=f"in{i}.overlay.png",
        heatmap=None,
        raw=None,
        localization={
            "hit": i % 2 == 0,
            "energy": i / 10,
            "iou": i / 20,
            "mask_share": 0.25,
            "passed": not failed,
            "shortfalls": ["energy"] if failed else [],
            "error": None,
        },  # fmt: skip
        faithfulness={
            "deletion": i / 7,
            "insertion": None,
            "baselines": {"random": {"deletion": 0.5}},
        },  # fmt: skip
        gate={"passed": not failed, "shortfalls": ["deletion"] if failed else []},
    )


def results(first: int, count: int) -> list[ImageResult]:
    return [
        ImageResult.failed(f"in{i}.png", "cannot read it")
        if i % 4 == 1
        else ImageResult(f"in{i}.png", "ok", size=[4, 3], explanations=[explanation(i)])
        for i in range(first, first + count)
    ]


def test_a_merged_summary_is_the_summary_of_one_run_with_all_the_results():
    """One `summary`, for a run and for a merge: the figures over the results agree."""
    whole = Report(
        model={"name": "m"}, method="gradcam", layers=["features"], device="cpu", out="out",
        preprocess={}, options={"shard": None}, results=results(0, 9), seconds=3.0,
        measures_localization=True, measures_faithfulness=True, gate_rules=["deletion<0.2"],
    )  # fmt: skip
    shares = [
        replace(whole, options={"shard": [k, 3]}, results=results(3 * (k - 1), 3))
        for k in (1, 2, 3)
    ]
    merged = merged_document([json.loads(s.to_json()) for s in shares])
    expected = json.loads(whole.to_json())
    assert merged["results"] == expected["results"]
    assert merged["summary"] == expected["summary"]
    assert merged["summary"]["errors"] == 2 and merged["summary"]["gate"]["failures"] == 3
    assert list(merged) == list(expected) and merged["options"] == {"shard": None}
