"""CAM methods: each a few lines over the engine's activations A and gradients dA.

The registry is the one list of method names: the CLI's `--method` choices, its help text and
the README table all come from `METHODS`. This module does not import torch (methods only call
tensor methods), so `gradcam --help` can list the methods without paying for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .errors import UsageError, did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["CamMethod", "GradCAM", "METHODS", "register_method", "get_method"]

METHODS: dict[str, type[CamMethod]] = {}


def register_method(cls: type[CamMethod]) -> type[CamMethod]:
    """Class decorator: add a method to the registry under `cls.name`, refusing duplicates."""
    if cls.name in METHODS:
        raise ValueError(f"method name '{cls.name}' is registered twice")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> CamMethod:
    try:
        return METHODS[name]()
    except KeyError:
        raise UsageError(
            f"unknown --method '{name}'."
            + did_you_mean(name, METHODS)
            + f" Choose one of: {', '.join(METHODS)}"
        ) from None


class CamMethod:
    """A map from (A, dA), both [B, C, h, w], to [B, h, w] (float32, >= 0)."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __call__(self, activations: Tensor, gradients: Tensor) -> Tensor:
        raise NotImplementedError


@register_method
class GradCAM(CamMethod):
    """Selvaraju et al. 2017: channel weights are the spatial mean of the gradient."""

    name = "gradcam"
    summary = "Grad-CAM: ReLU(sum_k mean(dy/dA_k) * A_k)"

    def __call__(self, activations: Tensor, gradients: Tensor) -> Tensor:
        weights = gradients.float().mean(dim=(2, 3), keepdim=True)
        return (weights * activations.float()).sum(dim=1).clamp(min=0)
