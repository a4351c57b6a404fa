"""The split is exact, batch-invariant, generalises CAM, and leaves the model as it was."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    assert_same_state,
    max_relative_error,
    model_state,
    random_model,
    reference_gradcam,
)
from torch import nn

from gradcam_cli.engine import explain_batch
from gradcam_cli.errors import LayerError, TargetError
from gradcam_cli.layers import resolve_layer

CASES = [
    ("torchvision", "resnet18", "layer4"),
    ("torchvision", "resnet18", "layer3"),
    ("torchvision", "densenet121", "features"),  # F.relu(features, inplace=True) follows
    ("timm", "resnet50", "layer4"),
]


@pytest.mark.parametrize(("source", "name", "layer"), CASES)
def test_split_equals_full_backward(source, name, layer):
    model = random_model(f"{source}:{name}")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        classes = model(x).argmax(dim=1).tolist()
    ref = reference_gradcam(model, x, layer, classes)
    result = explain_batch(model, x, [resolve_layer(model, layer)])
    assert result.targets[:, 0].tolist() == classes
    assert ref.max() > 0, "reference map is all zero: the comparison would prove nothing"
    assert max_relative_error(result.maps[layer][:, 0], ref) <= 1e-4


def test_several_layers_in_one_pass_match_their_references():
    model = random_model("resnet18")
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    refs = [resolve_layer(model, name) for name in ("layer4", "layer2", "layer3.1")]
    result = explain_batch(model, x, refs, classes=[7])
    for ref in refs:
        expected = reference_gradcam(model, x, ref.name, [7])
        assert max_relative_error(result.maps[ref.name][:, 0], expected) <= 1e-4, ref.name


def test_topk_maps_match_one_reference_per_class():
    model = random_model("resnet18")
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    result = explain_batch(model, x, [resolve_layer(model, "layer3")], topk=3)
    with torch.no_grad():
        top3 = model(x).topk(3).indices[0].tolist()
    assert result.targets[0].tolist() == top3
    for rank, cls in enumerate(top3):
        expected = reference_gradcam(model, x, "layer3", [cls])
        assert max_relative_error(result.maps["layer3"][:, rank], expected) <= 1e-4


def test_gradcam_equals_cam_over_z_for_gap_linear_head(gap_linear_model):
    model = gap_linear_model
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    layer = resolve_layer(model, "3")  # the ReLU feeding the global average pool
    result = explain_batch(model, x, [layer], topk=2)
    features = model[:4](x)  # A: [B, 16, 16, 16]
    z = features.shape[2] * features.shape[3]
    fc_weight = model[6].weight
    for rank in range(2):
        classes = result.targets[:, rank]
        cam = torch.einsum("bk,bkhw->bhw", fc_weight[classes], features)
        expected = cam.clamp(min=0) / z
        torch.testing.assert_close(result.maps["3"][:, rank], expected, rtol=1e-5, atol=1e-7)
        assert expected.max() > 0


def test_batch_of_four_equals_four_single_calls():
    model = random_model("resnet18")
    x = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    layer = [resolve_layer(model, "layer4")]
    batched = explain_batch(model, x, layer, topk=2)
    for i in range(4):
        single = explain_batch(model, x[i : i + 1], layer, topk=2)
        assert torch.equal(single.targets[0], batched.targets[i])
        torch.testing.assert_close(
            single.maps["layer4"][0], batched.maps["layer4"][i], rtol=1e-4, atol=1e-6
        )


@pytest.fixture
def messy_model():
    """A model in a mixed state: train mode, a frozen part, a parameter with a .grad."""
    model = random_model("resnet18")
    model.train()
    model.layer1.eval()
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.25)
    return model


def test_model_is_restored_after_a_call(messy_model):
    before = model_state(messy_model)
    explain_batch(messy_model, torch.randn(2, 3, 64, 64), [resolve_layer(messy_model, "layer4")])
    assert_same_state(before, model_state(messy_model))


@pytest.mark.parametrize(
    ("layer", "kwargs", "error"),
    [
        ("fc", {}, LayerError),  # not a spatial map: raised inside the forward hook
        ("layer1.0.relu", {}, LayerError),  # runs twice per forward: raised after the forward
        ("layer4", {"classes": [5000]}, TargetError),  # raised after the forward, before grads
    ],
)
def test_model_is_restored_after_a_call_that_raised(messy_model, layer, kwargs, error):
    before = model_state(messy_model)
    with pytest.raises(error):
        explain_batch(
            messy_model, torch.randn(1, 3, 64, 64), [resolve_layer(messy_model, layer)], **kwargs
        )
    assert_same_state(before, model_state(messy_model))


def test_backbone_records_no_graph_and_no_parameter_grads():
    """Only the head is recorded: the leaf at the layer has no grad_fn history upstream."""
    model = random_model("resnet18")
    seen = {}

    def spy(_module, _args, output):
        seen["layer3_requires_grad"] = output.requires_grad

    handle = model.layer3.register_forward_hook(spy)
    try:
        explain_batch(model, torch.randn(1, 3, 64, 64), [resolve_layer(model, "layer4")])
    finally:
        handle.remove()
    assert seen["layer3_requires_grad"] is False
    assert all(p.grad is None for p in model.parameters())


def test_single_logit_model_explains_positive_and_negative_class():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 16))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    result = explain_batch(model, x, [resolve_layer(model, "1")], classes=[0, 1])
    logit = model(x).flatten(1)
    torch.testing.assert_close(result.scores, torch.cat([-logit, logit], 1).detach())
    torch.testing.assert_close(result.probabilities[:, 1], torch.sigmoid(logit[:, 0]).detach())
    # d(-z)/dA = -dz/dA: the negative class's weights are the positive's negated.
    features = model[:2](x)
    alpha = model[2].weight[0].mean(dim=(1, 2))  # dz/dA_kij = W_kij; Grad-CAM averages it
    positive = torch.einsum("k,bkhw->bhw", alpha, features)
    torch.testing.assert_close(result.maps["1"][:, 1], positive.clamp(min=0).detach())
    torch.testing.assert_close(result.maps["1"][:, 0], (-positive).clamp(min=0).detach())


def test_model_ending_in_sigmoid_reports_its_output_as_the_probability():
    """Article 004's X-ray classifier: conv head → Dropout → Sigmoid, output [B, 1, 1, 1]."""
    from gradcam_cli.layers import probe_layers

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 1, 16), nn.Dropout(0.2), nn.Sigmoid()),
    )
    probe = probe_layers(model, (16, 16))
    assert probe.outputs_probabilities and probe.num_outputs == 1
    assert not probe_layers(model[:2].append(nn.Conv2d(4, 1, 16)), (16, 16)).outputs_probabilities

    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    result = explain_batch(
        model, x, [resolve_layer(model, "1")], classes=[1, 0], outputs_probabilities=True
    )
    p = model.eval()(x).flatten(1).detach()
    torch.testing.assert_close(result.probabilities, torch.cat([1 - p, p], 1))
    # Grad-CAM of p: dp/dA = p(1-p) dz/dA, so the map is the logit's map times p(1-p).
    features = model[:2](x)
    alpha = model[2][0].weight[0].mean(dim=(1, 2))
    z_map = torch.einsum("k,bkhw->bhw", alpha, features)
    scale = (p * (1 - p)).view(-1, 1, 1)
    torch.testing.assert_close(result.maps["1"][:, 0], (scale * z_map).clamp(min=0).detach())
    torch.testing.assert_close(result.maps["1"][:, 1], (-scale * z_map).clamp(min=0).detach())


def test_the_layer_is_resolved_once_so_aug_smooth_views_search_no_module(monkeypatch):
    """The hooks go on the modules resolve_layer found (LayerRef.path): the six aug_smooth
    views, and a method that re-runs the head, walk the model no more than one plain view."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    walks = []
    named_modules = nn.Module.named_modules

    def counted(self, *args, **kwargs):
        if self is model:  # a walk from the top: not a parent's recursion into a child
            walks.append(1)
        return named_modules(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "named_modules", counted)
    layer = [resolve_layer(model, "3")]
    x = torch.randn(1, 3, 16, 16)
    for method in ("gradcam", "ablationcam"):
        walks.clear()
        one = explain_batch(model, x, layer, method=method)
        one_view = len(walks)
        walks.clear()
        smoothed = explain_batch(model, x, layer, method=method, aug_smooth=True)
        assert len(walks) == one_view, method  # frozen_eval's own walks only
        assert smoothed.maps["3"].shape == one.maps["3"].shape
