"""The model sources (`gradcam_cli.sources`): the registry, names and their suggestions, your own
model file, checkpoints, and the options that change what a source gives. The command line's
view of the same messages is in tests/test_names.py and tests/test_user_code.py.
"""

from __future__ import annotations

import re
import textwrap

import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.demo.model import ShapesNet
from gradcam_cli.errors import GradcamError, UnknownModelError, UsageError, WeightsError
from gradcam_cli.preprocess import Preprocess
from gradcam_cli.sources import (
    check_input_size,
    check_num_classes,
    list_model_names,
    load_model,
    load_weights,
    no_model_matches,
    parse_model_spec,
    read_labels_file,
    registry,
    resolve_source,
)
from gradcam_cli.sources.registry import (
    Source,
    bare_sources,
    register_source,
    registered,
    source_named,
)
from gradcam_cli.sources.user import import_callable

# -- the registry --------------------------------------------------------------------------------


def test_the_libraries_are_listed_demo_first_and_bare_names_go_to_timm_then_torchvision():
    assert [source.prefix for source in registered()] == ["demo", "timm", "torchvision"]
    assert [source.prefix for source in bare_sources()] == ["timm", "torchvision"]
    assert source_named("custom") is None  # your own model is no registered library


def test_a_prefix_is_registered_once():
    class AnotherTimm(Source):
        prefix = "timm"
        order = 9

    with pytest.raises(ValueError, match="'timm' is registered already"):
        register_source(AnotherTimm)
    assert type(source_named("timm")).__name__ == "TimmSource"


@pytest.fixture
def toy_library(monkeypatch):
    """A library added the way every source is: one class, registered; gone after the test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_source
    class ToySource(Source):
        prefix = "toy"
        order = 3

        def names(self, pretrained=False):
            return ["net"]

        def build(self, name, *, pretrained, num_classes, input_size):
            classes = num_classes or 2
            return nn.Sequential(nn.Conv2d(3, classes, 3), nn.AdaptiveAvgPool2d(1)), "random"

        def preprocess(self, model, name):
            return Preprocess(input_size=(32, 32), resize_shorter=32)

        def labels(self, model, name):
            return ["left", "right"]

    return ToySource


def test_a_registered_library_is_listed_resolved_and_loaded(toy_library):
    assert list_model_names("toy")[-1:] == ["toy:net"]  # after the libraries before it
    assert parse_model_spec("toy:net") == ("toy", "net")
    loaded = load_model("toy:net")
    assert (loaded.source, loaded.name, loaded.weights) == ("toy", "net", "random")
    assert loaded.labels == ["left", "right"] and loaded.preprocess.input_size == (32, 32)
    assert not loaded.model.training
    assert load_model("toy:net", num_classes=3).labels is None  # its labels are for 2 classes
    with pytest.raises(UnknownModelError, match="toy has no model of that name. Did you mean"):
        resolve_source("toy", "nett")


def test_random_builds_are_seeded_and_leave_the_callers_generator_alone(toy_library):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, second = load_model("toy:net"), load_model("toy:net")
    assert torch.equal(torch.rand(1), expected_next)
    assert torch.equal(first.model[0].weight, second.model[0].weight)


# -- names: what `gradcam models` lists and what an unknown name suggests ------------------------


def test_the_library_function_matches_as_the_command_does():
    assert list_model_names("*demo*") == ["demo:shapes"]
    assert "timm:vit_base_patch16_224" in list_model_names("vit")
    assert list_model_names("*") == list_model_names("")  # every name


def test_no_match_with_pretrained_says_when_untrained_models_match():
    assert list_model_names("darknet2*", pretrained=True) == []  # timm has none trained
    message = str(no_model_matches("darknet2*", pretrained=True))
    assert "1 model name without pretrained weights matches: drop --pretrained" in message


def unknown_model(spec: str) -> str:
    with pytest.raises(UnknownModelError) as caught:
        resolve_source(*parse_model_spec(spec))
    return str(caught.value)


def test_an_unknown_bare_word_lists_the_models_that_contain_it():
    message = unknown_model("vit")
    assert message.startswith("unknown model 'vit': timm or torchvision has no model")
    found = re.search(
        r"Models containing 'vit': (.*?) \((\d+) more: `gradcam models vit`\)", message
    )
    assert found, message
    shown = found.group(1).split(", ")
    assert len(shown) == 5 and all(name in list_model_names("vit") for name in shown)
    assert {name.split(":")[0] for name in shown} == {"timm", "torchvision"}
    assert int(found.group(2)) == len(list_model_names("vit")) - 5


def test_an_unknown_name_gets_spelling_and_containing_names_without_repeats():
    message = unknown_model("resnet5")
    spelled = message.split("Did you mean")[1].split("?")[0]
    assert "'resnet50'" in spelled
    containing = message.split("Models containing 'resnet5': ")[1].split(" (")[0].split(", ")
    assert containing and all("resnet5" in name for name in containing)
    assert not [name for name in containing if f"'{name.split(':')[1]}'" in spelled]


def test_an_unknown_name_with_a_prefix_lists_that_library_only():
    message = unknown_model("timm:vit")
    assert "`gradcam models 'timm:*vit*'`" in message
    containing = message.split("Models containing 'vit': ")[1].split(" (")[0].split(", ")
    assert all(name.startswith("timm:") and "vit" in name for name in containing)


def test_a_demo_name_without_its_prefix_points_to_it():
    assert "Models containing 'shapes': demo:shapes." in unknown_model("shapes")


def test_an_unknown_torchvision_name_timm_has_points_to_timm_not_to_itself():
    with pytest.raises(GradcamError) as caught:
        resolve_source("torchvision", "resnet51q")
    message = str(caught.value)
    assert "Did you mean 'resnet51q'" not in message and "'resnet51q'?" not in message
    assert "timm has a model of that name: use timm:resnet51q" in message


def test_suggestions_come_from_the_asked_library_only():
    torchvision = source_named("torchvision")
    assert torchvision is not None
    with pytest.raises(GradcamError) as caught:
        resolve_source("torchvision", "resnet5")
    suggested = str(caught.value).split("Did you mean")[1].split("?")[0]
    names = [part.strip(" '") for part in suggested.replace("one of", "").split(",")]
    assert names and all(torchvision.has(name) for name in names), names

    with pytest.raises(GradcamError) as caught:
        resolve_source("timm", "vit_b_16")
    assert "torchvision has a model of that name: use torchvision:vit_b_16" in str(caught.value)


# -- your own model: path/to/file.py:Nope ------------------------------------------------------
MODEL_FILE = textwrap.dedent(
    """
    import os
    from dataclasses import dataclass

    from torch import nn
    from torchvision.models import resnet18


    @dataclass
    class Settings:
        width: int = 8


    class Net(nn.Module):
        def forward(self, x):
            return x


    def build_model():
        return Net()


    def _helper():
        return None


    WIDTH = 8
    """
)


def unknown_factory(spec: str) -> str:
    with pytest.raises(UnknownModelError) as caught:
        import_callable(spec)
    return str(caught.value)


def test_an_unknown_callable_lists_what_the_file_defines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "names_models.py").write_text(MODEL_FILE)
    message = unknown_factory("names_models.py:Nope")
    # Its own classes and functions, in file order; not its imports, constants, private names
    # or classes that are no nn.Module.
    assert message == "'names_models.py' has no 'Nope'. It defines: Net, build_model."


def test_an_unknown_callable_close_to_a_defined_one_gets_a_did_you_mean_first(tmp_path):
    (tmp_path / "names_models2.py").write_text(MODEL_FILE)
    message = unknown_factory(f"{tmp_path}/names_models2.py:build")
    assert message.endswith(
        "has no 'build'. Did you mean 'build_model'? It defines: Net, build_model."
    )


def test_a_module_path_lists_its_callables_too(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "names_package_models.py").write_text(MODEL_FILE)
    message = unknown_factory("names_package_models:Nett")
    assert "Did you mean 'Net'?" in message and "It defines: Net, build_model." in message


def test_a_file_that_defines_no_model_says_so(tmp_path):
    (tmp_path / "no_models.py").write_text("import os\nWIDTH = 8\n")
    message = unknown_factory(f"{tmp_path}/no_models.py:Net")
    assert message.endswith("It defines no model: no nn.Module subclass, no function.")


def test_the_command_line_lists_the_callables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "names_models3.py").write_text(MODEL_FILE)
    Image.new("RGB", (32, 32)).save("photo.png")
    result = CliRunner().invoke(
        app, ["explain", "photo.png", "-m", "names_models3.py:Nope", "--out", "out"]
    )
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("gradcam: error: ")
    assert line.endswith("has no 'Nope'. It defines: Net, build_model.")


# -- checkpoints ------------------------------------------------------------------------------


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


def test_safetensors_under_another_suffix_loads(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    state = ShapesNet().state_dict()
    weights = tmp_path / "shapes.bin"
    save_file(state, str(weights))
    loaded = load_model("demo:shapes", weights=weights)
    assert torch.equal(loaded.model.state_dict()["fc.weight"], state["fc.weight"])


# -- options ------------------------------------------------------------------------------------


def test_labels_with_a_bom_crlf_and_trailing_blank_lines_are_read(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("\ufeffcircle\r\nsquare\r\ntriangle\r\nstar\r\n\r\n\n".encode())
    assert read_labels_file(labels) == ["circle", "square", "triangle", "star"]


def test_input_size_and_num_classes_ranges():
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
