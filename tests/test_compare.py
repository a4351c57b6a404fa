"""`gradcam compare` and `explain --baseline`: pairs by input, layer and target, the measures
(checked against scipy and torch), the gates and exit codes, the refusals, the page."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import loaded_images, open_page
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.compare import compare_runs
from gradcam_cli.comparison import COMPARISON_NAME, CompareGates
from gradcam_cli.errors import UsageError
from gradcam_cli.pages.comparison import COMPARISON_PAGE

SAMPLES = Path(__file__).parents[1] / "sample_images"
SCENES = ["circle", "square", "star", "triangle", "two_circle_star", "two_square_triangle"]
runner = CliRunner()


def gradcam(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def explain(out: Path, *args: str, inputs: tuple[str, ...] = ("scenes",)):
    result = gradcam("explain", *inputs, "-m", "demo:shapes", "-o", out, *args)
    assert result.exit_code == 0, result.output
    return out


def comparison_of(folder: Path) -> dict:
    return json.loads((folder / COMPARISON_NAME).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder holding the sample scenes (`scenes/`) and a run of the demo model over them
    (`v1`, raw maps kept); the tests run gradcam from it, so inputs read `scenes/NAME.png`."""
    root = tmp_path_factory.mktemp("compare")
    (root / "scenes").mkdir()
    for name in SCENES:
        shutil.copy(SAMPLES / "scenes" / f"{name}.png", root / "scenes" / f"{name}.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        explain(Path("v1"), "--save-raw")
    return root


@pytest.fixture
def here(work, monkeypatch):
    monkeypatch.chdir(work)
    return work


@pytest.fixture(scope="module")
def perturbed_weights(work):
    """The demo model with its last stage's conv weights perturbed: seeded noise of one
    standard deviation of the weights."""
    from gradcam_cli.demo.model import WEIGHTS_PATH
    from gradcam_cli.sources import read_state_dict

    state = read_state_dict(WEIGHTS_PATH)
    weight = state["features.19.weight"]  # the last conv (features.20 is its batch norm)
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    state["features.19.weight"] = weight + weight.std() * noise
    path = work / "perturbed.pt"
    torch.save(state, path)
    return path


# -- the gates --------------------------------------------------------------------------------


def test_gate_values_are_checked_when_made():
    with pytest.raises(UsageError, match=r"min_corr= takes a correlation, -1 to 1, got 2"):
        CompareGates(min_corr=2)
    with pytest.raises(UsageError, match="max_energy_moved="):
        CompareGates(max_energy_moved=1.5)
    with pytest.raises(UsageError, match="max_top1_changes="):
        CompareGates(max_top1_changes=-1)


# -- runs -------------------------------------------------------------------------------------


def test_identical_runs_correlate_1_with_no_shift_and_pass(here):
    explain(Path("v1-again"), "--save-raw")
    result = gradcam(
        "compare", "v1", "v1-again", "--min-corr", "0.999", "--max-shift", "0",
        "--max-energy-moved", "0", "--max-top1-changes", "0", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document == comparison_of(here / "v1-again")
    assert len(document["pairs"]) == len(SCENES)
    for pair in document["pairs"]:
        assert (pair["pearson"], pair["spearman"], pair["peak_shift"]) == (1.0, 1.0, 0.0), pair
        assert pair["energy_moved"] == 0.0 and pair["gate"] == {"passed": True, "shortfalls": []}
        assert pair["match"] == "class" and pair["top1_changed"] is False
    assert document["summary"]["passed"] is True and document["summary"]["top1_changes"] == 0
    assert document["summary"]["pearson"] == {"median": 1.0, "p5": 1.0, "p95": 1.0}
    assert "compare: passed: 6 pairs met the gates" in result.stderr


def test_a_perturbed_last_stage_lowers_correlations_fails_the_gate_worst_first(
    here, perturbed_weights
):
    explain(Path("perturbed"), "--save-raw", "--weights", perturbed_weights)
    result = gradcam("compare", "v1", "perturbed", "--min-corr", "0.95", "--report")
    assert result.exit_code == 1, result.output
    document = comparison_of(here / "perturbed")
    pairs, summary = document["pairs"], document["summary"]
    correlations = [pair["pearson"] for pair in pairs]
    assert correlations[0] == min(correlations) < 0.95 and summary["pearson"]["median"] < 1.0
    failed = [pair for pair in pairs if not pair["gate"]["passed"]]
    assert failed and pairs[: len(failed)] == failed  # the failing pairs lead
    lines = [line for line in result.stderr.splitlines() if "gate failed:" in line]
    assert len(lines) == len(failed) == summary["gate_failures"]
    assert f"gradcam: gate failed: {failed[0]['input']} [" in lines[0]
    assert re.search(r"correlation -?[\d.]+ < 0\.95", lines[0])
    # The page lists the worst pair first.
    page = (here / "perturbed" / COMPARISON_PAGE).read_text(encoding="utf-8")
    order = re.findall(r'<article class="card [^"]*" [^>]*data-input="([^"]*)"', page)
    assert order == [pair["input"] for pair in pairs]
    print(
        "perturbed demo:",
        {name: summary[name] for name in ("pearson", "spearman", "peak_shift", "energy_moved")},
        "worst:",
        [(p["input"], p["base"]["target"]["label"], p["new"]["target"]["label"], p["pearson"])
         for p in pairs[:2]],
        "top-1 changes:", summary["top1_changes"],
    )  # fmt: skip


def test_pairs_follow_the_inputs_in_another_order_and_with_extra_files(here):
    (here / "extra").mkdir(exist_ok=True)
    shutil.copy(here / "scenes" / "star.png", here / "extra" / "star copy.png")
    given = ["extra/star copy.png", *(f"scenes/{name}.png" for name in reversed(SCENES))]
    explain(Path("reordered"), "--save-raw", inputs=tuple(given))
    result = gradcam("compare", "v1", "reordered", "--min-corr", "0.999")
    assert result.exit_code == 0, result.output
    document = comparison_of(here / "reordered")
    assert sorted(pair["input"] for pair in document["pairs"]) == sorted(given[1:])
    assert all(pair["pearson"] == 1.0 for pair in document["pairs"])  # each with its own image
    assert document["only_in_new"] == ["extra/star copy.png"] and document["only_in_base"] == []
    assert "0 input(s) only in the base run, 1 only in the new one" in result.stderr


def test_runs_of_different_layers_are_refused_unless_method_change_is_allowed(here):
    explain(Path("layer16"), "--save-raw", "-l", "features.16")
    result = gradcam("compare", "v1", "layer16")
    assert result.exit_code == 2
    assert "used different layers (features and features.16)" in result.stderr
    assert "--allow-method-change" in result.stderr and result.stdout == ""
    assert not (here / "layer16" / COMPARISON_NAME).exists()
    allowed = gradcam("compare", "v1", "layer16", "--allow-method-change", "--json")
    assert allowed.exit_code == 0, allowed.output
    pairs = json.loads(allowed.stdout)["pairs"]
    assert len(pairs) == len(SCENES)
    assert {(p["base"]["layer"], p["new"]["layer"], tuple(p["grid"])) for p in pairs} == {
        ("features", "features.16", (16, 16))  # 8×8 and 16×16 maps, met on the finer grid
    }


def test_a_run_without_raw_maps_is_refused_with_the_advice(here):
    explain(Path("no-raw"))
    result = gradcam("compare", "v1", "no-raw")
    assert result.exit_code == 2
    assert "the new run no-raw has no raw maps" in result.stderr
    assert "rerun it with --save-raw" in result.stderr
    assert not (here / "no-raw" / COMPARISON_NAME).exists()


def test_reports_of_another_schema_and_runs_without_common_inputs_are_refused(here, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(here / "v1", other)
    document = json.loads((other / "predictions.json").read_text())
    (other / "predictions.json").write_text(json.dumps({**document, "schema_version": 2}))
    with pytest.raises(UsageError, match="schema_version 1 and 2"):
        compare_runs(here / "v1", other)
    for result in document["results"]:
        result["input"] = "elsewhere/" + result["input"]
    (other / "predictions.json").write_text(json.dumps(document))
    with pytest.raises(UsageError, match="have no input in common"):
        compare_runs(here / "v1", other)
    result = gradcam("compare", "v1", "missing")
    assert result.exit_code == 2 and "the new run missing is not a folder" in result.stderr
    split = tmp_path / "split"  # a --shard run not merged yet: only its shares' reports
    split.mkdir()
    (split / "predictions.1-of-2.json").write_text(json.dumps(document))
    result = gradcam("compare", "v1", split)
    assert result.exit_code == 2, result.output
    assert f"its shares are there: run `gradcam merge {split}` first" in result.stderr
    (split / "predictions.1-of-2.json").rename(split / "notes.json")
    result = gradcam("compare", "v1", split)
    assert result.exit_code == 2 and "--save-raw --out" in result.stderr


def test_resnet18_in_bf16_autocast_correlates_with_fp32(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("photos").mkdir()
    for name in ("cat_chelsea.jpg", "coffee.jpg"):
        shutil.copy(SAMPLES / "photos" / name, Path("photos") / name)
    common = ["-m", "torchvision:resnet18", "--no-pretrained", "--input-size", "128", "--save-raw"]
    for out, extra in (("fp32", []), ("bf16", ["--amp", "bf16"])):
        result = gradcam("explain", "photos", *common, *extra, "-o", out)
        assert result.exit_code == 0, result.output
    comparison = compare_runs("fp32", "bf16", min_corr=0.99)
    assert comparison.passed and len(comparison.pairs) == 2
    assert all(pair.pearson >= 0.99 and pair.spearman >= 0.99 for pair in comparison.pairs)


# -- pairing, from reports written by hand ----------------------------------------------------


def write_run(folder: Path, images: dict, classes: tuple[int, ...] = ()) -> Path:
    """A report with raw maps: `images` maps an input to its explanations, (class, map) each,
    the first the predicted class (or, with `classes`, the named ones)."""
    folder.mkdir()
    results = []
    for name, explained in images.items():
        explanations = []
        for index, values in explained:
            raw = f"{name}.{index}.raw.npy"
            np.save(folder / raw, np.asarray(values, dtype=np.float32))
            target = {"index": index, "label": f"c{index}", "probability": 0.5, "score": 1.0}
            explanations.append({"target": target, "layer": "l", "raw": raw, "overlay": None})
        top = explained[0][0]
        results.append(
            {
                "input": name,
                "status": "ok",
                "size": [32, 32],
                "predictions": [{"index": top, "label": f"c{top}", "probability": 0.5}],
                "explanations": explanations,
            }
        )
    document = {
        "schema_version": 1,
        "model": {"name": "m"},
        "method": "gradcam",
        "method_options": {},
        "layers": ["l"],
        "preprocess": {"input_size": [32, 32], "resize_shorter": 32},
        "options": {"classes": list(classes), "save_raw": True},
        "results": results,
    }
    (folder / "predictions.json").write_text(json.dumps(document))
    return folder


def spot(row: int, col: int) -> np.ndarray:
    values = np.zeros((4, 4))
    values[row, col] = 1.0
    return values


def test_a_changed_prediction_pairs_the_two_top1_explanations_and_is_counted(tmp_path):
    base = write_run(tmp_path / "base", {"a": [(0, spot(0, 0))], "b": [(1, spot(1, 1))]})
    new = write_run(tmp_path / "new", {"a": [(2, spot(3, 3))], "b": [(1, spot(1, 1))]})
    comparison = compare_runs(base, new, max_top1_changes=0)
    worst, other = comparison.pairs
    assert (worst.input, worst.match, worst.top1_changed) == ("a", "top1", True)
    assert (worst.base.target["label"], worst.new.target["label"]) == ("c0", "c2")
    assert worst.peak_shift == pytest.approx(math.hypot(24, 24))  # 8-pixel cells
    assert worst.gate["shortfalls"] == ["top-1 changed (c0 → c2): 1 images changed, more than 0"]
    assert (other.match, other.top1_changed, other.gate["passed"]) == ("class", False, True)
    assert comparison.top1_changes == 1 and not comparison.passed
    assert compare_runs(base, new, max_top1_changes=1).passed


def test_named_targets_pair_by_class_only_and_list_the_rest(tmp_path):
    base = write_run(tmp_path / "base", {"a": [(0, spot(0, 0)), (1, spot(1, 1))]}, classes=(0, 1))
    new = write_run(tmp_path / "new", {"a": [(1, spot(1, 1)), (2, spot(2, 2))]}, classes=(1, 2))
    comparison = compare_runs(base, new)
    [pair] = comparison.pairs
    assert (pair.match, pair.base.target["index"], pair.pearson) == ("class", 1, 1.0)
    assert [(u["run"], u["target"]["index"]) for u in comparison.unpaired] == [
        ("base", 0),
        ("new", 2),
    ]
    assert comparison.passed  # no gates: measured only


def test_an_input_lost_in_the_new_run_fails_a_gated_comparison(tmp_path):
    base = write_run(tmp_path / "base", {"a": [(0, spot(0, 0))], "b": [(0, spot(0, 0))]})
    new = write_run(tmp_path / "new", {"a": [(0, spot(0, 0))], "b": [(0, spot(0, 0))]})
    document = json.loads((new / "predictions.json").read_text())
    document["results"][1] = {"input": "b", "status": "error", "error": "cannot read b"}
    (new / "predictions.json").write_text(json.dumps(document))
    assert compare_runs(base, new).passed  # measured only
    gated = compare_runs(base, new, min_corr=0.5)
    assert not gated.passed and gated.failed == (
        {"input": "b", "base": None, "new": "cannot read b"},
    )
    assert any(
        "b: explained in the base run, failed in the new one" in line for line in gated.log_lines()
    )


# -- explain --baseline -----------------------------------------------------------------------


def test_explain_with_a_baseline_compares_in_one_step(here, perturbed_weights):
    result = gradcam(
        "explain", "scenes", "-m", "demo:shapes", "--weights", perturbed_weights,
        "--baseline", "v1", "--min-corr", "0.95", "-o", "one-step",
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # explained, but the gate failed
    assert "6/6 images explained" in result.stderr and "gate failed:" in result.stderr
    document = comparison_of(here / "one-step")
    assert document["base"]["run"] == "v1" and document["summary"]["gate_failures"] >= 1
    assert len(list((here / "one-step").glob("*.raw.npy"))) == len(SCENES)  # implied --save-raw
    same = gradcam("explain", "scenes", "-m", "demo:shapes", "--baseline", "v1", "-o", "same")
    assert same.exit_code == 0, same.output


def test_a_comparison_refused_after_the_run_exits_1_with_the_run_written(here):
    (here / "elsewhere").mkdir(exist_ok=True)
    shutil.copy(here / "scenes" / "circle.png", here / "elsewhere" / "circle.png")
    result = gradcam(
        "explain", "elsewhere", "-m", "demo:shapes", "--baseline", "v1", "-o", "unrelated"
    )
    assert result.exit_code == 1, result.output  # not 2: an image was explained
    assert "1/1 images explained" in result.stderr
    assert "error: cannot compare with --baseline v1: " in result.stderr
    assert "have no input in common" in result.stderr
    assert (here / "unrelated" / "predictions.json").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--min-corr", "0.8"], "--min-corr gate a comparison with a baseline run: add --baseline"),
        (["--baseline", "v1", "-o", "v1"], "--baseline v1 is --out itself"),
        (["--baseline", "nowhere"], "the baseline run nowhere is not a folder"),
        (["--baseline", "v1", "-l", "features.16"], "used different layers"),
        (["--baseline", "v1", "--min-corr", "1.5"], "--min-corr takes a correlation, -1 to 1"),
    ],
)
def test_explain_refuses_a_baseline_it_could_not_compare_before_any_image(here, args, expected):
    result = gradcam("explain", "scenes", "-m", "demo:shapes", "-o", "refused", *args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert not (here / "refused").exists()


# -- the page in a browser --------------------------------------------------------------------


def test_the_comparison_page_opens_with_its_pictures_in_headless_chromium(
    browser,
    here,
    perturbed_weights,
):
    explain(Path("page-run"), "--save-raw", "--weights", perturbed_weights)
    assert gradcam("compare", "v1", "page-run", "--min-corr", "0.95", "--report").exit_code == 1
    open_page(browser, here / "page-run" / COMPARISON_PAGE)
    pictures = loaded_images(browser, "#grid img")
    assert len(pictures) == 3 * len(SCENES)
    assert all(width > 0 for _, width in pictures), pictures
    cards = browser.find_elements("css selector", "#grid .card")
    assert cards[0].get_attribute("data-status") == "failed"
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", "select[name='status']")).select_by_value("passed")
    shown = [card.get_attribute("data-status") for card in cards if card.is_displayed()]
    assert shown and set(shown) == {"passed"} and len(shown) < len(cards)
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe


def test_compare_imports_neither_torch_nor_matplotlib(here):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from gradcam_cli.cli import app\n"
        "result = CliRunner().invoke(app, ['compare', 'v1', 'v1', '--report', '-o', 'alone'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted({'torch', 'matplotlib'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=here)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_docs_document_every_key_of_comparison_json(here):
    section = (Path(__file__).parents[1] / "docs" / "compare.md").read_text(encoding="utf-8")
    document = compare_runs(here / "v1", here / "v1", min_corr=0.5).to_dict()
    pair = document["pairs"][0]
    keys = {*document, *document["summary"], *document["gates"], *document["base"], *pair}
    keys |= {*pair["base"], *pair["gate"], *document["summary"]["pearson"]}
    missing = sorted(key for key in keys if f"`{key}`" not in section)
    assert not missing, f"comparison.json keys not in docs/compare.md: {missing}"
