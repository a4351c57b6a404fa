"""The attention methods (rollout, transformer attribution, LeGrad) and their capture.

Rollout and transformer attribution are checked against the papers' equations written out here,
on attention taken the plain way: timm's own `Attention` with `fused_attn` off, `retain_grad`
on its weights and a full backward through the model (a copy). LeGrad is checked against
torchcam in test_peers.py. Models are tiny and randomly initialised; nothing is downloaded.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from gradcam_cli.engine import explain_batch
from gradcam_cli.errors import LayerError
from gradcam_cli.layers import resolve_layer

SIZE = 64


def vit(name: str = "test_vit", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    kwargs.setdefault("patch_size", 16)
    return timm.create_model(name, pretrained=False, num_classes=5, img_size=SIZE, **kwargs).eval()


def deit_distilled() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, num_classes=5, img_size=SIZE,
        depth=3, embed_dim=48, num_heads=3,
    ).eval()  # fmt: skip


def torchvision_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=SIZE, patch_size=16, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=5,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision starts it at zero
    return model.eval()


def images(count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def explained(model, x, method, layer="blocks.-1.norm1", **kwargs):
    ref = resolve_layer(model, layer)
    result = explain_batch(model, x, [ref], method=method, **kwargs)
    return result, result.maps[str(ref)]


# -- the papers' equations, on attention taken the plain way --------------------------------------


def plain_attention(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None):
    """Every block's A [B, heads, N, N] from timm's own Attention with fused_attn off, and
    with a target [B], ∂(Σ_b y_b)/∂A from a full backward of a copy of the model."""
    model = copy.deepcopy(model)
    kept = []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, i, out: kept.append(out))
    if target is None:
        with torch.no_grad():
            model(x)
        return kept, None
    logits = model(x)
    for weights in kept:
        weights.retain_grad()
    logits.gather(1, target[:, None]).sum().backward()
    return [w.detach() for w in kept], [w.grad for w in kept]


def rollout_equation(weights, readout=(0,), prefix=1, fusion="mean"):
    """Abnar & Zuidema 2020: Ã = 0.5·E_h A + 0.5·I per block (rows renormalised for max/min
    fusion), R = Ã_L ⋯ Ã_1; the read-out rows of R over the patch columns."""
    joint = None
    for a in weights:
        fused = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[fusion]
        mixed = 0.5 * fused + 0.5 * torch.eye(fused.shape[-1])
        mixed = mixed / mixed.sum(-1, keepdim=True)
        joint = mixed if joint is None else mixed @ joint
    return joint[:, list(readout), prefix:].mean(1)


def attribution_equation(weights, gradients, readout=(0,), prefix=1):
    """Chefer, Gur & Wolf 2021, eq. 5-6: R = I; R ← R + E_h[(∇A ⊙ A)⁺] · R."""
    relevance = torch.eye(weights[0].shape[-1]).repeat(weights[0].shape[0], 1, 1)
    for a, g in zip(weights, gradients, strict=True):
        relevance = relevance + (g * a).clamp(min=0).mean(1) @ relevance
    return relevance[:, list(readout), prefix:].mean(1)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_is_the_papers_product_for_every_head_fusion(fusion):
    from gradcam_cli.methods import get_method

    model, x = vit(), images()
    _, maps = explained(model, x, get_method("rollout", head_fusion=fusion), topk=2)
    weights, _ = plain_attention(model, x)
    expected = rollout_equation(weights, fusion=fusion).unflatten(1, (4, 4))
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(maps[:, 1], maps[:, 0])  # class-agnostic: one map for every rank


def test_transformer_attribution_is_chefers_rule_with_a_full_backward():
    model, x = vit(), images()
    result, maps = explained(model, x, "transformer-attribution", topk=2)
    for rank in range(2):
        target = result.targets[:, rank]
        weights, gradients = plain_attention(model, x, target)
        expected = attribution_equation(weights, gradients).unflatten(1, (4, 4))
        torch.testing.assert_close(maps[:, rank], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(maps[:, 0], maps[:, 1])  # class-specific


def test_deit_distilled_reads_its_class_and_distillation_rows_and_drops_both_prefixes():
    model, x = deit_distilled(), images()
    assert model.num_prefix_tokens == 2
    result, maps = explained(model, x, "rollout")
    assert maps.shape == (2, 1, 4, 4)  # 18 tokens: 2 prefix + 4×4 patches
    weights, _ = plain_attention(model, x)
    expected = rollout_equation(weights, readout=(0, 1), prefix=2).unflatten(1, (4, 4))
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-4, atol=1e-6)
    _, attributed = explained(model, x, "transformer-attribution")
    weights, gradients = plain_attention(model, x, result.targets[:, 0])
    expected = attribution_equation(weights, gradients, (0, 1), prefix=2).unflatten(1, (4, 4))
    torch.testing.assert_close(attributed[:, 0], expected, rtol=1e-4, atol=1e-6)


def test_a_layer_in_an_earlier_block_rolls_out_the_blocks_up_to_it():
    model, x = vit(), images(1)
    _, maps = explained(model, x, "rollout", layer="blocks.2.norm1")
    weights, _ = plain_attention(model, x)
    expected = rollout_equation(weights[:3]).unflatten(1, (4, 4))
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-4, atol=1e-6)


# -- torchvision: nn.MultiheadAttention asked for its weights ------------------------------------


def test_torchvision_vit_weights_are_captured_and_its_output_is_unchanged():
    model, x = torchvision_vit(), images()
    with torch.no_grad():
        expected_scores = model(x)
    result, maps = explained(model, x, "rollout", layer="encoder.layers.-1.ln_1")
    torch.testing.assert_close(result.scores, expected_scores, rtol=1e-5, atol=1e-5)
    weights = []  # each block's per-head weights, asked for by hand
    with torch.no_grad():
        tokens = model.encoder.dropout(model._process_input(x))
        tokens = torch.cat([model.class_token.expand(len(x), -1, -1), tokens], 1)
        tokens = tokens + model.encoder.pos_embedding
        for block in model.encoder.layers:
            normed = block.ln_1(tokens)
            _, w = block.self_attention(
                normed, normed, normed, need_weights=True, average_attn_weights=False
            )
            weights.append(w)
            tokens = block(tokens)
    expected = rollout_equation(weights).unflatten(1, (4, 4))
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-4, atol=1e-6)
    assert not any(block.self_attention._forward_hooks for block in model.encoder.layers)


def test_multihead_attention_returns_what_its_caller_asked_for():
    """The pre-hook asks for per-head weights; the caller still gets what it asked for."""
    from gradcam_cli.attention_capture import record_attention

    model = torchvision_vit()
    attention = model.encoder.layers[0].self_attention
    tokens = torch.randn(1, 17, 32)
    answers = []
    with record_attention(model, "rollout", gradients=False):
        for asked in ({}, {"need_weights": False}, {"average_attn_weights": False}):
            answers.append(attention(tokens, tokens, tokens, **asked))
    plain = [attention(tokens, tokens, tokens, **asked) for asked in ({}, {"need_weights": False})]
    torch.testing.assert_close(answers[0][0], plain[0][0], rtol=1e-5, atol=1e-6)
    assert answers[0][1].shape == (1, 17, 17)  # averaged over heads, as by default
    assert answers[1][1] is None
    assert answers[2][1].shape == (1, 2, 17, 17)


# -- the model is left as found --------------------------------------------------------------------


def fused_flags(model: nn.Module) -> list[bool]:
    return [block.attn.fused_attn for block in model.blocks]


def test_fused_attention_is_restored_after_the_call_and_after_an_exception():
    model, x = vit(), images(1)
    model.blocks[1].attn.fused_attn = False  # the caller's own choice, kept as well
    before = fused_flags(model)
    assert before[0] is True
    explained(model, x, "legrad")
    assert fused_flags(model) == before

    def fail(*_):
        raise RuntimeError("the head failed")

    model.head.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="the head failed"):
        explained(model, x, "transformer-attribution")
    assert fused_flags(model) == before
    assert not any(b.attn.attn_drop._forward_hooks or b._forward_pre_hooks for b in model.blocks)
    assert all(p.requires_grad for p in model.parameters())


class Doubled(nn.Module):
    """A wrapper that changes the ViT's scores: LeGrad's projection would not be the model's."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)


def test_legrad_refuses_a_wrapper_whose_scores_are_not_the_vits_head():
    model, x = Doubled(vit()), images(1)
    with pytest.raises(LayerError, match="do not reproduce this model's scores"):
        explained(model, x, "legrad", layer="inner.blocks.-1.norm1")
    _, maps = explained(model, x, "rollout", layer="inner.blocks.-1.norm1")  # no head needed
    assert maps.shape == (1, 1, 4, 4)


def test_non_transformers_are_refused_with_what_to_use_instead():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    with pytest.raises(LayerError, match="method='rollout' reads the attention.*method='gradcam'"):
        explained(model, images(1), "rollout", layer="layer4")


def test_a_layer_outside_the_token_grid_is_refused():
    model = vit()
    with pytest.raises(LayerError, match="choose a block's norm1"):
        explained(model, images(1), "rollout", layer="patch_embed.proj")


# -- the CLI ----------------------------------------------------------------------------------


def test_the_cli_explains_a_vit_with_rollout_and_refuses_a_cnn_before_any_image(tmp_path):
    import json

    from helpers import invoke

    scene = str(Path(__file__).parents[1] / "sample_images" / "scenes" / "circle.png")
    common = ("--no-pretrained", "--input-size", "64", "--json")
    result = invoke(
        "explain", scene, "-m", "timm:test_vit", *common, "--method", "rollout",
        "--head-fusion", "max", "--out", str(tmp_path / "vit"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "rollout" and report["method_options"]["head_fusion"] == "max"
    assert report["layers"] == ["blocks.5.norm1"]
    cnn = invoke(
        "explain", scene, "-m", "torchvision:resnet18", *common, "--method", "legrad",
        "--out", str(tmp_path / "cnn"),
    )  # fmt: skip
    assert cnn.exit_code == 2
    assert "--method legrad reads the attention weights" in cnn.output
    assert "use --method gradcam" in cnn.output
