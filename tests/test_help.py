"""Every help page: full summaries, names a person reads, and examples that run as shown."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import torch
import typer.main
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli import clihelp
from gradcam_cli.cli import app

COMMANDS = ["explain", "layers", "models", "merge", "report", "sanity", "compare", "concepts"]
runner = CliRunner()


def help_page(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def examples_shown(page: str) -> list[str]:
    """The command lines of a help page's Examples section (each under its `# what` line)."""
    section = page.split("Examples:", 1)[1]
    lines = [line.strip() for line in section.splitlines()]
    return [line for before, line in zip(lines, lines[1:], strict=False) if before.startswith("#")]


@pytest.mark.parametrize("command", [(), *[(c,) for c in COMMANDS]])
def test_every_help_page_has_examples_and_no_python_type_names(command):
    page = help_page(*command)
    assert examples_shown(page), page
    for leaked in ("<str>", "<list[str]>", "<path>", "<int>", "{"):
        assert leaked not in page, f"{leaked!r} in `gradcam {' '.join(command)} --help`"


def test_arguments_are_shown_by_what_a_person_types():
    assert "Usage: gradcam explain [OPTIONS] IMAGE|DIR|GLOB|-..." in help_page("explain")
    assert "Usage: gradcam layers [OPTIONS] MODEL" in help_page("layers")
    assert "Usage: gradcam models [OPTIONS] [WORD|PATTERN]" in help_page("models")
    assert "Usage: gradcam report [OPTIONS] OUT" in help_page("report")


def test_the_command_list_shows_each_summary_whole():
    page = help_page()
    listing = page.split("Commands:", 1)[1].split("Examples:", 1)[0]
    group = typer.main.get_command(app)
    for name in COMMANDS:
        summary = group.commands[name].short_help
        assert summary and not summary.endswith("..."), name
        assert " ".join(summary.split()) in " ".join(listing.split()), name
    assert "..." not in listing


def test_input_size_says_how_the_photo_is_fitted():
    page = " ".join(help_page("explain").split())
    assert "shorter side is resized" in page and "centre" in page and "--resize" in page


def test_single_output_models_are_explained_in_the_target_help():
    page = " ".join(help_page("explain").split())
    assert "single output" in page and "-t 1" in page


def test_the_help_examples_are_the_documented_ones():
    for command in ["gradcam", *COMMANDS]:
        shown = examples_shown(help_page(*([] if command == "gradcam" else [command])))
        assert shown == clihelp.example_commands(command)


# -- every example runs (offline: hub models get --no-pretrained) ---------------------------


# Article 004's X-ray classifier, narrow: conv stages, one sigmoid output.
MY_MODELS = """
import torch
from torch import nn


class XRayNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet_blocks = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1), nn.ReLU()) for c in (3, 6, 12)]
        )
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 1))

    def forward(self, x):
        return torch.sigmoid(self.classifier(self.resnet_blocks(x)))
"""


@pytest.fixture
def example_files(tmp_path, monkeypatch):
    """The files the examples name, in a fresh working folder."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (96, 72), (180, 40, 40)).save("photo.jpg")
    for folder in ("photos", "xrays"):
        (tmp_path / folder).mkdir()
        for i, colour in enumerate([(20, 200, 20), (20, 20, 200)]):
            Image.new("RGB", (80, 64), colour).save(tmp_path / folder / f"{i}.jpg")
    (tmp_path / "my_models.py").write_text(MY_MODELS)
    defined: dict = {}
    exec(MY_MODELS, defined)
    torch.manual_seed(0)
    torch.save(defined["XRayNet"]().state_dict(), "xray.pt")
    return tmp_path


def _offline(args: list[str]) -> list[str]:
    """A hub model named without --weights gets --no-pretrained: tests never download."""
    if args[0] not in ("explain", "layers") or "--weights" in args:
        return args
    model = args[args.index("-m") + 1] if "-m" in args else args[1]
    hub = not model.startswith("demo:") and ".py:" not in model
    return [*args, "--no-pretrained"] if hub and "--no-pretrained" not in args else args


def run_example(line: str) -> tuple[int, str]:
    """Run an example line as a shell would: `producer | gradcam ... > file` supported."""
    stdin_text = None
    if " | " in line:
        producer, line = line.split(" | ", 1)
        stdin_text = subprocess.run(
            shlex.split(producer), capture_output=True, text=True, check=True
        ).stdout
    redirect = None
    if " > " in line:
        line, redirect = line.split(" > ", 1)
    words = shlex.split(line)
    assert words[0] == "gradcam"
    result = runner.invoke(app, _offline(words[1:]), input=stdin_text)
    if redirect:
        with open(redirect.strip(), "w", encoding="utf-8") as handle:
            handle.write(result.stdout)
    return result.exit_code, result.output


ALL_EXAMPLES = [
    (command, line)
    for command in ["gradcam", *COMMANDS]
    for line in clihelp.example_commands(command)
]


def test_every_example_runs(example_files):
    """In one folder, in order: the report example reads the run an explain example wrote. A
    line shown on two pages (`gradcam --help` repeats explain's first) runs once."""
    for line, command in {line: command for command, line in ALL_EXAMPLES}.items():
        code, output = run_example(line)
        assert code == 0, f"`{line}` (from `{command} --help`) exited {code}:\n{output}"
    assert re.search(r'"input": "photos/0.jpg"', (example_files / "preds.json").read_text())
    assert (example_files / "runs/photos/index.html").is_file()
    assert (example_files / "runs/big/predictions.json").is_file()
