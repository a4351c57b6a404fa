"""Helpers more than one test module uses: running `gradcam`, reading its report strictly,
making photos and crafted files, and the textbook Grad-CAM the engine is checked against.

Plain functions; fixtures live in conftest.py. torch is imported where a helper needs it, so a
module that only runs the CLI does not pay for it here."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch
    from torch import nn
    from typer.testing import Result

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
SCENES = SAMPLES / "scenes"
# The installed console script, as a shell, a script or a CI job starts it.
GRADCAM = str(Path(sys.executable).with_name("gradcam"))


# -- running gradcam -----------------------------------------------------------------------------


def invoke(*args: str, input: str | None = None) -> Result:
    """`gradcam ARGS` in this process (Typer's CliRunner); an unexpected exception propagates."""
    from typer.testing import CliRunner

    from gradcam_cli.cli import app

    return CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)


def explain(*args: str, input: str | None = None) -> Result:
    """`gradcam explain ARGS` in this process."""
    return invoke("explain", *args, input=input)


def console_script(then: str = "") -> str:
    """Code for `python -c CODE ARGS`: runs `gradcam ARGS` as the console script does, prints
    `exit CODE`, then runs `then` in the same interpreter (to ask what the run imported)."""
    return (
        "import sys\n"
        "from gradcam_cli.cli import main\n"
        "sys.argv[0] = 'gradcam'\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
    ) + then


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until `condition()` holds; fails with the process's output if it ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def overlays(out: Path) -> list[Path]:
    """The overlays a run has written so far (its progress, seen from outside)."""
    return sorted(out.glob("*.overlay.png"))


# -- reading what it wrote -----------------------------------------------------------------------


def strict_json(text: str) -> dict:
    """json.loads that refuses NaN, Infinity and -Infinity, as strict parsers (jq, JS) do."""

    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def strict_report(out: Path) -> dict:
    """OUT/predictions.json, read strictly."""
    return strict_json((out / "predictions.json").read_text(encoding="utf-8"))


# -- inputs --------------------------------------------------------------------------------------


def noise(width: int, height: int, seed: int) -> Image.Image:
    """An RGB picture of random pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def noise_photos(
    folder: Path, count: int, width: int = 32, height: int = 24, seed: int = 0
) -> Path:
    """`folder`, made, holding `count` PNGs of random pixels: img00.png, img01.png, …"""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return folder


def sleepy_net_source(name: str, seconds: float) -> str:
    """A user's model file: class `name`, a small conv net (automatic layer `features`, 4
    classes) whose forward sleeps `seconds`, so that a signal or a progress bar lands
    between its batches."""
    return f"""
import time

import torch
from torch import nn


class {name}(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        time.sleep({seconds})
        return self.fc(self.features(x).mean((2, 3)))
"""


def png_chunk(kind: bytes, body: bytes, crc_xor: int = 0) -> bytes:
    """One PNG chunk; a `crc_xor` other than 0 damages its checksum."""
    crc = zlib.crc32(kind + body) ^ crc_xor
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width × height (1-bit grey), its data all zero rows:
    a real image of that size when the rows are all there, a bomb when they are not."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)


def valid_png_of_size(width: int, height: int) -> bytes:
    """A whole black PNG of width × height, a few kB even for a huge one."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte, then 1 bit per pixel
    compressor = zlib.compressobj(1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_declaring(width, height) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


# -- report documents and pages -----------------------------------------------------------------

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


def open_page(driver, page: Path) -> None:
    driver.get(page.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def loaded_images(driver, selector: str) -> list[tuple[str, int]]:
    """(src, naturalWidth) of each image, after bringing it into view (they load lazily)."""
    from selenium.webdriver.support.ui import WebDriverWait

    images = driver.find_elements("css selector", selector)
    for image in images:
        driver.execute_script("arguments[0].scrollIntoView()", image)
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0])).every(i => i.complete)",
            selector,
        )
    )
    driver.execute_script("window.scrollTo(0, 0)")
    return [(i.get_attribute("src"), i.get_property("naturalWidth")) for i in images]


# -- models and the textbook Grad-CAM ------------------------------------------------------------


def gap_linear_net() -> nn.Module:
    """conv backbone → global average pool → linear (5 classes): the CAM architecture, seeded."""
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


def random_model(spec: str) -> nn.Module:
    """`timm:NAME` or a torchvision `NAME` (`torchvision:NAME`) with seeded random weights, in
    eval mode."""
    import timm
    import torch
    import torchvision

    source, _, name = spec.rpartition(":")
    torch.manual_seed(0)
    if source == "timm":
        return timm.create_model(name, pretrained=False).eval()
    return torchvision.models.get_model(name, weights=None).eval()


def with_random_statistics(model: nn.Module, seed: int = 3) -> nn.Module:
    """The model, in eval mode, its BatchNorm2d layers given random affine parameters and
    running statistics: a random-init network's are 1, 0, 0, 1, which make every BN's
    effective bias β − γμ/σ zero (FullGrad would see no bias at all)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                shape = module.weight.shape
                module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
    return model.eval()


def textbook_hooks(model: nn.Module, x: torch.Tensor, layer: str, classes: list[int]):
    """A, ∂y/∂A and the logits the textbook way: a forward hook and a tensor hook, then
    loss.backward() through a copy of the whole model with every parameter trainable."""
    import torch

    def selected(logits):
        return logits[torch.arange(len(classes)), torch.tensor(classes)].sum()

    activations, gradients, logits = textbook_backward(model, x, layer, selected)
    return activations, gradients, logits.detach()


def textbook_backward(model: nn.Module, x: torch.Tensor, layer: str, target):
    """A, ∂t/∂A and the model's output for the scalar `t = target(output)`, the textbook way
    (`textbook_hooks`): for outputs that are not logits (a segmentation model's, a detector's)."""
    import copy

    model = copy.deepcopy(model).eval()
    for param in model.parameters():
        param.requires_grad_(True)
    store = {}

    def hook(_module, _args, output):
        store["A"] = output.detach().clone()
        output.register_hook(lambda grad: store.__setitem__("dA", grad.detach().clone()))

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    output = model(x)
    handle.remove()
    target(output).backward()
    return store["A"], store["dA"], output


def reference_gradcam(
    model: nn.Module, x: torch.Tensor, layer: str, classes: list[int], as_map=lambda t: t
) -> torch.Tensor:
    """Grad-CAM by the textbook (`textbook_hooks`). `as_map` lays a token or channels-last
    output out as [B, C, h, w] (the caller's own reading, not the library's)."""
    activations, gradients, _ = textbook_hooks(model, x, layer, classes)
    activations, gradients = as_map(activations), as_map(gradients)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1).clamp(min=0)


def max_relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def model_state(model: nn.Module) -> dict[str, Any]:
    """What a call must leave as it found: modes, requires_grad, .grad, hooks, weights."""
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grad": {
            name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()
        },
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ),
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    import torch

    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"] == 0
    assert before["grad"].keys() == after["grad"].keys()
    for name, grad in before["grad"].items():
        if grad is None:
            assert after["grad"][name] is None, name
        else:
            assert torch.equal(grad, after["grad"][name]), name
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key


# -- faults --------------------------------------------------------------------------------------


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
