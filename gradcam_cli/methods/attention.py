"""The attention family, for vision transformers: maps read from the attention weights of every
block (attention_capture.py captures them), laid on the patch grid of the target layer.

Notation: A^l [heads, N, N] is block l's post-softmax attention over N = P + h·w tokens (P
prefix tokens: class, distillation, registers), I the identity, E_h the mean over heads, y the
target's score (logit). A map is the row of the token the head reads (the class token; DeiT
distilled: the mean of its two) over the patch columns, reshaped to h×w.

What each costs with the split: rollout needs no gradient at all; transformer attribution
needs ∂y/∂A^l for every block, a backward through all the blocks (not the patch embedding);
LeGrad a short backward per block, from that block's own score to its attention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import LayerError
from .base import CamMethod, LayerView, MethodOption, register_method

if TYPE_CHECKING:
    from torch import Tensor

    from ..attention_capture import AttentionMaps

HEAD_FUSIONS = ("mean", "max", "min")


class AttentionMethod(CamMethod):
    """A method over every block's attention (LayerView.attention), not one layer's channels."""

    needs_gradients = False  # no gradient at the target layer: see attention_gradients
    needs_attention = True
    supports_eigen_smooth = False

    def maps(self, view: LayerView) -> Tensor:
        import torch

        attention = _attention(view, self.name)
        ranks = range(view.targets.shape[1])
        return torch.stack([self.map(attention, view, r).clamp(min=0) for r in ranks], 1)

    def map(self, attention: AttentionMaps, view: LayerView, rank: int) -> Tensor:
        """The map [B, h, w] of the target of rank `rank`."""
        raise NotImplementedError


@register_method
class AttentionRollout(AttentionMethod):
    """Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers": attention rollout.

    Each block's heads are fused (mean, as the paper; max or min with --head-fusion), the
    residual connection added as the identity and the rows renormalised (for the mean, the
    paper's 0.5·A + 0.5·I), and the blocks multiplied from the first: the class token's row of
    the product says how much of each patch token reached it. Class-agnostic: every target
    gets the same map. jacobgil's "discard ratio" (zeroing the weakest weights) is not part of
    the paper and not offered.
    """

    name = "rollout"
    paper = "Abnar & Zuidema 2020"
    summary = "attention rollout: the product of the blocks' attention (ViTs; class-agnostic)"
    formula = "R = Π_l norm(E_h A^l + I), map = R[cls, patches] (no class; ViTs)"
    options = (
        MethodOption(
            "head_fusion", "mean", "rollout: how the heads are fused", choices=HEAD_FUSIONS
        ),
    )

    def maps(self, view: LayerView) -> Tensor:
        """One map, whatever the target: computed once, repeated for every rank."""
        rolled = self.map(_attention(view, self.name), view, 0).clamp(min=0)
        return rolled[:, None].expand(-1, view.targets.shape[1], -1, -1).contiguous()

    def map(self, attention: AttentionMaps, view: LayerView, rank: int) -> Tensor:
        import torch

        fusion = str(self.settings["head_fusion"])
        first = attention.weights[0]
        identity = torch.eye(first.shape[-1], device=first.device)
        rollout = identity.expand(first.shape[0], -1, -1)
        for weights in attention.weights:
            fused = _fuse_heads(weights.detach().float(), fusion) + identity
            rollout = (fused / fused.sum(dim=-1, keepdim=True)) @ rollout
        return attention.patch_map(rollout)


@register_method
class TransformerAttribution(AttentionMethod):
    """Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability for Interpreting
    Bi-Modal and Encoder-Decoder Transformers", its self-attention rule (eq. 5-6).

    Relevance starts as the identity and accumulates every block's gradient-weighted attention,
    Ā^l = E_h[(∂y/∂A^l ⊙ A^l)⁺], as R ← R + Ā^l · R; the map is the class token's row of R over
    the patches. Not the CVPR 2021 "Transformer Interpretability Beyond Attention Visualization"
    (LRP relevance through every layer, with per-layer propagation rules), which is not
    implemented.
    """

    name = "transformer-attribution"
    paper = "Chefer, Gur & Wolf 2021 (ICCV)"
    summary = "transformer attribution: gradient-weighted attention, accumulated (ViTs)"
    formula = "R = I; R += E_h[(∂y/∂A^l ⊙ A^l)⁺]·R per block; map = R[cls, patches] (ViTs)"
    attention_gradients = True

    def map(self, attention: AttentionMaps, view: LayerView, rank: int) -> Tensor:
        import torch

        score = attention.selected(attention.scores, view.targets, rank)
        gradients = attention.gradients(score)
        first = attention.weights[0]
        relevance = torch.eye(first.shape[-1], device=first.device).expand(first.shape[0], -1, -1)
        for weights, gradient in zip(attention.weights, gradients, strict=True):
            if gradient is None:  # a block after the one the score is read from
                continue
            fused = (gradient.float() * weights.detach().float()).clamp(min=0).mean(dim=1)
            relevance = relevance + fused @ relevance
        return attention.patch_map(relevance)


@register_method
class LeGrad(AttentionMethod):
    """Bousselham et al. 2024, "LeGrad: An Explainability Method for Vision Transformers via
    Feature Formation Sensitivity", as torchcam 0.5.0 defines it.

    Every block l gets its own score: the ViT's final norm and head applied to the mean of the
    block's output tokens, s^l = head(norm(mean_n z^l_n)). Its gradient with respect to the
    block's attention, ReLU'd and averaged over heads and query tokens, gives each key patch's
    relevance; the blocks' maps are averaged. The attention itself is not multiplied in.
    """

    name = "legrad"
    paper = "Bousselham et al. 2024"
    summary = "LeGrad: each block's own score's positive gradient on its attention (ViTs)"
    formula = "mean_l mean_h,q ReLU(∂s^l/∂A^l)[keys = patches], s^l = head(norm(mean z^l)) (ViTs)"
    attention_gradients = True

    def maps(self, view: LayerView) -> Tensor:
        _check_the_head_reproduces_the_scores(_attention(view, self.name), self.name)
        return super().maps(view)

    def map(self, attention: AttentionMaps, view: LayerView, rank: int) -> Tensor:
        import torch

        maps = []
        for weights, tokens in zip(attention.weights, attention.tokens, strict=True):
            pooled = tokens.mean(dim=1, keepdim=True).expand_as(tokens)
            score = attention.selected(attention.token_scores(pooled), view.targets, rank)
            (gradient,) = torch.autograd.grad(score, weights, retain_graph=True)
            relevance = gradient.float().clamp(min=0).mean(dim=(1, 2))[:, attention.prefix :]
            maps.append(relevance.unflatten(1, attention.grid))
        return torch.stack(maps).mean(dim=0)


def _attention(view: LayerView, method: str) -> AttentionMaps:
    if view.attention is None:
        raise LayerError(
            f"method='{method}' needs every block's attention, which the engine captures for "
            "it (explain_batch); this view has none"
        )
    return view.attention


def _fuse_heads(weights: Tensor, fusion: str) -> Tensor:
    """[B, heads, N, N] → [B, N, N]."""
    if fusion == "max":
        return weights.amax(dim=1)
    if fusion == "min":
        return weights.amin(dim=1)
    return weights.mean(dim=1)


def _check_the_head_reproduces_the_scores(attention: AttentionMaps, method: str) -> None:
    """LeGrad scores every block through the ViT's own final norm and head: on the last
    block's tokens they must give the model's scores (a wrapper could change them)."""
    import torch

    if len(attention.tokens) < attention.blocks:
        return  # a layer in an earlier block: its last block is not the model's last
    rebuilt = attention.token_scores(attention.tokens[-1]).detach().float()
    scores = attention.scores.detach().float()
    scale = 1.0 + float(scores.abs().max())
    if rebuilt.shape != scores.shape or not torch.allclose(rebuilt, scores, 1e-4, 1e-4 * scale):
        raise LayerError(
            f"method='{method}' scores each block through the ViT's own final norm and head, "
            "and these do not reproduce this model's scores (does a wrapper change them?); "
            "use method='transformer-attribution' or 'rollout'"
        )
