"""What a run writes for one explanation, beyond the overlay: the target's probability and score,
the true mask (its file, its panel tile, its link on the page), and the guided image written
once per target when no layer changes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from gradcam_cli import Explainer, Preprocess, read_mask
from gradcam_cli.captions import target_text
from gradcam_cli.cli import app
from gradcam_cli.panel import tile_height
from gradcam_cli.pngwrite import png_bytes
from gradcam_cli.report import ImageResult, TargetRef

SAMPLES = Path(__file__).parents[1] / "sample_images"
SCENE = SAMPLES / "scenes" / "two_circle_star.png"  # 128×128; masks for circle and star
DEMO = ["--model", "demo:shapes"]
TWO_LAYERS = ["--layer", "features", "--layer", "features.17"]


def explain(out: Path, *args: str) -> dict:
    result = CliRunner().invoke(app, ["explain", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "predictions.json").read_text(encoding="utf-8"))


def explanations(report: dict) -> list[dict]:
    return [e for r in report["results"] for e in r["explanations"]]


# -- 8. each explanation's target carries its probability and score ---------------------------


class TwelveClasses(nn.Module):
    """Seeded conv → pool → linear over 12 classes: a class outside the top 5 exists."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 12))

    def forward(self, x):
        return self.head(self.features(x))


def test_a_target_outside_the_top_5_has_its_probability_in_the_full_softmax(tmp_path):
    model = TwelveClasses().eval()
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    preprocess = Preprocess(input_size=(32, 32), resize_shorter=32)  # the photo as it is
    # The model's scores, computed here: normalised pixels → logits → softmax over all 12.
    pixels = np.asarray(photo, dtype=np.float32) / 255.0
    x = (pixels - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])[0].double()
    probabilities = logits.softmax(0)
    target = int(probabilities.argmin())  # the least likely class: never in the top 5

    explainer = Explainer(model, "features", preprocess=preprocess)
    result = explainer.explain(photo, targets=[target])
    assert target not in {p.index for p in result.predictions} and len(result.predictions) == 5
    [ref] = result.targets
    assert ref.index == target and ref.label == str(target)
    assert ref.probability == pytest.approx(float(probabilities[target]), rel=1e-5)
    assert ref.score == pytest.approx(float(logits[target]), rel=1e-5, abs=1e-6)
    for prediction in result.predictions:  # and the top 5 from the same softmax
        assert prediction.probability == pytest.approx(float(probabilities[prediction.index]))

    report = json.loads(result.save(tmp_path / "out").read_text(encoding="utf-8"))
    [record] = explanations(report)
    assert record["target"] == {
        "index": target,
        "label": str(target),
        "probability": ref.probability,
        "score": ref.score,
    }
    # The caption and the page say it too (it is in no prediction to look it up in).
    assert target_text(record["target"], report["results"][0]["predictions"]) == (
        f"{target} {target} ({ref.probability:.3f})"
    )


def test_cli_target_and_topk_targets_carry_the_probability_and_score_of_their_class(tmp_path):
    # `-t star` is not the predicted class (circle); the demo has 4 classes, all predicted
    report = explain(tmp_path / "t", str(SCENE), *DEMO, "-t", "star", "-t", "1")
    [result] = report["results"]
    by_index = {p["index"]: p for p in result["predictions"]}
    assert result["predictions"][0]["label"] == "circle"
    assert [e["target"]["label"] for e in result["explanations"]] == ["star", "square"]
    for record in result["explanations"]:
        target = record["target"]
        expected = by_index[target["index"]]
        assert target == {k: expected[k] for k in ("index", "label", "probability", "score")}
    topk = explain(tmp_path / "k", str(SCENE), *DEMO, "--topk", "2")
    for record, prediction in zip(
        explanations(topk), topk["results"][0]["predictions"][:2], strict=True
    ):
        assert record["target"] == prediction


def test_non_finite_target_scores_are_null_like_the_predictions():
    ref = TargetRef.make(3, "star", float("nan"), float("inf"))
    assert (ref.probability, ref.score) == (None, None)
    assert TargetRef.make(np.int64(3), "star", 0.25, -1.5) == TargetRef(3, "star", 0.25, -1.5)


def test_targets_of_earlier_reports_read_back_with_the_numbers_of_their_prediction():
    circle = {"index": 0, "label": "circle", "probability": 0.5, "score": 1.25}
    files = {"overlay": "x.overlay.png", "heatmap": None, "raw": None}
    record = {
        "input": "x.png",
        "status": "ok",
        "predictions": [circle],
        "explanations": [  # no probability, score or mask: as an earlier version wrote them
            {"target": {"index": 0, "label": "circle"}, "layer": "features", **files},
            {"target": {"index": 2, "label": "t", "later_key": 1}, "layer": "features", **files},
        ],
    }
    loaded = ImageResult.from_dict(record)
    assert [e.target for e in loaded.explanations] == [
        TargetRef(0, "circle", 0.5, 1.25),  # from its prediction
        TargetRef(2, "t"),  # among no predictions: none; unknown keys dropped
    ]
    assert [e.mask for e in loaded.explanations] == [None, None]


def test_resume_takes_over_a_report_written_without_target_scores_or_mask(tmp_path):
    out = tmp_path / "out"
    args = [str(SCENE), *DEMO, "-t", "star", "--mask", str(SAMPLES / "masks"), "--panel"]
    explain(out, *args)
    path = out / "predictions.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    [record] = explanations(document)
    record["target"] = {"index": 3, "label": "star"}
    del record["mask"]
    path.write_text(json.dumps(document), encoding="utf-8")
    resumed = explain(out, *args, "--resume")
    assert resumed["summary"]["resumed"] == 1
    [star] = [p for p in document["results"][0]["predictions"] if p["label"] == "star"]
    assert explanations(resumed)[0]["target"] == star


# -- 7. the true mask: its file, its tile in the panel, its link on the page -----------------


def test_with_a_mask_each_target_gets_one_mask_file_in_the_photos_frame(tmp_path):
    report = explain(
        tmp_path / "out",
        str(SCENE),
        *DEMO,
        *TWO_LAYERS,
        "--topk",
        "2",
        "--mask",
        str(SAMPLES / "masks"),
        "--panel",
    )
    records = explanations(report)
    assert len(records) == 4  # 2 targets × 2 layers
    masks = sorted((tmp_path / "out").glob("*.mask.png"))
    assert [p.name for p in masks] == [
        "two_circle_star.0-circle.mask.png",
        "two_circle_star.3-star.mask.png",
    ]
    for record in records:
        index, label = record["target"]["index"], record["target"]["label"]
        assert record["mask"] == f"two_circle_star.{index}-{label}.mask.png"
        source = record["localization"]["mask"]
        assert Path(source).name == f"two_circle_star.{label}.png"
        with Image.open(tmp_path / "out" / record["mask"]) as written:
            assert written.mode == "L" and written.size == (128, 128)
            pixels = np.asarray(written)
        expected = read_mask(source, (128, 128))
        assert set(np.unique(pixels)) == {0, 255}
        np.testing.assert_array_equal(pixels == 255, expected)


def test_the_panel_gets_a_mask_tile_and_nothing_changes_without_a_mask(tmp_path):
    from gradcam_cli.panel import MASK_DIM, _eroded, _font, _line_height

    args = [str(SCENE), *DEMO, "-t", "star", "--panel"]
    plain = explain(tmp_path / "plain", *args)
    masked = explain(tmp_path / "masked", *args, "--mask", str(SAMPLES / "masks"))
    [without], [with_mask] = explanations(plain), explanations(masked)
    assert without["mask"] is None and not list((tmp_path / "plain").glob("*.mask.png"))
    with Image.open(tmp_path / "plain" / without["panel"]) as a:
        narrow = np.asarray(a.convert("RGB")).astype(int)
    with Image.open(tmp_path / "masked" / with_mask["panel"]) as b:
        wide = np.asarray(b.convert("RGB")).astype(int)
    # draw_panel's layout for a 128-pixel photo: 256-pixel tiles after a margin and the titles
    height = tile_height(128)
    size = max(12, round(height / 16))
    margin, gap = size, size // 2
    top = margin + _line_height(_font(size)) + gap // 2
    assert wide.shape[1] - narrow.shape[1] == height + gap  # one more tile
    tiles = _tiles(wide, top, margin, gap, height, 4)
    for tile, before in zip(tiles[:3], _tiles(narrow, top, margin, gap, height, 3), strict=True):
        np.testing.assert_array_equal(tile, before)  # the other tiles do not change
    photo, mask_tile = tiles[0], tiles[3]  # photo | heatmap | overlay | mask
    with Image.open(tmp_path / "masked" / with_mask["mask"]) as written:
        mask = np.asarray(written.resize((height, height), Image.Resampling.BILINEAR)) >= 128
    inner = _eroded(mask, 4)  # clear of the outline
    outer = ~mask  # the outline lies inside the mask
    assert inner.sum() > 500 and outer.sum() > 30000
    assert np.abs(mask_tile[inner] - photo[inner]).max() <= 1  # the photo inside the mask
    assert np.abs(mask_tile[outer] - np.rint(photo[outer] * MASK_DIM)).max() <= 1  # dimmed
    rim = mask & ~inner
    assert (mask_tile[rim] == 255).all(axis=1).mean() > 0.3  # the white outline


def _tiles(panel: np.ndarray, top: int, margin: int, gap: int, height: int, count: int):
    """The first `count` square tiles of a panel laid out by draw_panel."""
    left = [margin + i * (height + gap) for i in range(count)]
    return [panel[top : top + height, x : x + height] for x in left]


def test_the_page_links_each_measured_explanation_to_its_mask(tmp_path):
    shutil.copy(SCENE, tmp_path / "no_mask_for_me.png")
    out = tmp_path / "out"
    report = explain(
        out,
        str(SCENE),
        str(tmp_path / "no_mask_for_me.png"),
        *DEMO,
        "-t",
        "star",
        "--mask",
        str(SAMPLES / "masks"),
        "--report",
    )
    page = (out / "index.html").read_text(encoding="utf-8")
    measured, unmeasured = explanations(report)
    assert measured["mask"] == "two_circle_star.3-star.mask.png"
    assert f'<a href="{measured["mask"]}">mask</a>' in page
    assert unmeasured["mask"] is None and unmeasured["localization"]["error"].startswith("no mask")
    assert page.count(">mask</a>") == 1


# -- 9. the guided image, once per target when the layer does not change it -------------------


def test_guided_backprop_at_two_layers_writes_one_guided_image_per_target(tmp_path):
    out = tmp_path / "out"
    report = explain(
        out, str(SCENE), *DEMO, *TWO_LAYERS, "--topk", "2", "--method", "guided-backprop"
    )
    records = explanations(report)
    assert len(records) == 4
    files = sorted(p.name for p in out.glob("*.guided.png"))
    assert files == ["two_circle_star.0-circle.guided.png", "two_circle_star.3-star.guided.png"]
    explainer = Explainer("demo:shapes", ["features", "features.17"], method="guided-backprop")
    result = explainer.explain(str(SCENE), targets=[0, 3])
    for record in records:
        index, label = record["target"]["index"], record["target"]["label"]
        assert record["guided"] == f"two_circle_star.{index}-{label}.guided.png"
        written = (out / record["guided"]).read_bytes()
        for layer in ("features", "features.17"):  # the same picture at either layer
            picture = result.guided_picture(index, layer)
            assert written == png_bytes(picture)
    # --resume takes the run over: a file shared by two records is there for both
    again = CliRunner().invoke(
        app,
        ["explain", str(SCENE), *DEMO, *TWO_LAYERS, "--topk", "2", "--method", "guided-backprop"]
        + ["--out", str(out), "--resume"],
    )
    assert again.exit_code == 0, again.output
    assert json.loads((out / "predictions.json").read_text())["summary"]["resumed"] == 1


def test_guided_gradcam_keeps_one_guided_image_per_layer(tmp_path):
    out = tmp_path / "out"
    report = explain(
        out, str(SCENE), *DEMO, *TWO_LAYERS, "-t", "star", "--method", "guided-gradcam"
    )
    paths = [e["guided"] for e in explanations(report)]
    assert paths == [
        "two_circle_star.3-star.features.guided.png",
        "two_circle_star.3-star.features.17.guided.png",
    ]
    assert (out / paths[0]).read_bytes() != (out / paths[1]).read_bytes()


def test_guided_backprop_at_one_layer_keeps_its_layer_in_the_name(tmp_path):
    report = explain(tmp_path / "out", str(SCENE), *DEMO, "--method", "guided-backprop")
    [record] = explanations(report)
    assert record["guided"] == record["overlay"].replace(".overlay.png", ".guided.png")
