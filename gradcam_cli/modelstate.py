"""Leave the caller's model as we found it: modes, requires_grad, hooks and timm's fused-attention
switch, even on errors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["frozen_eval", "removing", "unfused_attention"]


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the call; every flag restored afterwards.

    Frozen parameters are what makes the split cheap: with nothing upstream of the target layer
    requiring grad, autograd records nothing there, so the backbone costs what inference costs.
    """
    training = [(module, module.training) for module in model.modules()]
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in requires_grad:
            param.requires_grad_(False)
        yield model
    finally:
        for module, flag in training:
            module.training = flag
        for param, flag in requires_grad:
            param.requires_grad_(flag)


@contextmanager
def removing(handles: list[RemovableHandle]) -> Iterator[list[RemovableHandle]]:
    """Remove every hook registered into `handles`, whatever happens inside."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()


@contextmanager
def unfused_attention(modules: Iterable[nn.Module]) -> Iterator[None]:
    """timm attention modules with `fused_attn` off for the call (the fused kernel never forms
    the attention weights that the attention methods read); every flag restored afterwards."""
    flags = [(module, module.fused_attn) for module in modules]
    try:
        for module, _ in flags:
            module.fused_attn = False  # type: ignore[assignment]  # a plain bool attribute
        yield
    finally:
        for module, flag in flags:
            module.fused_attn = flag  # type: ignore[assignment]
