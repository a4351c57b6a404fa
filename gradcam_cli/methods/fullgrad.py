"""FullGrad: the input-gradient and every bias's gradient, at input resolution (a full backward)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import CamMethod, LayerView, register_method
from .scaling import unit_range

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module


@register_method
class FullGrad(CamMethod):
    """Srinivas & Fleuret 2019 (Full-Gradient Representation for Neural Network Visualization):
    y = ∂y/∂x · x + Σ_b ∂y/∂b · b exactly, for a ReLU network; the map shows where both parts lie.

    The input part |∂y/∂x ⊙ x| and, for every layer with a bias b (each Conv2d, and each plain
    BatchNorm2d with its running statistics folded in, b = β − γμ/√(σ² + ε), as the paper's code
    and pytorch-grad-cam do), the bias part |b ⊙ ∂y/∂z| (z: the layer's output, before any
    in-place op after it), each channel min-max scaled, summed over channels, bilinearly
    upsampled to the input and summed. It needs one backward through the whole model to the
    pixels (like guided backpropagation), and it does not depend on the target layer.
    """

    name = "fullgrad"
    paper = "Srinivas & Fleuret 2019"
    summary = "FullGrad: input-gradient ⊙ input plus every conv/BN bias's gradient (full backward)"
    formula = (
        "Σ_RGB s(abs(∂y/∂x ⊙ x)) + Σ_layers up(Σ_c s(abs(b_c ∂y/∂z_c))), s = min-max per "
        "channel; at input resolution"
    )
    needs_gradients = False
    full_backward = True
    supports_eigen_smooth = False

    def maps(self, view: LayerView) -> Tensor:
        assert view.backward_maps is not None, "the engine computes them (full_backward)"
        return view.backward_maps

    def backward_maps(
        self,
        model: Module,
        images: Tensor,
        targets: Tensor,
        scores_of: Callable[[Tensor], Tensor],
    ) -> Tensor:
        import torch

        from ..modelstate import removing

        recorder = _BiasOutputs()
        pixels = images.detach().requires_grad_(True)  # a new tensor: the caller's is untouched
        handles: list = []
        with removing(handles):
            for module in bias_layers(model):
                handles.append(module.register_forward_hook(recorder))
            scores = scores_of(pixels)
        ranks = targets.shape[1]
        maps = []
        for rank in range(ranks):
            selected = scores.gather(1, targets[:, rank : rank + 1]).sum()
            grads = torch.autograd.grad(
                selected,
                [pixels, *recorder.outputs],
                retain_graph=rank < ranks - 1,
                allow_unused=True,
            )
            maps.append(_full_gradient_map(pixels, grads[0], recorder.biases, grads[1:]))
        return torch.stack(maps, 1)


def bias_layers(model: Module) -> list[Module]:
    """The layers whose bias FullGrad counts: every Conv2d with a bias (its subclasses too:
    a bias added after a convolution is one still), and every plain BatchNorm2d with a bias
    and running statistics (not a subclass: timm's BatchNormAct2d applies its activation
    inside, so its output is no longer the bias's)."""
    from torch import nn

    def counts(module: nn.Module) -> bool:
        if isinstance(module, nn.Conv2d):
            return module.bias is not None
        return (
            type(module) is nn.BatchNorm2d
            and module.bias is not None
            and module.running_mean is not None
        )

    return [module for module in model.modules() if counts(module)]


def effective_bias(module: Module) -> Tensor:
    """A layer's bias per output channel; a BatchNorm2d's with its statistics folded in."""
    import torch
    from torch import nn

    bias = module.bias
    assert isinstance(bias, torch.Tensor), "bias_layers keeps layers with a bias"
    if not isinstance(module, nn.BatchNorm2d):
        return bias
    mean, variance = module.running_mean, module.running_var
    assert mean is not None and variance is not None, "bias_layers keeps those with statistics"
    return bias - mean * module.weight / torch.sqrt(variance + module.eps)


class _BiasOutputs:
    """Forward hook: keeps each bias layer's output (every call of it) and hands the rest of
    the model a copy, so that an in-place op after the layer (ResNet's ReLU, its `+=`) leaves
    the kept output, and so its gradient, the layer's own."""

    def __init__(self) -> None:
        self.outputs: list[Tensor] = []
        self.biases: list[Tensor] = []

    def __call__(self, module: Module, args: object, output: object) -> object:
        import torch

        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        self.outputs.append(output)
        self.biases.append(effective_bias(module).detach())
        return output.clone()


def _full_gradient_map(
    pixels: Tensor,
    pixel_gradient: Tensor | None,
    biases: list[Tensor],
    output_gradients: tuple[Tensor | None, ...],
) -> Tensor:
    """[B, H, W]: the input part plus every bias part, each channel min-max scaled."""
    import torch
    import torch.nn.functional as F

    size = tuple(pixels.shape[2:])
    total = torch.zeros(pixels.shape[0], *size, device=pixels.device)
    if pixel_gradient is not None:
        total += unit_range((pixel_gradient * pixels.detach()).float().abs()).sum(1)
    for bias, gradient in zip(biases, output_gradients, strict=True):
        if gradient is None:  # the target's score does not depend on this layer
            continue
        part = (bias.float()[None, :, None, None] * gradient.float()).abs()
        # Bilinear upsampling is linear: the channels' sum upsampled is their upsampled sum.
        summed = unit_range(part).sum(1, keepdim=True)
        total += F.interpolate(summed, size=size, mode="bilinear", align_corners=False)[:, 0]
    return total
