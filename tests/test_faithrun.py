"""--metrics, --baselines and --gate in a run: the JSON's numbers are the metrics of the very
input, map and target the run explained; gates fail the run one line each; bad values exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import explain, invoke, strict_report
from PIL import Image

from gradcam_cli.explainer import Explainer
from gradcam_cli.faithfulness import MetricSettings, measure
from gradcam_cli.faithrun import model_predict, saliency_at_input
from gradcam_cli.job import run_job
from gradcam_cli.panel import caption_fields

SCENES = Path(__file__).parents[1] / "sample_images" / "scenes"
CHEAP = ["--metrics", "deletion,insertion,drop", "--metric-steps", "5"]


def test_the_json_holds_the_metrics_of_the_input_map_and_target_explained(tmp_path):
    out = tmp_path / "out"
    scene = SCENES / "two_circle_star.png"
    result = explain(
        str(scene), "-m", "demo:shapes", "-k", "2", *CHEAP, "--save-raw", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    explainer = Explainer("demo:shapes")
    image = torch.as_tensor(explainer.loaded.preprocess.to_array(Image.open(scene).convert("RGB")))
    predict = model_predict(
        explainer.model, explainer.probe.outputs_probabilities, "probability", explainer.autocast
    )
    settings = MetricSettings(steps=5)
    records = strict_report(out)["results"][0]["explanations"]
    assert len(records) == 2
    for record in records:
        raw = np.load(out / record["raw"])
        expected = measure(
            predict,
            image,
            saliency_at_input(raw, tuple(image.shape[1:])),
            record["target"]["index"],
            ["deletion", "insertion", "drop"],
            settings,
        ).values
        measured = record["faithfulness"]
        assert set(measured) == {*expected, "baselines", "curves"}
        for name, value in expected.items():
            assert measured[name] == pytest.approx(value, abs=1e-6), name
        curves = json.loads((out / measured["curves"]).read_text())["map"]
        assert len(curves["deletion_auc"]["x"]) == len(curves["deletion_auc"]["y"]) == 6
    # The two targets' maps differ, and so do their numbers.
    assert records[0]["faithfulness"] != records[1]["faithfulness"]


def test_baselines_are_measured_per_target_and_shared_by_its_layers(tmp_path):
    report = run_job(
        SCENES / "circle.png",
        "demo:shapes",
        out=tmp_path / "out",
        layers=["features", "features.17"],
        metrics="deletion,insertion",
        baselines="random,center,edges",
        metric_settings=MetricSettings(steps=4),
    )
    first, second = (record.faithfulness for record in report.results[0].explanations)
    assert set(first["baselines"]) == {"random", "center", "edges"}
    assert first["baselines"] == second["baselines"]  # the image × target's, not the layer's
    assert first["deletion_auc"] != second["deletion_auc"]  # the layers' own maps differ
    summary = report.to_dict()["summary"]["faithfulness"]
    assert summary["explanations"] == 2
    assert set(summary["baselines"]) == {"random", "center", "edges"}
    assert summary["means"]["insertion_auc"] == pytest.approx(
        (first["insertion_auc"] + second["insertion_auc"]) / 2, abs=1e-6
    )


def test_a_gate_fails_the_run_with_one_line_per_explanation(tmp_path):
    scenes = [str(SCENES / name) for name in ("circle.png", "square.png", "star.png")]
    passing = explain(
        *scenes,
        "-m",
        "demo:shapes",
        *CHEAP,
        "--gate",
        "insertion_auc>=0",
        "-o",
        str(tmp_path / "a"),
    )
    assert passing.exit_code == 0, passing.output
    assert strict_report(tmp_path / "a")["summary"]["gate"] == {
        "rules": ["insertion_auc>=0"],
        "explanations": 3,
        "failures": 0,
    }
    failing = explain(
        *scenes,
        "-m",
        "demo:shapes",
        *CHEAP,
        "--gate",
        "insertion_auc>=0",
        "--gate",
        "deletion_auc<=-1",  # no map reaches it
        "-o",
        str(tmp_path / "b"),
    )
    assert failing.exit_code == 1
    lines = [
        line for line in failing.stderr.splitlines() if line.startswith("gradcam: gate failed")
    ]
    assert len(lines) == 3 and all("deletion_auc" in line and "> -1" in line for line in lines)
    records = [e for r in strict_report(tmp_path / "b")["results"] for e in r["explanations"]]
    assert all(e["gate"]["passed"] is False for e in records)
    assert "3 of 3 explanations failed --gate" in failing.stderr


def test_a_localization_gate_reads_the_mask_figures(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    mask = np.zeros((128, 128), np.uint8)
    mask[:8, :8] = 255  # a corner the circle is not in
    Image.fromarray(mask).save(masks / "circle.png")
    result = explain(
        str(SCENES / "circle.png"),
        "-m",
        "demo:shapes",
        "--mask",
        str(masks),
        "--gate",
        "hit>=1",
        "-o",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 1, result.output
    assert "gate failed" in result.stderr and "hit 0 < 1" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metrics", "insertoin"], "Did you mean one of 'insertion'"),
        (["--metrics", "insertion", "--gate", "insertion_auc>0.4"], "use >= or <="),
        (["--metrics", "insertion", "--gate", "insertion_auc>=high"], "'high' is not a number"),
        (
            ["--metrics", "insertion", "--gate", "insertoin_auc>=0.4"],
            "Did you mean one of 'insertion_auc'",
        ),
        (["--metrics", "insertion", "--gate", "deletion_auc<=0.2"], "add it: --metrics deletion"),
        (["--gate", "iou>=0.5"], "needs a mask"),
        (["--baselines", "random"], "add --metrics"),
        (["--metrics", "road", "--baselines", "randon"], "Did you mean 'random'"),
        (["--metrics", "road", "--road-percentiles", "10,x"], "--road-percentiles"),
        (["--metrics", "road", "--road-percentiles", "0,50"], "strictly between 0 and 100"),
        (["--metric-steps", "5"], "apply to the metrics"),
        (["--metrics", "deletion", "--deletion-substrate", "blurr"], "Did you mean 'blur'"),
    ],
)
def test_bad_metric_options_exit_2_before_any_model_runs(tmp_path, args, message):
    out = tmp_path / "out"
    result = explain(str(SCENES / "circle.png"), "-m", "demo:shapes", *args, "-o", str(out))
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert not out.exists()


def test_the_panel_and_the_page_show_the_metrics(tmp_path):
    out = tmp_path / "out"
    result = explain(
        str(SCENES / "circle.png"),
        "-m",
        "demo:shapes",
        *CHEAP,
        "--baselines",
        "center",
        "--gate",
        "insertion_auc>=0",
        "--panel",
        "--report",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    [record] = strict_report(out)["results"][0]["explanations"]
    fields = caption_fields(
        input="x",
        size=(1, 1),
        predictions=[],
        target=record["target"],
        method="gradcam",
        layer="features",
        localization=None,
        colormap="jet",
        normalize="minmax",
        faithfulness=record["faithfulness"],
        gate=record["gate"],
    )
    insertion = f"insertion {record['faithfulness']['insertion_auc']:.3f}"
    assert any(f.startswith("faithfulness:") and insertion in f for f in fields)
    assert any(f.startswith("baselines: center:") for f in fields)
    assert "gate: passed" in fields
    page = (out / "index.html").read_text()
    assert insertion in page and "center: deletion" in page


def test_resume_refuses_other_metrics_and_merge_adds_the_shares_up(tmp_path):
    out = tmp_path / "out"
    scenes = str(SCENES)
    for k in (1, 2):
        shard = explain(scenes, "-m", "demo:shapes", *CHEAP, "--shard", f"{k}/2", "-o", str(out))
        assert shard.exit_code == 0, shard.output
    merged = invoke("merge", str(out))
    assert merged.exit_code == 0, merged.output
    document = strict_report(out)
    records = [e["faithfulness"] for r in document["results"] for e in r["explanations"]]
    summary = document["summary"]["faithfulness"]
    assert summary["explanations"] == len(records) == 6
    mean = sum(r["deletion_auc"] for r in records) / len(records)
    assert summary["means"]["deletion_auc"] == pytest.approx(mean, abs=1e-6)
    other = explain(
        scenes,
        "-m",
        "demo:shapes",
        "--metrics",
        "insertion",
        "--shard",
        "1/2",
        "--resume",
        "-o",
        str(out),
    )
    assert other.exit_code == 2 and "--metrics" in other.stderr
