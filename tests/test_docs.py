"""The README and the pages in docs/ are a contract: the options, the JSON schema, the method
table and the Python examples they give match the code, and the README stays a short front
page that links to them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import typer.main
from PIL import Image
from typer.testing import CliRunner

from gradcam_cli.cli import app

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def options_of(command: str) -> set[str]:
    params = typer.main.get_command(app).commands[command].params
    return {opt for p in params for opt in p.opts + p.secondary_opts if opt.startswith("--")}


def options_in_table(text: str) -> set[str]:
    """The --options named in the first column of a Markdown table's rows."""
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return {opt for row in rows for opt in re.findall(r"--[\w-]+", row.split("|")[1])}


def test_every_explain_option_is_documented_and_every_documented_option_exists():
    assert options_in_table(page("explain.md")) == options_of("explain") - {"--help"}


def test_the_readme_names_only_options_explain_has():
    section = README.split("## `gradcam explain`")[1].split("\n## ")[0]
    documented = options_in_table(section)
    assert documented, "the README's table of explain's main options"
    assert documented <= options_of("explain")


def test_json_example_has_exactly_the_keys_a_real_run_writes(tmp_path, monkeypatch):
    [example] = [json.loads(block) for block in fenced_blocks(page("json.md"), "json")]
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


def run_python_examples(text: str, name: str) -> dict:
    """Run a page's Python blocks in order, in one namespace, as a notebook would."""
    namespace: dict = {}
    for block in fenced_blocks(text, "python"):
        exec(compile(block, name, "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


@pytest.fixture
def example_folder(tmp_path, monkeypatch):
    """A folder to run examples in: a photo named cat.jpg and the repository's sample images."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save("cat.jpg")
    (tmp_path / "sample_images").symlink_to(ROOT / "sample_images")
    return tmp_path


def test_python_api_examples_run(example_folder):
    assert len(fenced_blocks(page("python-api.md"), "python")) >= 2
    namespace = run_python_examples(page("python-api.md"), "docs/python-api.md")
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


@pytest.mark.parametrize("name", ["sanity.md", "compare.md"])
def test_each_commands_python_example_runs_on_its_own(example_folder, name):
    namespace = run_python_examples(page(name), f"docs/{name}")
    if name == "sanity.md":
        assert namespace["check"].summary and Path("runs/sanity/sanity.json").is_file()
    else:
        assert namespace["comparison"].passed and Path("runs/v2/comparison.json").is_file()


def test_concepts_python_example_runs_as_shown(example_folder):
    namespace = run_python_examples(page("concepts.md"), "docs/concepts.md")
    votes = [concept.votes[0].label for concept in namespace["found"].concepts]
    assert votes == ["triangle", "square", "star", "circle"]  # as the page shows
    assert Path("runs/concepts/concepts.json").is_file()


def test_readme_python_example_runs_as_shown(example_folder):
    namespace = run_python_examples(README, "README.md")
    result = namespace["result"]
    assert (result.predictions[0].label, result.raw().shape) == ("star", (8, 8))
    assert Path("runs/star/predictions.json").is_file()


def test_tasks_python_example_runs_as_shown(example_folder):
    namespace = run_python_examples(page("tasks.md"), "docs/tasks.md")
    seg, det = namespace["seg"], namespace["det"]
    assert 0 < seg.targets[0].pixel_share <= 1 and seg.region().shape == (150, 200)
    assert len(namespace["boxes"]) == 3 and all(len(box) == 4 for box in namespace["boxes"])
    assert namespace["boxed"].size == (200, 150) and det.targets[0].class_index is not None


def test_every_python_example_in_the_docs_is_run_by_a_test():
    tested = {"python-api.md", "sanity.md", "compare.md", "tasks.md", "concepts.md"}
    with_python = {p.name for p in DOCS.glob("*.md") if fenced_blocks(p.read_text(), "python")}
    assert with_python == tested


def test_exit_codes_table_covers_the_contract():
    table = page("unattended.md").split("## Exit codes")[1].split("##")[0]
    for code in (0, 1, 2, 130):
        assert f"\n| {code} | " in table, code


def test_method_table_is_the_registry():
    from gradcam_cli.methods import METHODS, methods_table

    section = page("methods.md").split("# Methods\n")[1].split("\n#")[0]
    names = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert names == list(METHODS)
    assert methods_table() in section, "regenerate with gradcam_cli.methods.methods_table()"


def test_the_readme_is_a_front_page():
    assert len(README.splitlines()) <= 250
    assert "make test" in README  # the command CI runs (.ci/run), stated where a newcomer looks
    assert "make test" in (ROOT / ".ci/run").read_text(encoding="utf-8")


def test_the_readme_links_only_to_files_that_exist():
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)|src=\"([^\"]+)\"", README)
    paths = {link or src for link, src in targets if not (link or src).startswith("http")}
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_the_readme_method_table_is_the_registry_with_measured_costs():
    from gradcam_cli.methods import METHODS, readme_table

    costs = json.loads((ROOT / "benchmarks/results/method_cost.json").read_text(encoding="utf-8"))
    missing = [name for name in METHODS if name not in costs["methods"]]
    assert not missing, f"measure them: benchmarks/method_cost.py --methods {','.join(missing)}"
    section = README.split("## Methods\n")[1].split("\n## ")[0]
    assert readme_table(costs) in section, "regenerate with gradcam_cli.methods.readme_table()"
