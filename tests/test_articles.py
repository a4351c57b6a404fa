"""The five articles' worked examples, as docs/articles.md ("From the articles") gives them, run
through the CLI on random-init weights of the same architectures (nothing is downloaded)."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.panel import tile_height

PAGE = (Path(__file__).parents[1] / "docs" / "articles.md").read_text(encoding="utf-8")
COMMANDS = re.findall(r"```bash\n(gradcam explain .*?)\n```", PAGE)

# Article 001's network: a ResNet18 for STL-10's 10 classes, loaded from the user's own file.
STL10_RESNET = """
import torchvision


def ResNet18():
    return torchvision.models.resnet18(weights=None, num_classes=10)
"""

# Article 004's XRayClassifier, as the article defines it (its global `device` included).
XRAY_MODEL = textwrap.dedent(
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    nc, nf, dropout = 3, 64, 0.2
    device = torch.device("cpu")


    class ResNetBlock(nn.Module):
        def __init__(self, in_channels, out_channels, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(out_channels)
            self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_channels)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_channels != out_channels:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += self.shortcut(x)
            return F.relu(out)


    class XRayClassifier(nn.Module):
        def __init__(self, nc=nc, nf=nf, dropout=dropout):
            super().__init__()
            self.resnet_blocks = nn.Sequential(
                ResNetBlock(nc, nf, stride=2),
                ResNetBlock(nf, nf * 2, stride=2),
                ResNetBlock(nf * 2, nf * 4, stride=2),
                ResNetBlock(nf * 4, nf * 8, stride=2),
                ResNetBlock(nf * 8, nf * 16, stride=2),
            )
            self.classifier = nn.Sequential(
                nn.Conv2d(nf * 16, 1, 8, 1, 0, bias=False),
                nn.Dropout(p=dropout),
                nn.Sigmoid(),
            )

        def forward(self, input):
            output = self.resnet_blocks(input.to(device))
            return self.classifier(output)
    """
)


def _photo(path: str, size=(200, 150), seed=0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _state_dict_of(source: str, factory: str, path: str) -> None:
    defined: dict = {}
    exec(source, defined)
    torch.manual_seed(0)
    torch.save(defined[factory]().state_dict(), path)


@pytest.fixture(scope="module")
def article_files(tmp_path_factory):
    """Every file the five commands name, with random-init checkpoints."""
    import timm

    root = tmp_path_factory.mktemp("articles")
    cwd = Path.cwd()
    try:
        import os

        os.chdir(root)
        _photo("scene.png", (256, 192))
        mask = np.zeros((192, 256), dtype=np.uint8)
        mask[40:140, 60:200] = 255
        Image.fromarray(mask).save("scene_mask.png")
        torch.manual_seed(0)
        resnetrs = timm.create_model("resnetrs50", pretrained=False, num_classes=100)
        torch.save(resnetrs.state_dict(), "model_resnetrs50.pt")
        _photo("dog.png", (160, 120), seed=1)
        Path("stl10_resnet.py").write_text(STL10_RESNET)
        _state_dict_of(STL10_RESNET, "ResNet18", "stl10_resnet18.pt")
        Path("stl10.txt").write_text(
            "\n".join(["airplane", "bird", "car", "cat", "deer"])
            + "\n"
            + "\n".join(["dog", "horse", "monkey", "ship", "truck"])
            + "\n"
        )
        _photo("cat_dog.png", (240, 180), seed=2)
        _photo("xray.jpeg", (300, 260), seed=3)
        Path("xray_model.py").write_text(XRAY_MODEL)
        _state_dict_of(XRAY_MODEL, "XRayClassifier", "xray_classifier.pt")
        Path("xray_labels.txt").write_text("normal\npneumonia\n")
    finally:
        os.chdir(cwd)
    return root


def run_article(number: str, root: Path, monkeypatch) -> dict:
    """Run the page's command for article `number` in `root`; its predictions.json."""
    [line] = [c for c in COMMANDS if f"runs/{number}" in c]
    args = shlex.split(line)[1:]
    if "--weights" not in args:  # a torchvision model named as the article names it
        args.append("--no-pretrained")
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{line}\n{result.output}"
    return json.loads((root / "runs" / number / "predictions.json").read_text())


def test_the_page_gives_one_command_per_article():
    assert [re.search(r"runs/(\d+)", c).group(1) for c in COMMANDS] == [
        "000",
        "001",
        "002",
        "003",
        "004",
    ]


def test_article_000_split_at_layer4_with_a_mask_tile(article_files, monkeypatch):
    report = run_article("000", article_files, monkeypatch)
    assert report["layers"] == ["layer4"] and report["preprocess"]["input_size"] == [256, 256]
    [explanation] = report["results"][0]["explanations"]
    assert explanation["localization"]["mask"].endswith("scene_mask.png")
    assert (article_files / "runs/000" / explanation["mask"]).is_file()
    panel = Image.open(article_files / "runs/000" / explanation["panel"])
    tile_width = round(256 * tile_height(192) / 192)  # the 256×192 scene at the panel's height
    assert panel.width > 4 * tile_width  # photo | heatmap | overlay | mask, then the colour bar


def test_article_001_squashes_to_128_without_normalising(article_files, monkeypatch):
    report = run_article("001", article_files, monkeypatch)
    preprocess = report["preprocess"]
    assert preprocess["input_size"] == [128, 128] and preprocess["mean"] == [0, 0, 0]
    assert preprocess["std"] == [1, 1, 1] and "squash" in json.dumps(preprocess)
    prediction = report["results"][0]["predictions"][0]
    assert prediction["label"] in STL10_LABELS


STL10_LABELS = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def test_article_002_vgg16_block5_conv3_guided(article_files, monkeypatch):
    report = run_article("002", article_files, monkeypatch)
    assert report["layers"] == ["features.29"] and report["method"] == "guided-gradcam"
    [explanation] = report["results"][0]["explanations"]
    assert explanation["target"]["index"] == 242 and explanation["target"]["label"] == "boxer"
    assert (article_files / "runs/002" / explanation["guided"]).is_file()


def test_article_003_densenet_features_tiger_cat(article_files, monkeypatch):
    report = run_article("003", article_files, monkeypatch)
    [explanation] = report["results"][0]["explanations"]
    # The article's code says 283 for "tiger cat"; from 0, torchvision's "tiger cat" is 282.
    assert explanation["target"]["index"] == 282 and explanation["layer"] == "features"
    assert (article_files / "runs/003" / explanation["guided"]).is_file()


def test_article_004_single_sigmoid_output_explains_pneumonia(article_files, monkeypatch):
    report = run_article("004", article_files, monkeypatch)
    assert report["preprocess"]["input_size"] == [256, 256]
    assert report["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    [explanation] = report["results"][0]["explanations"]
    assert explanation["target"]["index"] == 1 and explanation["target"]["label"] == "pneumonia"
    assert explanation["layer"] == "resnet_blocks.4"  # -1 resolved to the last block
