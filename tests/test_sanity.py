"""`gradcam sanity`: model-parameter randomisation (Adebayo et al. 2018), its measures against
independent implementations, the caller's model left alone, and the command's files and exit
codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.demo.model import PREPROCESS
from gradcam_cli.pages.sanity import draw_figure, render_page
from gradcam_cli.sanity import (
    find_stages,
    randomize_stage,
    run_sanity,
    sanity_check,
    write_outputs,
)
from gradcam_cli.sanityresult import ordinal
from gradcam_cli.sources import load_model

SCENES = Path(__file__).resolve().parents[1] / "sample_images" / "scenes"
# One scene per class of demo:shapes.
ONE_OBJECT = [SCENES / f"{name}.png" for name in ("circle", "square", "triangle", "star")]
runner = CliRunner()


# -- the result ----------------------------------------------------------------------------------


def test_ordinals():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"
    ]  # fmt: skip


# -- stages and randomisation ---------------------------------------------------------------------


def test_stages_of_a_resnet_are_its_top_level_blocks_with_the_batch_norm_on_its_conv():
    model = resnet18(weights=None).eval()
    stages = find_stages(model, torch.zeros(1, 3, 64, 64))
    assert [s.name for s in stages] == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert sum(s.parameters for s in stages) == sum(p.numel() for p in model.parameters())


def test_a_model_with_few_top_level_blocks_is_split_into_its_layers():
    """demo:shapes is `features` (a Sequential) and `fc`: features is split, conv + BN each."""
    stages = find_stages(load_model("demo:shapes").model.eval(), torch.zeros(1, 3, 128, 128))
    assert [s.name for s in stages] == [
        "features.0+features.1",
        "features.4+features.5",
        "features.8+features.9",
        "features.11+features.12",
        "features.15+features.16",
        "features.19+features.20",
        "fc",
    ]


class OwnParameters(nn.Module):
    """A ViT-like model holding a parameter itself, and a module without reset_parameters."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.offset = nn.Parameter(torch.linspace(0, 1, 4)[None, :, None, None])
        self.scale = Scale()
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.unused = nn.Linear(3, 3)  # never called: no stage
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.body(self.scale(self.stem(x) + self.offset)))


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.arange(1.0, 5.0)[None, :, None, None])

    def forward(self, x):
        return x * self.gamma


def test_own_parameters_go_with_the_stem_and_modules_without_reset_are_redrawn():
    torch.manual_seed(0)
    model = OwnParameters()
    stages = find_stages(model, torch.zeros(1, 3, 8, 8))
    assert [s.name for s in stages] == ["stem", "scale", "body", "head"]
    assert stages[0].modules == ("", "stem") and stages[0].parameters == 3 * 4 * 9 + 4 + 4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    randomize_stage(model, stages[0], seed=5)
    randomize_stage(model, stages[1], seed=6)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"offset", "stem.weight", "stem.bias", "scale.gamma"}
    # redrawn with the tensor's own mean and spread
    assert after["scale.gamma"].mean().item() == pytest.approx(2.5, abs=2.0)


def test_randomising_a_stage_changes_it_alone_resets_batch_norm_and_is_seeded():
    model = resnet18(weights=None).eval()
    with torch.no_grad():  # trained-looking running statistics
        model.layer4[1].bn2.running_mean.fill_(3.0)
        model.layer4[1].bn2.running_var.fill_(7.0)
    stages = {s.name: s for s in find_stages(model, torch.zeros(1, 3, 64, 64))}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    randomize_stage(model, stages["layer4"], seed=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"layer4"}
    assert torch.all(after["layer4.1.bn2.running_mean"] == 0)
    assert torch.all(after["layer4.1.bn2.running_var"] == 1)
    weight = after["layer4.0.conv1.weight"].clone()
    randomize_stage(model, stages["layer4"], seed=1)
    assert torch.equal(model.state_dict()["layer4.0.conv1.weight"], weight)


# -- the check on the demo model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_results():
    model = load_model("demo:shapes")
    return {
        method: sanity_check(model, ONE_OBJECT, method=method, batch_size=4)
        for method in ("gradcam", "guided-backprop")
    }


def test_gradcam_passes_once_the_head_and_the_last_stage_are_randomised(demo_results):
    result = demo_results["gradcam"]
    assert result.stages[result.by_stage].name == "features.19+features.20"
    assert result.summary[1].spearman.median < 0.5
    assert result.passed
    assert result.verdict().startswith("gradcam passes: Spearman median below 0.5 from stage")


def test_guided_backprop_survives_the_randomisation_as_published(demo_results):
    """Adebayo et al.'s finding: guided backpropagation's map barely depends on the weights."""
    gradcam, guided = demo_results["gradcam"], demo_results["guided-backprop"]
    for stage in (0, 1):  # the head; the head and the last stage
        assert guided.summary[stage].spearman.median > 0.7
        assert guided.summary[stage].spearman.median > gradcam.summary[stage].spearman.median + 0.4
    assert not guided.passed
    median = guided.summary[1].spearman.median
    assert guided.verdict().startswith(
        f"guided-backprop fails: Spearman median {median:.2f} at stage 'features.19+features.20' "
        "(the 2nd from the logits), not below 0.5: the map survives the randomisation"
    )


def test_the_json_lists_every_image_and_stage_and_the_verdict(demo_results):
    result = demo_results["gradcam"]
    document = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert document["schema_version"] == 1
    assert document["method"] == "gradcam" and document["layer"] == "features"
    assert document["mode"] == "cascading" and document["threshold"] == 0.5
    assert [s["name"] for s in document["stages"]][:2] == ["fc", "features.19+features.20"]
    assert document["by_stage"] == {"stage": "features.19+features.20", "from_logits": 2}
    assert document["passed"] is True and document["first_below"]["from_logits"] <= 2
    assert len(document["images"]) == 4
    image = document["images"][0]
    assert image["target"]["label"] == "circle"  # the trained model's prediction
    assert [s["stage"] for s in image["stages"]] == [s["name"] for s in document["stages"]]
    row = document["summary"]["stages"][1]
    assert row["spearman"]["p5"] <= row["spearman"]["median"] <= row["spearman"]["p95"]
    medians = np.median([img["stages"][1]["spearman"] for img in document["images"]])
    assert row["spearman"]["median"] == pytest.approx(medians, abs=1e-6)


def test_the_figure_and_the_page_show_every_stage(demo_results, tmp_path):
    result = demo_results["guided-backprop"]
    paths = write_outputs(result, tmp_path / "out", report=True)
    assert sorted(p.name for p in paths.values()) == ["sanity.html", "sanity.json", "sanity.png"]
    assert json.loads(paths["json"].read_text())["passed"] is False
    figure = draw_figure(result)
    assert figure.width == 900 and figure.height > 340
    colours = {tuple(c) for c in np.asarray(figure).reshape(-1, 3)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # Spearman and SSIM lines
    page = render_page(result)
    for stage in result.stages:
        assert f"<td>{stage.name}</td>" in page
    # per image: the photo, the trained map, and one map per stage
    assert page.count("data:image/jpeg;base64,") == 4 * (2 + len(result.stages))
    assert 'class="verdict fail"' in page and 'src="sanity.png"' in page


@pytest.fixture(scope="module")
def independent():
    """An independent-mode check of the caller's own module, one image a batch; the model's
    state before, to compare."""
    model = load_model("demo:shapes").model.train()  # in training mode, on purpose
    model.fc.weight.requires_grad_(False)
    before = {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": _modes_and_hooks(model),
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "rng": torch.get_rng_state(),
    }
    result = sanity_check(
        model, ONE_OBJECT[:2], mode="independent", batch_size=1, preprocess=PREPROCESS
    )
    return model, before, result


def _modes_and_hooks(model: nn.Module) -> list[tuple[bool, int, int]]:
    return [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def test_the_callers_model_is_left_as_it_was(independent):
    model, before, _ = independent
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before["state"].items())
    assert _modes_and_hooks(model) == before["modes"]
    assert [p.requires_grad for p in model.parameters()] == before["requires_grad"]
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), before["rng"])


def test_independent_mode_randomises_one_stage_at_a_time(independent, demo_results):
    """The head alone is the cascade's first step, with the same seed: the same maps (here from
    batches of 1 and of 4). Below it, the independent model keeps the head trained: other maps
    than the cascade's."""
    _, _, result = independent
    assert result.mode == "independent"
    cascading = demo_results["gradcam"].images[:2]
    for a, b in zip(cascading, result.images, strict=True):
        assert a.spearman[0] == pytest.approx(b.spearman[0], abs=1e-6)
        assert a.ssim[0] == pytest.approx(b.ssim[0], abs=1e-6)
        assert a.spearman[1] != pytest.approx(b.spearman[1], abs=1e-3)


# -- the command ----------------------------------------------------------------------------------


@pytest.fixture
def scenes(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for path in ONE_OBJECT[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_the_command_writes_its_files_and_exits_0_when_the_method_passes(scenes, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["sanity", str(scenes), "-m", "demo:shapes", "-o", str(out), "--report", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "gradcam sanity: gradcam passes: Spearman median below 0.5 from stage" in result.stderr
    document = json.loads(result.stdout)
    assert document == json.loads((out / "sanity.json").read_text())
    assert document["figure"] == "sanity.png" and document["page"] == "sanity.html"
    with Image.open(out / "sanity.png") as figure:
        assert figure.format == "PNG"
    assert "<table" in (out / "sanity.html").read_text()


def test_the_command_exits_1_when_the_map_survives(scenes, tmp_path):
    out = tmp_path / "out"
    circle = str(scenes / "circle.png")  # one image: guided backpropagation is the slow one
    result = runner.invoke(
        app, ["sanity", circle, "-m", "demo:shapes", "--method", "guided-backprop", "-o", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "gradcam sanity: guided-backprop fails: Spearman median" in result.stderr
    assert "survives the randomisation" in result.stderr
    assert json.loads((out / "sanity.json").read_text())["passed"] is False
    assert not (out / "sanity.html").exists()


def test_an_unreadable_input_is_listed_and_exits_1(scenes, tmp_path):
    (scenes / "broken.png").write_text("not a picture")
    out = tmp_path / "out"
    args = ["sanity", str(scenes), "-m", "demo:shapes", "-o", str(out), "-t", "star"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "broken.png" in result.stderr and "gradcam passes" in result.stderr
    document = json.loads((out / "sanity.json").read_text())
    assert [s["input"] for s in document["skipped"]] == [str(scenes / "broken.png")]
    assert [image["target"]["label"] for image in document["images"]] == ["star", "star"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--mode", "cascade"],
            "unknown --mode cascade; use cascading or independent. Did you mean 'cascading'?",
        ),
        (["--by-stage", "fcc"], "--by-stage fcc names no stage of the model"),
        (["--by-stage", "9"], "--by-stage 9 is not a stage: the model has 7"),
        (["--threshold", "1.5"], "--threshold 1.5 is not a rank correlation"),
        (["--method", "gradcm"], "Did you mean 'gradcam'"),
        (["-l", "features,fc"], "give one layer"),
        (["--method", "refinecam", "-l", "features"], "multiplies the maps of several layers"),
    ],
)
def test_bad_options_exit_2_saying_what_to_type(scenes, tmp_path, args, expected):
    out = tmp_path / "out"
    result = runner.invoke(app, ["sanity", str(scenes), "-m", "demo:shapes", "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.stderr.split())
    assert not out.exists()


def test_a_folder_in_use_by_another_run_is_refused(scenes, tmp_path):
    from gradcam_cli.outlock import output_lock

    out = tmp_path / "out"
    with output_lock(out):
        result = runner.invoke(app, ["sanity", str(scenes), "-m", "demo:shapes", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert f"--out {out} is in use by another gradcam run" in result.stderr
    assert list(out.iterdir()) == []  # nothing written (the lock file went with the lock)


def test_model_building_options_apply_to_a_model_named_by_a_string(scenes, tmp_path):
    from gradcam_cli.errors import UsageError

    model = load_model("demo:shapes")
    with pytest.raises(UsageError, match=r"^pretrained=, resize= build a model named by a str"):
        run_sanity(scenes, model, out=tmp_path / "out", pretrained=False, resize="squash")
