"""The run report (`gradcam_cli.report`): the versioned document and its key order, strict JSON,
reading and writing a report file, the file names, the summary, and the same-run check.
Merging the shares' reports: test_merge."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict

import pytest

from gradcam_cli.errors import UsageError
from gradcam_cli.report import (
    REPORT_HEAD_BYTES,
    ExplanationRecord,
    ImageResult,
    Prediction,
    Report,
    RunFacts,
    TargetRef,
    has_shard_reports,
    is_report_head,
    is_report_name,
    option_differences,
    read_report_file,
    read_run_report,
    report_text,
    run_differences,
    shard_report_name,
    summarize,
    write_report_file,
)


def explanation(energy: float, passed: bool, deletion: float | None) -> ExplanationRecord:
    return ExplanationRecord(
        target=TargetRef.make(3, "cat", 0.75, 2.5),
        layer="layer4",
        overlay="cat.overlay.png",
        heatmap="cat.heatmap.png",
        raw=None,
        localization={
            "hit": passed,
            "energy": energy,
            "iou": energy / 2,
            "mask_share": 0.25,
            "passed": passed,
            "shortfalls": [] if passed else ["energy"],
            "error": None,
        },  # fmt: skip
        faithfulness={
            "deletion": deletion,
            "insertion": 0.5,
            "curves": None,
            "baselines": {"random": {"deletion": 0.4, "insertion": 0.3}},
        },  # fmt: skip
        gate={"passed": passed, "shortfalls": [] if passed else ["deletion > 0.2"]},
    )


def image(name: str, *explanations: ExplanationRecord) -> ImageResult:
    predictions = [Prediction.make(3, "cat", 0.75, 2.5)]
    return ImageResult(name, "ok", None, [4, 3], predictions, list(explanations))


def report(*results: ImageResult, **changes: object) -> Report:
    values: dict = {
        "model": {"name": "resnet18"}, "method": "gradcam", "layers": ["layer4"],
        "device": "cpu", "out": "out", "preprocess": {"input_size": [224, 224]},
        "options": {"topk": 1, "shard": None}, "results": list(results), "seconds": 1.23456,
    }  # fmt: skip
    return Report(**{**values, **changes})


# -- the document ------------------------------------------------------------------------------


def test_the_document_keeps_its_keys_in_the_schema_order():
    """The order of the keys is part of what a run writes: a diff of two reports, or of two
    versions of gradcam, must show only what changed."""
    document = report(
        image("cat.png", explanation(0.5, True, 0.1)), ImageResult.failed("x.png", "bad")
    ).to_dict()
    assert list(document) == [
        "schema_version", "model", "method", "method_options", "layers", "device", "out",
        "preprocess", "options", "versions", "results", "summary",
    ]  # fmt: skip
    assert list(document["summary"]) == [
        "images", "ok", "errors", "seconds", "interrupted", "localization", "resumed",
        "in_progress", "batch_size_reduced_to", "stages", "faithfulness", "gate",
    ]  # fmt: skip
    ok, failed = document["results"]
    assert list(ok) == list(failed) == [
        "input", "status", "error", "size", "predictions", "explanations", "warnings"
    ]  # fmt: skip
    assert list(ok["explanations"][0]) == [
        "target", "layer", "overlay", "heatmap", "raw", "warnings", "guided", "localization",
        "panel", "mask", "faithfulness", "gate",
    ]  # fmt: skip
    assert list(ok["explanations"][0]["target"]) == ["index", "label", "probability", "score"]
    assert document["schema_version"] == 1 and document["summary"]["seconds"] == 1.235
    assert set(document["versions"]) == {"python", "gradcam-cli", "torch", "torchvision", "timm"}


def test_non_finite_numbers_are_written_as_null_and_the_text_is_strict_json():
    prediction = Prediction.make(1, "dog", math.nan, math.inf)
    assert (prediction.probability, prediction.score) == (None, None)
    assert TargetRef.make(1, "dog", -math.inf, 0.5) == TargetRef(1, "dog", None, 0.5)
    with pytest.raises(ValueError, match="Out of range float"):
        report_text({"energy": math.nan})  # a NaN that got through: an error, not "NaN"

    def refuse(token):
        raise AssertionError(token)

    text = report(ImageResult("x.png", "ok", predictions=[prediction])).to_json()
    assert json.loads(text, parse_constant=refuse)["results"][0]["predictions"][0]["score"] is None


def test_the_text_is_indented_utf8_ending_in_a_newline():
    assert report_text({"label": "café", "size": [4, 3]}) == (
        '{\n  "label": "café",\n  "size": [\n    4,\n    3\n  ]\n}\n'
    )


def test_records_read_back_equal_those_written_and_unknown_keys_are_dropped():
    written = image("cat.png", explanation(0.5, True, None))
    data = asdict(written)
    assert ImageResult.from_dict(data) == written
    data["from_a_later_version"] = 1
    data["predictions"][0]["margin"] = 0.1
    data["explanations"][0]["attribution"] = "x"
    data["explanations"][0]["target"]["rank"] = 1
    assert ImageResult.from_dict(data) == written


def test_a_target_from_an_older_report_takes_its_figures_from_its_prediction():
    data = asdict(image("cat.png", explanation(0.5, True, None)))
    data["explanations"][0]["target"] = {"index": 3, "label": "cat"}
    assert ImageResult.from_dict(data).explanations[0].target == TargetRef(3, "cat", 0.75, 2.5)
    data["explanations"][0]["target"] = {"index": 7, "label": "not among the predictions"}
    target = ImageResult.from_dict(data).explanations[0].target
    assert target == TargetRef(7, "not among the predictions", None, None)


# -- the summary ---------------------------------------------------------------------------------


def test_the_summary_counts_and_measures_what_the_run_asked_for():
    results = [
        image("a.png", explanation(0.75, True, 0.1), explanation(0.25, False, None)),
        ImageResult.failed("b.png", "cannot read b.png"),
        image("c.png", explanation(0.5, True, 0.3)),
    ]
    run = RunFacts(seconds=2.5, measures_localization=True, measures_faithfulness=True)
    summary = summarize([asdict(r) for r in results], run)
    assert (summary["images"], summary["ok"], summary["errors"]) == (3, 2, 1)
    assert summary["localization"] == {
        "explanations": 3, "measured": 3, "hit_rate": 0.666667, "mean_energy": 0.5,
        "mean_iou": 0.25, "mean_mask_share": 0.25, "gate_failures": 1,
    }  # fmt: skip
    assert summary["faithfulness"] == {
        "explanations": 3,
        "means": {"deletion": 0.2, "insertion": 0.5},  # over the finite values only
        "baselines": {"random": {"deletion": 0.4, "insertion": 0.3}},
    }
    assert summary["gate"] is None  # no --gate rules
    gated = summarize([asdict(r) for r in results], RunFacts(2.5, gate_rules=["deletion<0.2"]))
    assert gated["localization"] is gated["faithfulness"] is None
    assert gated["gate"] == {"rules": ["deletion<0.2"], "explanations": 3, "failures": 1}


def test_a_report_s_summary_parts_are_those_it_writes():
    """The CLI's closing lines read the parts without writing every result out: the same
    figures as the document's summary."""
    run = report(
        image("a.png", explanation(0.75, True, 0.1), explanation(0.25, False, None)),
        ImageResult.failed("b.png", "cannot read b.png"),
        measures_localization=True,
        measures_faithfulness=True,
        gate_rules=["deletion<0.2"],
    )
    summary = run.to_dict()["summary"]
    assert run.localization_summary() == summary["localization"]
    assert run.faithfulness_summary() == summary["faithfulness"]
    assert run.gate_summary() == summary["gate"]
    assert run.errors == summary["errors"] == 1 and run.gate_failures == 1
    assert [result.input for result, _ in run.localized()] == ["a.png", "a.png"]
    plain = report(image("a.png", explanation(0.75, True, 0.1)))
    assert plain.localization_summary() is plain.faithfulness_summary() is None
    assert plain.gate_summary() is None


# -- reading and writing a report file -----------------------------------------------------------


def test_a_report_written_reads_back_and_no_temporary_file_stays(tmp_path):
    document = report(image("cat.png", explanation(0.5, True, 0.1))).to_dict()
    path = tmp_path / "out" / "predictions.json"
    write_report_file(path, document)
    assert read_report_file(path) == document
    assert path.read_text(encoding="utf-8") == report_text(document)
    assert [p.name for p in path.parent.iterdir()] == ["predictions.json"]


def test_a_write_that_fails_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    path = tmp_path / "predictions.json"
    write_report_file(path, {"results": [], "summary": {"images": 0}})
    before = path.read_bytes()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        write_report_file(path, {"results": [{"input": "x.png"}], "summary": {"images": 1}})
    with pytest.raises(ValueError):
        write_report_file(path, {"results": [], "seconds": math.inf})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.json"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{half", "cannot read"),
        (b"\xff\xfe not utf-8", "cannot read"),
        (b'{"results": {}}', "is not a gradcam report (no 'results' list)"),
        (b"[1, 2]", "is not a gradcam report"),
    ],
)
def test_a_file_that_is_no_report_is_refused_in_one_line(tmp_path, content, reason):
    path = tmp_path / "predictions.json"
    path.write_bytes(content)
    with pytest.raises(UsageError) as refused:
        read_report_file(path)
    assert str(path) in str(refused.value) and reason in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_missing_report_file_says_so(tmp_path):
    with pytest.raises(UsageError, match=r"cannot read .* \(No such file or directory\)"):
        read_report_file(tmp_path / "predictions.json")


def test_a_run_s_report_is_read_from_its_folder_or_says_what_to_run_first(tmp_path):
    with pytest.raises(UsageError, match="is not a folder"):
        read_run_report(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="run `gradcam explain ... --out"):
        read_run_report(tmp_path)
    (tmp_path / "predictions.1-of-2.json").write_text('{"results": []}')
    with pytest.raises(UsageError, match=f"run `gradcam merge {tmp_path}` first"):
        read_run_report(tmp_path)
    (tmp_path / "predictions.json").write_text('{"results": [], "method": "gradcam"}')
    assert read_run_report(str(tmp_path)) == {"results": [], "method": "gradcam"}


# -- file names ----------------------------------------------------------------------------------


def test_a_share_s_report_is_named_after_its_shard():
    assert shard_report_name(None) == "predictions.json"
    assert shard_report_name((2, 5)) == "predictions.2-of-5.json"
    for name in ("predictions.json", "predictions.2-of-5.json", "predictions.10-of-12.json"):
        assert is_report_name(name)
    for name in ("predictions.2-of-5.json.tmp", "predictions.a-of-5.json", "Predictions.json"):
        assert not is_report_name(name)


def test_a_folder_with_a_share_s_report_is_told_apart(tmp_path):
    (tmp_path / "predictions.json").write_text("{}")
    assert not has_shard_reports(tmp_path)
    (tmp_path / shard_report_name((1, 3))).write_text("{}")
    assert has_shard_reports(tmp_path)


def test_a_report_is_recognised_by_its_head_without_reading_a_large_file_whole():
    small = report_text({"schema_version": 1, "model": {}, "results": []}).encode()
    assert is_report_head(small)
    assert not is_report_head(b'{"results": []}')  # no schema_version: someone else's JSON
    assert not is_report_head(b'{"schema_version": 1, "results": {}}')
    assert not is_report_head(b"\x89PNG\r\n")
    large = small[:-4] + b'"x"' * REPORT_HEAD_BYTES  # cut off: only its start is seen
    assert is_report_head(large[: REPORT_HEAD_BYTES + 1])
    assert not is_report_head(b" " * (REPORT_HEAD_BYTES + 1))


# -- the same run --------------------------------------------------------------------------------


def test_reports_of_one_run_differ_in_nothing_that_says_what_it_computes():
    one = report().to_dict()
    other = report(seconds=99.0, device="cuda", options={"topk": 1, "shard": [1, 2]}).to_dict()
    assert run_differences(one, other) == []
    changed = report(method="layercam", layers=["layer3"], preprocess={}).to_dict()
    assert run_differences(one, changed) == ["method", "layers", "preprocess"]
    assert run_differences(one, {**one, "schema_version": 2}) == ["schema_version"]


def test_options_differ_as_flags_except_those_that_change_only_the_speed():
    one = {"options": {"topk": 1, "batch_size": 8, "workers": 2, "save_raw": False}}
    other = {"options": {"topk": 2, "batch_size": 64, "workers": 0, "colormap": "jet"}}
    assert option_differences(one, other) == ["--colormap", "--save-raw", "--topk"]
    assert option_differences(one, {"options": {**one["options"], "workers": 9}}) == []
    assert option_differences({}, {"options": {"topk": 1}}) == ["--topk"]
