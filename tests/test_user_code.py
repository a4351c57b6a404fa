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
from gradcam_cli.errors import GradcamError, UsageError
from gradcam_cli.sources import load_model, read_labels_file

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


# -- 10: --weights hints ------------------------------------------------------------------------


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


# -- 11: option values that cannot work --------------------------------------------------------


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
