"""Our raw maps agree with the peers' on the same weights and input.

pytorch-grad-cam (PyPI `grad-cam`), Captum and torchcam are test-only dependencies (the `dev`
extra). Their maps are taken before their resizing and normalisation: pytorch-grad-cam's
`get_cam_image` output (ReLU applied as its `compute_cam_per_layer` does), Captum's layer
attribution with `relu_attributions=True`, torchcam's extractor with `normalized=False`.

Agreement means correlation ≥ 0.999 and the same argmax, on a reference map that is not
constant. Where a peer's definition differs from ours on purpose, the test names the difference,
shows that it is the only one (the peer agrees once it is removed), and tests/test_methods.py
checks our definition against the paper's formula.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import timm
import torch
import torchvision
from captum.attr import GuidedBackprop, GuidedGradCam, LayerGradCam
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from gradcam_cli.engine import explain_batch
from gradcam_cli.layers import resolve_layer

PGC_METHODS = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
    "gradcam-elementwise": pgc.GradCAMElementWise,
    "eigencam": pgc.EigenCAM,
    "eigengradcam": pgc.EigenGradCAM,
    "seg-eigencam": pgc.SegEigenCAM,  # its sign rule is ours for it: no orientation needed
    "fem": pgc.FEM,
    "kpcacam": pgc.KPCA_CAM,  # its sign (scikit-learn's svd_flip) is ours for it
}
SIZE = 160


# -- models and inputs, built once ----------------------------------------------------------------

_MODELS: dict[str, nn.Module] = {}


def model(name: str) -> nn.Module:
    """Seeded random-init models, built once per session (never downloaded)."""
    if name not in _MODELS:
        torch.manual_seed(0)
        if name.startswith("timm:"):
            built = timm.create_model(name[5:], pretrained=False)
        else:
            built = torchvision.models.get_model(name, weights=None)
        _MODELS[name] = built.eval()
    return _MODELS[name]


def image(size: int = SIZE) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))


def predicted(net: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(net(x).argmax())


def ours(net: nn.Module, x: torch.Tensor, layer: str, target: int, method: str, **kw):
    result = explain_batch(
        net, x, [resolve_layer(net, layer)], classes=[target], method=method, **kw
    )
    return result


def our_map(net, x, layer, target, method, **kw) -> np.ndarray:
    return ours(net, x, layer, target, method, **kw).maps[layer][0, 0].numpy()


# -- the peers' raw maps ----------------------------------------------------------------------


def pgc_raw(cam_class, net, layer, x, target, *, eigen_smooth=False, **kwargs) -> np.ndarray:
    """pytorch-grad-cam's map before its ReLU, resize and min-max scaling."""
    net = copy.deepcopy(net)  # it calls .eval() and may swap modules
    cam = cam_class(net, [dict(net.named_modules())[layer]], **kwargs)
    seen: list[np.ndarray] = []
    original = cam.get_cam_image

    def keep(*args, **kw):
        seen.append(np.array(original(*args, **kw)))
        return seen[-1]

    cam.get_cam_image = keep
    cam(x, [ClassifierOutputTarget(target)], eigen_smooth=eigen_smooth)
    cam.activations_and_grads.release()
    return seen[0][0]


def textbook(net: nn.Module, x: torch.Tensor, layer: str, target: int):
    """A and ∂y/∂A from hooks and a full backward through the whole model (copied)."""
    net = copy.deepcopy(net).eval()
    store = {}

    def hook(_module, _args, output):
        store["A"] = output.detach().clone()
        output.register_hook(lambda grad: store.__setitem__("g", grad.detach().clone()))

    handle = dict(net.named_modules())[layer].register_forward_hook(hook)
    net(x)[0, target].backward()
    handle.remove()
    return store["A"][0], store["g"][0]


def assert_agree(ours_map: np.ndarray, reference: np.ndarray, minimum: float = 0.999) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    assert reference.std() > 0, "the reference map is constant: agreement would prove nothing"
    correlation = float(np.corrcoef(np.ravel(ours_map), np.ravel(reference))[0, 1])
    assert correlation >= minimum, f"correlation {correlation:.6f}"
    assert np.argmax(ours_map) == np.argmax(reference)
    return correlation


def oriented(projection: np.ndarray, contributions: torch.Tensor) -> np.ndarray:
    """Our sign rule for principal components (methods.first_principal_component): the sign
    that correlates positively with the centred channel sum of the same contributions."""
    plain = contributions.sum(dim=0).double().numpy()
    plain = plain - plain.mean()
    return projection if float((projection * plain).sum()) >= 0 else -projection


# -- pytorch-grad-cam: the gradient family and the eigen methods -------------------------------

CASES = [
    ("resnet18", "layer4"),
    ("resnet18", "layer3"),  # gradients vary over positions here: the methods differ
    ("densenet121", "features.denseblock4"),
    ("timm:convnext_atto", "stages.2"),
    ("timm:convnext_atto", "stages.3"),
]


@pytest.mark.parametrize(("name", "layer"), CASES)
@pytest.mark.parametrize("method", list(PGC_METHODS))
def test_gradient_and_eigen_methods_agree_with_pytorch_grad_cam(name, layer, method):
    net, x = model(name), image()
    target = predicted(net, x)
    reference = pgc_raw(PGC_METHODS[method], net, layer, x, target)
    if method in ("eigencam", "eigengradcam"):
        # An SVD's sign is arbitrary (theirs is whatever LAPACK returns); ours is fixed.
        a, g = textbook(net, x, layer, target)
        reference = oriented(reference, a if method == "eigencam" else g * a)
    if method == "fem" and name == "densenet121":
        # DenseNet's block output is not ReLU'd: FEM's weighted sum is negative everywhere here,
        # for both, so both maps are 0 after the ReLU (no agreement to measure beyond that)
        assert reference.max() < 0 and not our_map(net, x, layer, target, method).any()
        return
    assert_agree(our_map(net, x, layer, target, method), np.maximum(reference, 0))


@pytest.mark.parametrize(
    ("kernel", "gamma"),
    [("rbf", None), ("rbf", 0.05), ("poly", None), ("linear", None), ("cosine", None)],
)
def test_kpca_cam_agrees_with_pytorch_grad_cam_for_every_kernel(kernel, gamma):
    from gradcam_cli.methods import get_method

    net, x, layer = model("resnet18"), image(), "layer3"
    target = predicted(net, x)
    reference = pgc_raw(pgc.KPCA_CAM, net, layer, x, target, kernel=kernel, gamma=gamma)
    method = get_method("kpcacam", kernel=kernel, kernel_gamma=gamma)
    assert_agree(our_map(net, x, layer, target, method), np.maximum(reference, 0))


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_eigen_smooth_agrees_with_pytorch_grad_cam(method):
    net, x, layer = model("resnet18"), image(), "layer3"
    target = predicted(net, x)
    reference = pgc_raw(PGC_METHODS[method], net, layer, x, target, eigen_smooth=True)
    a, g = textbook(net, x, layer, target)
    weighted = g.mean(dim=(1, 2), keepdim=True) * a if method == "gradcam" else g.clamp(min=0) * a
    reference = np.maximum(oriented(reference, weighted), 0)
    assert_agree(our_map(net, x, layer, target, method, eigen_smooth=True), reference)


def test_at_densenet_features_pytorch_grad_cam_reads_a_after_the_in_place_relu():
    """torchvision DenseNet ends in `F.relu(features, inplace=True)` after `features`.
    pytorch-grad-cam keeps `output.cpu().detach()`, which on the CPU shares memory with the
    output, so its A is the ReLU'd one. Ours is the output as the layer returned it (Captum's
    LayerGradCam agrees with ours there, below; test_engine checks it against a full backward).
    With the ReLU applied to our A, the maps agree."""
    net, x, layer = model("densenet121"), image(), "features"
    target = predicted(net, x)
    reference = np.maximum(pgc_raw(pgc.GradCAM, net, layer, x, target), 0)
    a, g = textbook(net, x, layer, target)
    ours_on_relu_a = (g.mean(dim=(1, 2), keepdim=True) * a.clamp(min=0)).sum(0).clamp(min=0)
    assert_agree(ours_on_relu_a.numpy(), reference)
    correlation = np.corrcoef(our_map(net, x, layer, target, "gradcam").ravel(), reference.ravel())
    assert correlation[0, 1] < 0.999  # the difference is real, and it is that ReLU


# -- Ablation-CAM --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("resnet18", "layer4"),
        ("densenet121", "features.denseblock4.denselayer16.relu2"),  # 128 channels, ReLU'd
    ],
)
def test_ablationcam_agrees_with_pytorch_grad_cam(name, layer):
    net, x = model(name), image()
    target = predicted(net, x)
    reference = np.maximum(pgc_raw(pgc.AblationCAM, net, layer, x, target), 0)
    assert_agree(our_map(net, x, layer, target, "ablationcam"), reference)


class _ZeroAblation(AblationLayer):
    """pytorch-grad-cam's ablation layer, ablating to zero always (the paper's ablation)."""

    def __call__(self, x):
        output = self.activations
        for i in range(output.size(0)):
            output[i, self.indices[i], :] = 0
        return output


def test_ablationcam_on_convnext_differs_from_pytorch_grad_cam_only_by_its_ablation_value():
    """Where a layer's activations can be negative (ConvNeXt has no ReLU), pytorch-grad-cam
    ablates a channel to min(A) - 1e7 ("deviating from the paper", its source says); we zero it,
    as the paper does. With its ablation layer set to zero, the maps agree."""
    net, x, layer = model("timm:convnext_atto"), image(), "stages.3"
    target = predicted(net, x)
    reference = pgc_raw(pgc.AblationCAM, net, layer, x, target, ablation_layer=_ZeroAblation())
    assert_agree(our_map(net, x, layer, target, "ablationcam"), np.maximum(reference, 0))


# -- Score-CAM -----------------------------------------------------------------------------------

# ConvNeXt at `stages.2`: at `stages.3` (a 4×4 map) most masks leave the random-init model a
# near-blank image, where its scores hinge on float rounding (a 2e-7 change in a mask moves a
# score by 0.1), and the two peers disagree with each other there (correlation 0.997).
SCORE_CASES = [
    ("resnet18", "layer4"),
    ("densenet121", "features.denseblock4.denselayer16.relu2"),
    ("timm:convnext_atto", "stages.2"),
]


def _half_pixel_upsampling(size):
    return nn.Upsample(size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize(("name", "layer"), SCORE_CASES)
def test_scorecam_agrees_with_pytorch_grad_cam_given_half_pixel_upsampling(
    name, layer, monkeypatch
):
    """pytorch-grad-cam upsamples the masks with `UpsamplingBilinear2d` (align_corners=True);
    we, torchcam, and this project's rendering use half-pixel centres (align_corners=False).
    With that one choice aligned, the maps agree."""
    net, x = model(name), image()
    target = predicted(net, x)
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", _half_pixel_upsampling)
    reference = np.maximum(pgc_raw(pgc.ScoreCAM, net, layer, x, target), 0)
    monkeypatch.undo()
    assert_agree(our_map(net, x, layer, target, "scorecam"), reference)


@pytest.mark.parametrize(("name", "layer"), [SCORE_CASES[0], SCORE_CASES[2]])
def test_scorecam_agrees_with_torchcam(name, layer):
    from torchcam.methods import ScoreCAM

    net, x = model(name), image(128)
    target = predicted(net, x)
    peer_net = copy.deepcopy(net)
    with ScoreCAM(peer_net, layer, input_shape=tuple(x.shape[1:])) as extractor:
        reference = extractor(target, peer_net(x), normalized=False)[0][0].numpy()
    assert_agree(our_map(net, x, layer, target, "scorecam"), reference)


# -- CAM -----------------------------------------------------------------------------------------


def test_cam_equals_torchcam_cam_on_resnet18():
    from torchcam.methods import CAM

    net, x = model("resnet18"), image()
    target = predicted(net, x)
    peer_net = copy.deepcopy(net)
    with CAM(peer_net, "layer4", "fc", input_shape=tuple(x.shape[1:])) as extractor:
        reference = extractor(target, peer_net(x), normalized=False)[0][0].numpy()
    ours_map = our_map(net, x, "layer4", target, "cam")
    assert_agree(ours_map, reference)
    np.testing.assert_allclose(ours_map, reference, rtol=1e-4, atol=1e-4 * reference.max())


# -- Captum --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("resnet18", "layer4"),
        ("densenet121", "features"),
        ("timm:convnext_atto", "stages.3"),
    ],
)
def test_gradcam_agrees_with_captum_layer_gradcam(name, layer):
    net, x = model(name), image()
    target = predicted(net, x)
    peer_net = copy.deepcopy(net)
    peer = LayerGradCam(peer_net, dict(peer_net.named_modules())[layer])
    reference = peer.attribute(x, target=target, relu_attributions=True)[0, 0].detach().numpy()
    ours_map = our_map(net, x, layer, target, "gradcam")
    assert_agree(ours_map, reference)
    np.testing.assert_allclose(ours_map, reference, rtol=1e-4, atol=1e-5 * reference.max())


@pytest.mark.parametrize(
    ("name", "size"), [("resnet18", SIZE), ("vgg16", 128), ("timm:convnext_atto", SIZE)]
)
def test_guided_backprop_agrees_with_captum(name, size):
    """Models whose ReLUs are all nn.ReLU modules (ConvNeXt has none: plain gradient). On models
    with functional ReLUs (DenseNet) Captum leaves those unguided and we do not: see
    test_methods.py::test_guided_backprop_on_densenet_guides_its_functional_relu_too."""
    net, x = model(name), image(size)
    target = predicted(net, x)
    layer = "layer4" if name == "resnet18" else "features.29" if name == "vgg16" else "stages.3"
    reference = GuidedBackprop(copy.deepcopy(net)).attribute(x.clone(), target=target)[0]
    guided = ours(net, x, layer, target, "guided-backprop").guided[layer][0, 0]
    assert_agree(guided.numpy(), reference.detach().numpy())
    torch.testing.assert_close(guided, reference.detach(), rtol=1e-4, atol=1e-6)


def test_guided_gradcam_on_vgg16_block5_conv3_is_input_sized_and_agrees_with_captum():
    """Article 002's Keras `block5_conv3` is torchvision vgg16's `features.29` (its ReLU)."""
    net, x, layer = model("vgg16"), image(224), "features.29"
    target = predicted(net, x)
    result = ours(net, x, layer, target, "guided-gradcam")
    guided = result.guided[layer]
    assert tuple(guided.shape) == (1, 1, 3, 224, 224)  # input resolution, RGB
    peer_net = copy.deepcopy(net)
    peer = GuidedGradCam(peer_net, dict(peer_net.named_modules())[layer])
    reference = peer.attribute(x.clone(), target=target, interpolate_mode="bilinear")[0].detach()
    assert_agree(guided[0, 0].numpy(), reference.numpy())
    torch.testing.assert_close(guided[0, 0], reference, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("name", "layer"), [("resnet18", "layer4"), ("vgg16", "features.29")])
def test_guided_backprop_agrees_with_pytorch_grad_cam(name, layer):
    net, x = model(name), image(128)
    target = predicted(net, x)
    reference = GuidedBackpropReLUModel(copy.deepcopy(net), device="cpu")(x.clone(), target)
    guided = ours(net, x, layer, target, "guided-backprop").guided[layer][0, 0]
    assert_agree(guided.permute(1, 2, 0).numpy(), reference)


def test_random_cam_agrees_with_pytorch_grad_cam_given_the_same_weights(monkeypatch):
    """pytorch-grad-cam draws its weights from NumPy's global generator; given ours (the same
    noise), its map is ours."""
    from pytorch_grad_cam import random_cam

    from gradcam_cli.methods import get_method, seeded_uniform

    net, x, layer = model("resnet18"), image(), "layer3"
    target = predicted(net, x)
    channels = 256  # resnet18's layer3
    weights = seeded_uniform((1, channels), 0, low=-1.0, high=1.0).double().numpy()
    monkeypatch.setattr(random_cam.np.random, "uniform", lambda *a, **k: weights)
    reference = pgc_raw(pgc.RandomCAM, net, layer, x, target)
    ours_map = our_map(net, x, layer, target, get_method("randomcam"))  # seed 0
    assert_agree(ours_map, np.maximum(reference, 0))


# -- torchcam: LeGrad -------------------------------------------------------------------------


def test_legrad_agrees_with_torchcam_on_a_small_torchvision_vit():
    """torchcam's LeGrad reads `self_attention: nn.MultiheadAttention` blocks and, by default,
    scores them through torchvision's `encoder.ln` and `heads`: it runs on torchvision ViTs
    only, not on timm's (whose attention is timm's own module). So: a small torchvision
    VisionTransformer, random weights (its zero-initialised head drawn at random, else every
    gradient is 0), every block a target as ours uses every block up to the layer's."""
    from torchcam.methods import LeGrad

    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(
        image_size=64, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    ).eval()  # fmt: skip
    nn.init.normal_(net.heads.head.weight, std=0.2)
    x = image(64)
    target = predicted(net, x)
    peer_net = copy.deepcopy(net)
    with LeGrad(peer_net, list(peer_net.encoder.layers)) as extractor:
        reference = extractor(target, peer_net(x), normalized=False)[0][0].detach().numpy()
    ours_map = our_map(net, x, "encoder.layers.encoder_layer_2.ln_1", target, "legrad")
    assert ours_map.shape == (8, 8)
    assert_agree(ours_map, reference)
    np.testing.assert_allclose(ours_map, reference, rtol=1e-4, atol=1e-6 * reference.max())
