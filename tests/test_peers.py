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
