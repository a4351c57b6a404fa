"""The embedded demo: scenes and masks, the shipped model, its localization, and the gate.

The thresholds are issue 3's acceptance figures, asserted on the held-out scenes that docs/demo-
model.md's figures come from; `benchmarks/demo_eval.py` (`make demo-eval`) prints them all.
"""

from __future__ import annotations

import ast
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.demo.model import WEIGHTS_PATH, ShapesNet
from gradcam_cli.demo.samples import sample_scenes
from gradcam_cli.demo.scenes import CLASSES, make_scene
from gradcam_cli.demo.train import scene_batch, train
from gradcam_cli.explainer import Explainer
from gradcam_cli.sources import load_model, read_state_dict

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"
DEMO_EVAL = ROOT / "benchmarks" / "demo_eval.py"


@pytest.fixture(scope="module")
def explainer():
    return Explainer(load_model("demo:shapes"))


# -- scenes ------------------------------------------------------------------------------------


def test_a_scene_is_the_same_from_the_same_seed_and_differs_from_the_next():
    a, b, c = make_scene(7), make_scene(7), make_scene(8)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))
    assert a.labels == b.labels


def test_two_object_scenes_hold_two_classes_with_disjoint_masks():
    for seed in range(20):
        scene = make_scene(seed, objects=2)
        assert len(set(scene.labels)) == 2
        first, second = scene.masks
        assert first.sum() > 50 and second.sum() > 50
        assert not (first & second).any()


def test_the_mask_covers_the_drawn_object():
    # The object is one flat colour: inside the mask (away from its antialiased edge) every
    # pixel has it; the background under clutter and noise is not that flat.
    scene = make_scene(3)
    pixels = np.asarray(scene.image).reshape(-1, 3).astype(int)
    mask = scene.masks[0].reshape(-1)
    inner = pixels[mask]
    colour = np.median(inner, axis=0)
    near = np.abs(pixels - colour).sum(axis=1) < 12
    assert near[mask].mean() > 0.8
    assert near[~mask].mean() < 0.05


def test_sample_scenes_in_the_repo_are_the_generated_ones():
    for stem, scene in sample_scenes():
        on_disk = np.asarray(Image.open(SAMPLES / "scenes" / f"{stem}.png").convert("RGB"))
        assert np.array_equal(on_disk, np.asarray(scene.image)), stem
        for label, mask in zip(scene.labels, scene.masks, strict=True):
            name = stem if len(scene.labels) == 1 else f"{stem}.{CLASSES[label]}"
            stored = np.asarray(Image.open(SAMPLES / "masks" / f"{name}.png")) > 127
            assert np.array_equal(stored, mask), name


# -- the shipped model -------------------------------------------------------------------------


def test_weights_ship_in_the_package_small_and_tensor_only():
    assert WEIGHTS_PATH.stat().st_size < 3_000_000
    state = read_state_dict(WEIGHTS_PATH)  # safetensors: tensors only, no code can run
    assert set(state) == set(ShapesNet().state_dict())
    loaded = load_model("demo:shapes")
    assert loaded.describe() == {
        "name": "shapes",
        "source": "demo",
        "weights": "embedded:shapes.safetensors",
    }
    assert loaded.labels == list(CLASSES)
    assert sum(p.numel() for p in loaded.model.parameters()) <= 1_000_000


def test_default_layer_is_an_8x8_map(explainer):
    probe = explainer.probe
    layer = next(info for info in probe.layers if info.name == str(explainer.layers[0]))
    assert layer.shape[-2:] == (8, 8)


@pytest.fixture(scope="module")
def demo_eval():
    """benchmarks/demo_eval.py, the measure `make demo-eval` prints (a script, not a module)."""
    return runpy.run_path(str(DEMO_EVAL), run_name="demo_eval_script")


def test_accuracy_and_localization_on_held_out_scenes(explainer, demo_eval):
    figures = demo_eval["evaluate"](explainer, single=200, pairs=100)  # issue 3's sizes; about 5 s
    assert figures.accuracy_single >= 0.95
    assert figures.hit_rate >= 0.90
    assert figures.mean_energy > 3 * figures.mean_mask_share
    assert figures.discriminative_rate >= 0.85


def test_the_demo_folder_imports_nothing_that_imports_it_back():
    """gradcam_cli.sources builds demo:shapes, and the explainer loads it through sources: the
    demo's own modules take from the package only the Preprocess it is described by."""
    outside = set()
    for path in (ROOT / "gradcam_cli" / "demo").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                outside.add(node.module)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradcam_"):
                outside.add(node.module)
            elif isinstance(node, ast.Import):
                outside |= {a.name for a in node.names if a.name.startswith("gradcam_")}
    assert outside == {"preprocess"}


def test_training_is_deterministic():
    data = scene_batch(range(64), workers=1)
    first, second = (train(epochs=1, batch_size=16, data=data, log=lambda _: None) for _ in "ab")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# -- the CLI with masks ------------------------------------------------------------------------


def _explain(tmp_path, *args):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["explain", str(SAMPLES / "scenes"), "--model", "demo:shapes", "--out", str(out), *args],
        catch_exceptions=False,
    )
    return result, json.loads((out / "predictions.json").read_text())


def test_make_demo_command_passes_its_gate_and_reports_localization(tmp_path):
    result, report = _explain(tmp_path, "--mask", str(SAMPLES / "masks"), "--require-hit")
    assert result.exit_code == 0, result.stderr
    assert report["summary"]["localization"]["gate_failures"] == 0
    assert report["summary"]["localization"]["measured"] == 6
    for item in report["results"]:
        (record,) = item["explanations"]
        found = record["localization"]
        assert found["hit"] is True and found["passed"] is True, item["input"]
        assert found["energy"] > found["mask_share"]
        assert Path(found["mask"]).parent == SAMPLES / "masks"
    assert "localization over 6 maps: hit rate 1.000" in result.stderr


def test_two_object_scene_each_class_matched_to_its_own_mask(tmp_path):
    scene = SAMPLES / "scenes" / "two_circle_star.png"
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["explain", str(scene), "--model", "demo:shapes", "--out", str(out)]
        + ["--target", "circle", "--target", "star", "--mask", str(SAMPLES / "masks")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    records = json.loads((out / "predictions.json").read_text())["results"][0]["explanations"]
    for record in records:
        label = record["target"]["label"]
        assert record["localization"]["mask"].endswith(f"two_circle_star.{label}.png")
        assert record["localization"]["hit"] is True


def test_gate_failure_exits_1_and_names_the_explanation(tmp_path):
    result, report = _explain(tmp_path, "--mask", str(SAMPLES / "masks"), "--min-energy", "0.99")
    assert result.exit_code == 1
    failed = [line for line in result.stderr.splitlines() if "gate failed" in line]
    assert len(failed) == 6 == report["summary"]["localization"]["gate_failures"]
    assert "circle.png [circle @ features]: energy in mask" in result.stderr
    assert report["summary"]["errors"] == 0  # every image was explained; only the gate failed


def test_an_input_without_a_mask_fails_the_gate(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.open(SAMPLES / "masks" / "circle.png").save(masks / "circle.png")
    result, report = _explain(tmp_path, "--mask", str(masks), "--require-hit")
    assert result.exit_code == 1
    missing = [
        item["explanations"][0]["localization"]
        for item in report["results"]
        if not item["input"].endswith("circle.png")
    ]
    assert len(missing) == 5
    assert all(m["passed"] is False and m["hit"] is None for m in missing)
    assert "no mask for 'square'" in result.stderr
