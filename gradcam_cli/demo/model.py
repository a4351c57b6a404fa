"""ShapesNet: the small CNN behind `demo:shapes` (0.33 M parameters, an 8×8 final map).

Plain conv-BN-ReLU stages, then global average pooling and one linear layer: the CAM
architecture, so Grad-CAM on `features` equals CAM up to 1/Z and the demo can show both.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..preprocess import Preprocess
from .scenes import CLASSES

__all__ = ["ShapesNet", "INPUT_SIZE", "PREPROCESS", "WEIGHTS_PATH", "LABELS"]

INPUT_SIZE = 128
LABELS = list(CLASSES)
WEIGHTS_PATH = Path(__file__).with_name("shapes.safetensors")
# Scenes are square: shorter side to 128, centre crop 128 (a non-square photo loses its sides).
PREPROCESS = Preprocess(
    input_size=(INPUT_SIZE, INPUT_SIZE),
    resize_shorter=INPUT_SIZE,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    interpolation="bilinear",
)


def _stage(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ShapesNet(nn.Module):
    def __init__(self, num_classes: int = len(CLASSES), width: int = 16):
        super().__init__()
        w = width
        # Max pooling, not strided convolutions, between stages: a shape's evidence survives
        # pooling wherever it is, and training leaves its plateau several times sooner
        # (measured: strided versions stayed at chance for 5 epochs on most seeds).
        self.features = nn.Sequential(
            *_stage(3, w),
            nn.MaxPool2d(2),  # 64×64
            *_stage(w, 2 * w),
            nn.MaxPool2d(2),  # 32×32
            *_stage(2 * w, 2 * w),
            *_stage(2 * w, 4 * w),
            nn.MaxPool2d(2),  # 16×16
            *_stage(4 * w, 4 * w),
            nn.MaxPool2d(2),  # 8×8
            *_stage(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))
