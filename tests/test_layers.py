"""Layers: dotted paths resolved once to their modules, the probe, the automatic choice."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from gradcam_cli.errors import UnknownLayerError, UsageError
from gradcam_cli.layers import LayerRef, module_paths, parse_layers, probe_layers, resolve_layer


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.mark.parametrize(
    ("path", "name", "call"),
    [
        ("layer4", "layer4", None),
        ("layer4.1", "layer4.1", None),
        ("layer4[1]", "layer4.1", None),  # indexing as in Python
        ("layer4.-1", "layer4.1", None),  # from the end
        ("-3", "layer4", None),  # the children of the model: ..., layer4, avgpool, fc
        (" layer1.0.relu@2 ", "layer1.0.relu", 2),  # one call of a module that runs twice
    ],
)
def test_a_path_resolves_to_its_canonical_name_and_module(path, name, call):
    model = small_resnet()
    ref = resolve_layer(model, path)
    assert (ref.name, ref.call) == (name, call)
    assert ref.module is model.get_submodule(name)
    # The path from the model down: what the hook and the layout read, found in this one walk.
    assert ref.path[0] is model and len(ref.path) == 1 + len(name.split("."))
    assert str(ref) == (name if call is None else f"{name}@{call}")


def test_the_module_a_ref_carries_is_the_one_hooked_even_when_names_repeat():
    """Two paths to one shared module give one module; refs compare by name and call."""
    shared = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), shared, nn.Sequential(shared))
    assert resolve_layer(model, "2.0").module is resolve_layer(model, "1").module is shared
    assert resolve_layer(model, "1") == LayerRef("1")


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("layer5", UnknownLayerError, r"no child 'layer5'.*Did you mean one of 'layer4'"),
        ("layer4.7", UnknownLayerError, r"layer4 has no child '7' \(its children: 0, 1\)"),
        ("fc.weight", UnknownLayerError, "fc has no sub-modules"),
        ("", UnknownLayerError, "names no layer"),
        ("layer1.0.relu@x", UsageError, "the call index after '@' must be a number"),
    ],
)
def test_an_unknown_path_says_where_the_walk_stopped(path, error, message):
    with pytest.raises(error, match=message):
        resolve_layer(small_resnet(), path)


def test_layer_lists_are_split_on_commas_in_order_without_repeats():
    assert parse_layers("layer4, layer3,layer4") == ["layer4", "layer3"]
    assert parse_layers(["layer4,layer2", "layer3"]) == ["layer4", "layer2", "layer3"]
    assert parse_layers(None) == []
    with pytest.raises(UsageError, match="layers= is empty"):
        parse_layers(" , ")


def test_module_objects_are_found_by_identity():
    model = small_resnet()
    paths = module_paths(model)
    assert paths[id(model.layer4[1])] == "layer4.1" and paths[id(model)] == ""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", "layer4"),
        ("densenet121", "features"),
        ("vgg11", "features"),  # not the adaptive avgpool that only resamples it
        ("mobilenet_v2", "features"),
    ],
)
def test_automatic_layer_is_the_last_spatial_layer_the_logits_depend_on(name, expected):
    torch.manual_seed(0)
    probe = probe_layers(torchvision.models.get_model(name, weights=None).eval(), (128, 128))
    assert probe.default_layer() == expected
