"""ShapesViT: a small timm VisionTransformer for the demo scenes, trained by `vit_demo.py`.

A plain timm `VisionTransformer` (class token, 4 blocks of 3 heads, width 96, 128×128 input, an
8×8 token grid) whose patch embedding is a hybrid stem, as in the ViT paper's hybrids (R50 +
ViT): the demo CNN's first four convolutional stages (`demo:shapes`' `features[:15]`, its
shipped weights, frozen; 16×16×64) and a trainable 2×2 stride-2 convolution to the tokens.
Trained from scratch instead, with timm's 16×16 projection or with four stride-2
convolutions, it was still at chance (loss ln 4, one thread, AdamW at 1e-3 or 2e-3, batches
of 64) after 600 steps (resp. 200), minutes of this shared 2-core machine; with the frozen
stem only the tokens' projection and the transformer learn: 99 % on the training batches
in 600 steps, about 4 minutes. The blocks, their timm `Attention` and the head are
timm's own, which is what the attention methods read. The CLI loads it as your own model
(the demo's preprocessing must be given):

    gradcam explain scene.png -m benchmarks/vit_demo_model.py:ShapesViT \\
        --weights OUT/shapes_vit.pt --labels OUT/labels.txt --input-size 128 \\
        --mean 0.5 0.5 0.5 --std 0.25 0.25 0.25 --method transformer-attribution
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from gradcam_cli.demo.model import PREPROCESS, WEIGHTS_PATH, ShapesNet
from gradcam_cli.demo.scenes import CLASSES
from gradcam_cli.sources import read_state_dict

__all__ = ["ShapesViT", "LABELS", "PREPROCESS", "frozen_stem", "from_stem_features"]

LABELS = list(CLASSES)
FROZEN = 15  # ShapesNet.features[:15]: four conv-BN-ReLU stages and three max-pools → 16×16


class DemoStem(timm.layers.PatchEmbed):
    """timm's PatchEmbed (its token layout, grid and norm) with `proj` the demo CNN's first
    stages, frozen, then a trainable 2×2 stride-2 convolution: stride 16 in all."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cnn = ShapesNet()
        cnn.load_state_dict(read_state_dict(WEIGHTS_PATH))
        stages = cnn.features[:FROZEN].requires_grad_(False)
        width = stages[-3].num_features  # the last stage's BatchNorm
        self.proj = nn.Sequential(stages, nn.Conv2d(width, self.proj.out_channels, 2, stride=2))


def ShapesViT(num_classes: int = len(CLASSES)) -> timm.models.VisionTransformer:  # noqa: N802  # a model factory, named as the CLI's file.py:ShapesViT
    return timm.models.VisionTransformer(
        img_size=128,
        patch_size=16,
        num_classes=num_classes,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=2.0,
        embed_layer=DemoStem,
    )


def frozen_stem(model: timm.models.VisionTransformer) -> nn.Module:
    """The frozen part of the stem: training computes it once per scene."""
    return model.patch_embed.proj[0]


def from_stem_features(
    model: timm.models.VisionTransformer, features: torch.Tensor
) -> torch.Tensor:
    """The model's logits from the frozen stem's output (timm's forward after it)."""
    tokens = model.patch_embed.proj[1](features).flatten(2).transpose(1, 2)
    tokens = model.patch_embed.norm(tokens)
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(tokens)))
    return model.forward_head(model.norm(model.blocks(tokens)))
