"""Guided backpropagation: ReLUs that pass only positive gradients back, and its picture.

`guided_relus()` makes every ReLU inside it guided (Springenberg et al. 2015): forward as usual,
backward `grad_out.clamp(min=0) * (x > 0)`. It is a torch function mode, not a module swap or a
module hook: it catches `nn.ReLU` modules (which call `F.relu`) *and* functional calls —
`F.relu`, `torch.relu`, `Tensor.relu` and their in-place forms, such as the
`F.relu(features, inplace=True)` at the end of torchvision's DenseNet — and it changes nothing in
the model, so there is nothing to restore. pytorch-grad-cam and Captum replace or hook `nn.ReLU`
modules only, so on models with functional ReLUs their guided gradients differ from ours (and
from the paper's definition). Other activations (ReLU6, GELU, SiLU …) pass gradients unchanged,
as in both peers.

`guided_picture` turns a signed [3, H, W] gradient into an RGBA image on the user's photo.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode

from .render import place_map

__all__ = ["GuidedReLU", "guided_relus", "guided_rgb", "guided_picture"]

_RELUS = {F.relu, torch.relu, torch.Tensor.relu}
_RELUS_INPLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}


class GuidedReLU(torch.autograd.Function):
    """relu(x) forward; backward passes a gradient only where it and the input are positive."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)
        # The output, not x: an in-place caller overwrites x (and out > 0 exactly where x > 0).
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


class _GuidedReLUMode(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.relu:
            inplace = kwargs.get("inplace", args[1] if len(args) > 1 else False)
            return self._relu(args[0], inplace)
        if func in _RELUS:
            return self._relu(args[0], inplace=False)
        if func in _RELUS_INPLACE:
            return self._relu(args[0], inplace=True)
        return func(*args, **kwargs)

    def _relu(self, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        self.calls += 1
        out = GuidedReLU.apply(x)
        if not inplace:
            return out
        # In place: x takes the value, and its history now runs through the guided backward.
        return x.copy_(out)


@contextmanager
def guided_relus() -> Iterator[_GuidedReLUMode]:
    """Every ReLU called inside is guided; `.calls` counts them."""
    mode = _GuidedReLUMode()
    with mode:
        yield mode


def guided_rgb(gradient: np.ndarray, spread: float = 0.1) -> np.ndarray:
    """A signed gradient [3, H, W] → RGB values [H, W, 3] in [0, 1], grey where it is zero.

    0.5 + spread · g / rms(g), over all channels and pixels together (one scale, so the colours
    keep their balance): zero gradient is mid-grey, one root-mean-square is ±0.1, and values
    past ±5 rms are clipped. This is the Keras example's `deprocess_image` (article 002) and
    pytorch-grad-cam's, centred on zero instead of the mean, so grey always means "no effect".
    """
    values = np.nan_to_num(np.asarray(gradient, dtype=np.float64))
    rms = float(np.sqrt(np.mean(values * values))) if values.size else 0.0
    scaled = values * (spread / rms) if rms > 0 else np.zeros_like(values)
    return np.clip(0.5 + scaled, 0.0, 1.0).transpose(1, 2, 0).astype(np.float32)


def guided_picture(
    gradient: np.ndarray,
    photo_size: tuple[int, int],
    box: tuple[float, float, float, float],
    interpolation: str = "bilinear",
) -> Image.Image:
    """The guided image on the photo's pixel grid (RGBA): the crop the model saw, through the
    same geometry as the maps (`render.place_map`); transparent outside it."""
    rgb = guided_rgb(gradient)
    channels = [place_map(rgb[..., c], photo_size, box, interpolation) for c in range(3)]
    inside = channels[0][1]
    pixels = np.stack([values for values, _ in channels], axis=-1)
    rgba = np.zeros((*inside.shape, 4), dtype=np.uint8)
    rgba[..., :3] = np.rint(pixels * 255.0).astype(np.uint8)
    rgba[..., 3] = np.where(inside, 255, 0)
    rgba[~inside, :3] = 0
    return Image.fromarray(rgba, "RGBA")
