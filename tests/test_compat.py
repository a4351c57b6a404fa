"""gradcam_cli.compat returns what pytorch-grad-cam returns, on the same model and input.

pytorch-grad-cam is a test-only dependency. Its maps are compared as returned (scaled, resized,
layers aggregated), correlation ≥ 0.9999, with the two documented differences of definition aligned
on its side (docs/methods.md, "Checked against the peers"): the sign of a principal component (an
SVD's sign is arbitrary; ours correlates with the channel sum) and Score-CAM's mask upsampling
(half-pixel centres). Ablation-CAM on a ViT is not compared: pytorch-grad-cam ablates the class
token too.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import timm
import torch
import torchvision
from pytorch_grad_cam import base_cam, eigen_cam, eigen_grad_cam
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)
from torch import nn

from gradcam_cli import compat
from gradcam_cli.errors import GradcamError, TargetError, UnknownLayerError, UsageError

METHODS = [
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "LayerCAM",
    "HiResCAM",
    "GradCAMElementWise",
    "EigenCAM",
    "EigenGradCAM",
    "ScoreCAM",
    "AblationCAM",
]
SLOW = {"ScoreCAM", "AblationCAM"}  # full forwards per channel in pytorch-grad-cam
MINIMUM = 0.9999

_MODELS: dict[str, nn.Module] = {}


def model(name: str) -> nn.Module:
    """Seeded random-init models in eval mode, built once (never downloaded)."""
    if name not in _MODELS:
        torch.manual_seed(0)
        if name == "vit":
            built = timm.create_model("test_vit", pretrained=False)  # 160², 10×10 patches
        else:
            built = torchvision.models.get_model(name, weights=None)
        _MODELS[name] = built.eval()
    return _MODELS[name]


def images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def predicted(net: nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return net(x).argmax(dim=1).tolist()


def vit_reshape(tensor: torch.Tensor, height: int = 10, width: int = 10) -> torch.Tensor:
    """pytorch-grad-cam's documented reshape_transform for a timm ViT (its grid: 10×10)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    assert np.std(b) > 0, "the reference map is constant: agreement would prove nothing"
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _oriented(project):
    """pytorch-grad-cam's get_2d_projection with our sign rule (methods.first_principal_component):
    the sign that correlates positively with the centred channel sum."""

    def projection(batch: np.ndarray) -> np.ndarray:
        out = project(batch)
        plain = np.nan_to_num(batch).sum(axis=1)
        plain = plain - plain.mean(axis=(1, 2), keepdims=True)
        sign = np.where((out * plain).sum(axis=(1, 2)) < 0, -1.0, 1.0)
        return np.float32(out * sign[:, None, None])

    return projection


@pytest.fixture
def aligned_peer(monkeypatch):
    """pytorch-grad-cam with our two choices of definition: PC1's sign, half-pixel masks."""
    for module in (base_cam, eigen_cam, eigen_grad_cam):
        monkeypatch.setattr(module, "get_2d_projection", _oriented(module.get_2d_projection))
    monkeypatch.setattr(
        torch.nn,
        "UpsamplingBilinear2d",
        lambda size: nn.Upsample(size=size, mode="bilinear", align_corners=False),
    )


def peer(name, net, layers, x, targets, *, reshape_transform=None, **call) -> np.ndarray:
    """pytorch-grad-cam's output, on a copy of the model (its constructor calls .eval())."""
    net = copy.deepcopy(net)
    modules = dict(net.named_modules())
    with getattr(pgc, name)(net, [modules[n] for n in layers], reshape_transform) as cam:
        return cam(x, targets, **call)


def ours(name, net, layers, x, targets, **call) -> np.ndarray:
    modules = dict(net.named_modules())
    with getattr(compat, name)(model=net, target_layers=[modules[n] for n in layers]) as cam:
        return cam(input_tensor=x, targets=targets, **call)


# -- the same output as pytorch-grad-cam ---------------------------------------------------------

CASES = [("resnet18", "layer4", m) for m in METHODS] + [
    ("vit", "blocks.1.norm1", m)
    for m in METHODS
    if m != "AblationCAM"  # test_vit: 2 blocks
]


@pytest.mark.parametrize(("name", "layer", "method"), CASES)
def test_output_equals_pytorch_grad_cam(name, layer, method, aligned_peer):
    net = model(name)
    x = images(160 if name == "vit" else 64 if method in SLOW else 112)
    first = predicted(net, x)[0]
    targets = [ClassifierOutputTarget(first), ClassifierOutputTarget((first + 7) % 1000)]
    reshape = vit_reshape if name == "vit" else None
    reference = peer(method, net, [layer], x, targets, reshape_transform=reshape)
    result = ours(method, net, [layer], x, targets)
    assert result.dtype == np.float32 and result.shape == reference.shape == (2, *x.shape[2:])
    assert result.min() >= 0 and result.max() <= 1
    for i in range(2):  # every image against its own target
        assert correlation(result[i], reference[i]) >= MINIMUM


def test_several_layers_are_scaled_each_then_averaged_as_pytorch_grad_cam_does():
    net, x = model("resnet18"), images(112)
    layers = ["layer3", "layer4"]
    reference = peer("GradCAM", net, layers, x, None)
    assert correlation(ours("GradCAM", net, layers, x, None), reference) >= MINIMUM


def test_aug_smooth_is_pytorch_grad_cams_flips_and_brightness():
    net, x = model("resnet18"), images(112)
    reference = peer("GradCAM", net, ["layer4"], x, None, aug_smooth=True)
    result = ours("GradCAM", net, ["layer4"], x, None, aug_smooth=True)
    assert correlation(result, reference) >= MINIMUM


@pytest.mark.parametrize("method", ["GradCAM", "LayerCAM"])
def test_eigen_smooth_equals_pytorch_grad_cam(method, aligned_peer):
    net, x = model("resnet18"), images(160)
    reference = peer(method, net, ["layer3"], x, None, eigen_smooth=True)
    result = ours(method, net, ["layer3"], x, None, eigen_smooth=True)
    for i in range(2):
        assert correlation(result[i], reference[i]) >= MINIMUM


def test_softmax_and_callable_targets_are_explained_exactly():
    """Softmax's gradient is not the logit's: ClassifierOutputSoftmaxTarget and any callable on
    the output row are differentiated as they are, not replaced by a class index."""
    net = model("resnet18")
    for method, size in (("GradCAM", 112), ("HiResCAM", 112), ("AblationCAM", 64)):
        x = images(size)
        classes = predicted(net, x)
        for targets in (
            [ClassifierOutputSoftmaxTarget(c) for c in classes],
            [lambda row, c=classes[0]: row[c] - row[5], lambda row: row.logsumexp(0)],
        ):
            reference = peer(method, net, ["layer4"], x, targets)
            result = ours(method, net, ["layer4"], x, targets)
            for i in range(2):
                assert correlation(result[i], reference[i]) >= MINIMUM
    x = images(112)
    classes = predicted(net, x)
    softmax_targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    logit = ours("HiResCAM", net, ["layer4"], x, classes)
    softmax = ours("HiResCAM", net, ["layer4"], x, softmax_targets)
    assert correlation(logit, softmax) < MINIMUM  # the difference is real


@pytest.mark.parametrize("method", ["GradCAM", "AblationCAM"])  # one column; one per image
def test_ints_equal_classifier_output_targets_and_none_is_the_predicted_class(method):
    net, x = model("resnet18"), images(112)
    classes = predicted(net, x)
    as_ints = ours(method, net, ["layer4"], x, [classes[0], np.int64(classes[1])])
    as_targets = ours(method, net, ["layer4"], x, [ClassifierOutputTarget(c) for c in classes])
    as_none = ours(method, net, ["layer4"], x, None)
    np.testing.assert_array_equal(as_ints, as_targets)
    np.testing.assert_allclose(as_none, as_targets, atol=1e-6)
    other = ours(method, net, ["layer4"], x, [(c + 1) % 1000 for c in classes])
    assert not np.allclose(other, as_targets)


def test_batch_size_bounds_the_rows_of_each_rerun_and_not_the_maps():
    net, x = model("resnet18"), images(64, batch=1)
    seen: list[int] = []
    handle = net.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    try:
        with compat.ScoreCAM(net, [net.layer2]) as cam:
            default = cam(x)
            seen.clear()
            cam.batch_size = 5
            small = cam(x)
    finally:
        handle.remove()
    assert max(seen[1:]) == 5 and sum(seen[1:]) == 128  # 128 masked images, 5 at most a pass
    np.testing.assert_allclose(small, default, atol=1e-5)


# -- the caller's model ----------------------------------------------------------------------------


def _state(net: nn.Module):
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in net.modules()
    )
    return (
        hooks,
        [m.training for m in net.modules()],
        [p.requires_grad for p in net.parameters()],
        [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        {k: v.clone() for k, v in net.state_dict().items()},
    )


def _assert_same_state(before, after):
    assert before[:3] == after[:3]
    for a, b in zip(before[3], after[3], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before[4].keys() == after[4].keys()
    assert all(torch.equal(before[4][k], after[4][k]) for k in before[4])


@pytest.mark.parametrize("method", ["GradCAM", "AblationCAM", "ScoreCAM"])
def test_the_model_is_left_as_found_after_a_call_and_after_an_exception(method):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)  # training mode, as the caller left it
    net.layer1.eval()
    net.fc.weight.requires_grad_(False)
    net.conv1.weight.grad = torch.ones_like(net.conv1.weight)
    x = images(64)
    before = _state(net)
    cam = getattr(compat, method)(net, [net.layer2])  # 128 channels: Score-CAM stays quick
    _assert_same_state(before, _state(net))  # the constructor does not call eval()
    cam(x, [1, 2])
    _assert_same_state(before, _state(net))
    with pytest.raises(TargetError, match="out of range"):
        cam(x, [1, 5000])
    _assert_same_state(before, _state(net))

    def failing(row):
        raise IndexError("the user's target failed")

    with pytest.raises(IndexError, match="user's target"), cam:
        cam(x, [failing, failing])  # pytorch-grad-cam's __exit__ swallows an IndexError
    _assert_same_state(before, _state(net))


# -- arguments ---------------------------------------------------------------------------------


def test_reshape_transform_warns_once_per_process(monkeypatch):
    monkeypatch.setattr(compat, "_warned", set())
    net, x = model("vit"), images(160)
    with pytest.warns(compat.CompatibilityWarning, match="reshape_transform is accepted"):
        cam = compat.GradCAM(net, [net.blocks[-1].norm1], reshape_transform=vit_reshape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = compat.GradCAM(net, [net.blocks[-1].norm1], reshape_transform=vit_reshape)
    np.testing.assert_array_equal(cam(x), again(x))


def test_target_layers_must_be_the_models_own_modules():
    net = model("resnet18")
    copied = copy.deepcopy(net)
    with pytest.raises(UnknownLayerError, match=r"target_layers\[1\].*not a module of this model"):
        compat.GradCAM(net, [net.layer4, copied.layer4])
    with pytest.raises(GradcamError, match="target_layers"):
        compat.GradCAM(net, [net])
    with pytest.raises(UsageError, match="target_layers must be a list"):
        compat.GradCAM(net, net.layer4)
    with pytest.raises(UsageError, match="target_layers is empty"):
        compat.GradCAM(net, [])
    # a dotted path is accepted too, e.g. to pick one call of a shared module ('relu@1')
    x = images(64)
    by_path = compat.GradCAM(net, ["layer4"])(x)
    np.testing.assert_array_equal(by_path, compat.GradCAM(net, [net.layer4])(x))


def test_bad_targets_and_inputs_say_what_is_accepted():
    net, x = model("resnet18"), images(64)
    cam = compat.GradCAM(net, [net.layer4])
    with pytest.raises(TargetError, match="targets has 1 entries for a batch of 2"):
        cam(x, [ClassifierOutputTarget(1)])
    with pytest.raises(TargetError, match=r"targets\[0\] is str.*ClassifierOutputTarget"):
        cam(x, ["cat", 1])
    with pytest.raises(TargetError, match="must return one number"):
        cam(x, [lambda row: row[:2], lambda row: row[0]])
    with pytest.raises(UsageError, match="input_tensor must be"):
        cam(x[0])
    with pytest.raises(UsageError, match="ratio_channels_to_ablate"):
        compat.AblationCAM(net, [net.layer4], ratio_channels_to_ablate=0.5)


def test_importing_compat_does_not_import_pytorch_grad_cam():
    code = "import sys, gradcam_cli.compat; assert 'pytorch_grad_cam' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
