"""The notebook API (issue 15): `Explainer` over any nn.Module or a model name, `explain` of a
path, a PIL image or an array, `cam(x)` on tensors, and the caller's model left as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import gradcam_cli as gc
from gradcam_cli import explain_batch
from gradcam_cli.errors import TargetError, UnknownLayerError, UsageError

PHOTO = Path(__file__).resolve().parents[1] / "sample_images" / "photos" / "cat_chelsea.jpg"


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def cam(resnet) -> gc.Explainer:
    return gc.Explainer(resnet, layers="layer4")


def test_an_image_is_a_path_a_pil_image_or_an_array_and_a_list_gives_a_list(cam):
    photo = Image.open(PHOTO).convert("RGB")
    from_path = cam.explain(PHOTO)
    from_str = cam.explain(str(PHOTO))
    from_pil = cam.explain(photo)
    from_array = cam.explain(np.asarray(photo))
    assert isinstance(from_path, gc.ImageExplanation)
    assert from_path.source == str(PHOTO) and from_pil.source is None
    for other in (from_str, from_pil, from_array):
        np.testing.assert_array_equal(other.raw(), from_path.raw())
        assert other.targets == from_path.targets
    several = cam.explain([PHOTO, photo])
    assert isinstance(several, list) and len(several) == 2
    np.testing.assert_allclose(several[1].raw(), from_pil.raw(), rtol=1e-5, atol=1e-7)


def test_a_result_renders_its_first_target_by_default_and_shows_itself_in_jupyter(cam):
    result = cam.explain(PHOTO, targets=[281, 5])
    assert [t.index for t in result.targets] == [281, 5]
    assert result.overlay().size == Image.open(PHOTO).size
    np.testing.assert_array_equal(result.raw(), result.raw(281))
    assert result._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(TargetError, match="class 7 was not explained"):
        result.raw(7)


def test_grayscale_and_rgba_arrays_are_taken_and_float_arrays_are_refused_with_a_reason(cam):
    assert cam.explain(np.zeros((30, 40), np.uint8)).image.size == (40, 30)
    assert cam.explain(np.zeros((30, 40, 4), np.uint8)).image.mode == "RGB"
    with pytest.raises(UsageError, match="must be uint8"):
        cam.explain(np.zeros((30, 40, 3), np.float32))
    with pytest.raises(UsageError, match="a file path, a PIL image or an H×W×3 array"):
        cam.explain(42)


@pytest.mark.parametrize("batch", [1, 8])
def test_calling_on_a_tensor_gives_the_maps_explain_gives(cam, batch):
    rng = np.random.default_rng(batch)
    photos = [
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)) for _ in range(batch)
    ]
    x = torch.from_numpy(np.stack([cam.loaded.preprocess.to_array(p) for p in photos]))
    maps = cam(x, targets=[281])
    assert (
        maps.shape == (batch, 1, 7, 7) and maps.device == x.device and maps.dtype == torch.float32
    )
    results = cam.explain(photos, targets=[281])
    for i, result in enumerate(results):
        np.testing.assert_allclose(maps[i, 0].numpy(), result.raw(), rtol=1e-5, atol=1e-7)
    top2 = cam(x, topk=2)
    assert top2.shape == (batch, 2, 7, 7)


def test_a_module_object_names_the_same_layer_as_its_path(resnet, cam):
    by_module = gc.Explainer(resnet, layers=resnet.layer4)
    by_list = gc.Explainer(resnet, layers=[resnet.layer3, "layer4"])
    assert [str(ref) for ref in by_module.layers] == ["layer4"]
    assert [str(ref) for ref in by_list.layers] == ["layer3", "layer4"]
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(by_module(x), cam(x))
    with pytest.raises(UnknownLayerError, match="layers=: the Conv2d given is not a submodule"):
        gc.Explainer(resnet, layers=nn.Conv2d(3, 3, 1))


def test_explain_batch_takes_dotted_paths(resnet):
    x = torch.rand(2, 3, 64, 64)
    by_path = explain_batch(resnet, x, "layer4", classes=[3])
    by_ref = explain_batch(resnet, x, gc.Explainer(resnet, "layer4").layers, classes=[3])
    torch.testing.assert_close(by_path.maps["layer4"], by_ref.maps["layer4"])


def test_a_name_loads_the_model_and_a_timm_module_brings_its_data_config():
    demo = gc.Explainer("demo:shapes")
    assert demo.loaded.source == "demo" and demo.labels == list(demo.loaded.labels)
    import timm

    vit = timm.create_model("test_vit", pretrained=False)
    cam = gc.Explainer(vit)
    h, w = vit.pretrained_cfg["input_size"][1:]
    assert cam.loaded.preprocess.input_size == (h, w)
    assert cam.layer_chosen_automatically
    assert cam.explain(np.zeros((50, 60, 3), np.uint8)).raw().ndim == 2


def test_preprocess_and_labels_replace_the_models_own(resnet):
    labels = [f"class {i}" for i in range(1000)]
    cam = gc.Explainer(resnet, "layer4", preprocess=gc.Preprocess((96, 96), 96), labels=labels)
    result = cam.explain(np.zeros((50, 60, 3), np.uint8), targets=["class 3"])
    assert result.targets[0].index == 3 and result.raw().shape == (3, 3)
    with pytest.raises(UsageError, match="preprocess= takes a gradcam_cli.Preprocess"):
        gc.Explainer(resnet, "layer4", preprocess=(96, 96))


def model_state(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ),
        "device": {p.device for p in model.parameters()},
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],  # BatchNorm's running statistics
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "hooks", "device"):
        assert before[key] == after[key], key
    for a, b in zip(before["grad"], after["grad"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for key in ("params", "buffers"):
        for a, b in zip(before[key], after[key], strict=True):
            assert torch.equal(a, b), key


class Fails(nn.Module):
    """A model whose forward fails when asked for a large batch, after the probe passed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.shape[0] > 2:
            raise RuntimeError("too many")
        return self.fc(self.features(x).mean((2, 3)))


def test_the_callers_model_is_left_as_it_was_after_success_and_after_an_exception():
    model = Fails().train()  # training mode, a gradient left from the user's own step
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.features[0].weight.requires_grad_(False)
    before = model_state(model)
    cam = gc.Explainer(model, layers=model.features)
    cam(torch.rand(2, 3, 16, 16))
    cam.explain(np.zeros((20, 20, 3), np.uint8))
    assert_same_state(before, model_state(model))
    with pytest.raises(RuntimeError, match="too many"):
        cam(torch.rand(3, 3, 16, 16))
    assert_same_state(before, model_state(model))
    assert cam.model is model  # device=None: explained where it is, not copied or moved


def test_bad_inputs_to_the_call_say_what_is_expected(cam):
    with pytest.raises(UsageError, match=r"x must be a tensor \[B, 3, H, W\], got \(3, 64, 64\)"):
        cam(torch.rand(3, 64, 64))
    with pytest.raises(UsageError, match="model= takes an nn.Module"):
        gc.Explainer(42)


SCENES = Path(__file__).resolve().parents[1] / "sample_images" / "scenes"


def files_and_report(out: Path) -> tuple[dict[str, bytes], dict]:
    files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    report = json.loads(files.pop("predictions.json"))
    report["summary"].pop("seconds")
    report["summary"].pop("stages")  # the time per stage of a batch run; null from save()
    report.pop("out")
    return files, report


@pytest.mark.parametrize(
    ("explain_kwargs", "save_kwargs", "cli_args"),
    [
        ({"topk": 2}, {"save_raw": True}, ["--topk", "2", "--save-raw"]),
        ({"targets": ["star"]}, {"heatmap": False, "overlay_format": "jpg"},
         ["--target", "star", "--no-heatmap", "--format", "jpg"]),
    ],
)  # fmt: skip
def test_save_writes_exactly_what_the_cli_writes(
    tmp_path, monkeypatch, explain_kwargs, save_kwargs, cli_args
):
    from typer.testing import CliRunner

    from gradcam_cli.cli import app

    monkeypatch.chdir(tmp_path)
    shutil.copy(SCENES / "two_circle_star.png", "scene.png")
    cli = CliRunner().invoke(
        app,
        ["explain", "scene.png", "-m", "demo:shapes", "--workers", "0", "--out", "cli", *cli_args],
    )
    assert cli.exit_code == 0, cli.output
    result = gc.Explainer("demo:shapes").explain("scene.png", **explain_kwargs)
    assert result.save("py", **save_kwargs) == Path("py") / "predictions.json"
    cli_files, cli_report = files_and_report(tmp_path / "cli")
    py_files, py_report = files_and_report(tmp_path / "py")
    assert py_files.keys() == cli_files.keys() and py_files
    assert py_files == cli_files  # the same bytes: overlays, heatmaps, raw maps
    assert py_report == cli_report


def test_an_array_is_saved_under_the_name_image(tmp_path, cam):
    result = cam.explain(np.zeros((40, 50, 3), np.uint8))
    report = json.loads(result.save(tmp_path / "out").read_text())
    assert report["results"][0]["input"] == "image"
    overlay = report["results"][0]["explanations"][0]["overlay"]
    assert overlay.startswith("image.") and (tmp_path / "out" / overlay).is_file()


def test_library_errors_name_its_parameters_and_the_cli_its_flags(resnet, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gradcam_cli.cli import app
    from gradcam_cli.errors import as_cli_flags

    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match=r"^device='cuda': no CUDA GPU .* use device='cpu'$"):
            gc.Explainer(resnet, "layer4", device="cuda")
    cam = gc.Explainer(resnet, "layer4")
    with pytest.raises(TargetError, match=r"^targets=1000 is out of range"):
        cam.explain(np.zeros((20, 20, 3), np.uint8), targets=[1000])
    with pytest.raises(UsageError, match=r"^eigen_smooth=True combines .* method='guided-gradcam'"):
        gc.Explainer(resnet, "layer4", method="guided-backprop", eigen_smooth=True)
    assert as_cli_flags(
        "eigen_smooth=True and method='guided-backprop'; drop eigen_smooth=True"
    ) == ("--eigen-smooth and --method guided-backprop; drop --eigen-smooth")
    assert as_cli_flags("targets='cat': no class names; name the classes with labels=") == (
        "--target cat: no class names; name the classes with --labels"
    )
    assert as_cli_flags("weights_only=True and device_count=2") == (
        "weights_only=True and device_count=2"  # only whole parameter names
    )
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (20, 20)).save("x.png")
    result = CliRunner().invoke(
        app, ["explain", "x.png", "-m", "demo:shapes", "--target", "9", "--out", "o"]
    )
    assert result.exit_code == 2
    assert "gradcam: error: --target 9 is out of range: the model has 4 classes" in result.stderr
