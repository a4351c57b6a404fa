"""The `gradcam` command: every documented option, error path and exit code."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import GRADCAM, console_script, invoke, strict_report, valid_png_of_size
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app

TINY_MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    from my_blocks import conv_block  # a sibling module, as in a real project


    class Tiny(nn.Module):
        def __init__(self, num_classes=4):
            super().__init__()
            torch.manual_seed(0)
            self.features = nn.Sequential(*conv_block(3, 8), *conv_block(8, 16))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))


    class Binary(nn.Module):
        # article 004's shape of model: one output, a 1-channel conv head
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.blocks = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
            self.classifier = nn.Conv2d(8, 1, 32)

        def forward(self, x):
            return self.classifier(self.blocks(x))


    class DictOutput(Tiny):
        def forward(self, x):
            return {"logits": super().forward(x), "aux": x.mean()}


    class SkipToHead(nn.Module):
        # the head also sees `early`: Ablation-CAM cannot run it alone after `body`
        def __init__(self):
            super().__init__()
            torch.manual_seed(2)
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            early = self.stem(x)
            return self.fc((self.body(early) + early).mean(dim=(2, 3)))


    def make_tiny(num_classes=4):
        return Tiny(num_classes)
    """
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with the user's model file and a few photos of different sizes and kinds."""
    root = tmp_path_factory.mktemp("ws")
    (root / "my_models.py").write_text(TINY_MODELS)
    (root / "my_blocks.py").write_text(
        "from torch import nn\n\n\n"
        "def conv_block(cin, cout):\n"
        "    return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU()]\n"
    )
    (root / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
    (root / "marker_model.py").write_text(
        "from pathlib import Path\n\n"
        "Path('MODEL_IMPORTED').touch()  # proves the model file was loaded\n\n"
        "from my_models import Tiny  # noqa: E402\n"
    )
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(photos / "wide.jpg")
    Image.fromarray(rng.integers(0, 255, (90, 60, 3), dtype=np.uint8)).save(photos / "tall.png")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L").save(
        photos / "sub" / "gray.bmp"
    )
    return root


@pytest.fixture
def run(workspace, monkeypatch):
    """Invoke the CLI in-process from the workspace; returns the click Result."""
    monkeypatch.chdir(workspace)
    return invoke


TINY = ["--model", "my_models.py:Tiny", "--input-size", "64"]


# -- the happy path ----------------------------------------------------------------------------


def test_explain_folder_writes_overlays_heatmaps_and_json(run, workspace, tmp_path):
    out = tmp_path / "out"
    result = run("explain", "photos", *TINY, "--out", str(out), "--layer", "features")
    assert result.exit_code == 0, result.output
    report = strict_report(out)
    assert report["schema_version"] == 1
    assert report["model"] == {
        "name": "my_models.py:Tiny",
        "source": "custom",
        "weights": "factory",
    }
    assert report["method"] == "gradcam" and report["layers"] == ["features"]
    assert report["device"] == "cpu"
    assert report["summary"]["images"] == 3 and report["summary"]["ok"] == 3
    assert report["summary"]["errors"] == 0 and report["summary"]["seconds"] >= 0
    assert [r["input"] for r in report["results"]] == [
        "photos/sub/gray.bmp",
        "photos/tall.png",
        "photos/wide.jpg",
    ]
    for record in report["results"]:
        assert record["status"] == "ok" and record["error"] is None
        assert 1 <= len(record["predictions"]) <= 4
        probabilities = [p["probability"] for p in record["predictions"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert set(record["predictions"][0]) == {"index", "label", "probability", "score"}
        [explanation] = record["explanations"]
        assert explanation["target"]["index"] == record["predictions"][0]["index"]
        assert explanation["layer"] == "features" and explanation["raw"] is None
        original = Image.open(workspace / record["input"])
        overlay = Image.open(out / explanation["overlay"])
        heatmap = Image.open(out / explanation["heatmap"])
        assert overlay.size == original.size == tuple(record["size"])
        assert heatmap.size == original.size and heatmap.mode in ("P", "RGBA")  # palette: tRNS


def test_json_flag_prints_only_the_report_on_stdout(run, tmp_path):
    out = tmp_path / "out"
    result = run("explain", "photos/wide.jpg", *TINY, "--out", str(out), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == strict_report(out)
    assert "no --layer given: using 'features'" in result.stderr  # the choice goes to stderr


def test_save_raw_writes_feature_map_sized_npy(run, tmp_path):
    out = tmp_path / "out"
    result = run(
        "explain",
        "photos/wide.jpg",
        "--model",
        "timm:resnet50",
        "--no-pretrained",
        "--layer",
        "layer4",
        "--save-raw",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    [explanation] = strict_report(out)["results"][0]["explanations"]
    raw = np.load(out / explanation["raw"])
    assert raw.shape == (7, 7) and raw.dtype == np.float32 and (raw >= 0).all()
    assert Image.open(out / explanation["overlay"]).size == (200, 120)


def test_topk_and_several_layers_give_one_explanation_per_target_and_layer(run, tmp_path):
    out = tmp_path / "out"
    result = run(
        "explain",
        "photos/wide.jpg",
        *TINY,
        "--out",
        str(out),
        "--topk",
        "3",
        "--layer",
        "features.1, features.3",
    )
    assert result.exit_code == 0, result.output
    record = strict_report(out)["results"][0]
    pairs = {(e["target"]["index"], e["layer"]) for e in record["explanations"]}
    top3 = [p["index"] for p in record["predictions"][:3]]
    assert pairs == {(c, layer) for c in top3 for layer in ("features.1", "features.3")}
    files = [e[kind] for e in record["explanations"] for kind in ("overlay", "heatmap")]
    assert len(set(files)) == 12 and all((out / f).is_file() for f in files)


def test_target_by_index_and_by_label(run, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\n")
    out = tmp_path / "out"
    result = run(
        "explain",
        "photos/wide.jpg",
        *TINY,
        "--out",
        str(out),
        "--labels",
        str(labels),
        "--target",
        "2",
        "--target",
        "Dog",
    )
    assert result.exit_code == 0, result.output
    record = strict_report(out)["results"][0]
    assert [(e["target"]["index"], e["target"]["label"]) for e in record["explanations"]] == [
        (2, "bird"),
        (1, "dog"),
    ]
    assert {p["label"] for p in record["predictions"]} <= {"cat", "dog", "bird", "fish"}


def test_timm_labels_come_from_the_model_metadata(run, tmp_path):
    out = tmp_path / "out"
    result = run(
        "explain",
        "photos/wide.jpg",
        "--model",
        "timm:test_resnet",
        "--no-pretrained",
        "--target",
        "tabby",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    record = strict_report(out)["results"][0]
    target = record["explanations"][0]["target"]
    assert (target["index"], target["label"]) == (281, "tabby, tabby cat")
    assert strict_report(out)["model"]["source"] == "timm"


def test_stdin_paths_and_globs(run, tmp_path):
    out = tmp_path / "out"
    paths = "photos/tall.png\n\nphotos/wide.jpg\n"
    result = run("explain", "-", *TINY, "--out", str(out), input=paths)
    assert result.exit_code == 0, result.output
    assert [r["input"] for r in strict_report(out)["results"]] == [
        "photos/tall.png",
        "photos/wide.jpg",
    ]
    result = run("explain", "photos/*.jpg", *TINY, "--out", str(out))
    assert result.exit_code == 0
    assert [r["input"] for r in strict_report(out)["results"]] == ["photos/wide.jpg"]


@pytest.fixture
def Tiny(workspace, monkeypatch):
    """The workspace's Tiny class, imported by file (tests stay independent of each other)."""
    monkeypatch.syspath_prepend(str(workspace))
    spec = importlib.util.spec_from_file_location("_test_my_models", workspace / "my_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Tiny


def test_user_model_from_module_path_with_weights_and_num_classes(run, tmp_path, Tiny):
    model = Tiny(num_classes=7)
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 50.0, 0]))  # class 5 always wins
    weights = tmp_path / "tiny7.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "out"
    result = run(
        "explain",
        "photos/wide.jpg",
        "--model",
        "my_models:make_tiny",
        "--input-size",
        "64",
        "--weights",
        str(weights),
        "--num-classes",
        "7",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    report = strict_report(out)
    assert report["model"]["weights"] == str(weights)
    assert report["results"][0]["predictions"][0]["index"] == 5


def test_safetensors_weights(run, tmp_path, Tiny):
    from safetensors.torch import save_file

    model = Tiny()
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0, 0, 30.0, 0]))
    weights = tmp_path / "tiny.safetensors"
    save_file(model.state_dict(), str(weights))
    out = tmp_path / "out"
    result = run("explain", "photos/wide.jpg", *TINY, "--weights", str(weights), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert strict_report(out)["results"][0]["predictions"][0]["index"] == 2


def test_single_logit_model_explains_the_positive_class(run, tmp_path):
    out = tmp_path / "out"
    result = run(
        "explain",
        "photos/wide.jpg",
        "--model",
        "my_models.py:Binary",
        "--input-size",
        "64",
        "--target",
        "positive",
        "--target",
        "negative",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    record = strict_report(out)["results"][0]
    probabilities = {p["label"]: p["probability"] for p in record["predictions"]}
    assert probabilities.keys() == {"negative", "positive"}
    assert abs(sum(probabilities.values()) - 1) < 1e-6
    assert [e["target"]["label"] for e in record["explanations"]] == ["positive", "negative"]


def test_dict_output_model(run, tmp_path):
    out = tmp_path / "out"
    result = run(
        "explain",
        "photos/wide.jpg",
        "--model",
        "my_models.py:DictOutput",
        "--input-size",
        "64",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output


def test_preprocess_and_render_options_are_applied_and_recorded(run, tmp_path):
    out = tmp_path / "out"
    result = run(
        "explain",
        "photos/wide.jpg",
        *TINY,
        "--mean",
        "0.5",
        "0.5",
        "0.5",
        "--std",
        "0.25",
        "0.25",
        "0.25",
        "--colormap",
        "viridis",
        "--alpha",
        "0",
        "--interpolation",
        "nearest",
        "--normalize",
        "max",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    report = strict_report(out)
    assert report["preprocess"]["input_size"] == [64, 64]
    assert report["preprocess"]["mean"] == [0.5] * 3 and report["preprocess"]["std"] == [0.25] * 3
    assert report["options"] == {
        "classes": [],
        "topk": 1,
        "batch_size": 2,
        "save_raw": False,
        "colormap": "viridis",
        "alpha": 0.0,
        "interpolation": "nearest",
        "normalize": "max",
        "mask": None,
        "min_energy": None,
        "require_hit": False,
        "workers": 1,
        "format": "png",
        "heatmap": True,
        "shard": None,
        "panel": False,
        "report": False,
        "metrics": None,
        "gate": None,
    }
    # alpha 0: inside the model's crop the overlay is the photo itself.
    photo = np.asarray(Image.open("photos/wide.jpg").convert("RGB"), dtype=int)
    overlay = np.asarray(
        Image.open(out / report["results"][0]["explanations"][0]["overlay"]), dtype=int
    )
    centre = (slice(10, 110), slice(50, 150))
    assert np.abs(overlay[centre] - photo[centre]).max() <= 1


# -- errors and exit codes ---------------------------------------------------------------------


def test_unreadable_image_among_good_ones_exits_1_and_writes_the_good(run, workspace, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("this is not a JPEG")
    out = tmp_path / "out"
    result = run(
        "explain", "photos/wide.jpg", str(bad), "photos/tall.png", *TINY, "--out", str(out)
    )
    assert result.exit_code == 1
    report = strict_report(out)
    assert [r["status"] for r in report["results"]] == ["ok", "error", "ok"]
    assert "broken.jpg" in report["results"][1]["error"]
    assert report["summary"] == {**report["summary"], "images": 3, "ok": 2, "errors": 1}
    for record in (report["results"][0], report["results"][2]):
        assert (out / record["explanations"][0]["overlay"]).is_file()
    assert "broken.jpg" in result.stderr and "Traceback" not in result.output


def test_missing_input_is_an_error_result(run, tmp_path):
    result = run("explain", "photos/wide.jpg", "photos/nope.jpg", *TINY, "--out", str(tmp_path))
    assert result.exit_code == 1
    assert strict_report(tmp_path)["results"][1]["error"] == "no such file or directory"


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gradcam: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "resnet5"], "Did you mean"),
        (["--model", "timm:not_a_model"], "gradcam models"),
        (["--model", "nowhere.py:Model"], "not found"),
        (["--model", "my_models.py:Tiny2"], "Did you mean 'Tiny'"),
        ([*TINY, "--layer", "featurs"], "Did you mean 'features'"),
        ([*TINY, "--layer", "features.9"], "its children: 0, 1, 2, 3"),
        ([*TINY, "--layer", "fc"], "has no spatial axes"),
        ([*TINY, "--alpha", "1.5"], "alpha"),
        ([*TINY, "--colormap", "jte"], "Did you mean 'jet'"),
        ([*TINY, "--normalize", "minmx"], "Did you mean 'minmax'"),
        ([*TINY, "--interpolation", "cubic"], "bicubic"),
        ([*TINY, "--method", "gradcm"], "Did you mean 'gradcam'"),
        ([*TINY, "--topk", "0"], "--topk must be at least 1"),
        ([*TINY, "--batch-size", "0"], "--batch-size must be 1–4096, got 0"),
        ([*TINY, "--target", "4"], "out of range: the model has 4 classes (0–3)"),
        ([*TINY, "--target", "cat"], "no class names"),
        ([*TINY, "--target", "1", "--topk", "2"], "exclude each other"),
        ([*TINY, "--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "cuda"),
        ([*TINY, "--device", "tpu"], "--device"),
        ([*TINY, "--mean", "0", "0", "0", "--std", "0", "1", "1"], "--std values must be positive"),
        ([*TINY, "--require-hit"], "add --mask PATH"),
        ([*TINY, "--min-energy", "0.5"], "add --mask PATH"),
        ([*TINY, "--mask", "photos/wide.jpg", "--min-energy", "50"], "from 0 to 1"),
        ([*TINY, "--mask", "no_masks_here"], "--mask no_masks_here: no such file"),
        (["--model", "demo:shape"], "Did you mean 'shapes'"),
        (["--model", "demo:shapes", "--num-classes", "3"], "--num-classes does not apply"),
        (
            ["--model", "timm:test_resnet", "--no-pretrained", "--target", "tabbby"],
            "Did you mean one of 'tabby'",
        ),
        ([*TINY, "--alpha", "-0.1"], "alpha must be between 0 and 1, got -0.1"),
        ([*TINY, "--alpha", "nan"], "alpha must be between 0 and 1"),
        ([*TINY, "--colormap", "no_such_map"], "unknown colormap 'no_such_map'"),
        ([*TINY, "--method", "grad-cam"], "Did you mean 'gradcam'"),
        ([*TINY, "--topk", "-3"], "--topk must be at least 1"),
        ([*TINY, "--target", "-1"], "out of range: the model has 4 classes (0–3)"),
        ([*TINY, "--target", "999"], "out of range: the model has 4 classes (0–3)"),
        ([*TINY, "--labels", "labels.txt", "--target", "dgo"], "Did you mean 'dog'"),
        ([*TINY, "--labels", "labels.txt", "--target", "zebra"], "not a class of this model"),
        ([*TINY, "--topk", "5"], "--topk 5 is more than the model's 4 classes; give 1–4"),
        ([*TINY, "--std", "nan", "1", "1"], "--std values must be finite numbers"),
        ([*TINY, "--mean", "0", "inf", "0"], "--mean values must be finite numbers"),
    ],
)
def test_usage_errors_exit_2_with_one_line_before_any_output(run, tmp_path, args, expected):
    out = tmp_path / "out"
    result = run("explain", "photos/wide.jpg", "photos/tall.png", *args, "--out", str(out))
    assert result.exit_code == 2, result.output
    assert expected in one_error_line(result)
    # Before any work: no image processed, nothing written (the folder itself may exist).
    assert not out.exists() or list(out.iterdir()) == []
    assert result.stdout == ""


def test_no_inputs_found_is_a_usage_error(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("explain", str(empty), *TINY, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "no input images" in one_error_line(result)


def explain_with_weights(run, weights: Path, out: Path):
    return run("explain", "photos/wide.jpg", *TINY, "--weights", str(weights), "--out", str(out))


def test_weights_with_the_wrong_head_say_which_keys_and_suggest_num_classes(run, tmp_path, Tiny):
    weights = tmp_path / "tiny10.pth"
    torch.save(Tiny(num_classes=10).state_dict(), weights)
    result = explain_with_weights(run, weights, tmp_path / "out")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "fc.weight (10, 16) vs model (4, 16)" in line and "--num-classes 10" in line


def test_weights_of_another_architecture_list_missing_keys(run, tmp_path):
    weights = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, weights)
    result = explain_with_weights(run, weights, tmp_path / "out")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "missing keys: features.0.weight" in line and "unexpected keys: encoder.weight" in line


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED",))


def _save_evil(path: Path, kind: str) -> None:
    if kind == "tensor-slot":
        torch.save({"fc.weight": _RunsCode()}, path)
    elif kind == "nested-in-a-dict":
        torch.save(
            {"epoch": 3, "state_dict": {"fc.weight": torch.zeros(4, 16)}, "x": [_RunsCode()]}, path
        )
    elif kind == "legacy-format":
        torch.save({"model": _RunsCode()}, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, no torch container at all
        path.write_bytes(pickle.dumps(_RunsCode()))


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("evil.pt", "tensor-slot"),
        ("evil.pth", "nested-in-a-dict"),
        ("evil.pth", "legacy-format"),
        ("evil.pt", "bare-pickle"),
    ],
)
def test_pickled_code_in_weights_is_refused_and_never_runs(run, workspace, tmp_path, name, kind):
    weights = tmp_path / name
    _save_evil(weights, kind)
    # The payload is live: unpickled the unsafe way, in another folder, it runs.
    elsewhere = tmp_path / "unsafe_load"
    elsewhere.mkdir()
    run_python_in(
        elsewhere, f"import torch; torch.load({str(weights)!r}, weights_only=False)", check=False
    )
    assert (elsewhere / "PWNED").exists()

    result = explain_with_weights(run, weights, tmp_path / "out")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert f"refused to load {weights}" in line and "could run code" in line
    assert "torch.save(model.state_dict()" in line
    assert not (workspace / "PWNED").exists()


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        ("tiny.safetensors", "truncated", "cannot read {} as safetensors"),
        ("tiny.safetensors", "garbage", "cannot read {} as safetensors"),
        ("tiny.safetensors", "empty", "cannot read {} as safetensors"),
        ("tiny.pt", "truncated", "cannot read {} as a torch checkpoint"),
        ("tiny.pt", "empty", "cannot read {} as a torch checkpoint"),
    ],
)
def test_damaged_weights_files_exit_2_with_one_line(run, tmp_path, Tiny, name, damage, expected):
    from safetensors.torch import save_file

    weights = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(Tiny().state_dict(), str(weights))
    else:
        torch.save(Tiny().state_dict(), weights)
    data = weights.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": os.urandom(400), "empty": b""}
    weights.write_bytes(damaged[damage])
    result = explain_with_weights(run, weights, tmp_path / "out")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert expected.format(weights) in line and "truncated or damaged" in line


def test_failed_download_says_so_and_names_the_offline_options(run, tmp_path, monkeypatch):
    from urllib.error import URLError

    import torch.hub

    def offline(*_args, **_kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    # torchvision binds its own reference when it is imported (test collection may have done it)
    import torchvision.models._api as torchvision_api

    monkeypatch.setattr(torchvision_api, "load_state_dict_from_url", offline)
    result = run(
        "explain",
        "photos/wide.jpg",
        "--model",
        "torchvision:resnet18",
        "--out",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "could not download pretrained weights for 'resnet18'" in line
    assert "--weights" in line and "--no-pretrained" in line


def test_failed_timm_download_is_one_line_too(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run(
        "explain", "photos/wide.jpg", "--model", "timm:test_resnet", "--out", str(tmp_path / "out")
    )
    assert result.exit_code == 2
    assert "--no-pretrained" in one_error_line(result)


def test_unwritable_out_fails_before_the_model_loads(run, workspace, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out"  # cannot be created, even by root
    marker = workspace / "MODEL_IMPORTED"
    marker.unlink(missing_ok=True)
    model = ["--model", "marker_model.py:Tiny", "--input-size", "64"]
    result = run("explain", "photos/wide.jpg", *model, "--out", str(out))
    assert result.exit_code == 2 and "cannot create --out" in one_error_line(result)
    assert not marker.exists()  # the model file was never even imported
    assert run("explain", "photos/wide.jpg", *model, "--out", str(tmp_path / "ok")).exit_code == 0
    assert marker.exists()  # ... which it is, with a writable --out
    marker.unlink()


def test_verbose_shows_the_traceback(run, tmp_path):
    result = run(
        "explain", "photos/wide.jpg", *TINY, "--layer", "nope", "--verbose", "--out", str(tmp_path)
    )
    assert result.exit_code == 2 and "Traceback" in result.stderr


# -- other commands ----------------------------------------------------------------------------


def test_layers_lists_paths_shapes_usable_and_default(run):
    result = run("layers", "torchvision:resnet18")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "input 3×224×224" in lines[0]
    layer4 = next(line for line in lines if line.split()[1:2] == ["layer4"])
    assert layer4.startswith(">") and "512×7×7" in layer4
    relu = next(line for line in lines if line.split()[:1] == ["layer1.0.relu"])
    assert "runs 2 times" in relu
    fc = next(line for line in lines if " fc " in line)
    assert fc.startswith(" ") and "has no spatial axes" in fc
    usable = run("layers", "torchvision:resnet18", "--usable", "--input-size", "128").stdout
    assert "4×4" in usable and " fc " not in usable


def test_a_single_output_model_says_once_which_class_it_explains(run, tmp_path):
    binary = ["--model", "my_models.py:Binary", "--input-size", "64"]
    result = run("explain", "photos/wide.jpg", "photos/tall.png", *binary, "-o", f"{tmp_path}/a")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "single output" in line]
    assert len(notes) == 1, result.stderr
    assert "class 1 'positive'" in notes[0] and "--target 1" in notes[0]
    pinned = run("explain", "photos/wide.jpg", *binary, "-t", "1", "-o", f"{tmp_path}/b")
    assert pinned.exit_code == 0 and "single output" not in pinned.stderr
    both = run("explain", "photos/wide.jpg", *binary, "-k", "2", "-o", f"{tmp_path}/c")
    assert both.exit_code == 0 and "single output" not in both.stderr


def test_layers_takes_the_model_options_of_explain(run, tmp_path):
    """The table is for the model the user will explain: its checkpoint, head and input size."""
    torch.manual_seed(0)
    weights = tmp_path / "seven.pt"
    torch.save(torchvision_resnet18(num_classes=7).state_dict(), weights)
    result = run(
        "layers",
        "torchvision:resnet18",
        "--no-pretrained",
        "--weights",
        str(weights),
        "--num-classes",
        "7",
        "--input-size",
        "160",
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "input 3×160×160" in lines[0]
    assert layer_line(lines, "fc").split()[2] == "7"
    assert "512×5×5" in layer_line(lines, "layer4")
    # The checkpoint is loaded, not only named: one with another head is refused as explain does.
    refused = run("layers", "torchvision:resnet18", "--weights", str(weights))
    assert refused.exit_code == 2 and "--num-classes 7" in refused.output


def torchvision_resnet18(num_classes: int):
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def layer_line(lines: list[str], name: str) -> str:
    return next(line for line in lines if line[2:].split()[:1] == [name])


def test_layers_reads_vit_tokens_and_picks_the_last_norm1(run):
    lines = run("layers", "timm:test_vit").stdout.splitlines()
    default = [line for line in lines if line.startswith(">")]
    assert len(default) == 1 and default[0].split()[1] == "blocks.5.norm1"
    assert "101×64" in default[0] and "64×10×10" in default[0]
    assert "tokens: 1 prefix + 10×10" in default[0]
    block = layer_line(lines, "blocks.5")
    assert block.startswith(" ") and "class token(s) reach the logits" in block
    q_norm = layer_line(lines, "blocks.5.attn.q_norm")
    assert q_norm.startswith(" ") and "not laid out like a 160×160 image" in q_norm
    # --input-size builds the ViT for that size: the grid follows, read from the model
    lines = run("layers", "timm:test_vit", "--input-size", "224").stdout.splitlines()
    assert "tokens: 1 prefix + 14×14" in layer_line(lines, "blocks.5.norm1")


def test_layers_reads_channels_last_swin(run):
    lines = run("layers", "timm:swin_tiny_patch4_window7_224", "--usable").stdout.splitlines()
    norm = layer_line(lines, "norm")
    assert norm.startswith(">") and "7×7×768" in norm and "768×7×7" in norm
    assert "channels-last 7×7" in norm


def test_a_layer_that_is_not_spatial_is_refused_with_a_usable_one_suggested(run, tmp_path):
    out = tmp_path / "out"
    for layer, reason in [
        ("blocks.5", "class token(s) reach the logits"),
        ("head", "has no spatial axes"),
        ("blocks.5.attn.q_norm", "not laid out like a 160×160 image"),
    ]:
        result = run(
            "explain", "photos/wide.jpg", "-m", "timm:test_vit", "--no-pretrained",
            "--layer", layer, "--out", str(out),
        )  # fmt: skip
        assert result.exit_code == 2
        [line] = result.stderr.strip().splitlines()
        assert reason in line and "Try 'blocks.5.norm1'" in line, line
    assert not list(out.glob("*.png"))


def test_vit_through_the_cli_gets_a_patch_grid_map_on_the_photo(run, tmp_path):
    out = tmp_path / "out"
    result = run(
        "explain", "photos/wide.jpg", "-m", "timm:test_vit", "--no-pretrained",
        "--save-raw", "--out", str(out), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "using 'blocks.5.norm1'" in result.stderr
    [explanation] = json.loads(result.stdout)["results"][0]["explanations"]
    raw = np.load(out / explanation["raw"])
    assert raw.shape == (10, 10) and raw.max() > 0
    assert Image.open(out / explanation["overlay"]).size == (200, 120)


def test_models_lists_names_with_their_library(run):
    result = run("models", "resnet18*")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert "timm:resnet18" in lines and "torchvision:resnet18" in lines
    assert run("models", "shapes").stdout.splitlines() == ["demo:shapes"]
    assert "timm:vit_tiny_patch16_224" in run("models", "*VIT_TINY*").stdout.splitlines()


def test_models_task_classification_lists_only_classifiers(run):
    lines = run("models", "*resnet50*", "--task", "classification").stdout.splitlines()
    assert "torchvision:resnet50" in lines and "timm:resnet50" in lines
    assert not [line for line in lines if "rcnn" in line or "deeplab" in line or "fcn" in line]
    everything = run("models", "*resnet50*").stdout.splitlines()
    assert "torchvision:fasterrcnn_resnet50_fpn" in everything  # explained too, since issue 21


def test_models_pretrained_lists_timm_tags_each_a_valid_model(run):
    lines = run("models", "resnet18*", "--pretrained").stdout.splitlines()
    assert "timm:resnet18.a1_in1k" in lines and "torchvision:resnet18" in lines
    assert "timm:resnet18" not in lines  # the bare name is no tag
    assert not [line for line in lines if line.startswith("demo:")]


def test_models_without_a_match_exits_1_with_a_suggestion(run):
    result = run("models", "resnt50*")
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "no model name matches 'resnt50*'" in line and "Did you mean" in line
    assert "'resnet50'" in line


@pytest.mark.parametrize("model", ["torchvision:raft_small", "mc3_18"])
def test_a_torchvision_video_or_flow_model_is_refused_by_kind(run, tmp_path, model):
    result = run("explain", "photos/wide.jpg", "-m", model, "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "video, optical-flow or quantized model" in line and "detectors" in line


# -- start-up, entry points, help texts --------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (nothing imported yet) and insist that it succeeds."""
    return run_python_in(None, code)


def run_python_in(cwd: Path | None, code: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0 or not check, proc.stderr
    return proc


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from gradcam_cli.cli import app\n"
        "for args in (['--help'], ['explain', '--help'], ['layers', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
        # Decode workers import this module: it must stay as light as the help.
        "import gradcam_cli.pipeline\n"
        "assert 'torch' not in sys.modules, 'the pipeline imported torch'\n"
    )
    assert "--topk" in run_python(code).stdout


@pytest.mark.parametrize(
    ("model", "imported"),
    [("torchvision:resnet18", ""), ("demo:shapes", ""), ("timm:test_resnet", "timm")],
)
def test_a_run_imports_timm_only_for_a_timm_model_and_never_matplotlib(
    workspace, tmp_path, model, imported
):
    # timm takes about 0.7 s to import, matplotlib 0.1-0.4 s: one photo through a model that
    # needs neither must not wait for them (benchmarks/startup.py). timm is imported for a
    # timm model, or a bare name (looked up in timm's registry first).
    code = console_script("print(*sorted({'timm', 'matplotlib'} & set(sys.modules)))\n")
    photo = str(workspace / "photos" / "wide.jpg")
    args = ["explain", photo, "-m", model, "--no-pretrained", "--input-size", "64"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["exit 0", imported], proc.stderr


def test_console_script_and_python_m_run():
    for command in ([GRADCAM, "--help"], [sys.executable, "-m", "gradcam_cli", "--help"]):
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "explain" in proc.stdout and "layers" in proc.stdout


def test_user_model_file_imports_its_sibling_modules_from_another_folder(workspace, tmp_path):
    # A fresh process, run from elsewhere: only the file's own folder can provide my_blocks.
    proc = subprocess.run(
        [
            GRADCAM,
            "explain",
            str(workspace / "photos" / "wide.jpg"),
            "--model",
            f"{workspace / 'my_models.py'}:Tiny",
            "--input-size",
            "64",
            "--out",
            "out",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert strict_report(tmp_path / "out")["results"][0]["status"] == "ok"


def test_warnings_reach_stderr_as_one_gradcam_line_each(workspace, tmp_path):
    # A fresh process (pytest records warnings itself), with a decode worker process: the
    # library's fallback warning and Pillow's pixel-limit warning, never Python's two lines.
    (tmp_path / "over_limit.png").write_bytes(valid_png_of_size(10_000, 9_000))
    proc = subprocess.run(
        [
            GRADCAM,
            "explain",
            str(workspace / "photos" / "wide.jpg"),
            str(tmp_path / "over_limit.png"),
            "--model",
            f"{workspace / 'my_models.py'}:SkipToHead",
            "--input-size",
            "32",
            "--method",
            "ablationcam",
            "--layer",
            "body",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert all(line.startswith("gradcam: ") for line in lines), proc.stderr
    assert "gradcam: warning: --method ablationcam at layer 'body': running the head alone" in (
        proc.stderr
    )
    assert sum("over the 89,478,485-pixel limit" in line for line in lines) == 1


def test_every_command_and_option_has_help_text():
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name}"


def test_method_choices_come_from_the_registry():
    from gradcam_cli.methods import METHODS

    result = CliRunner().invoke(app, ["explain", "--help"])
    assert all(name in result.stdout for name in METHODS)  # none broken at its hyphen


def test_stdin_stream_object_is_read_lazily_not_at_import():
    # Guards the CLI from consuming stdin unless '-' is given.
    from gradcam_cli.inputs import collect_inputs

    stream = io.StringIO("ignored\n")
    items = collect_inputs([str(Path(__file__))], stdin=stream)
    assert stream.tell() == 0 and len(items) == 1


def test_random_init_runs_are_reproducible(run, tmp_path):
    reports = []
    for out in (tmp_path / "a", tmp_path / "b"):
        torch.manual_seed(len(reports))  # a different global RNG state each time
        result = run(
            "explain",
            "photos/wide.jpg",
            "--model",
            "torchvision:resnet18",
            "--no-pretrained",
            "--topk",
            "2",
            "--out",
            str(out),
        )
        assert result.exit_code == 0
        reports.append(strict_report(out)["results"])
    assert reports[0] == reports[1]


def test_colormap_option_colours_the_heatmap(run, tmp_path):
    out = tmp_path / "out"
    result = run(
        "explain",
        "photos/wide.jpg",
        *TINY,
        "--colormap",
        "gray",
        "--interpolation",
        "nearest",
        "--out",
        str(out),
    )
    assert result.exit_code == 0
    heatmap = strict_report(out)["results"][0]["explanations"][0]["heatmap"]
    rgba = np.asarray(Image.open(out / heatmap).convert("RGBA"))
    inside = rgba[..., 3] == 255
    assert inside.any() and (~inside).any()  # the crop, and the cut-off sides of a wide photo
    assert (rgba[inside][:, 0] == rgba[inside][:, 1]).all()
    assert (rgba[inside][:, 1] == rgba[inside][:, 2]).all()
    assert rgba[inside][:, 0].max() == 255  # minmax: the map's maximum gets the top colour
    assert rgba[inside][:, 0].min() == 0  # ... and its minimum the bottom one
