"""ShapesSegNet: the demo classifier's convolutional stages with a small segmentation head.

Built by `benchmarks/seg_demo.py`, which starts the backbone from the embedded `demo:shapes`
weights, trains the whole network on the demo scenes' masks and saves a state_dict; the CLI
loads it as your own model:

    gradcam explain scene.png -m benchmarks/seg_demo_model.py:ShapesSegNet --weights W.pt \\
        --labels labels.txt --task segmentation --input-size 128 \\
        --mean 0.5 0.5 0.5 --std 0.25 0.25 0.25 -t circle

Output as torchvision's segmentation models give it: {"out": logits [B, 5, H, W]} at the
input's size, classes in LABELS' order (background first). The head is FCN-8s-like: the
8×8 last stage, upsampled and summed with projections of the 16×16 and 32×32 stages, then
bilinear to the input. Layers worth explaining: `backbone.21` (the last stage's ReLU, 8×8),
`backbone.17` (16×16), `backbone.13` (32×32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from gradcam_cli.demo.model import PREPROCESS, ShapesNet
from gradcam_cli.demo.scenes import CLASSES

__all__ = ["ShapesSegNet", "LABELS", "PREPROCESS", "SKIPS", "backbone_state"]

LABELS = ["background", *CLASSES]
# backbone indices whose outputs the head reads: the ReLUs before the 16×16 and 8×8 poolings
SKIPS = (13, 17)


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class ShapesSegNet(nn.Module):
    """ShapesNet's `features` as `backbone` (same indices, so its weights load as they are),
    then a decoder over the 8×8, 16×16 and 32×32 maps."""

    def __init__(self, num_classes: int = len(LABELS), width: int = 16, decoder: int = 32):
        super().__init__()
        self.backbone = ShapesNet(width=width).features
        w = 4 * width  # channels of the three stages the head reads
        self.top = _conv(w, decoder)
        self.lateral = nn.ModuleList([nn.Conv2d(w, decoder, 1) for _ in SKIPS])
        self.smooth = nn.ModuleList([_conv(decoder, decoder) for _ in SKIPS])
        self.classifier = nn.Conv2d(decoder, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.forward_from(x, 0, x.shape[-2:])}

    def forward_from(self, x: torch.Tensor, start: int, size: Sequence[int]) -> torch.Tensor:
        """Logits at `size` from `x`, the output of backbone[:start] (start=0: the image);
        training reads the frozen first stages' output once and starts here."""
        taps = {}
        for index, module in enumerate(self.backbone[start:], start):
            x = module(x)
            if index in SKIPS:
                taps[index] = x
        y = self.top(x)
        for index, lateral, smooth in zip(
            reversed(SKIPS), reversed(self.lateral), reversed(self.smooth), strict=True
        ):
            skip = taps[index]
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = smooth(y + lateral(skip))
        logits = self.classifier(y)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def backbone_state(classifier_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `backbone.*` part of a ShapesSegNet state_dict, from a ShapesNet one (`features.*`)."""
    prefix = "features."
    return {
        "backbone." + key[len(prefix) :]: value
        for key, value in classifier_state.items()
        if key.startswith(prefix)
    }
