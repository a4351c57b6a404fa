"""Each method against its paper's formula, the head-only re-runs, guided backpropagation,
the smoothing options, the registry, and the files and JSON the CLI writes for them."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import timm
import torch
from helpers import (
    SCENES,
    assert_same_state,
    invoke,
    model_state,
    random_model,
    textbook_hooks,
    with_random_statistics,
)
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from gradcam_cli.cli import app
from gradcam_cli.engine import AUG_VIEWS, HeadOnlyFallbackWarning, explain_batch
from gradcam_cli.errors import LayerError, UsageError
from gradcam_cli.guided import GuidedReLU, guided_relus
from gradcam_cli.layers import resolve_layer
from gradcam_cli.methods import (
    METHODS,
    CamMethod,
    check_method_options,
    first_principal_component,
    get_method,
    register_method,
)


def noise(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def run(model, x, layer, method, **kwargs):
    return explain_batch(model, x, [resolve_layer(model, layer)], method=method, **kwargs)


@pytest.fixture(scope="module")
def resnet():
    return random_model("resnet18")


# -- the registry ----------------------------------------------------------------------------


def test_registry_has_the_issue_methods_with_their_capabilities():
    wanted = {
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
        "gradcam-elementwise",
        "eigencam",
        "eigengradcam",
        "ablationcam",
        "scorecam",
        "cam",
        "guided-backprop",
        "guided-gradcam",
        "seg-eigencam",  # issue 22
        "fem",
        "kpcacam",
        "randomcam",
        "finercam",
        "shapleycam",
        "refinecam",
        "sscam",
        "iscam",
        "smoothgradcam++",
        "fullgrad",
        "sess",
        "rollout",
        "transformer-attribution",
        "legrad",
    }
    assert set(METHODS) == wanted
    assert next(iter(METHODS)) == "gradcam"
    for name, cls in METHODS.items():
        assert cls.name == name and cls.paper and cls.summary and cls.formula  # README table
    assert METHODS["ablationcam"].uses_head and not METHODS["ablationcam"].needs_gradients
    assert METHODS["scorecam"].needs_full_forwards
    assert METHODS["sscam"].needs_full_forwards and METHODS["iscam"].needs_full_forwards
    assert {n for n, c in METHODS.items() if c.reruns_with_gradients} == {"smoothgradcam++"}
    assert METHODS["cam"].requires_gap_linear_head
    assert {n for n, c in METHODS.items() if c.guided} == {"guided-backprop", "guided-gradcam"}
    assert {n for n, c in METHODS.items() if c.second_order} == {"shapleycam"}
    assert {n for n, c in METHODS.items() if c.combines_layers} == {"refinecam"}
    assert {n for n, c in METHODS.items() if c.full_backward} == {"fullgrad"}
    assert {n for n, c in METHODS.items() if c.explains_other_images} == {"sess"}
    attention = {n for n, c in METHODS.items() if c.needs_attention}
    assert attention == {"rollout", "transformer-attribution", "legrad"}
    assert {n for n in attention if METHODS[n].attention_gradients} == {
        "transformer-attribution",
        "legrad",
    }


def test_register_method_refuses_a_duplicate_name():
    class Again(CamMethod):
        name = "gradcam"

    with pytest.raises(ValueError, match="registered twice"):
        register_method(Again)
    assert METHODS["gradcam"].__name__ == "GradCAM"


def test_unknown_method_and_eigen_smooth_on_guided_backprop_are_usage_errors():
    with pytest.raises(UsageError, match="Did you mean 'layercam'"):
        get_method("layrcam")
    with pytest.raises(UsageError, match="eigen_smooth=True combines"):
        check_method_options("guided-backprop", eigen_smooth=True)
    assert check_method_options("guided-gradcam", eigen_smooth=True).name == "guided-gradcam"
    with pytest.raises(
        UsageError,
        match="method='fullgrad' has no layer channels to combine; drop eigen_smooth=True$",
    ):
        check_method_options("fullgrad", eigen_smooth=True)


def test_methods_module_does_not_import_torch():
    code = "import sys, gradcam_cli.methods as m; m.methods_table(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the gradient family: our maps equal the papers' formulas on A and g -------------------------


def _formula(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Each paper's formula, written out once more, from a textbook A and g."""
    s = (2, 3)
    if method == "gradcam":
        return (g.mean(s, keepdim=True) * a).sum(1)
    if method == "gradcam++":  # Chattopadhay et al. eq. 19, with alpha = 0 where g = 0
        alpha = g**2 / (2 * g**2 + a.sum(s, keepdim=True) * g**3 + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return ((alpha * g.clamp(min=0)).sum(s, keepdim=True) * a).sum(1)
    if method == "xgradcam":
        return ((g * a).sum(s, keepdim=True) / (a.sum(s, keepdim=True) + 1e-7) * a).sum(1)
    if method == "layercam":
        return (g.clamp(min=0) * a).sum(1)
    if method == "hirescam":
        return (g * a).sum(1)
    if method == "gradcam-elementwise":
        return (g * a).clamp(min=0).sum(1)
    raise AssertionError(method)


@pytest.mark.parametrize(
    "method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "gradcam-elementwise"]
)
def test_gradient_methods_equal_their_formulas(resnet, method):
    x = noise(2, 3, 96, 96)
    a, g, logits = textbook_hooks(resnet, x, "layer3", [3, 7])
    expected = _formula(method, a, g).clamp(min=0)
    ours = run(resnet, x, "layer3", method, classes=[3, 7]).maps["layer3"]
    # one class per image: compare image i's map for its own class
    for i, rank in ((0, 0), (1, 1)):
        assert expected[i].max() > 0
        torch.testing.assert_close(ours[i, rank], expected[i], rtol=1e-4, atol=1e-5)


def test_gradient_methods_really_differ_where_the_gradient_varies(resnet):
    x = noise(1, 3, 96, 96)
    shared = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "gradcam-elementwise"]
    maps = {m: run(resnet, x, "layer3", m, classes=[3]).maps["layer3"][0, 0] for m in shared}
    # A >= 0 here (ResNet blocks end in a ReLU), where ReLU(g)·A = ReLU(g·A): the two coincide.
    torch.testing.assert_close(maps["layercam"], maps["gradcam-elementwise"])
    for i, first in enumerate(shared):
        for second in shared[i + 1 :]:
            if {first, second} != {"layercam", "gradcam-elementwise"}:
                assert not torch.allclose(maps[first], maps[second]), (first, second)


# -- principal components ------------------------------------------------------------------------


def test_first_principal_component_equals_an_svd_reference_with_our_sign():
    x = noise(3, 6, 5, 4).abs() + noise(3, 6, 5, 4, seed=2)
    ours = first_principal_component(x)
    for b in range(3):
        m = x[b].reshape(6, -1).T.double().numpy()
        m = m - m.mean(axis=0)
        _, _, vt = np.linalg.svd(m, full_matrices=True)
        reference = m @ vt[0]
        plain = m.sum(axis=1)
        assert abs(float(reference @ plain)) > 1e-6  # the sign question is not degenerate
        reference = reference if reference @ plain > 0 else -reference
        np.testing.assert_allclose(ours[b].flatten().numpy(), reference, rtol=1e-4, atol=1e-5)


def test_eigencam_is_the_first_component_of_a_and_the_same_for_every_class(resnet):
    x = noise(1, 3, 96, 96)
    a, _, _ = textbook_hooks(resnet, x, "layer3", [0])
    result = run(resnet, x, "layer3", "eigencam", topk=3)
    expected = first_principal_component(a).clamp(min=0)[0]
    for rank in range(3):
        torch.testing.assert_close(result.maps["layer3"][0, rank], expected)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "ablationcam", "cam"])
def test_eigen_smooth_replaces_the_channel_sum_by_the_first_component(resnet, method):
    x = noise(1, 3, 64, 64)
    a, g, _ = textbook_hooks(resnet, x, "layer4", [5])
    plain = run(resnet, x, "layer4", method, classes=[5]).maps["layer4"][0, 0]
    smooth = run(resnet, x, "layer4", method, classes=[5], eigen_smooth=True).maps["layer4"][0, 0]
    if method == "hirescam":
        expected = first_principal_component(g * a).clamp(min=0)[0]
        torch.testing.assert_close(smooth, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(plain, smooth)
    assert smooth.max() > 0


# -- Ablation-CAM: the paper's formula, head only ------------------------------------------------


def channels(output: torch.Tensor, kind: str) -> torch.Tensor:
    """The layer's output as [B, C, h, w], by hand: `tokens` here have one class token."""
    if kind == "nhwc":
        return output.permute(0, 3, 1, 2)
    if kind == "tokens":
        patches = output[:, 1:]
        side = int(patches.shape[1] ** 0.5)
        return patches.transpose(1, 2).unflatten(2, (side, side))
    return output


def ablation_reference(model, x, layer, target, kind="nchw"):
    """Desai & Ramaswamy: w_k = (y - y_k) / y, y_k with channel k zeroed, by full forwards
    (of a batch of copies of the image, one channel zeroed in each).

    Channel k of the map is zeroed: for tokens, in the patch tokens; the class token is the
    image's own."""
    model = copy.deepcopy(model).eval()
    module = dict(model.named_modules())[layer]
    with torch.no_grad():
        store = {}
        handle = module.register_forward_hook(lambda m, a, o: store.setdefault("A", o.clone()))
        y = model(x)[0, target]
        handle.remove()
        a = channels(store["A"], kind)
        weights = []
        for start in range(0, a.shape[1], 64):  # copy i of the image has channel start + i zeroed
            ks = range(start, min(start + 64, a.shape[1]))

            def zero_ks(_m, _a, out, ks=ks):
                out = out.clone()
                for i, k in enumerate(ks):
                    channels(out, kind)[i, k] = 0  # a view: writes through to `out`
                return out

            handle = module.register_forward_hook(zero_ks)
            weights.append((y - model(x.repeat(len(ks), 1, 1, 1))[:, target]) / y)
            handle.remove()
    w = torch.cat(weights)
    return (w[:, None, None] * a[0]).sum(0).clamp(min=0)


@pytest.mark.parametrize(
    ("name", "layer", "size", "kind", "head_only"),
    [
        ("resnet18", "layer3", 64, "nchw", True),
        ("timm:convnext_atto", "stages.3", 64, "nchw", True),  # ConvNeXt: A < 0 too
        ("tiny-tokens", "norm", 48, "tokens", True),
        # A block's norm1: the residual adds the block's input after it, so the head cannot
        # run alone and full forwards are used, with a warning (timm's ViTs also refuse the
        # empty batch the head-only pass runs the backbone on).
        ("timm:test_vit", "blocks.5.norm1", 160, "tokens", False),
        ("timm:test_mambaout", "stages.2", 160, "nhwc", True),
    ],
)
def test_ablationcam_equals_the_paper_formula(name, layer, size, kind, head_only):
    model = TinyTokens().eval() if name == "tiny-tokens" else random_model(name)
    x = noise(1, 3, size, size)
    with torch.no_grad():
        target = int(model(x).argmax())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HeadOnlyFallbackWarning)
        ours = run(model, x, layer, "ablationcam", classes=[target]).maps[layer][0, 0]
    fell_back = any(issubclass(w.category, HeadOnlyFallbackWarning) for w in caught)
    assert fell_back is not head_only
    expected = ablation_reference(model, x, layer, target, kind)
    assert expected.max() > 0
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-4 * float(expected.max()))


def test_ablationcam_never_runs_the_backbone_again(resnet):
    """Every call of the stem after the first one sees an empty batch: only the head runs."""
    batches = []
    handle = resnet.conv1.register_forward_hook(lambda m, a, o: batches.append(o.shape[0]))
    try:
        run(resnet, noise(2, 3, 64, 64), "layer4", "ablationcam", topk=2)
    finally:
        handle.remove()
    assert batches[0] == 2
    assert len(batches) > 2 and set(batches[1:]) == {0}


class SkipToHead(nn.Module):
    """The head adds a pooled copy of features from before the target layer: the head alone
    cannot be run on the target's output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        early = self.stem(x)
        late = self.body(early)
        return self.fc((late + early).mean(dim=(2, 3)))


def test_ablationcam_falls_back_to_full_forwards_when_the_head_needs_more_than_the_layer():
    model, x = SkipToHead().eval(), noise(1, 3, 16, 16)
    with torch.no_grad():
        target = int(model(x).argmax())
    with pytest.warns(HeadOnlyFallbackWarning, match="full forward passes"):
        ours = run(model, x, "body", "ablationcam", classes=[target]).maps["body"][0, 0]
    expected = ablation_reference(model, x, "body", target)
    assert expected.max() > 0
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


# -- Score-CAM -----------------------------------------------------------------------------------


def test_scorecam_equals_the_paper_formula():
    """Wang et al.: H_k = minmax(up(A_k)); w = softmax_k(y(x ⊙ H_k)); ReLU(Σ w_k A_k)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).eval()
    x = noise(1, 3, 16, 16)
    ours = run(model, x, "1", "scorecam", classes=[2]).maps["1"][0, 0]
    a = model[:2](x).detach()[0]  # [6, 8, 8]
    scores = []
    for k in range(6):
        up = torch.nn.functional.interpolate(a[None, k : k + 1], size=(16, 16), mode="bilinear")
        mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
        scores.append(model(x * mask)[0, 2].detach())
    w = torch.stack(scores).softmax(0)
    expected = (w[:, None, None] * a).sum(0).clamp(min=0)
    assert expected.max() > 0
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def _score_cam_weights(model, x, a, target, masks_of):
    """softmax_k mean_n y(x ⊙ masks_of(n, k, H_k)), H_k = minmax(up(A_k)), by hand."""
    scores = []
    for k in range(a.shape[0]):
        up = torch.nn.functional.interpolate(a[None, k : k + 1], size=x.shape[2:], mode="bilinear")
        mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
        per_n = [model(x * masks_of(n, k, mask))[0, target].detach() for n in range(3)]
        scores.append(torch.stack(per_n).mean())
    return torch.stack(scores).softmax(0)


def _small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).eval()


def test_sscam_and_iscam_equal_their_formulas():
    """SS-CAM (Wang et al. 2020): Score-CAM's masks plus N(0, σ²) noise, the scores averaged
    over N samples; the noise of sample n for channel k is `mask_noise`'s row k (chunks of 32
    channels: here one). IS-CAM (Naidu et al. 2020): masks scaled by c_n = n(n + 1) / 2N."""
    from gradcam_cli.methods.score_family import mask_noise

    model, x = _small_cnn(), noise(1, 3, 16, 16)
    a = model[:2](x).detach()[0]  # [6, 8, 8]
    for method, masks_of in {
        "sscam": lambda n, k, mask: mask + mask_noise((6, 16, 16), 4, n, 0, 0.5)[k],
        "iscam": lambda n, k, mask: (n + 1) * (n + 2) / 6 * mask,
    }.items():
        settings = {"samples": 3, "seed": 4, "noise_std": 0.5} if method == "sscam" else {}
        settings["samples"] = 3
        ours = run(model, x, "1", get_method(method, **settings), classes=[2]).maps["1"][0, 0]
        w = _score_cam_weights(model, x, a, 2, masks_of)
        expected = (w[:, None, None] * a).sum(0).clamp(min=0)
        assert expected.max() > 0
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
        scorecam = run(model, x, "1", "scorecam", classes=[2]).maps["1"][0, 0]
        assert not torch.allclose(ours, scorecam)


def test_sscam_and_smooth_gradcam_pp_are_seeded():
    model, x = _small_cnn(), noise(1, 3, 16, 16)

    def smoothed(method, seed, **settings):
        # Smooth Grad-CAM++ before the ReLU: after it, this head is linear, g the same for all x
        layer = "1" if method == "sscam" else "0"
        method = get_method(method, samples=2, seed=seed, **settings)
        return run(model, x, layer, method, topk=2).maps[layer]

    for method in ("sscam", "smoothgradcam++"):
        assert torch.equal(smoothed(method, 3), smoothed(method, 3))
        assert not torch.allclose(smoothed(method, 3), smoothed(method, 4))
        assert not torch.allclose(smoothed(method, 3), smoothed(method, 3, noise_std=0.01))


# -- Smooth Grad-CAM++ ---------------------------------------------------------------------------


def test_smooth_gradcam_pp_keeps_the_split_and_on_one_noiseless_copy_is_gradcam_pp(resnet):
    """Each noisy copy is one forward in which nothing before the layer records a graph (the
    stem's output never requires grad) and one backward through the head only. With one
    sample and noise 1e-9 the averaged powers are the image's own: the map is Grad-CAM++'s
    (the same α, the same ReLU(g), the same A)."""
    x, seen = noise(1, 3, 64, 64), []
    handle = resnet.layer1.register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))
    try:
        method = get_method("smoothgradcam++", samples=1, noise_std=1e-9)
        ours = run(resnet, x, "layer3", method, topk=2).maps["layer3"]
    finally:
        handle.remove()
    assert seen == [False, False]  # the image, then its noisy copy
    plain = run(resnet, x, "layer3", "gradcam++", topk=2).maps["layer3"]
    assert plain.amax(dim=(2, 3)).gt(0).all()
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-5 * float(plain.max()))


# -- CAM -----------------------------------------------------------------------------------------


def test_cam_is_the_linear_weights_times_a(gap_linear_model):
    model = gap_linear_model
    x = noise(3, 3, 32, 32)
    result = run(model, x, "3", "cam", topk=2)
    features = model[:4](x)
    for rank in range(2):
        classes = result.targets[:, rank]
        cam = torch.einsum("bk,bkhw->bhw", model[6].weight[classes], features)
        expected = cam.clamp(min=0).detach()
        assert expected.max() > 0
        torch.testing.assert_close(result.maps["3"][:, rank], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "layer", "why"),
    [
        ("vgg11", "features", "varies over positions"),  # fc layers with ReLUs on a 7×7 map
        ("densenet121", "features", "varies over positions"),  # a ReLU before the pooling
        ("timm:convnext_atto", "stages.3", "not linear"),  # LayerNorm after the pooling
    ],
)
def test_cam_refuses_heads_that_are_not_gap_and_linear(name, layer, why):
    model = random_model(name)
    with pytest.raises(LayerError, match=f"method='cam'.*{why}.*method='gradcam'"):
        run(model, noise(1, 3, 64, 64), layer, "cam")


def test_explainer_refuses_cam_before_any_image(tmp_path):
    from gradcam_cli import Explainer, load_model

    loaded = load_model("torchvision:vgg11", pretrained=False, input_size=64)
    with pytest.raises(LayerError, match="method='cam'"):
        Explainer(loaded, layers=["features"], method="cam")


# -- guided backpropagation ----------------------------------------------------------------------


class _RefGuided(torch.autograd.Function):
    """The paper's guided ReLU, written again for the reference."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (grad > 0).float() * (x > 0).float()


class EveryKindOfReLU(nn.Module):
    """ReLUs as modules (one of them shared and in place) and as all the functional forms."""

    def __init__(self, relu=None):
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.ModuleList(nn.Conv2d(c, 6, 3, padding=1) for c in (3, 6, 6, 6, 6, 6))
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, 4)
        self.relu = relu  # the reference passes its own for every ReLU

    def forward(self, x):
        r = self.relu
        c = self.convs
        x = r(c[0](x)) if r else self.act(c[0](x))
        x = r(c[1](x)) if r else self.act(c[1](x))  # the shared module again
        x = r(c[2](x)) if r else torch.nn.functional.relu(c[2](x))
        x = r(c[3](x)) if r else torch.relu(c[3](x))
        x = r(c[4](x)) if r else c[4](x).relu()
        y = c[5](x)
        if r:
            y = r(y)
        else:
            y.relu_()  # in place, return value ignored: y itself must carry the guided history
        return self.fc(y.mean(dim=(2, 3)))


def test_guided_relus_catch_modules_and_every_functional_form():
    x = noise(2, 3, 12, 12)
    model = EveryKindOfReLU().eval()
    reference_model = EveryKindOfReLU(relu=_RefGuided.apply).eval()
    ours = run(model, x, "convs.5", "guided-backprop", classes=[1]).guided["convs.5"][:, 0]
    pixels = x.clone().requires_grad_(True)
    reference_model(pixels)[:, 1].sum().backward()
    plain = x.clone().requires_grad_(True)
    model(plain)[:, 1].sum().backward()
    assert pixels.grad.abs().max() > 0
    torch.testing.assert_close(ours, pixels.grad, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ours, plain.grad)  # guidance changed something
    with guided_relus() as mode:
        model(x)
    assert mode.calls == 6


def test_guided_relu_passes_only_positive_gradients_where_the_input_was_positive():
    x = torch.tensor([-1.0, 2.0, 3.0, 0.0], requires_grad=True)
    out = GuidedReLU.apply(x)
    out.backward(torch.tensor([5.0, -4.0, 3.0, 2.0]))
    assert out.tolist() == [0.0, 2.0, 3.0, 0.0]
    assert x.grad.tolist() == [0.0, 0.0, 3.0, 0.0]


def test_guided_backprop_on_densenet_guides_its_functional_relu_too(monkeypatch):
    """torchvision DenseNet's last ReLU is `F.relu(features, inplace=True)` in forward():
    the peers' module-based guidance misses it; the paper's definition (every ReLU) does not."""
    model, x = random_model("densenet121"), noise(1, 3, 64, 64)
    with torch.no_grad():
        target = int(model(x).argmax())
    ours = run(model, x, "features", "guided-backprop", classes=[target]).guided["features"]
    reference_model = copy.deepcopy(model)
    for parent in reference_model.modules():  # every nn.ReLU module → the reference guided ReLU
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, _RefModule())
    monkeypatch.setattr(
        torch.nn.functional, "relu", lambda t, inplace=False: _RefGuided.apply(t)
    )  # ... and the functional one in forward()
    pixels = x.clone().requires_grad_(True)
    reference_model(pixels)[0, target].backward()
    monkeypatch.undo()
    assert pixels.grad.abs().max() > 0
    torch.testing.assert_close(ours[0, 0], pixels.grad[0], rtol=1e-4, atol=1e-7)


class _RefModule(nn.Module):
    def forward(self, x):
        return _RefGuided.apply(x)


def test_guided_gradcam_is_guided_backprop_times_the_upsampled_gradcam(resnet):
    x = noise(2, 3, 64, 64)
    layer = "layer3"
    gg = run(resnet, x, layer, "guided-gradcam", topk=2)
    gb = run(resnet, x, layer, "guided-backprop", classes=None, topk=2)
    cam = run(resnet, x, layer, "gradcam", topk=2)
    torch.testing.assert_close(gg.maps[layer], cam.maps[layer])
    up = torch.nn.functional.interpolate(cam.maps[layer], size=(64, 64), mode="bilinear")
    torch.testing.assert_close(gg.guided[layer], gb.guided[layer] * up[:, :, None])
    assert gb.maps[layer].shape == (2, 2, 64, 64)  # guided-backprop's map: input resolution
    torch.testing.assert_close(gb.maps[layer], gb.guided[layer].abs().amax(dim=2))


# -- augmentation smoothing ----------------------------------------------------------------------


def test_aug_smooth_is_flip_equivariant(resnet):
    """The views of a mirrored image are the mirrored views: the smoothed map must mirror."""
    x = noise(1, 3, 96, 96)
    kwargs = {"classes": [4], "aug_smooth": True}
    plain = run(resnet, x, "layer3", "gradcam", **kwargs).maps["layer3"]
    mirrored = run(resnet, x.flip(-1), "layer3", "gradcam", **kwargs).maps["layer3"]
    torch.testing.assert_close(mirrored, plain.flip(-1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-3)  # the map is not symmetric
    assert 0 < float(plain.max()) <= 1.0


def test_aug_smooth_is_the_mean_of_the_views_mapped_back(resnet):
    x, layer = noise(1, 3, 96, 96), "layer3"
    ours = run(resnet, x, layer, "gradcam", classes=[4], aug_smooth=True).maps[layer][0, 0]
    views = []
    for flip, scale in AUG_VIEWS:
        size = round(96 * scale)
        view = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=scale < 1
        )
        view = view.flip(-1) if flip else view
        m = run(resnet, view, layer, "gradcam", classes=[4]).maps[layer]
        m = m.flip(-1) if flip else m
        m = torch.nn.functional.interpolate(m, size=(6, 6), mode="bilinear", antialias=scale > 1)
        views.append(m[0, 0] / m.max() if m.max() > 0 else m[0, 0])
    assert len(views) == 6
    torch.testing.assert_close(ours, torch.stack(views).mean(0), rtol=1e-4, atol=1e-5)


# -- every method: shapes, batch invariance, the caller's model left as found -------------------


class TinyTokens(nn.Module):
    """A toy ViT: patches → tokens after a class token → LayerNorm → mean of the patch tokens
    → linear. CAM's architecture, on tokens (and no declared prefix count: the class token
    parameter says it)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 16, 8, stride=8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 16))
        self.mix = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], 1)
        tokens = self.norm(torch.relu(self.mix(tokens)) + tokens)
        return self.head(tokens[:, 1:].mean(1))


class TinyChannelsLast(nn.Module):
    """conv → channels-last → LayerNorm → global mean → linear (CAM's architecture, NHWC)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 12, 3, stride=4, padding=1)
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        return self.head(self.norm(self.conv(x).permute(0, 2, 3, 1)).mean((1, 2)))


def tiny_vit() -> nn.Module:
    """timm's test_vit with 8×8 patches: a real ViT (class token, timm Attention) at 48²."""
    torch.manual_seed(0)
    return timm.create_model("test_vit", pretrained=False, num_classes=5, patch_size=8, depth=2)


LAYOUT_MODELS = {
    "resnet18": (lambda: random_model("resnet18"), "layer4", (2, 2)),
    "tokens": (TinyTokens, "norm", (6, 6)),
    "channels-last": (TinyChannelsLast, "norm", (12, 12)),
    "vit": (tiny_vit, "blocks.1.norm1", (6, 6)),
}
# For methods that combine layers: an earlier layer, and the map size of the pair.
EARLIER_LAYER = {
    "resnet18": ("layer3", (3, 3)),
    "tokens": ("patch", (6, 6)),
    "channels-last": ("conv", (12, 12)),
}


# Their least settings: SS-CAM's and Smooth Grad-CAM++'s noise is then still drawn per sample.
CHEAP = {
    "sscam": {"samples": 2},
    "iscam": {"samples": 2},
    "smoothgradcam++": {"samples": 2},
    "sess": {"scales": 2},  # its 12: ~130 patches
}
# SS-CAM and IS-CAM are Score-CAM's masked forwards repeated (2·512 per image at resnet18's
# layer4: a minute on this project's CPU); Score-CAM runs them there, they on the small layouts.
# The attention methods read a ViT's blocks (the others are refused: test_attention.py), and
# on the ViT the other methods are checked already in test_architectures.py.
EVERY_METHOD = [
    (method, layout)
    for method in METHODS
    for layout in LAYOUT_MODELS
    if METHODS[method].needs_attention == (layout == "vit")
    and not (method in ("sscam", "iscam") and layout == "resnet18")
]


INPUT_RESOLUTION = {"guided-backprop", "fullgrad", "sess"}  # their maps: the input's size


@pytest.mark.parametrize(("method", "layout"), EVERY_METHOD)
def test_every_method_is_batch_invariant_and_leaves_the_model_as_found(method, layout):
    build, layer, grid = LAYOUT_MODELS[layout]
    model = build()
    model.train()
    first = next(m for m in model.children() if isinstance(m, nn.Conv2d | nn.Sequential))
    first.eval()
    first_param, last_param = next(model.parameters()), list(model.parameters())[-2]
    first_param.requires_grad_(False)
    last_param.grad = torch.full_like(last_param, 0.25)
    before = model_state(model)
    x = noise(2, 3, 48, 48)
    layers = [resolve_layer(model, layer)]
    if METHODS[method].combines_layers:  # one map, named after both layers
        earlier, grid = EARLIER_LAYER[layout]
        layers, layer = [resolve_layer(model, earlier), *layers], f"{earlier}+{layer}"
    chosen = get_method(method, **CHEAP.get(method, {}))
    batched = explain_batch(model, x, layers, method=chosen, topk=2)
    assert_same_state(before, model_state(model))
    single = explain_batch(model, x[1:], layers, method=chosen, topk=2)
    assert torch.equal(single.targets[0], batched.targets[1])
    torch.testing.assert_close(single.maps[layer][0], batched.maps[layer][1], rtol=1e-3, atol=1e-5)
    h, w = (48, 48) if method in INPUT_RESOLUTION else grid
    assert batched.maps[layer].shape == (2, 2, h, w)
    assert bool((batched.maps[layer] >= 0).all())
    # FEM on n ≤ 5 positions: no value lies 2σ above its mean (at most √(n − 1) σ), so 0
    fem_cannot = method == "fem" and h * w <= 5
    assert bool(batched.maps[layer].amax(dim=(2, 3)).gt(0).any()) != fem_cannot
    assert batched.guided.keys() == ({layer} if METHODS[method].guided else set())


def test_the_model_is_left_as_found_when_a_method_raises():
    torch.manual_seed(0)
    model = nn.Sequential(  # a ReLU after the pooling: not CAM's head, so `cam` raises
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3),
    )  # fmt: skip
    model.train()
    model[0].weight.requires_grad_(False)
    model[4].weight.grad = torch.ones_like(model[4].weight)
    before = model_state(model)
    with pytest.raises(LayerError, match="not linear"):
        run(model, noise(2, 3, 8, 8), "1", "cam")
    assert_same_state(before, model_state(model))


# -- the CLI: guided images, the JSON's `guided` key, the smoothing options ----------------------


@pytest.fixture
def photo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save("wide.jpg")
    return tmp_path


def explain(*args: str) -> dict:
    result = invoke(
        *("explain", "wide.jpg", "-m", "torchvision:resnet18", "--no-pretrained"),
        *("--input-size", "64", "--json", *args),
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_guided_gradcam_writes_a_guided_image_on_the_photo(photo):
    report = explain("--method", "guided-gradcam", "--out", "out")
    [record] = report["results"][0]["explanations"]
    assert record["guided"] == record["overlay"].replace(".overlay.png", ".guided.png")
    guided = Image.open(photo / "out" / record["guided"])
    assert guided.size == (90, 60) and guided.mode == "RGBA"  # the photo's own size
    alpha = np.asarray(guided)[..., 3]
    assert alpha[30, 45] == 255 and alpha[:, 0].max() == 0  # the crop, and outside it
    assert report["method"] == "guided-gradcam"


def test_other_methods_write_no_guided_image_and_record_null(photo):
    report = explain("--method", "ablationcam", "--out", "out")
    [record] = report["results"][0]["explanations"]
    assert record["guided"] is None
    assert not list((photo / "out").glob("*.guided.png"))


def test_smoothing_options_are_applied_and_recorded(photo):
    plain = explain("--out", "a", "--save-raw")
    smooth = explain("--out", "b", "--save-raw", "--aug-smooth", "--eigen-smooth")
    assert plain["method_options"] == {"aug_smooth": False, "eigen_smooth": False, "amp": None}
    assert smooth["method_options"] == {"aug_smooth": True, "eigen_smooth": True, "amp": None}
    raw_a = np.load(photo / "a" / plain["results"][0]["explanations"][0]["raw"])
    raw_b = np.load(photo / "b" / smooth["results"][0]["explanations"][0]["raw"])
    assert raw_a.shape == raw_b.shape and not np.allclose(raw_a, raw_b)
    assert raw_b.max() <= 1.0


def test_cli_refuses_eigen_smooth_with_guided_backprop_before_loading_a_model(photo):
    result = CliRunner().invoke(
        app,
        ["explain", "wide.jpg", "-m", "no-such-model", "--method", "guided-backprop"]
        + ["--eigen-smooth"],
    )
    assert result.exit_code == 2
    assert "--eigen-smooth" in result.output and "no-such-model" not in result.output


def test_score_cam_masks_the_image_with_the_activations_over_the_image_only():
    """A detector's layer covers its padded input: the frame cuts the padding off before the
    activations become masks of the image (else each mask would be shifted and stretched)."""
    import torch.nn.functional as F

    from gradcam_cli.methods import LayerView
    from gradcam_cli.methods.perturbation import masked_scores

    activations = torch.rand(1, 2, 4, 4)
    images = torch.rand(1, 3, 8, 8)
    seen = []

    def forward(masked, rows):
        seen.append(masked)
        return torch.zeros(len(masked), 1)

    view = LayerView(
        activations=activations,
        gradients=[],
        targets=torch.zeros(1, 1, dtype=torch.long),
        scores=torch.zeros(1, 1),
        images=images,
        head=lambda rows, index: rows,
        forward=forward,
        guided_gradients=[],
        frame=lambda maps: maps[..., :2, :],  # the image is the top half of the layer's grid
    )
    masked_scores(view)
    upsampled = F.interpolate(activations[:, :, :2], size=(8, 8), mode="bilinear")[0]
    low = upsampled.amin(dim=(1, 2), keepdim=True)
    high = upsampled.amax(dim=(1, 2), keepdim=True)
    expected = images[0] * ((upsampled - low) / (high - low + 1e-8))[:, None]
    torch.testing.assert_close(torch.cat(seen), expected)


# -- a method's own options ------------------------------------------------------------------------


def test_a_method_s_own_options_are_checked_and_change_its_map(gap_linear_model):
    from gradcam_cli import Explainer
    from gradcam_cli.errors import UsageError
    from gradcam_cli.methods import check_method_options

    with pytest.raises(UsageError, match="kernel= is an option of method=kpcacam, not of"):
        check_method_options("gradcam", kernel="rbf")
    with pytest.raises(UsageError, match="kernel='rbff' is not one of .* Did you mean 'rbf'"):
        check_method_options("kpcacam", kernel="rbff")
    with pytest.raises(UsageError, match="k_sigma= must be a positive number, got nan"):
        check_method_options("fem", k_sigma=float("nan"))
    assert check_method_options("fem").settings == {"k_sigma": 2.0}
    assert check_method_options("kpcacam", kernel_gamma="0.5").settings["kernel_gamma"] == 0.5
    x = noise(1, 3, 32, 32)
    maps = {
        k: Explainer(gap_linear_model, method="fem", method_settings={"k_sigma": k})(x)
        for k in (0.5, 1.5)
    }
    assert not torch.equal(maps[0.5], maps[1.5])  # fewer positions count at 1.5σ


def test_a_method_s_options_are_flags_and_recorded_only_when_given(tmp_path):
    scene = str(SCENES / "two_circle_star.png")
    plain = invoke(
        "explain", scene, "-m", "demo:shapes", "--method", "kpcacam", "--out", str(tmp_path / "a")
    )
    assert plain.exit_code == 0, plain.output
    recorded = json.loads((tmp_path / "a" / "predictions.json").read_text())["method_options"]
    assert set(recorded) == {"aug_smooth", "eigen_smooth", "amp"}
    given = invoke(
        "explain",
        scene,
        "-m",
        "demo:shapes",
        "--method",
        "kpcacam",
        "--kernel",
        "poly",
        "--kernel-gamma",
        "0.25",
        "--out",
        str(tmp_path / "b"),
    )
    assert given.exit_code == 0, given.output
    recorded = json.loads((tmp_path / "b" / "predictions.json").read_text())["method_options"]
    assert (recorded["kernel"], recorded["kernel_gamma"]) == ("poly", 0.25)
    wrong = invoke(
        "explain", scene, "-m", "demo:shapes", "--k-sigma", "3", "--out", str(tmp_path / "c")
    )
    assert wrong.exit_code == 2
    assert "--k-sigma is an option of --method fem, not of --method gradcam" in wrong.output


def test_options_shared_by_several_methods_are_checked_for_each_and_name_every_owner(tmp_path):
    from gradcam_cli.methods import method_option_help

    with pytest.raises(UsageError, match="samples= is an option of method=sscam/iscam/smooth"):
        check_method_options("gradcam", samples=3)
    with pytest.raises(UsageError, match="samples= must be a whole number, 1 or more, got 0"):
        check_method_options("iscam", samples=0)
    with pytest.raises(UsageError, match="noise_std= is an option of method=sscam/smoothgrad"):
        check_method_options("iscam", noise_std=0.5)
    assert check_method_options("sscam", seed="2").settings == {
        "samples": 35, "noise_std": 2.0, "seed": 2,
    }  # fmt: skip
    assert check_method_options("smoothgradcam++").settings["samples"] == 4  # its own default
    seed_help = method_option_help("seed")
    assert all(f"{m}: the seed of its" in seed_help for m in ("randomcam", "sscam"))
    assert "smoothgradcam++: the seed of its noise; default 0" in seed_help
    wrong = invoke(
        "explain",
        str(SCENES / "two_circle_star.png"),
        "-m",
        "demo:shapes",
        "--samples",
        "3",
        "--out",
        str(tmp_path / "a"),
    )
    assert wrong.exit_code == 2
    assert "--samples is an option of --method sscam/iscam/smoothgradcam++, not of" in wrong.output


def test_random_cam_is_seeded_and_draws_what_the_faithfulness_random_map_draws():
    from gradcam_cli.engine import explain_batch
    from gradcam_cli.faithfulness import random_map
    from gradcam_cli.methods import get_method, seeded_uniform

    net, x = random_model("resnet18"), noise(1, 3, 64, 64)

    def random_cam(seed):
        method = get_method("randomcam", seed=seed)
        return explain_batch(net, x, "layer3", method=method, topk=2).maps["layer3"]

    assert torch.equal(random_cam(3), random_cam(3))
    assert not torch.equal(random_cam(3), random_cam(4))
    one = random_cam(3)
    assert not torch.equal(one[:, 0], one[:, 1])  # each target rank draws its own weights
    torch.testing.assert_close(random_map((5, 7), seed=9), seeded_uniform((5, 7), 9))


# -- Finer-CAM, ShapleyCAM, RefineCAM: the head-only objective, H·A and layers, by full backward --


def _curved_net() -> nn.Module:
    """conv → sigmoid → steep conv → sigmoid → mean → linear: after `1`, a head whose Hessian
    in A is large (ShapleyCAM's term matters); `3` a later layer."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.Sigmoid(),
        nn.Conv2d(8, 8, 3, padding=1), nn.Sigmoid(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6),
    )  # fmt: skip
    with torch.no_grad():
        net[2].weight *= 10
    return net.eval()


def _full_backward(model: nn.Module, x: torch.Tensor, layer: str, objective, second=False):
    """A, ∂s/∂A and (second) H·A for s = objective(logits), summed over the batch, through a
    copy of the whole model with every parameter trainable: the textbook way."""
    model = copy.deepcopy(model).eval().requires_grad_(True)
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda _m, _a, out: store.__setitem__("A", out)
    )
    s = objective(model(x)).sum()
    handle.remove()
    a = store["A"]
    (g,) = torch.autograd.grad(s, a, create_graph=second)
    hv = torch.autograd.grad(g, a, grad_outputs=a.detach())[0] if second else None
    return a.detach(), g.detach(), hv


def _finer_objective(logits: torch.Tensor, target: int, alpha: float, n: int, softmax: bool):
    """Finer-CAM's score per image, written out: the n classes nearest the target's score."""
    rows = []
    for y in logits:
        order = [int(i) for i in np.argsort(np.abs((y - y[target]).detach().numpy()))]
        similar = [i for i in order if i != target][:n]
        differences = torch.stack([y[target] - alpha * y[d] for d in similar])
        if softmax:
            p = y.softmax(0)[similar]
            rows.append((p * differences).sum() / (p.sum() + 1e-9))
        else:
            rows.append(differences.mean())
    return torch.stack(rows)


@pytest.mark.parametrize(("weights", "alpha", "n"), [("softmax", 1.0, 3), ("mean", 0.6, 2)])
def test_finercam_is_gradcam_of_its_objective_by_a_full_backward(resnet, weights, alpha, n):
    x, target = noise(2, 3, 64, 64), 7
    method = get_method(
        "finercam", comparison_weights=weights, comparison_strength=alpha, comparisons=n
    )
    ours = run(resnet, x, "layer3", method, classes=[target]).maps["layer3"][:, 0]
    objective = lambda out: _finer_objective(out, target, alpha, n, weights == "softmax")  # noqa: E731
    a, g, _ = _full_backward(resnet, x, "layer3", objective)
    expected = (g.mean((2, 3), keepdim=True) * a).sum(1).clamp(min=0)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))
    plain = run(resnet, x, "layer3", "gradcam", classes=[target]).maps["layer3"][:, 0]
    assert not torch.allclose(ours, plain, rtol=0.05)


@pytest.mark.parametrize("objective", ["logit", "rest"])
def test_shapleycam_is_its_formula_with_a_full_backward_hessian_vector_product(objective):
    net, x, target = _curved_net(), noise(2, 3, 48, 48), 2
    method = get_method("shapleycam", objective=objective)
    ours = run(net, x, "1", method, classes=[target]).maps["1"][:, 0]

    def score(out):
        y = out[:, target]
        return 2 * y - out.logsumexp(1) if objective == "rest" else y

    a, g, hv = _full_backward(net, x, "1", score, second=True)
    expected = ((g - 0.5 * hv).mean((2, 3), keepdim=True) * a).sum(1).clamp(min=0)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))
    plain = run(net, x, "1", "gradcam", classes=[target]).maps["1"][:, 0]
    assert not torch.allclose(ours, plain, rtol=0.05)  # the Hessian term is not negligible here


def test_shapleycam_with_the_logit_on_a_piecewise_linear_head_is_gradcam(resnet):
    """ReLU, pooling, linear and eval-mode batch norm after layer3: H = 0 for the logit."""
    x = noise(1, 3, 64, 64)
    shapley = run(resnet, x, "layer3", "shapleycam").maps["layer3"]
    torch.testing.assert_close(shapley, run(resnet, x, "layer3", "gradcam").maps["layer3"])


def test_refinecam_is_the_product_of_full_backward_gradcam_pp_maps(resnet):
    x, target = noise(2, 3, 64, 64), 3
    layers = ["layer2", "layer3", "layer4"]
    result = explain_batch(resnet, x, layers, method="refinecam", classes=[target])
    assert list(result.maps) == ["layer2+layer3+layer4"]
    ours = result.maps["layer2+layer3+layer4"][:, 0]
    expected = torch.ones(2, 8, 8)
    for layer in layers:
        a, g, _ = _full_backward(resnet, x, layer, lambda out: out[:, target])
        pp = _formula("gradcam++", a, g).clamp(min=0)
        low, high = pp.amin((1, 2), keepdim=True), pp.amax((1, 2), keepdim=True)
        scaled = ((pp - low) / (high - low + 1e-8))[:, None]
        expected = (
            expected * torch.nn.functional.interpolate(scaled, size=(8, 8), mode="bilinear")[:, 0]
        )
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_the_new_methods_options_and_needs_are_checked_before_any_image(resnet):
    """Options of another method refused, naming whose; refinecam's layers and the objectives
    that compare classes checked when the Explainer is made."""
    from gradcam_cli import Explainer

    with pytest.raises(UsageError, match="objective= is an option of method=shapleycam, not of"):
        check_method_options("gradcam", objective="rest")
    with pytest.raises(UsageError, match="comparisons= is an option of method=finercam"):
        check_method_options("shapleycam", comparisons=2)
    with pytest.raises(UsageError, match="comparisons= must be 1 or more"):
        check_method_options("finercam", comparisons=0)
    with pytest.raises(UsageError, match="comparison_weights='max' is not one of softmax, mean"):
        check_method_options("finercam", comparison_weights="max")
    with pytest.raises(UsageError, match="comparison_strength= must be a positive number"):
        check_method_options("finercam", comparison_strength=-1)
    assert check_method_options("finercam").settings == {
        "comparison_strength": 1.0,
        "comparisons": 3,
        "comparison_weights": "softmax",
    }
    with pytest.raises(UsageError, match="method='refinecam' multiplies .* two or more layers="):
        run(resnet, noise(1, 3, 32, 32), "layer4", "refinecam")
    with pytest.raises(UsageError, match="two or more layers="):
        Explainer(_curved_net(), layers="3", method="refinecam")
    segmenter = _TinySegmenter()
    for method, settings in [("finercam", {}), ("shapleycam", {"objective": "rest"})]:
        with pytest.raises(UsageError, match=f"method='{method}' .* for classifiers, .* segment"):
            Explainer(segmenter, "1", method=method, method_settings=settings, task="segmentation")
    with pytest.raises(UsageError, match="method='finercam' .* for classifiers"):  # the engine too
        run(segmenter, noise(1, 3, 16, 16), "features.1", "finercam", task="segmentation")
    assert Explainer(segmenter, "1", method="shapleycam", task="segmentation").method.name


class _TinySegmenter(nn.Module):
    """Per-pixel logits of 3 classes, torchvision-style ({"out": ...})."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return {"out": self.classifier(self.features(x))}


def test_refinecam_writes_one_map_named_after_its_layers(tmp_path):
    scene = str(SCENES / "two_circle_star.png")
    layers = ["-l", "features.13", "-l", "features.17,features.21"]
    result = invoke(
        "explain", scene, "-m", "demo:shapes", "--method", "refinecam", *layers,
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "predictions.json").read_text())
    assert report["layers"] == ["features.13", "features.17", "features.21"]
    (explanation,) = report["results"][0]["explanations"]
    assert explanation["layer"] == "features.13+features.17+features.21"
    assert explanation["overlay"].endswith(".features.13_features.17_features.21.overlay.png")
    assert (tmp_path / explanation["overlay"]).is_file()
    one = invoke(
        "explain",
        scene,
        "-m",
        "demo:shapes",
        "--method",
        "refinecam",
        "--out",
        str(tmp_path / "one"),
    )
    assert one.exit_code == 2
    assert "--method refinecam multiplies the maps of several layers" in one.output


# -- FullGrad and SESS -----------------------------------------------------------------------------


def test_fullgrad_s_parts_add_up_to_the_score_on_a_piecewise_linear_network():
    """The paper's completeness: y = ∂y/∂x · x + Σ_b ∂y/∂z · b (+ the Linear's bias, which has
    no position), with BN's bias the one its running statistics make (β − γμ/σ). This checks
    which layers are counted and their biases; test_peers checks the map made of the parts."""
    from gradcam_cli.methods.fullgrad import _BiasOutputs, bias_layers

    torch.manual_seed(0)
    model = with_random_statistics(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 5, 3, bias=False),
            nn.BatchNorm2d(5),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(5, 3),
        )  # fmt: skip
    )
    assert bias_layers(model) == [model[0], model[1], model[4]]  # not the bias-free conv
    recorder = _BiasOutputs()
    handles = [layer.register_forward_hook(recorder) for layer in bias_layers(model)]
    x = noise(1, 3, 9, 9).requires_grad_(True)
    y = model(x)[0, 2]
    for handle in handles:
        handle.remove()
    grads = torch.autograd.grad(y, [x, *recorder.outputs])
    parts = (grads[0] * x).sum() + sum(
        (bias[None, :, None, None] * grad).sum()
        for bias, grad in zip(recorder.biases, grads[1:], strict=True)
    )
    torch.testing.assert_close(parts + model[8].bias[2], y, rtol=1e-5, atol=1e-5)


def test_fullgrad_is_layer_free_and_at_input_resolution(resnet):
    net, x = with_random_statistics(copy.deepcopy(resnet)), noise(1, 3, 48, 48)
    result = explain_batch(net, x, ["layer3", "layer4"], method="fullgrad", topk=2)
    assert result.maps["layer3"].shape == (1, 2, 48, 48)
    torch.testing.assert_close(result.maps["layer3"], result.maps["layer4"])
    assert not torch.equal(result.maps["layer3"][:, 0], result.maps["layer3"][:, 1])


class _FailsWhenRecorded(nn.Module):
    """Raises in FullGrad's own forward (its input requires grad), after its hooks are on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x):
        features = self.norm(self.conv(x))
        if x.requires_grad:
            raise RuntimeError("no full backward today")
        return self.head(features.mean((2, 3)))


def test_fullgrad_leaves_the_model_as_found_when_its_backward_fails():
    model = _FailsWhenRecorded()
    model.train()
    model.conv.weight.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    before = model_state(model)
    with pytest.raises(RuntimeError, match="no full backward today"):
        run(model, noise(2, 3, 8, 8), "norm", "fullgrad")
    assert_same_state(before, model_state(model))  # hooks removed, flags and modes restored


def test_sess_with_one_scale_is_the_base_map_upsampled_scaled_and_blurred(resnet):
    """One scale, the window the image's side: one patch, the image itself, weight 1."""
    import torch.nn.functional as F

    from gradcam_cli.methods.sess import gaussian_blur

    x = noise(2, 3, 48, 48)
    sess = get_method("sess", scales=1, base_method="layercam")
    ours = run(resnet, x, "layer3", sess, topk=2)
    plain = run(resnet, x, "layer3", "layercam", topk=2).maps["layer3"]
    up = F.interpolate(plain, size=(48, 48), mode="bilinear", align_corners=False)
    low = up.amin(dim=(2, 3), keepdim=True)
    high = up.amax(dim=(2, 3), keepdim=True)
    expected = gaussian_blur((up - low) / (high - low + 1e-7))
    torch.testing.assert_close(ours.maps["layer3"], expected, rtol=1e-4, atol=1e-6)


def test_sess_patch_grid_follows_the_scales_and_the_stride():
    from gradcam_cli.methods.sess import patch_grid

    grid = patch_grid((100, 150), scales=3, scale_step=0.5, window_stride=1.0)
    assert grid.window == 100
    assert [s.size for s in grid.scales] == [(100, 150), (150, 225), (200, 300)]
    assert grid.scales[0].corners == ((0, 0), (0, 50))  # the last window ends at the border
    assert grid.scales[2].corners[:3] == ((0, 0), (0, 100), (0, 200))
    assert grid.patches == 2 + 2 * 3 + 2 * 3
    half = patch_grid((100, 100), scales=1, scale_step=0.5, window_stride=0.5)
    assert half.scales[0].corners == ((0, 0),)  # a window as large as the image: one patch


def test_sess_options_are_checked_and_refused_for_other_methods():
    with pytest.raises(UsageError, match="scales= is an option of method=sess, not of"):
        check_method_options("gradcam", scales=3)
    with pytest.raises(UsageError, match="keep_patches= must be at most 1, got 1.5"):
        check_method_options("sess", keep_patches=1.5)
    with pytest.raises(UsageError, match="scales= must be 1 or more, got 0"):
        check_method_options("sess", scales=0)
    with pytest.raises(UsageError, match="base_method='scorecam' is not one of"):
        check_method_options("sess", base_method="scorecam")  # C forwards per patch: refused
    method = check_method_options("sess", fusion="max", window_stride="0.5")
    assert (method.settings["fusion"], method.settings["window_stride"]) == ("max", 0.5)
    assert method.settings["scales"] == 12 and method.given == {
        "fusion": "max",
        "window_stride": 0.5,
    }


def test_sess_keeps_only_the_highest_scoring_patches_when_asked(resnet):
    from gradcam_cli.methods.sess import _patch_weights

    probabilities = torch.tensor([[[0.2], [0.0], [0.4], [0.1]]])  # [B, P, K]
    kept = _patch_weights(probabilities, 0.5)[0, :, 0]
    torch.testing.assert_close(kept, torch.tensor([0.5, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(_patch_weights(torch.zeros(1, 3, 1), 1.0), torch.ones(1, 3, 1))
    x = noise(1, 3, 48, 48)  # 5 patches at 2 scales; 2 kept
    every = run(resnet, x, "layer4", get_method("sess", scales=2)).maps["layer4"]
    fewer = run(resnet, x, "layer4", get_method("sess", scales=2, keep_patches=0.3)).maps["layer4"]
    assert not torch.allclose(every, fewer)


def test_sess_is_refused_for_a_segmentation_model_and_leaves_it_as_found():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    before = model_state(model)
    with pytest.raises(UsageError, match="only a classifier's classes .* task='segmentation'"):
        run(model, noise(1, 3, 16, 16), "0", get_method("sess", scales=1), task="segmentation")
    assert_same_state(before, model_state(model))
    from gradcam_cli import Explainer
    from gradcam_cli.preprocess import Preprocess

    preprocess = Preprocess(input_size=(16, 16), resize_shorter=16, resize_mode="keep")
    with pytest.raises(UsageError, match="method='sess' explains patches"):  # before any image
        Explainer(model, "0", method="sess", task="segmentation", preprocess=preprocess)


def test_fullgrad_and_sess_from_the_cli(photo):
    full = explain("--method", "fullgrad", "--out", "a", "--save-raw")
    raw = np.load(photo / "a" / full["results"][0]["explanations"][0]["raw"])
    assert raw.shape == (64, 64) and raw.max() > 0  # the input's size, as guided-backprop's
    sess = explain("--method", "sess", "--scales", "2", "--fusion", "max", "--out", "b")
    assert sess["method_options"]["scales"] == 2 and sess["method_options"]["fusion"] == "max"
    wrong = invoke(
        *("explain", "wide.jpg", "-m", "torchvision:resnet18", "--no-pretrained"),
        *("--scales", "2", "--out", "c"),
    )
    assert wrong.exit_code == 2
    assert "--scales is an option of --method sess, not of --method gradcam" in wrong.output


class _SquareOnly(nn.Module):
    """Refuses a square input: the image (16×24) passes, SESS's square patches do not."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x):
        if x.shape[2] == x.shape[3]:
            raise RuntimeError("square inputs are not for me")
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


def test_sess_leaves_the_model_as_found_when_a_patch_fails():
    model = _SquareOnly()
    model.train()
    model.conv.weight.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    before = model_state(model)
    with pytest.raises(RuntimeError, match="square inputs are not for me"):
        run(model, noise(2, 3, 16, 24), "norm", get_method("sess", scales=1))
    assert_same_state(before, model_state(model))  # the patches' hooks removed too
