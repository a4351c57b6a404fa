"""Every architecture a user brings (issue 5): CNNs, transformers, tokens and channels-last.

For each model, random weights, small input where the model allows: the automatic layer is
the one the family calls for, its map has the expected grid and is not all zero for the
predicted class, the head-only split equals a plain full backward through the whole model,
and the model is left without hooks, with its modes, requires_grad, .grad and weights as they
were.

Every model runs in the default `pytest` (CI included). A quick `pytest -m "not slow"` keeps,
for each layout and automatic-layer rule, the smallest model that has it (timm's test_* models
where the family has one); the full-size models it leaves out are marked `slow`.

The reference below lays tokens and channels-last outputs out by itself, from the prefix count
and grid this table expects: it does not use the library's layout code.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import assert_same_state, max_relative_error, model_state, reference_gradcam
from torch import nn

from gradcam_cli.engine import explain_batch
from gradcam_cli.explainer import Explainer
from gradcam_cli.layers import resolve_layer
from gradcam_cli.sources import load_model

slow = pytest.mark.slow


@dataclasses.dataclass(frozen=True)
class Case:
    spec: str
    size: int | None  # input size (None: the model's own)
    layer: str  # the automatic layer
    grid: tuple[int, int]
    kind: str = "nchw"  # "nchw" | "nhwc" | "tokens"
    prefix: int = 0  # tokens before the patches

    def __str__(self) -> str:
        return f"{self.spec}@{self.size or 'default'}"


VIT_NORM1 = "blocks.11.norm1"  # a class-token head: the last block's norm1

CASES = [
    # torchvision
    Case("torchvision:resnet18", 112, "layer4", (4, 4)),
    pytest.param(Case("torchvision:resnext50_32x4d", 112, "layer4", (4, 4)), marks=slow),
    pytest.param(Case("torchvision:wide_resnet50_2", 112, "layer4", (4, 4)), marks=slow),
    pytest.param(Case("torchvision:vgg16", 64, "features", (2, 2)), marks=slow),
    Case("torchvision:densenet121", 112, "features", (3, 3)),
    Case("torchvision:mobilenet_v2", 112, "features", (4, 4)),
    Case("torchvision:mobilenet_v3_small", 112, "features", (4, 4)),
    Case("torchvision:efficientnet_b0", 112, "features", (4, 4)),
    Case("torchvision:regnet_y_400mf", 112, "trunk_output", (4, 4)),
    Case("torchvision:convnext_tiny", 112, "features", (3, 3)),
    Case("torchvision:shufflenet_v2_x1_0", 112, "conv5", (4, 4)),
    # SqueezeNet's classifier is a 1×1 conv to 1000 class maps, then average pooling: its ReLU
    # is the last spatial layer, and Grad-CAM there is the class's own map (CAM).
    Case("torchvision:squeezenet1_1", 112, "classifier.2", (6, 6)),
    Case("torchvision:googlenet", 112, "inception5b", (4, 4)),
    Case("torchvision:inception_v3", 160, "Mixed_7c", (3, 3)),
    pytest.param(
        Case(
            "torchvision:vit_b_16",
            None,
            "encoder.layers.encoder_layer_11.ln_1",
            (14, 14),
            "tokens",
            1,
        ),
        marks=slow,
    ),
    pytest.param(Case("torchvision:swin_t", None, "norm", (7, 7), "nhwc"), marks=slow),
    pytest.param(Case("torchvision:maxvit_t", None, "blocks.3", (7, 7)), marks=slow),
    # timm
    pytest.param(Case("timm:resnet50", 112, "layer4", (4, 4)), marks=slow),
    pytest.param(Case("timm:resnetrs50", 112, "layer4", (4, 4)), marks=slow),
    pytest.param(Case("timm:efficientnet_b0", 112, "bn2", (4, 4)), marks=slow),
    Case("timm:mobilenetv3_small_100", 112, "blocks", (4, 4)),
    pytest.param(Case("timm:convnext_tiny", 112, "stages", (3, 3)), marks=slow),
    Case("timm:regnety_002", 112, "s4", (4, 4)),
    Case("timm:vit_tiny_patch16_224", 112, VIT_NORM1, (7, 7), "tokens", 1),
    Case("timm:deit_tiny_distilled_patch16_224", 112, VIT_NORM1, (7, 7), "tokens", 2),
    Case("timm:swin_tiny_patch4_window7_224", None, "norm", (7, 7), "nhwc"),
    # BEiT and EVA pool the patch tokens: the last block's output reaches the head.
    pytest.param(
        Case("timm:beit_base_patch16_224", 112, "blocks.11", (7, 7), "tokens", 1), marks=slow
    ),
    Case("timm:eva02_tiny_patch14_224", 112, "blocks.11", (8, 8), "tokens", 1),
    pytest.param(Case("timm:coatnet_nano_rw_224", None, "norm", (7, 7)), marks=slow),
    pytest.param(Case("timm:maxvit_nano_rw_256", 128, "norm", (4, 4)), marks=slow),
    # LeViT: tokens without a class token, 4×4 after its last downsampling at 224.
    Case("timm:levit_128s", None, "stages", (4, 4), "tokens", 0),
    # timm's tiny test models, at their own 160×160
    Case("timm:test_resnet", None, "layer4", (5, 5)),
    Case("timm:test_convnext", None, "stages", (5, 5)),
    Case("timm:test_efficientnet", None, "bn2", (5, 5)),
    Case("timm:test_byobnet", None, "stages", (5, 5)),
    Case("timm:test_nfnet", None, "final_act", (5, 5)),
    Case("timm:test_vit", None, "blocks.5.norm1", (10, 10), "tokens", 1),
    Case("timm:test_vit2", None, "blocks", (10, 10), "tokens", 1),
    Case("timm:test_vit_relpos", None, "blocks.8", (10, 10), "tokens", 0),
    Case("timm:test_coatnet", None, "norm", (5, 5)),
    Case("timm:test_maxvit", None, "norm", (5, 5)),
    Case("timm:test_mambaout", None, "stages", (5, 5), "nhwc"),
]


def as_map(output: torch.Tensor, case: Case) -> torch.Tensor:
    """The test's own reading of an output as [B, C, h, w]."""
    if case.kind == "nhwc":
        return output.permute(0, 3, 1, 2)
    if case.kind == "tokens":
        batch, _, channels = output.shape
        patches = output[:, case.prefix :]
        assert patches.shape[1] == case.grid[0] * case.grid[1], "grid does not fit the tokens"
        return patches.reshape(batch, *case.grid, channels).permute(0, 3, 1, 2)
    return output


def case_reference(model: nn.Module, x: torch.Tensor, case: Case, classes: list[int]):
    """The textbook Grad-CAM at the case's layer, its output read by `as_map`."""
    return reference_gradcam(model, x, case.layer, classes, lambda t: as_map(t, case))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_architecture(case: Case):
    loaded = load_model(case.spec, pretrained=False, input_size=case.size)
    model = loaded.model.train()  # as a user might hand it over: the call must restore this
    before = model_state(model)
    explainer = Explainer(loaded, device="cpu")
    assert str(explainer.layers[0]) == case.layer
    assert explainer.probe.get(case.layer).layout.grid == case.grid

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *loaded.preprocess.input_size, generator=generator)
    result = explain_batch(model, x, explainer.layers)
    maps = result.maps[case.layer][:, 0]
    assert tuple(maps.shape) == (2, *case.grid)
    assert (maps.amax(dim=(1, 2)) > 0).all(), "an all-zero map for the predicted class"

    predicted = result.targets[:, 0].tolist()
    reference = case_reference(model, x, case, predicted)
    error = max_relative_error(maps, reference)
    assert error <= 1e-4, f"split vs full backward: max relative error {error:.2e}"
    assert_same_state(before, model_state(model))


# -- input sizes: the grid is read for the input actually given ---------------------------------


def test_vit_at_384_on_a_224_model_gets_a_24x24_grid_and_stays_exact():
    loaded = load_model("timm:vit_tiny_patch16_224", pretrained=False, input_size=384)
    explainer = Explainer(loaded, device="cpu")
    case = Case("", 384, VIT_NORM1, (24, 24), "tokens", 1)
    assert str(explainer.layers[0]) == VIT_NORM1
    x = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    result = explain_batch(loaded.model, x, explainer.layers)
    maps = result.maps[VIT_NORM1][:, 0]
    assert tuple(maps.shape) == (1, 24, 24)
    reference = case_reference(loaded.model, x, case, result.targets[:, 0].tolist())
    torch.testing.assert_close(maps, reference, rtol=1e-4, atol=1e-4 * float(reference.max()))


def test_one_dynamic_size_vit_gets_each_input_sizes_own_grid():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True)
    layer = [resolve_layer(model, VIT_NORM1)]
    for (h, w), grid in [((224, 224), (14, 14)), ((384, 384), (24, 24)), ((160, 256), (10, 16))]:
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
        result = explain_batch(model, x, layer)
        assert tuple(result.maps[VIT_NORM1].shape[2:]) == grid
        case = Case("", None, VIT_NORM1, grid, "tokens", 1)
        reference = case_reference(model, x, case, result.targets[:, 0].tolist())
        torch.testing.assert_close(
            result.maps[VIT_NORM1][:, 0], reference, rtol=1e-4, atol=1e-4 * float(reference.max())
        )


# -- outputs that are not a plain tensor ---------------------------------------------------------


@dataclasses.dataclass
class HFStyleOutput:
    """Like transformers' ImageClassifierOutput: the logits are an attribute."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] = ()


OUTPUT_FORMS = {
    "tuple": lambda logits, features: (logits, features),
    "list": lambda logits, features: [logits, features],
    "dict": lambda logits, features: {"features": features, "logits": logits},
    "dict without logits key": lambda logits, features: {"out": logits, "aux": features},
    ".logits": lambda logits, features: HFStyleOutput(logits, (features,)),
}


class Wrapped(nn.Module):
    """A timm ViT whose forward returns its logits inside another structure."""

    def __init__(self, vit: nn.Module, form):
        super().__init__()
        self.vit, self.form = vit, form

    def forward(self, x):
        features = self.vit.forward_features(x)
        return self.form(self.vit.forward_head(features), features)


@pytest.mark.parametrize("form", OUTPUT_FORMS, ids=str)
def test_models_returning_tuples_dicts_or_logits_objects_are_explained(form):
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False).eval()
    wrapped = Wrapped(vit, OUTPUT_FORMS[form])
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    plain = explain_batch(vit, x, [resolve_layer(vit, "blocks.5.norm1")])
    from gradcam_cli.layers import probe_layers

    probe = probe_layers(wrapped, (160, 160))
    assert probe.default_layer() == "vit.blocks.5.norm1" and probe.num_outputs == 1000
    result = explain_batch(wrapped, x, [resolve_layer(wrapped, "vit.blocks.5.norm1")])
    torch.testing.assert_close(result.scores, plain.scores)
    torch.testing.assert_close(result.maps["vit.blocks.5.norm1"], plain.maps["blocks.5.norm1"])


# -- building models for the tool ---------------------------------------------------------------


def test_random_torchvision_vit_gets_a_random_head_so_outputs_depend_on_the_image():
    """torchvision initialises ViT heads to zeros (for fine-tuning): every image would score
    the same and every map be zero. Random builds give such layers a seeded random init."""
    import torchvision

    torch.manual_seed(0)
    assert not torchvision.models.vit_b_16(weights=None).heads.head.weight.any()  # the premise
    first = load_model("torchvision:vit_b_16", pretrained=False).model
    again = load_model("torchvision:vit_b_16", pretrained=False).model
    assert first.heads.head.weight.any()
    torch.testing.assert_close(first.heads.head.weight, again.heads.head.weight)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = first(x)
    assert not torch.allclose(logits[0], logits[1])


def test_a_model_whose_logits_ignore_the_image_says_so():
    from gradcam_cli.errors import LayerError
    from gradcam_cli.layers import probe_layers

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.append(nn.Linear(4, 3))
    nn.init.zeros_(model[-1].weight)
    with pytest.raises(LayerError, match="do not depend on the input image at all"):
        probe_layers(model, (32, 32)).default_layer()


def test_input_size_builds_timm_transformers_for_that_size_and_leaves_cnns_alone():
    vit = load_model("timm:vit_tiny_patch16_224", pretrained=False, input_size=384)
    assert vit.model.patch_embed.grid_size == (24, 24)
    assert vit.preprocess.input_size == (384, 384)
    cnn = load_model("timm:resnet18", pretrained=False, input_size=96)  # no img_size argument
    assert cnn.preprocess.input_size == (96, 96)
