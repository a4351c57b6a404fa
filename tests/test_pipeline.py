"""The batch pipeline: decode workers, bounded look-ahead, sharding, output formats, --amp."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import interrupt_explain_at_call
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli import pipeline
from gradcam_cli.cli import app
from gradcam_cli.explainer import Explainer
from gradcam_cli.inputs import collect_inputs
from gradcam_cli.preprocess import Preprocess
from gradcam_cli.sources import load_model

SCENES = Path(__file__).resolve().parents[1] / "sample_images" / "scenes"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(7):
        size = (rng.integers(60, 160), rng.integers(60, 160), 3)
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "broken.png").write_bytes(b"not a picture")
    return folder


def run_demo(out: Path, *args: str):
    result = CliRunner().invoke(
        app, ["explain", *args, "--model", "demo:shapes", "--out", str(out)], catch_exceptions=False
    )
    return result


# -- decoding ahead, in order, bounded ----------------------------------------------------------


def test_decode_batches_keep_input_order_and_errors(photos):
    items = collect_inputs([str(photos)])
    preprocess = Preprocess(input_size=(32, 32), resize_shorter=32)
    batches = list(pipeline.decode_batches(items, 3, preprocess, workers=0))
    flat = [d for batch in batches for d in batch]
    assert [d.item for d in flat] == items
    assert [len(b) for b in batches] == [3, 3, 2]
    broken = next(d for d in flat if d.item.key == "broken")
    assert broken.image is None and "cannot read" in broken.error
    good = next(d for d in flat if d.item.key == "p0")
    assert good.array.shape == (3, 32, 32) and good.array.dtype == np.float32


def test_decoding_runs_only_a_bounded_window_ahead(photos, monkeypatch):
    started = []
    real = pipeline._decode_batch

    def counting(items, preprocess):
        started.append(len(items))
        return real(items, preprocess)

    monkeypatch.setattr(pipeline, "_decode_batch", counting)
    items = collect_inputs([str(photos)]) * 10  # 80 inputs, 80 batches of 1
    batches = pipeline.decode_batches(items, 1, Preprocess(), workers=0, ahead=3)
    next(batches)
    assert len(started) <= 3  # not the 80 a plain map would queue at once
    batches.close()


def test_a_single_batch_is_decoded_without_starting_worker_processes(photos, monkeypatch):
    pools = []

    class Pool(ThreadPoolExecutor):  # in place of the process pool: records that one started
        def __init__(self, workers, **options):
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(pipeline, "ProcessPoolExecutor", Pool)
    items = collect_inputs([str(photos)])
    [batch] = pipeline.decode_batches(items, len(items), Preprocess(), workers=2)
    assert [d.item for d in batch] == items and pools == []  # no pool start (0.3 s)
    assert len(list(pipeline.decode_batches(items, 4, Preprocess(), workers=2))) == 2
    assert pools == [2]  # two batches: the pool decodes the second while the model runs


def test_worker_processes_give_the_same_results_as_a_thread(photos, tmp_path):
    runs = {}
    for workers in ("0", "2"):
        out = tmp_path / workers
        result = run_demo(out, str(photos), "--workers", workers, "-b", "3")
        assert result.exit_code == 1  # the broken file
        report = json.loads((out / "predictions.json").read_text())
        runs[workers] = report
        assert report["options"]["workers"] == int(workers)
    assert runs["0"]["results"] == runs["2"]["results"]
    for record in runs["0"]["results"]:
        for explanation in record["explanations"]:
            one, two = (
                np.asarray(Image.open(tmp_path / w / explanation["overlay"])) for w in ("0", "2")
            )
            assert np.array_equal(one, two)


def test_workers_must_be_a_count(tmp_path):
    result = run_demo(tmp_path, str(SCENES), "--workers", "-1")
    assert result.exit_code == 2 and "--workers must be 0" in result.stderr
    result = run_demo(tmp_path, str(SCENES), "--workers", "many")
    assert result.exit_code == 2 and "a number or auto" in result.stderr


# -- sharding ------------------------------------------------------------------------------------


def test_each_shard_writes_its_own_report(tmp_path):
    out = tmp_path / "out"
    seen = []
    for k in (1, 2):
        result = run_demo(out, str(SCENES), "--shard", f"{k}/2")
        assert result.exit_code == 0, result.stderr
        report = json.loads((out / f"predictions.{k}-of-2.json").read_text())
        assert report["options"]["shard"] == [k, 2]
        seen += [r["input"] for r in report["results"]]
    assert sorted(seen) == sorted(str(p) for p in SCENES.iterdir())
    assert not (out / "predictions.json").exists()


# -- picture formats -----------------------------------------------------------------------------


def test_jpeg_overlays_without_heatmaps(tmp_path):
    png, jpg = tmp_path / "png", tmp_path / "jpg"
    assert run_demo(png, str(SCENES / "circle.png")).exit_code == 0
    result = run_demo(jpg, str(SCENES / "circle.png"), "--format", "jpg", "--no-heatmap")
    assert result.exit_code == 0, result.stderr
    (record,) = json.loads((jpg / "predictions.json").read_text())["results"][0]["explanations"]
    assert record["overlay"].endswith(".overlay.jpg") and record["heatmap"] is None
    assert sorted(p.suffix for p in jpg.iterdir()) == [".jpg", ".json"]
    lossless = np.asarray(Image.open(png / record["overlay"].replace(".jpg", ".png")), dtype=float)
    lossy = np.asarray(Image.open(jpg / record["overlay"]), dtype=float)
    assert np.abs(lossless - lossy).mean() < 3.0
    result = run_demo(jpg, str(SCENES / "circle.png"), "--format", "jepg")
    assert result.exit_code == 2 and "Did you mean 'jpg'" in result.stderr


# -- mixed precision -----------------------------------------------------------------------------


def test_amp_bf16_on_cpu_gives_the_same_maps_closely():
    loaded = load_model("torchvision:resnet18", pretrained=False)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) for _ in range(3)]
    plain = Explainer(loaded, ["layer4"]).explain(images, classes=[5])
    mixed = Explainer(loaded, ["layer4"], amp="bf16").explain(images, classes=[5])
    for a, b in zip(plain, mixed, strict=True):
        one, two = a.raw(5, "layer4"), b.raw(5, "layer4")
        assert two.dtype == np.float32
        assert np.corrcoef(one.ravel(), two.ravel())[0, 1] > 0.99
    assert next(loaded.model.parameters()).dtype == torch.float32  # the caller's model as it was


def test_amp_choices_are_checked(tmp_path):
    result = run_demo(tmp_path, str(SCENES), "--amp", "fp16", "--device", "cpu")
    assert result.exit_code == 2 and "--amp fp16 needs a GPU" in result.stderr
    result = run_demo(tmp_path, str(SCENES), "--amp", "bf61")
    assert result.exit_code == 2 and "Did you mean 'bf16'" in result.stderr


def test_interrupt_reports_the_batches_already_written(tmp_path, monkeypatch):
    from gradcam_cli.outputs import RunOptions
    from gradcam_cli.runner import run_explain

    explainer = Explainer(load_model("demo:shapes"))
    interrupt_explain_at_call(explainer, monkeypatch, call=2)
    items = collect_inputs([str(SCENES)])
    out = tmp_path / "out"
    report = run_explain(explainer, items, RunOptions(out_dir=out, batch_size=2))
    assert report.interrupted
    written = json.loads((out / "predictions.json").read_text())
    assert written["summary"]["interrupted"] is True
    assert [r["input"] for r in written["results"]] == [i.source for i in items[:2]]
    for result in written["results"]:
        assert (out / result["explanations"][0]["overlay"]).is_file()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
