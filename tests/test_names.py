"""Finding names: `gradcam models PATTERN`, and what an unknown `--model` or `--target` suggests
on the command line (issue 19, items 2 and 4). The messages themselves are built, and tested,
where the names live: tests/test_sources.py for model names."""

from __future__ import annotations

import re

import pytest
from PIL import Image
from torchvision.models import ResNet18_Weights
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.errors import TargetError
from gradcam_cli.explainer import _label_index

# torchvision's ImageNet class names: metadata of the weights enum, no download.
IMAGENET = list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def models(*args: str):
    return CliRunner().invoke(app, ["models", *args], catch_exceptions=False)


def listed(*args: str) -> list[str]:
    result = models(*args)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def error_line(result) -> str:
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("gradcam: error: ")
    return line


# -- gradcam models PATTERN -----------------------------------------------------------------


def test_a_bare_word_lists_every_name_that_contains_it_in_any_case():
    lines = listed("vit")
    assert "timm:vit_base_patch16_224" in lines and "torchvision:vit_b_16" in lines
    assert "timm:levit_128" in lines  # anywhere in the name, not only at its start
    assert all("vit" in line.split(":", 1)[1] for line in lines)
    assert listed("VIT") == lines


def test_a_bare_word_is_searched_in_the_names_as_printed_prefix_included():
    assert listed("demo") == ["demo:shapes"]
    lines = listed("timm:conv")
    assert "timm:convnext_tiny" in lines
    assert all(line.startswith("timm:conv") for line in lines)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*demo*", ["demo:shapes"]),
        ("demo:*", ["demo:shapes"]),
        ("*:shapes", ["demo:shapes"]),
    ],
)
def test_a_pattern_matches_the_names_as_printed(pattern, expected):
    assert listed(pattern) == expected


def test_a_pattern_with_a_prefix_keeps_to_that_library():
    lines = listed("timm:resnet5*")
    assert "timm:resnet50" in lines and "timm:resnet50d" in lines
    assert all(line.startswith("timm:resnet5") for line in lines)
    assert listed("torchvision:resnet5*") == ["torchvision:resnet50"]


def test_a_pattern_without_a_prefix_still_matches_the_bare_names():
    # docs/models.md's 'resnet*' / 'convnext*' form: matched against the name after the prefix.
    lines = listed("resnet18*")
    assert lines == ["timm:resnet18", "timm:resnet18d", "torchvision:resnet18"]
    assert "torchvision:convnext_tiny" in listed("convnext*")


def test_pretrained_tags_are_matched_as_printed_too():
    lines = listed("timm:resnet18.a1*", "--pretrained")
    assert lines == ["timm:resnet18.a1_in1k"]
    assert listed("resnet18.a1*", "--pretrained") == lines
    assert "timm:resnet18.a1_in1k" in listed("resnet18.a1", "--pretrained")  # a word


@pytest.mark.parametrize(
    ("pattern", "suggested"),
    [
        ("resnt50*", "'resnet50'"),  # bare names for a pattern without a prefix
        ("timm:resnt50*", "'timm:resnet50'"),  # printed names for one with a prefix
        ("efficentnet", "'efficientnet'"),  # a family: a word `gradcam models` finds
    ],
)
def test_no_match_exits_1_with_names_close_in_spelling(pattern, suggested):
    result = models(pattern)
    assert result.exit_code == 1 and result.stdout == ""
    line = error_line(result)
    assert f"no model name matches '{pattern}'. Did you mean" in line
    assert suggested in line.split("Did you mean")[1].split("?")[0]
    assert "A word lists the names that contain it" in line


# -- an unknown --model --------------------------------------------------------------------


def test_the_command_line_shows_the_suggestions_and_exits_2(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    result = CliRunner().invoke(
        app,
        ["explain", str(tmp_path / "photo.png"), "-m", "vit", "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 2
    assert "Models containing 'vit': timm:" in error_line(result)


# -- --target: label words before spelling ----------------------------------------------------


def target_error(text: str, labels=IMAGENET) -> str:
    with pytest.raises(TargetError) as caught:
        _label_index(text, labels)
    return str(caught.value)


def test_a_word_of_several_labels_lists_those_classes_and_picks_none():
    message = target_error("cat")
    assert message.startswith("targets='cat' names no class exactly; classes with the word 'cat': ")
    assert "282 tiger cat; 283 Persian cat; 284 Siamese cat; 285 Egyptian cat" in message
    assert "Did you mean" not in message  # not 'crate', 'oxcart', 'castle'
    assert "catamount" not in message and "polecat" not in message  # whole words only


def test_a_long_list_is_cut_with_a_count():
    from timm.data import ImageNetInfo  # timm's longer names: "Eskimo dog, husky", ...

    info = ImageNetInfo()
    labels = [info.index_to_description(i) for i in range(info.num_classes())]
    message = target_error("dog", labels)
    assert "153 Maltese dog, Maltese terrier, Maltese; " in message
    assert message.endswith("; … (4 more); give the index, or one of the names in full")
    assert len(re.findall(r"(?:: |; )\d+ ", message)) == 10  # ten classes, then the count


def test_a_word_of_one_label_is_suggested_not_taken():
    # `-t persian` could mean the cat; `-t dog` on a model without one must not explain the
    # only label that holds the word ("hot dog"): a partial match is never taken silently.
    message = target_error("persian")
    assert "the one class with the word 'persian' is 283 Persian cat" in message
    assert "give targets=283, or the name 'Persian cat'" in message
    assert target_error("dog", ["hot dog", "cat"]).startswith(
        "targets='dog' names no class exactly; the one class with the word 'dog' is 0 hot dog"
    )


def test_timm_labels_name_the_synonym_that_holds_the_word():
    labels = ["Madagascar cat, ring-tailed lemur, Lemur catta", "tabby, tabby cat"]
    assert "or the name 'ring-tailed lemur'" in target_error("lemur", labels)
    assert _label_index("tabby cat", labels) == 1  # a synonym is still an exact match


def test_exact_labels_and_synonyms_are_still_taken():
    assert _label_index("Persian cat", IMAGENET) == 283
    assert _label_index("persian CAT", IMAGENET) == 283
    assert _label_index("tabby", IMAGENET) == 281


def test_a_misspelling_no_label_holds_gets_spelling_suggestions():
    message = target_error("tabbby")
    assert message.startswith("targets='tabbby' is not a class of this model. Did you mean")
    assert "'tabby'" in message
    assert "Did you mean" not in target_error("zzzqx")


def test_the_command_line_lists_the_cat_classes(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    args = ["explain", str(tmp_path / "photo.png"), "-m", "timm:test_resnet", "--no-pretrained"]
    result = CliRunner().invoke(app, [*args, "-t", "cat", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    line = error_line(result)
    assert "--target cat names no class exactly; classes with the word 'cat': 281 tabby" in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
