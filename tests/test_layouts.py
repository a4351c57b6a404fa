"""Layouts (issue 5): which outputs are maps, how they lie, and their round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradcam_cli.layers import resolve_layer
from gradcam_cli.layouts import Layout, NotSpatialError, declared_prefix_tokens, infer_layout


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((2, 512, 7, 7), (224, 224), Layout("nchw", (7, 7))),
        ((2, 2048, 8, 8), (299, 299), Layout("nchw", (8, 8))),  # Inception: valid convs
        ((2, 7, 7, 768), (224, 224), Layout("nhwc", (7, 7))),  # Swin
        ((2, 56, 56, 96), (224, 224), Layout("nhwc", (56, 56))),
        ((2, 12, 8, 64), (384, 256), Layout("nhwc", (12, 8))),  # not square
        ((2, 64, 12, 8), (384, 256), Layout("nchw", (12, 8))),
        ((2, 197, 768), (224, 224), Layout("tokens", (14, 14), 1)),  # ViT-B/16
        ((2, 198, 192), (224, 224), Layout("tokens", (14, 14), 2)),  # DeiT distilled
        ((2, 577, 768), (384, 384), Layout("tokens", (24, 24), 1)),  # ViT-B/16 at 384
        ((2, 161, 64), (160, 256), Layout("tokens", (10, 16), 1)),  # not square
        ((2, 16, 384), (224, 224), Layout("tokens", (4, 4), 0)),  # LeViT: 224 / 64, rounded up
    ],
)
def test_layouts_are_read_from_the_shape_and_the_input_size(shape, size, expected):
    assert infer_layout(shape, size, batch=2) == expected


@pytest.mark.parametrize(
    ("shape", "size", "reason"),
    [
        ((2, 1000), (224, 224), "no spatial axes"),
        ((2, 512, 1, 1), (224, 224), "1×1"),
        ((2, 8, 101, 32), (160, 160), "not laid out like a 160×160 image"),  # q per head
        ((2, 197, 197, 3), (224, 224), "not laid out like"),  # attention, channels-last
        ((128, 7, 7, 96), (224, 224), "not the batch"),  # Swin/MaxViT windows
        ((2, 200, 64), (224, 224), "do not form a patch grid"),
        ((2, 1, 64), (224, 224), "do not form a patch grid"),  # a class token alone
    ],
)
def test_outputs_that_are_no_map_are_refused_with_a_reason(shape, size, reason):
    with pytest.raises(NotSpatialError, match=reason):
        infer_layout(shape, size, batch=2)


def test_the_declared_prefix_count_wins_over_the_search():
    # 1 + 14×14 tokens, but the model says there are none: 197 tokens form no grid then, so the
    # count is searched; with a count that fits, it is used as declared.
    assert infer_layout((1, 197, 8), (224, 224), prefix=0).prefix == 1
    assert infer_layout((1, 200, 8), (224, 224), prefix=4) == Layout("tokens", (14, 14), 4)
    # A class token and 4 registers (DINOv2): read from the model, never guessed.
    assert infer_layout((1, 261, 8), (224, 224), prefix=5) == Layout("tokens", (16, 16), 5)
    with pytest.raises(NotSpatialError, match="do not form a patch grid"):
        infer_layout((1, 261, 8), (224, 224))


def test_a_cube_is_channels_last_only_after_a_layer_that_works_on_the_last_axis():
    assert infer_layout((1, 7, 7, 7), (224, 224)).kind == "nchw"
    assert infer_layout((1, 7, 7, 7), (224, 224), module=nn.LayerNorm(7)).kind == "nhwc"
    assert infer_layout((1, 7, 7, 7), (224, 224), module=nn.Linear(3, 7)).kind == "nhwc"


@pytest.mark.parametrize(
    "layout",
    [Layout("nchw", (3, 4)), Layout("nhwc", (3, 4)), Layout("tokens", (3, 4), 2)],
    ids=lambda layout: layout.kind,
)
def test_to_map_and_back_is_the_identity_and_keeps_the_prefix_tokens(layout):
    native = {
        "nchw": torch.randn(2, 5, 3, 4),
        "nhwc": torch.randn(2, 3, 4, 5),
        "tokens": torch.randn(2, 2 + 12, 5),
    }[layout.kind]
    maps = layout.to_map(native)
    assert maps.shape == (2, 5, 3, 4)
    torch.testing.assert_close(layout.from_map(maps, like=native), native)
    if layout.kind == "tokens":  # patch (row r, column c) is token prefix + r·w + c
        torch.testing.assert_close(maps[:, :, 1, 2], native[:, 2 + 1 * 4 + 2])
        changed = layout.from_map(torch.zeros_like(maps), like=native)
        torch.testing.assert_close(changed[:, :2], native[:, :2])
        assert not changed[:, 2:].any()


class Tokens(nn.Module):
    def __init__(self, **tokens: int):
        super().__init__()
        for name, count in tokens.items():
            setattr(self, name, nn.Parameter(torch.zeros(1, count, 8)))
        self.norm = nn.LayerNorm(8)


def test_the_prefix_count_is_read_from_the_model_innermost_first():
    import timm
    import torchvision

    def prefix(model: nn.Module, layer: str) -> int | None:
        return declared_prefix_tokens(resolve_layer(model, layer).path)

    assert prefix(timm.create_model("test_vit"), "blocks.0.norm1") == 1
    torchvision_vit = torchvision.models.vit_b_16(weights=None)
    assert prefix(torchvision_vit, "encoder.layers.encoder_layer_0") == 1
    assert prefix(Tokens(cls_token=1, dist_token=1, reg_token=4), "norm") == 6
    wrapper = nn.Sequential(nn.Identity(), Tokens(cls_token=1))
    assert prefix(wrapper, "1.norm") == 1
    wrapper.num_prefix_tokens = 5  # the outer module's count yields to the inner one's
    assert prefix(wrapper, "1.norm") == 1 and prefix(wrapper, "0") == 5
    assert prefix(nn.Sequential(nn.Conv2d(3, 3, 1)), "0") is None
