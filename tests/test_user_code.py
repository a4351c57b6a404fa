"""Issue 14: runs that nothing derails. Whatever the user's model file, checkpoint, labels file
or option values do, the run ends with one `gradcam: error:` line and exit 2, never exit 0 with
nothing said, a traceback, or an `internal error` (which is kept for our own bugs)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.errors import GradcamError, UsageError, WeightsError
from gradcam_cli.models import (
    load_model,
    load_weights,
    read_labels_file,
    resolve_source,
)

IMAGE = str(Path(__file__).parents[1] / "sample_images" / "scenes" / "circle.png")

TINY = """
import os
import signal
import sys
import time

import torch
from torch import nn


class Net(nn.Sequential):
    def __init__(self, num_classes=3):
        torch.manual_seed(0)
        super().__init__(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, num_classes),
        )
"""

# Where the user's code misbehaves: at import, in the factory, or in forward (the probe).
PLACES = {
    "import": "{stmt}\n\ndef make(num_classes=3):\n    return Net(num_classes)\n",
    "factory": "def make(num_classes=3):\n    {stmt}\n",
    "forward": (
        "class Bad(Net):\n    def forward(self, x):\n        {stmt}\n\n\n"
        "def make(num_classes=3):\n    return Bad(num_classes)\n"
    ),
}


def model_file(folder: Path, place: str = "factory", stmt: str = "return Net(num_classes)") -> str:
    """A model file in `folder` whose code runs `stmt` at `place`; returns its `--model` spec."""
    path = folder / "net.py"
    path.write_text(TINY + "\n\n" + PLACES[place].format(stmt=stmt))
    return f"{path}:make"


def explain(*args: str):
    return CliRunner().invoke(app, ["explain", *args], catch_exceptions=False)


def error_line(result, out: Path | None = None) -> str:
    """The one `gradcam: error:` line of a run that exited 2 before any image."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gradcam: error: "), lines[0]
    if out is not None:
        assert not (out / "predictions.json").exists()
    return lines[0]


# -- 5 and 6: user code that exits, interrupts or raises while the model loads ------------------

STATEMENTS = {
    "sys.exit(0)": "called sys.exit(0)",
    "raise SystemExit('bye')": "called sys.exit('bye')",
    "raise KeyboardInterrupt": "raised KeyboardInterrupt",
    "raise RuntimeError('boom\\nsecond line')": "raised RuntimeError: boom",
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("stmt", STATEMENTS)
def test_user_code_that_exits_or_raises_is_a_usage_error_naming_the_file(tmp_path, place, stmt):
    spec = model_file(tmp_path, place, stmt)
    out = tmp_path / "out"
    result = explain(IMAGE, "--model", spec, "--input-size", "32", "--out", str(out))
    line = error_line(result, out)
    assert str(tmp_path / "net.py") in line and STATEMENTS[stmt] in line
    assert "second line" not in line


def test_factory_raising_names_the_spec_and_says_what_to_do(tmp_path):
    spec = model_file(tmp_path, "factory", "raise RuntimeError('boom')")
    result = explain(IMAGE, "--model", spec, "--out", str(tmp_path / "out"))
    assert error_line(result).startswith(
        f"gradcam: error: your model {spec} raised RuntimeError: boom; fix it"
    )


def test_a_model_that_fails_only_on_the_methods_probe_is_a_usage_error(tmp_path):
    """CAM checks its head on a second probe forward (`_check_method_on_a_probe_image`)."""
    spec = model_file(
        tmp_path,
        "forward",
        "self.calls = getattr(self, 'calls', 0) + 1\n"
        "        if self.calls > 1:\n"
        "            raise ValueError('second call')\n"
        "        return super().forward(x)",
    )
    args = ["--model", spec, "--input-size", "32", "--method", "cam", "--layer", "1"]
    result = explain(IMAGE, *args, "--out", str(tmp_path / "out"))
    line = error_line(result)
    assert spec in line and "raised ValueError: second call" in line


def test_a_real_ctrl_c_while_the_model_loads_still_interrupts(tmp_path):
    spec = model_file(
        tmp_path, "factory", "os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(10)"
    )
    result = explain(IMAGE, "--model", spec, "--out", str(tmp_path / "out"))
    assert result.exit_code == 130 and result.stderr == "gradcam: interrupted\n"


def test_a_library_model_that_cannot_take_the_input_size_is_a_usage_error(tmp_path):
    result = explain(
        IMAGE,
        *("--model", "torchvision:squeezenet1_0", "--no-pretrained", "--input-size", "8"),
        *("--out", str(tmp_path / "out")),
    )
    line = error_line(result)
    assert "torchvision:squeezenet1_0" in line and "--input-size" in line


def test_library_errors_from_user_code_are_gradcam_errors(tmp_path):
    from gradcam_cli.errors import UserCodeError

    spec = model_file(tmp_path, "import", "import no_such_module_here")
    with pytest.raises(UserCodeError, match="No module named 'no_such_module_here'") as caught:
        load_model(spec)
    assert caught.value.exit_code == 2 and isinstance(caught.value, GradcamError)
    assert "_gradcam_user_net" not in sys.modules  # a failed import leaves no half module


# -- 7: --labels files ----------------------------------------------------------------------------


def labels_run(tmp_path: Path, labels: Path):
    args = ["--model", "demo:shapes", "--labels", str(labels), "--out", str(tmp_path / "out")]
    return explain(IMAGE, *args)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("circle\nsquare\ntriangle\nstär\n".encode("latin-1"), "line 4 is not UTF-8 text"),
        (Path(IMAGE).read_bytes(), "line 1 is not UTF-8 text"),
        (b"circle\n\nsquare\ntriangle\nstar\n", "line 2 is blank"),
        (b"\ncircle\nsquare\ntriangle\nstar\n", "line 1 is blank"),
    ],
)
def test_labels_that_are_not_utf8_or_have_a_blank_line_name_the_line(tmp_path, data, expected):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(data)
    line = error_line(labels_run(tmp_path, labels))
    assert f"--labels {labels}" in line and expected in line


def test_labels_with_a_bom_crlf_and_trailing_blank_lines_are_read(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("\ufeffcircle\r\nsquare\r\ntriangle\r\nstar\r\n\r\n\n".encode())
    assert read_labels_file(labels) == ["circle", "square", "triangle", "star"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_labels_that_are_not_a_regular_file_are_refused_without_reading(tmp_path, kind):
    labels = tmp_path / "labels"
    if kind == "directory":
        labels.mkdir()
    elif kind == "fifo":
        os.mkfifo(labels)  # reading it would wait for a writer forever
    else:
        labels = Path("/dev/zero")  # reading it would never end
    with pytest.raises(UsageError, match=re.escape(f"labels_file='{labels}' is not a regular")):
        read_labels_file(labels)
    if kind == "fifo":
        line = error_line(labels_run(tmp_path, labels))
        assert f"--labels {labels} is not a regular file" in line


# -- 9: did-you-mean suggests names the asked library has -------------------------------------


def test_an_unknown_torchvision_name_timm_has_points_to_timm_not_to_itself():
    with pytest.raises(GradcamError) as caught:
        resolve_source("torchvision", "resnet51q")
    message = str(caught.value)
    assert "Did you mean 'resnet51q'" not in message and "'resnet51q'?" not in message
    assert "timm has a model of that name: use timm:resnet51q" in message


def test_suggestions_come_from_the_asked_library_only():
    from gradcam_cli.models import _torchvision_classifiers

    with pytest.raises(GradcamError) as caught:
        resolve_source("torchvision", "resnet5")
    suggested = str(caught.value).split("Did you mean")[1].split("?")[0]
    names = [part.strip(" '") for part in suggested.replace("one of", "").split(",")]
    assert names and all(name in _torchvision_classifiers() for name in names), names

    with pytest.raises(GradcamError) as caught:
        resolve_source("timm", "vit_b_16")
    assert "torchvision has a model of that name: use torchvision:vit_b_16" in str(caught.value)


# -- 10: --weights hints ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnets():
    from torchvision.models import resnet18, resnet50

    return resnet18(weights=None), resnet50(weights=None)


def test_weights_of_another_resnet_say_another_architecture_not_num_classes(resnets):
    r18, r50 = resnets
    with pytest.raises(WeightsError) as caught:
        load_weights(r50, r18.state_dict(), "r18.pth")
    message = str(caught.value)
    assert "num_classes=" not in message and "another architecture" in message
    assert "layer1.0.conv3.weight" in message  # a few of the keys are named


def test_weights_whose_head_alone_differs_suggest_num_classes(resnets):
    r18, _ = resnets
    state = dict(r18.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, 512), torch.zeros(10)
    with pytest.raises(WeightsError, match="add num_classes=10"):
        load_weights(r18, state, "r18_10.pth")
    del state["fc.bias"]  # the head differs in more than its class count
    with pytest.raises(WeightsError) as caught:
        load_weights(r18, state, "r18_10.pth")
    assert "num_classes=" not in str(caught.value)


def test_demo_weights_for_another_class_count_never_suggest_num_classes(tmp_path):
    from gradcam_cli.demo.model import ShapesNet

    weights = tmp_path / "shapes10.pt"
    torch.save(ShapesNet(num_classes=10).state_dict(), weights)
    out = tmp_path / "out"
    line = error_line(
        explain(IMAGE, "--model", "demo:shapes", "--weights", str(weights), "--out", str(out))
    )
    assert "--num-classes" not in line and "demo:shapes" in line


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("notes.pt", b"just some text.\n"),
        ("noise.pth", b"\x00" + bytes(range(1, 256)) * 4),
        ("photo.pt", Path(IMAGE).read_bytes()),
    ],
)
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, name, data):
    weights = tmp_path / name
    weights.write_bytes(data)
    line = error_line(
        explain(
            IMAGE, "--model", "demo:shapes", "--weights", str(weights), "--out", str(tmp_path / "o")
        )
    )
    assert f"{weights} is not a PyTorch checkpoint or safetensors file" in line
    assert "Python objects" not in line


def test_safetensors_under_another_suffix_loads(tmp_path):
    from safetensors.torch import save_file

    from gradcam_cli.demo.model import ShapesNet

    torch.manual_seed(3)
    state = ShapesNet().state_dict()
    weights = tmp_path / "shapes.bin"
    save_file(state, str(weights))
    loaded = load_model("demo:shapes", weights=weights)
    assert torch.equal(loaded.model.state_dict()["fc.weight"], state["fc.weight"])


# -- 11: option values that cannot work --------------------------------------------------------


def test_input_size_and_num_classes_ranges():
    from gradcam_cli.models import check_input_size, check_num_classes

    for value in (None, 8, 224, 4096):
        check_input_size(value)
    for value in (None, 1, 100_000):
        check_num_classes(value)
    for value in (7, 4097, 100_000):
        with pytest.raises(UsageError, match=r"input_size= must be 8–4096 .*square"):
            check_input_size(value)
    for value in (0, -1, 100_001):
        with pytest.raises(UsageError, match="num_classes= must be 1–100000"):
            check_num_classes(value)
    with pytest.raises(UsageError, match="input_size="):
        load_model("demo:shapes", input_size=100_000)
    with pytest.raises(UsageError, match="num_classes="):
        load_model("timm:test_resnet", pretrained=False, num_classes=10**9)


def test_a_huge_input_size_is_a_usage_error_not_an_allocation_failure(tmp_path):
    spec = model_file(tmp_path)
    result = explain(IMAGE, "--model", spec, "--input-size", "100000", "--out", str(tmp_path / "o"))
    assert "--input-size must be 8–4096" in error_line(result)


def test_user_model_file_still_loads_and_explains(tmp_path):
    spec = model_file(tmp_path)
    out = tmp_path / "out"
    result = explain(
        IMAGE, "--model", spec, "--input-size", "32", "--layer", "1", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert (out / "predictions.json").is_file()
