"""Shared fixtures: small seeded models and images; nothing here touches the network."""

from __future__ import annotations

import os

import pytest

# Tests must never download: make any accidental hub access fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch-home-unused"))


@pytest.fixture
def gap_linear_model():
    """conv backbone → global average pool → linear: the CAM architecture."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


@pytest.fixture
def rgb_image():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), "RGB")


# A hostile file name: markup, an entity, quotes, and the URL specials '#' and '?'.
HOSTILE_NAME = "we <img src=x onerror=alert(1)> & \"q\" 'r' #1?.png"
# An artifact stem no real run makes (keys are made safe), for the page's links: a folder with a
# space, '#', '?', '&', quotes, markup, '%' and a non-ASCII letter.
HOSTILE_STEM = "sub dir/#1?&\"'<x> 100% é"


def one_explanation_report(index: int, label: str, layer: str, **artifacts: str) -> dict:
    """A minimal predictions.json document: one input, one explanation with these artifacts."""
    return {
        "model": {"name": "m"},
        "method": "gradcam",
        "results": [
            {
                "input": "x.png",
                "status": "ok",
                "predictions": [{"index": index, "label": label, "probability": 0.5}],
                "explanations": [
                    {"target": {"index": index, "label": label}, "layer": layer, **artifacts}
                ],
            }
        ],
    }


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`gradcam explain --panel --report` once for the session, over inputs that give every kind
    of card: explained and passing the gate, failing it (a mask in a corner; a hostile name
    with no mask), and unreadable. Tests that change OUT must copy it first."""
    import shutil
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from gradcam_cli.cli import app

    samples = Path(__file__).parents[1] / "sample_images"
    root = tmp_path_factory.mktemp("demo_run")
    inputs, masks = root / "scenes", root / "masks"
    inputs.mkdir()
    masks.mkdir()
    for name in ("circle", "star", "two_circle_star"):
        shutil.copy(samples / "scenes" / f"{name}.png", inputs / f"{name}.png")
    for mask in (samples / "masks").glob("*.png"):
        if mask.name.split(".")[0] in ("circle", "star", "two_circle_star"):
            shutil.copy(mask, masks / mask.name)
    shutil.copy(samples / "scenes" / "triangle.png", inputs / "off mask.png")
    corner = np.zeros((128, 128), dtype=np.uint8)
    corner[:4, :4] = 255  # the map's peak is not in this corner: the gate fails
    Image.fromarray(corner).save(masks / "off_mask.png")
    shutil.copy(samples / "scenes" / "square.png", inputs / HOSTILE_NAME)
    (inputs / "broken & <b>.png").write_text("not an image")
    out = root / "out"
    result = CliRunner().invoke(
        app,
        [
            "explain",
            str(inputs),
            "--model",
            "demo:shapes",
            "--mask",
            str(masks),
            "--require-hit",
            "--panel",
            "--report",
            "--out",
            str(out),
        ],
    )
    return out, result


def interrupt_explain_at_call(explainer, monkeypatch, call: int) -> None:
    """Make `explainer.explain` raise KeyboardInterrupt (a Ctrl-C) on its `call`-th call, as
    if the user stopped the run while that batch was being explained."""
    calls = []
    real = explainer.explain

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(explainer, "explain", interrupted)
