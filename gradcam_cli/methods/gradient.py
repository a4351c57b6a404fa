"""The gradient family: channel (or position) weights read from g = ∂y/∂A, a few lines each;
and CAM, whose weights are the linear head's, read from the gradient once the head is checked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import LayerError
from .base import CamMethod, LayerView, register_method

if TYPE_CHECKING:
    from torch import Tensor


@register_method
class GradCAM(CamMethod):
    """Selvaraju et al. 2017: channel weights are the spatial mean of the gradient."""

    name = "gradcam"
    paper = "Selvaraju et al. 2017"
    summary = "Grad-CAM: channel weights are the mean gradient"
    formula = "ReLU(Σ_k α_k A_k), α_k = mean_ij g_kij"

    def weights(self, view: LayerView, rank: int) -> Tensor:
        return view.gradients[rank].float().mean(dim=(2, 3))


@register_method
class GradCAMPlusPlus(CamMethod):
    """Chattopadhay et al. 2018, eq. 19 (the higher derivatives of exp(y) written with g)."""

    name = "gradcam++"
    paper = "Chattopadhay et al. 2018"
    summary = "Grad-CAM++: positive gradients weighted per position"
    formula = "ReLU(Σ_k w_k A_k), w_k = Σ_ij a_kij ReLU(g_kij), a = g² / (2g² + g³ Σ_ab A_kab)"

    def weights(self, view: LayerView, rank: int) -> Tensor:
        g, a = view.gradients[rank].float(), view.activations.float()
        g2 = g * g
        alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + 1e-6)
        alpha = alpha * (g != 0)  # no gradient, no weight (pytorch-grad-cam does the same)
        return (alpha * g.clamp(min=0)).sum(dim=(2, 3))


@register_method
class XGradCAM(CamMethod):
    """Fu et al. 2020: gradients weighted by the normalised activation."""

    name = "xgradcam"
    paper = "Fu et al. 2020"
    summary = "XGrad-CAM: gradients weighted by the normalised activation"
    formula = "ReLU(Σ_k w_k A_k), w_k = Σ_ij g_kij A_kij / Σ_ij A_kij"

    def weights(self, view: LayerView, rank: int) -> Tensor:
        g, a = view.gradients[rank].float(), view.activations.float()
        return (g * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + 1e-7)


@register_method
class LayerCAM(CamMethod):
    """Jiang et al. 2021: positive gradients as per-position weights."""

    name = "layercam"
    paper = "Jiang et al. 2021"
    summary = "LayerCAM: positive gradients as per-position weights"
    formula = "ReLU(Σ_k ReLU(g_k) ⊙ A_k)"

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.gradients[rank].float().clamp(min=0) * view.activations.float()


@register_method
class HiResCAM(CamMethod):
    """Draelos & Carin 2020: gradient times activation, position by position."""

    name = "hirescam"
    paper = "Draelos & Carin 2020"
    summary = "HiResCAM: gradient ⊙ activation, summed over channels"
    formula = "ReLU(Σ_k g_k ⊙ A_k)"

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.gradients[rank].float() * view.activations.float()


@register_method
class GradCAMElementWise(CamMethod):
    """pytorch-grad-cam's element-wise Grad-CAM: the ReLU before the channel sum."""

    name = "gradcam-elementwise"
    paper = "pytorch-grad-cam's variant"
    summary = "element-wise Grad-CAM: ReLU of gradient ⊙ activation, then the sum"
    formula = "ReLU(Σ_k ReLU(g_k ⊙ A_k))"

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return (view.gradients[rank].float() * view.activations.float()).clamp(min=0)


@register_method
class CAM(CamMethod):
    """Zhou et al. 2016, for models whose head is global average pooling + linear.

    For such a head, g_kij = W_ck / Z at every position, so W_ck = Z · mean_ij g_kij exactly
    (article 001): the weights are read from the gradient, and the head is first checked to be
    of that kind, numerically, on the actual activations: the gradient must not vary over
    positions, and the head must be affine in A. Anything else is refused with a hint.
    """

    name = "cam"
    paper = "Zhou et al. 2016"
    summary = "CAM: the linear classifier's weights, for a global-average-pool + linear head"
    formula = "ReLU(Σ_k W_ck A_k), W = the head's linear weights (= Z · mean_ij g_kij, checked)"
    uses_head = True
    requires_gap_linear_head = True

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        check_gap_linear_head(view, rank)
        g, a = view.gradients[rank].float(), view.activations.float()
        z = a.shape[2] * a.shape[3]
        return g.mean(dim=(2, 3), keepdim=True) * z * a


def check_gap_linear_head(view: LayerView, rank: int, tolerance: float = 1e-3) -> None:
    """Raise LayerError unless y is Σ_k W_ck · mean_ij A_kij + b after this layer.

    An affine function of A whose gradient does not vary over positions is GAP + linear, so:
    g must be constant over positions at A, and y(A + D) - y(A) must equal Σ g·D for moves D
    of both signs: one that varies over positions, at A's scale, and channel-constant ones at 1,
    10 and 100 times the pooled features' scale — big enough that a ReLU or a norm after the
    pooling cannot stay in a linear stretch (averaging over positions shrinks the first kind).
    """
    import torch

    g = view.gradients[rank].float()
    a = view.activations.float()
    spread = (g - g.mean(dim=(2, 3), keepdim=True)).abs().amax()
    varies = bool(spread > tolerance * g.abs().amax() + 1e-12)
    targets = view.targets[:, rank : rank + 1]
    before = view.scores.float().gather(1, targets)[:, 0]
    index = torch.arange(a.shape[0], device=a.device)
    off_by = []
    for move in _probe_moves(a):
        after = view.head((a + move).to(view.activations.dtype), index).float()
        change = after.gather(1, targets)[:, 0] - before
        predicted = (g * move).sum(dim=(1, 2, 3))
        bound = tolerance * (g.abs() * move.abs()).sum(dim=(1, 2, 3)) + 1e-6
        off_by.append(bool(((change - predicted).abs() > bound).any()))
    if varies or any(off_by):
        what = "its gradient varies over positions" if varies else "it is not linear in A"
        raise LayerError(
            f"method='cam' needs a head that is global average pooling followed by linear "
            f"layers after layer '{view.layer}' (CAM's architecture), and this one is not "
            f"({what}); use method='gradcam', which equals CAM up to a factor on such heads "
            "and works for any head"
        )


def _probe_moves(a: Tensor) -> Tensor:
    """Seeded moves of A [B, C, h, w] for the affinity check: 7 of them, [7, B, C, h, w]."""
    import torch

    generator = torch.Generator().manual_seed(0)
    spatial = torch.randn(a.shape, generator=generator).to(a.device)
    spatial = spatial * a.flatten(1).std(dim=1).clamp(min=1e-6)[:, None, None, None]
    pooled = a.mean(dim=(2, 3))
    pooled_scale = (pooled.abs().mean(dim=1) + pooled.std(dim=1)).clamp(min=1e-6)
    direction = torch.randn(pooled.shape, generator=generator).to(a.device)
    flat = (direction * pooled_scale[:, None])[:, :, None, None].expand_as(a)
    moves = [spatial] + [sign * factor * flat for factor in (1.0, 10.0, 100.0) for sign in (1, -1)]
    return torch.stack(moves)
