"""ShapesSegNet: the demo classifier's convolutional stages with a small segmentation head.

Built by `benchmarks/seg_demo.py`, which starts the backbone from the embedded `demo:shapes`
weights, trains the network on the demo scenes' masks and saves a state_dict; the CLI loads it
as your own model (the demo's preprocessing: 128×128, mean 0.5, std 0.25):

    gradcam explain scene.png -m benchmarks/seg_demo_model.py:ShapesSegNet --weights W.pt \\
        --labels labels.txt --task segmentation --input-size 128 \\
        --mean 0.5 0.5 0.5 --std 0.25 0.25 0.25 -t circle

Built like torchvision's FCN: a backbone, a `classifier` head on its last stage (8×8 for a
128×128 input), logits upsampled bilinearly to the input's size and returned as
{"out": logits [B, 5, H, W]}, classes in LABELS' order (background first). Layers worth
explaining: `backbone.21` (the last stage's ReLU, 8×8), `backbone.17` (16×16), `backbone.13`
(32×32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from gradcam_cli.demo.model import PREPROCESS, ShapesNet
from gradcam_cli.demo.scenes import CLASSES

__all__ = ["ShapesSegNet", "LABELS", "PREPROCESS", "backbone_state"]

LABELS = ["background", *CLASSES]


class ShapesSegNet(nn.Module):
    """ShapesNet's `features` as `backbone` (same indices, so its weights load as they are) and
    an FCN head on its last stage as torchvision's (without its dropout): conv 3×3-BN-ReLU,
    conv 1×1 to the classes."""

    def __init__(self, num_classes: int = len(LABELS), width: int = 16, inner: int = 32):
        super().__init__()
        self.backbone = ShapesNet(width=width).features
        channels = 4 * width  # the last stage's
        self.classifier = nn.Sequential(
            nn.Conv2d(channels, inner, 3, padding=1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(),
            nn.Conv2d(inner, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.logits(self.backbone(x), x.shape[-2:])}

    def logits(self, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """The head on the backbone's output, upsampled bilinearly to `size` (the input's)."""
        logits = self.classifier(features)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def backbone_state(classifier_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `backbone.*` part of a ShapesSegNet state_dict, from a ShapesNet one (`features.*`)."""
    prefix = "features."
    return {
        "backbone." + key[len(prefix) :]: value
        for key, value in classifier_state.items()
        if key.startswith(prefix)
    }
