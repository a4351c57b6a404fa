"""Guided backpropagation: ReLUs that pass only positive gradients back.

`guided_relus()` makes every ReLU inside it guided (Springenberg et al. 2015): forward as usual,
backward `grad_out.clamp(min=0) * (x > 0)`. It is a torch function mode, not a module swap or a
module hook: it catches `nn.ReLU` modules (which call `F.relu`) *and* functional calls —
`F.relu`, `torch.relu`, `Tensor.relu` and their in-place forms, such as the
`F.relu(features, inplace=True)` at the end of torchvision's DenseNet — and it changes nothing in
the model, so there is nothing to restore. pytorch-grad-cam and Captum replace or hook `nn.ReLU`
modules only, so on models with functional ReLUs their guided gradients differ from ours (and
from the paper's definition). Other activations (ReLU6, GELU, SiLU …) pass gradients unchanged,
as in both peers.

The guided gradient is drawn by `render.guided_picture`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["GuidedReLU", "guided_relus"]

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
