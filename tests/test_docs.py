"""The README is a contract: its options, JSON schema and Python example match the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import typer.main
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_every_explain_option_is_documented_and_every_documented_option_exists():
    explain = typer.main.get_command(app).commands["explain"]
    cli_options = {
        opt for p in explain.params for opt in p.opts + p.secondary_opts if opt.startswith("--")
    }
    section = README.split("### `gradcam explain")[1].split("### `gradcam layers")[0]
    table_rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {opt for row in table_rows for opt in re.findall(r"--[\w-]+", row.split("|")[1])}
    assert documented == cli_options - {"--help"}


def test_readme_json_example_has_exactly_the_keys_a_real_run_writes(tmp_path, monkeypatch):
    [example] = [json.loads(block) for block in fenced_blocks("json")]
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 48), (200, 30, 30)).save("photo.jpg")
    Path("broken.jpg").write_text("not an image")
    result = CliRunner().invoke(
        app,
        [
            "explain",
            "photo.jpg",
            "broken.jpg",
            "--model",
            "torchvision:resnet18",
            "--no-pretrained",
            "--save-raw",
            "--json",
        ],
    )
    real = json.loads(result.stdout)

    def shape(value):
        if isinstance(value, dict):
            return {key: shape(item) for key, item in value.items()}
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return [shape(value[0])]
        return type(value).__name__ if value is not None else "null"

    assert shape(real)["results"][0] == shape(example)["results"][0]
    assert set(real) == set(example)
    for key in ("model", "preprocess", "options", "versions", "summary"):
        assert set(real[key]) == set(example[key]), key
    assert real["results"][1].keys() == example["results"][1].keys()
    assert real["results"][1]["status"] == example["results"][1]["status"] == "error"


def test_python_api_examples_run(tmp_path, monkeypatch):
    blocks = fenced_blocks("python")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save("cat.jpg")
    namespace: dict = {}
    for block in blocks:  # in order, as a notebook would run them
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert json.loads(Path("runs/cat/predictions.json").read_text())["results"][0]["input"] == (
        "cat.jpg"
    )
    assert namespace["report"].errors == 0
    assert (Path("runs/demo") / namespace["report"].results[0].explanations[0].overlay).is_file()
    assert namespace["grayscale"].shape == (2, 224, 224)  # the pytorch-grad-cam block
    assert 0.0 <= namespace["grayscale"].min() <= namespace["grayscale"].max() <= 1.0
    assert namespace["raw"].shape == (7, 7)
    assert namespace["overlay"].size == namespace["heatmap"].size == (200, 150)
    assert tuple(namespace["maps"].shape) == (8, 1, 7, 7)
    assert namespace["result"].source == "cat.jpg"


def test_exit_codes_table_covers_the_contract():
    table = README.split("## Exit codes")[1].split("##")[0]
    for code in (0, 1, 2, 130):
        assert f"\n| {code} | " in table, code


def test_readme_method_table_is_the_registry():
    from gradcam_cli.methods import METHODS, methods_table

    section = README.split("\n## Methods\n")[1].split("\n#")[0]
    names = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert names == list(METHODS)
    assert methods_table() in section, "regenerate with gradcam_cli.methods.methods_table()"
