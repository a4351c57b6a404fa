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


def ours(net: nn.Module, x: torch.Tensor, layer: str | list[str], target: int, method, **kw):
    layers = [layer] if isinstance(layer, str) else layer
    refs = [resolve_layer(net, name) for name in layers]
    return explain_batch(net, x, refs, classes=[target], method=method, **kw)


def our_map(net, x, layer, target, method, **kw) -> np.ndarray:
    return ours(net, x, layer, target, method, **kw).maps[layer][0, 0].numpy()


# -- the peers' raw maps ----------------------------------------------------------------------


def kept_cam_images(cam) -> list[np.ndarray]:
    """pytorch-grad-cam's `get_cam_image` wrapped: each map it computes (before its ReLU,
    resize and min-max scaling) is kept in the list returned, in call order."""
    seen: list[np.ndarray] = []
    original = cam.get_cam_image

    def keep(*args, **kw):
        seen.append(np.array(original(*args, **kw)))
        return seen[-1]

    cam.get_cam_image = keep
    return seen


def pgc_raw(cam_class, net, layer, x, target, *, eigen_smooth=False, **kwargs) -> np.ndarray:
    """pytorch-grad-cam's map before its ReLU, resize and min-max scaling."""
    net = copy.deepcopy(net)  # it calls .eval() and may swap modules
    cam = cam_class(net, [dict(net.named_modules())[layer]], **kwargs)
    seen = kept_cam_images(cam)
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


# -- Finer-CAM, ShapleyCAM, RefineCAM (issue 22) ------------------------------------------------


def _pgc_finer_raw(net, layer, x, target, **kwargs) -> np.ndarray:
    """pytorch-grad-cam's FinerCAM map before its ReLU and resizing (its base Grad-CAM's
    `get_cam_image`), with the comparison classes it picks itself for `target_idx`."""
    net = copy.deepcopy(net)
    cam = pgc.FinerCAM(net, [dict(net.named_modules())[layer]])
    seen = kept_cam_images(cam.base_cam)
    cam(x, target_idx=target, **kwargs)
    cam.base_cam.activations_and_grads.release()
    return seen[0][0]


def test_finercam_agrees_with_pytorch_grad_cam():
    """Its defaults (α = 1, comparison ranks 1, 2, 3, softmax weights) for the top class, and
    α = 0.5 with ranks 1, 2 for the runner-up; and it is not Grad-CAM (the objective matters)."""
    from gradcam_cli.methods import get_method

    net, x, layer = model("resnet18"), image(), "layer3"
    with torch.no_grad():
        top, runner_up = net(x)[0].argsort(descending=True)[:2].tolist()
    reference = np.maximum(_pgc_finer_raw(net, layer, x, top), 0)
    finer = our_map(net, x, layer, top, "finercam")
    assert_agree(finer, reference)
    plain = our_map(net, x, layer, top, "gradcam")
    assert np.corrcoef(finer.ravel(), plain.ravel())[0, 1] < 0.99
    method = get_method("finercam", comparison_strength=0.5, comparisons=2)
    reference = _pgc_finer_raw(net, layer, x, runner_up, alpha=0.5, comparison_categories=[1, 2])
    assert_agree(our_map(net, x, layer, runner_up, method), np.maximum(reference, 0))


def test_finercam_with_mean_weights_agrees_with_torchcam():
    """torchcam's FinerCAM: y_c − γ · mean of the 3 nearest classes' scores, γ = 0.6 (its
    default): ours with --comparison-weights mean --comparison-strength 0.6."""
    from torchcam.methods import FinerCAM

    from gradcam_cli.methods import get_method

    net, x, layer = model("timm:convnext_atto"), image(), "stages.2"
    target = predicted(net, x)
    peer_net = copy.deepcopy(net)
    with FinerCAM(peer_net, layer, input_shape=tuple(x.shape[1:])) as extractor:
        reference = extractor(target, peer_net(x), normalized=False)[0][0].detach().numpy()
    method = get_method("finercam", comparison_strength=0.6, comparison_weights="mean")
    assert_agree(our_map(net, x, layer, target, method), reference)


def _pgc_shapley_raw(net, layer, x, target_object) -> np.ndarray:
    """pytorch-grad-cam's ShapleyCAM map before its ReLU and resizing. Its hooks are removed
    by hand: its own release() fails on ConvNeXt ("Can't detach views in-place": the stored
    gradients are views once create_graph is on)."""
    net = copy.deepcopy(net)
    cam = pgc.ShapleyCAM(net, [dict(net.named_modules())[layer]])
    seen = kept_cam_images(cam)
    cam(x, [target_object])
    for handle in cam.activations_and_grads.handles:
        handle.remove()
    cam.activations_and_grads.handles.clear()
    cam.activations_and_grads.gradients = []
    return seen[0][0]


class _CurvedHead(nn.Module):
    """conv → sigmoid → steep conv → sigmoid → mean → linear: a head with a large Hessian after
    `features.1`, where ShapleyCAM's second-order term changes the map (correlation with
    Grad-CAM's 0.980 for the logit, 0.974 for ReST, measured)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.Sigmoid(),
            nn.Conv2d(16, 16, 3, padding=1), nn.Sigmoid(),
        )  # fmt: skip
        with torch.no_grad():
            self.features[2].weight *= 10
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.mark.parametrize(
    ("name", "layer", "objective"),
    [
        ("resnet18", "layer3", "rest"),  # piecewise linear head: only ReST has a Hessian
        ("timm:convnext_atto", "stages.2", "logit"),  # GELU and LayerNorm: the logit has one
        ("curved", "features.1", "logit"),
        ("curved", "features.1", "rest"),
    ],
)
def test_shapleycam_agrees_with_pytorch_grad_cam(name, layer, objective):
    """pytorch-grad-cam's ShapleyCAM with its default target (the logit) or its
    ClassifierOutputReST (the paper's ReST). On the curved head the Hessian-vector product
    really moves the map, so agreement there is agreement on H·A."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST

    from gradcam_cli.methods import get_method

    net = _CurvedHead().eval() if name == "curved" else model(name)
    x = image()
    target = predicted(net, x)
    peer_target = (ClassifierOutputReST if objective == "rest" else ClassifierOutputTarget)(target)
    reference = np.maximum(_pgc_shapley_raw(net, layer, x, peer_target), 0)
    method = get_method("shapleycam", objective=objective)
    shapley = our_map(net, x, layer, target, method)
    assert_agree(shapley, reference)
    if name == "curved":
        plain = our_map(net, x, layer, target, "gradcam")
        assert np.corrcoef(shapley.ravel(), plain.ravel())[0, 1] < 0.99


REFINE_LAYERS = ["layer2", "layer3", "layer4"]


def _gradcam_pp_maps(net, x, target) -> list[torch.Tensor]:
    result = explain_batch(net, x, REFINE_LAYERS, classes=[target], method="gradcam++")
    return [result.maps[layer] for layer in REFINE_LAYERS]


def test_refinecam_agrees_with_pytorch_grad_cam_where_it_multiplies_at_the_input_size():
    """pytorch-grad-cam multiplies the maps after resizing each to the input (128²); we, as
    torchcam, multiply at the largest layer's map (16² here) and leave the upsampling to the
    rendering. The product at the input size agrees with its map; taken at the largest map
    and then upsampled, the correlation is 0.9997 (measured at 160²)."""
    from gradcam_cli.methods.multilayer import multiplied

    net, x = model("resnet18"), image(128)
    target = predicted(net, x)
    peer_net = copy.deepcopy(net)
    modules = dict(peer_net.named_modules())
    peer = pgc.RefineCAM(peer_net, [modules[layer] for layer in REFINE_LAYERS])
    reference = peer(x, [ClassifierOutputTarget(target)])[0]
    for base in peer.base_cam_per_layer:
        base.activations_and_grads.release()
    per_layer = _gradcam_pp_maps(net, x, target)
    assert_agree(multiplied(per_layer, size=(128, 128))[0, 0].numpy(), reference)
    ours_map = ours(net, x, REFINE_LAYERS, target, "refinecam").maps["layer2+layer3+layer4"]
    assert tuple(ours_map.shape) == (1, 1, 16, 16)
    torch.testing.assert_close(ours_map, multiplied(per_layer))


def test_refinecam_agrees_with_torchcam_given_the_papers_gradcam_pp():
    """torchcam's RefineCAM fuses as we do (min-max, bilinear to the largest map, product).
    Its Grad-CAM++ differs from ours and pytorch-grad-cam's (Chattopadhay et al. eq. 19):
    its α denominator is 2g² + Σ_ab g³_ab A_ab, the paper's 2g² + g³ Σ_ab A_ab (correlation
    0.997 with ours, measured). With the paper's denominator in its base, the maps agree."""
    from torchcam.methods import GradCAMpp, RefineCAM

    class PaperGradCAMpp(GradCAMpp):
        def _get_weights(self, class_idx, scores, eps=1e-8, **kwargs):
            self._backprop(scores, class_idx, **kwargs)
            weights = []
            for a, g in zip(self.hook_a, self.hook_g, strict=True):
                g2 = g * g
                alpha = g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g + 1e-6) * (g != 0)
                weights.append((alpha * g.clamp(min=0)).sum((2, 3)))
            return weights

    net, x = model("resnet18"), image(128)
    target = predicted(net, x)
    peer_net = copy.deepcopy(net)
    with RefineCAM(peer_net, REFINE_LAYERS, tuple(x.shape[1:]), base_method=PaperGradCAMpp) as cam:
        reference = cam(target, peer_net(x), normalized=False)[0][0].detach().numpy()
    ours_map = ours(net, x, REFINE_LAYERS, target, "refinecam").maps["layer2+layer3+layer4"]
    assert_agree(ours_map[0, 0].numpy(), reference)
    np.testing.assert_allclose(ours_map[0, 0].numpy(), reference, atol=1e-5)


def test_deep_feature_factorization_agrees_with_pytorch_grad_cam():
    """pytorch-grad-cam's DFF factors a batch's activations with scikit-learn's NMF (random
    init, seed 0, coordinate descent); ours is that algorithm in torch (tests/test_concepts.py
    checks it against scikit-learn), over the images of the run. Same model, same images: the
    same offset, the same concepts (W) and the same maps (H), to float32's order of sums. We
    number the concepts by strength (here matched by their maps) and scale each concept's
    vector to its peak before the head votes: with pytorch-grad-cam's unscaled W the votes of
    its `model.fc` are ours."""
    from pathlib import Path

    from PIL import Image
    from pytorch_grad_cam import DeepFeatureFactorization
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff
    from scipy.optimize import linear_sum_assignment

    from gradcam_cli.concepts import find_concepts
    from gradcam_cli.sources import load_model

    demo, k = load_model("demo:shapes"), 4
    scenes = sorted((Path(__file__).resolve().parents[1] / "sample_images/scenes").glob("*.png"))
    photos = [Image.open(path).convert("RGB") for path in scenes]
    found = find_concepts(demo, photos, k=k)
    x = torch.from_numpy(np.stack([demo.preprocess.to_array(photo) for photo in photos]))
    net = copy.deepcopy(demo.model).eval()
    peer = DeepFeatureFactorization(net, net.features, computation_on_concepts=net.fc)
    concepts, _, outputs = peer(x, k)
    activations = peer.activations_and_grads.activations[0].cpu().numpy()
    _, peer_maps = dff(activations.copy(), n_components=k)  # [B, k, h, w], before its scaling
    offset = activations.transpose(1, 0, 2, 3).reshape(activations.shape[1], -1).min(axis=1)
    np.testing.assert_allclose(found.offset, offset)

    ours_maps = np.stack([record.maps for record in found.images])  # [B, k, h, w]
    ours_flat = ours_maps.transpose(1, 0, 2, 3).reshape(k, -1)
    peer_flat = peer_maps.transpose(1, 0, 2, 3).reshape(k, -1)
    correlation = np.corrcoef(ours_flat, peer_flat)[:k, k:]
    rows, match = linear_sum_assignment(-correlation)
    assert correlation[rows, match].min() >= 0.9999
    np.testing.assert_allclose(ours_flat, peer_flat[match], rtol=1e-3, atol=1e-4 * peer_flat.max())

    peaks = ours_flat.max(axis=1)
    unscaled = np.stack(
        [(c.vector - found.offset) / peak for c, peak in zip(found.concepts, peaks, strict=True)]
    )
    peer_concepts = concepts.T[match]  # [k, C]: W + offset, in our order
    np.testing.assert_allclose(unscaled + found.offset, peer_concepts, rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        votes = net.fc(torch.from_numpy(unscaled + found.offset).float()).softmax(dim=1)
    peer_votes = torch.from_numpy(outputs[match]).softmax(dim=1)
    torch.testing.assert_close(votes, peer_votes, rtol=1e-3, atol=1e-4)


# -- torchcam's Score-CAM family and Smooth Grad-CAM++ (issue 22) ---------------------------------


class _Feed:
    """Stands in for torchcam's noise distribution (`_distrib`): hands out the given draws in
    order, so that torchcam's noise is ours."""

    def __init__(self, draws: list[torch.Tensor]):
        self.draws = list(draws)

    def sample(self, size) -> torch.Tensor:
        draw = self.draws.pop(0)
        assert tuple(draw.shape) == tuple(size)
        return draw


def _upsample_then_scale(extractor, x: torch.Tensor) -> None:
    """torchcam's Score-CAM family min-max scales each channel at the layer's resolution and
    then upsamples it; we (as pytorch-grad-cam, and our `scorecam`) upsample, then scale. This
    sets torchcam's order to ours."""
    import torch.nn.functional as F

    def upsample(activation):
        masks = F.interpolate(activation, x.shape[2:], mode="bilinear", align_corners=False)
        low, high = masks.amin(dim=(2, 3), keepdim=True), masks.amax(dim=(2, 3), keepdim=True)
        return (masks - low) / (high - low + 1e-8)

    extractor._upsample = upsample
    extractor._normalize = lambda cams, spatial_dims=None, eps=1e-8: cams


# resnet18's `layer1`: 64 channels, so N·64 masked forwards per method at 64².
SCORE_FAMILY_CASE = ("resnet18", "layer1", 64)


def test_sscam_agrees_with_torchcam_given_the_same_noise():
    """Same noise: torchcam draws from `_distrib` and is handed our draws (`mask_noise`, per
    sample and chunk of 32 channels). With the one difference in the masks removed (the order
    of min-max scaling and upsampling: `_upsample_then_scale`) the maps agree to float
    tolerance; as they are, they correlate at 0.99997 here (measured, seeds 0 and 1)."""
    from torchcam.methods import SSCAM

    from gradcam_cli.methods import get_method
    from gradcam_cli.methods.perturbation import FORWARD_CHUNK
    from gradcam_cli.methods.score_family import mask_noise

    name, layer, size = SCORE_FAMILY_CASE
    net, x, samples, std, seed = model(name), image(size), 2, 2.0, 1
    target = predicted(net, x)
    channels = 64

    def draw(sample):
        starts = range(0, channels, FORWARD_CHUNK)
        shapes = [(min(FORWARD_CHUNK, channels - start), size, size) for start in starts]
        chunks = zip(shapes, starts, strict=True)
        return torch.cat([mask_noise(s, seed, sample, start, std) for s, start in chunks])[None]

    peer_net = copy.deepcopy(net)
    with SSCAM(peer_net, layer, num_samples=samples, std=std, input_shape=x.shape[1:]) as peer:
        peer._distrib = _Feed([draw(n) for n in range(samples)])
        _upsample_then_scale(peer, x)
        reference = peer(target, peer_net(x), normalized=False)[0][0].numpy()
    method = get_method("sscam", samples=samples, seed=seed, noise_std=std)
    ours_map = our_map(net, x, layer, target, method)
    assert_agree(ours_map, reference)
    np.testing.assert_allclose(ours_map, reference, rtol=1e-4, atol=1e-5 * reference.max())


def test_iscam_agrees_with_torchcam():
    """Deterministic. With the order of min-max scaling and upsampling set to ours (as for
    SS-CAM) the maps agree to float tolerance; as they are, they correlate at 0.99982 here
    (measured; `scorecam` too): torchcam's masks, scaled before the upsampling, peak below 1
    where a channel's peak is inside the grid; ours reach 1."""
    from torchcam.methods import ISCAM

    from gradcam_cli.methods import get_method

    name, layer, size = SCORE_FAMILY_CASE
    net, x, steps = model(name), image(size), 2
    target = predicted(net, x)
    peer_net = copy.deepcopy(net)
    with ISCAM(peer_net, layer, num_samples=steps, input_shape=x.shape[1:]) as peer:
        _upsample_then_scale(peer, x)
        reference = peer(target, peer_net(x), normalized=False)[0][0].numpy()
    ours_map = our_map(net, x, layer, target, get_method("iscam", samples=steps))
    assert_agree(ours_map, reference)
    np.testing.assert_allclose(ours_map, reference, rtol=1e-4, atol=1e-5 * reference.max())


def test_smooth_gradcam_pp_differs_from_torchcam_only_in_three_named_terms():
    """Same noise: torchcam is handed our draws (`image_noise`). Its map is then exactly its
    formula below, and ours exactly ours, on the same per-sample A and g from full backwards
    (the textbook, not our engine). The formulas differ in three terms, each torchcam's
    accident, not the paper's: it combines the LAST noisy copy's A and ReLU(g) (ours: the
    image's own A, ReLU of the averaged g), and its denominator is Σ_ab m3_ab A_ab (ours, as
    the paper's and our gradcam++: m3_ij Σ_ab A_ab). Maps as they are correlate at 0.46 and
    0.71 here (seeds 0, 1; 0.34 and −0.20 with 4 samples; measured): the last copy alone
    swings torchcam's map."""
    from torchcam.methods import SmoothGradCAMpp

    from gradcam_cli.methods import get_method
    from gradcam_cli.methods.smooth import image_noise

    net, x, layer, samples, std, seed = model("resnet18"), image(64), "layer1", 3, 0.3, 0
    target = predicted(net, x)
    draws = [image_noise(x, seed, n, std) for n in range(samples)]
    peer_net = copy.deepcopy(net)
    with SmoothGradCAMpp(peer_net, layer, num_samples=samples, std=std) as peer:
        peer._distrib = _Feed(draws)
        reference = peer(target, peer_net(x), normalized=False)[0][0].detach().numpy()
    method = get_method("smoothgradcam++", samples=samples, seed=seed, noise_std=std)
    ours_map = our_map(net, x, layer, target, method)

    # one image at a time, as torchcam runs them: its denominator Σ_ab m3_ab A_ab nearly
    # cancels, so a batch's float rounding alone moves its map by 2%
    a = textbook(net, x, layer, target)[0]
    noisy = [textbook(net, x + d, layer, target) for d in draws]
    g = torch.stack([gradient for _, gradient in noisy])
    m1, m2, m3 = g.mean(0), (g**2).mean(0), (g**3).mean(0)
    s = (1, 2)
    last_a, last_g = noisy[-1]
    alpha = m2 / (2 * m2 + (m3 * a).sum(s, keepdim=True) + 1e-8)
    theirs = ((alpha * last_g.clamp(min=0)).sum(s)[:, None, None] * last_a).sum(0).clamp(min=0)
    alpha = m2 / (2 * m2 + m3 * a.sum(s, keepdim=True) + 1e-6) * (m2 != 0)
    mine = ((alpha * m1.clamp(min=0)).sum(s)[:, None, None] * a).sum(0).clamp(min=0)
    assert_agree(reference, theirs.numpy())
    np.testing.assert_allclose(reference, theirs.numpy(), rtol=1e-4, atol=1e-5 * theirs.max())
    assert_agree(ours_map, mine.numpy())
    np.testing.assert_allclose(ours_map, mine.numpy(), rtol=1e-4, atol=1e-5 * mine.max())


# -- FullGrad and SESS (pytorch-grad-cam 1.5.7) --------------------------------------------------


def pgc_fullgrad_raw(net: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """pytorch-grad-cam's FullGrad map before its final min-max scaling."""
    cam = pgc.FullGrad(copy.deepcopy(net), [])  # it finds its own bias layers
    seen: list[np.ndarray] = []
    original = cam.aggregate_multi_layers

    def keep(per_layer):
        seen.append(np.array(per_layer))
        return original(per_layer)

    cam.aggregate_multi_layers = keep
    cam(x, [ClassifierOutputTarget(target)])
    cam.activations_and_grads.release()
    return seen[0][0, 0]


@pytest.mark.parametrize("name", ["resnet18", "timm:convnext_atto"])
def test_fullgrad_agrees_with_pytorch_grad_cam(name):
    """ResNet: BN biases with their statistics folded in, outputs changed in place after the
    layer (ReLU, `+=`); ConvNeXt: conv biases, no BN. Both at input resolution."""
    from helpers import with_random_statistics

    net, x = with_random_statistics(copy.deepcopy(model(name))), image(64)
    target = predicted(net, x)
    reference = pgc_fullgrad_raw(net, x, target)
    ours_map = our_map(net, x, "layer4" if name == "resnet18" else "stages.3", target, "fullgrad")
    assert ours_map.shape == reference.shape == (64, 64)
    assert_agree(ours_map, reference)
    np.testing.assert_allclose(ours_map, reference, rtol=1e-4, atol=1e-5 * reference.max())


def pgc_sess(net, layer, x, target, **kwargs) -> np.ndarray:
    from pytorch_grad_cam.sess import SESS

    net = copy.deepcopy(net)
    return SESS(net, [dict(net.named_modules())[layer]], **kwargs)(
        x, [ClassifierOutputTarget(target)]
    )[0]


@pytest.mark.parametrize(
    ("peer", "settings"),
    [
        ({"num_scales": 2}, {"scales": 2}),
        (
            {"num_scales": 2, "pool": "max", "step_size": 48, "pre_filter_ratio": 0.5},
            {"scales": 2, "fusion": "max", "window_stride": 0.5, "keep_patches": 0.5},
        ),
    ],
)
def test_sess_agrees_with_pytorch_grad_cam(peer, settings):
    """Its own result (min-max scaled; its blur included): correlation is scale-free."""
    from gradcam_cli.methods import get_method

    net, x = model("resnet18"), image(96)
    target = predicted(net, x)
    reference = pgc_sess(net, "layer4", x, target, **peer)
    ours_map = our_map(net, x, "layer4", target, get_method("sess", **settings))
    assert_agree(ours_map, reference)
    np.testing.assert_allclose(ours_map / ours_map.max(), reference, atol=1e-5)


class _HalfPixelResize:
    """OpenCV's `cv2` as pytorch-grad-cam's SESS uses it, its bilinear `resize` done by torch
    (half-pixel centres, as ours)."""

    INTER_LINEAR = 1

    @staticmethod
    def resize(array, size):
        width, height = size
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        return torch.nn.functional.interpolate(
            tensor, size=(height, width), mode="bilinear", align_corners=False
        )[0, 0].numpy()

    @staticmethod
    def GaussianBlur(*args):  # noqa: N802  (OpenCV's name)
        import cv2

        return cv2.GaussianBlur(*args)


def test_sess_on_a_wide_image_differs_from_pytorch_grad_cam_only_by_opencv_s_resize(
    monkeypatch,
):
    """The mean fusion counts, at each pixel, the patches whose laid-back map is > 0. Where a
    resized frame's sample falls exactly on the border of a patch (here every 7th pixel: the
    scale 144/112 = 9/7), OpenCV's double-precision coordinate lands 1e-15 inside it and counts
    the patch, torch's lands on the border and does not: 0.99954 at 112², 0.99973 here. With
    OpenCV's resize done by torch, pytorch-grad-cam's map is ours."""
    import pytorch_grad_cam.sess as pgc_sess_module
    import pytorch_grad_cam.utils.image as pgc_image

    from gradcam_cli.methods import get_method

    net = model("resnet18")
    x = torch.randn(1, 3, 112, 150, generator=torch.Generator().manual_seed(1))
    target = predicted(net, x)
    monkeypatch.setattr(pgc_sess_module, "cv2", _HalfPixelResize)
    monkeypatch.setattr(pgc_image, "cv2", _HalfPixelResize)
    reference = pgc_sess(net, "layer3", x, target, base_method=pgc.GradCAMPlusPlus, num_scales=2)
    sess = get_method("sess", scales=2, base_method="gradcam++")
    ours_map = our_map(net, x, "layer3", target, sess)
    assert ours_map.shape == (112, 150)
    assert_agree(ours_map, reference)
    np.testing.assert_allclose(ours_map / ours_map.max(), reference, atol=1e-5)


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
