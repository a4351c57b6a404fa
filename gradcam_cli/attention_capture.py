"""Attention weights of a ViT's blocks, captured for one call without changing the model's code.

The attention methods (methods/attention.py: rollout, transformer attribution, LeGrad) read the
post-softmax attention A [B, heads, N, N] of every block, not one layer's output. They are
taken with hooks on the model's own modules, for one forward, and everything is put back:

- timm `VisionTransformer` (ViT, DeiT, DeiT distilled): its `Attention` computes A only when
  `fused_attn` is off (the fused kernel never forms it). The flag is switched off for the call
  and restored after, also when the call raises (modelstate.unfused_attention). A forward hook
  on `attn.attn_drop` (identity in eval mode) sees A as the tensor `A @ v` is computed from.
- torchvision `VisionTransformer`: its blocks call `nn.MultiheadAttention(..., need_weights=
  False)`. A forward pre-hook asks for the per-head weights (need_weights=True,
  average_attn_weights=False), and a forward hook recomputes the module's output from them,
  out_proj(A · V): the returned weights are a copy made after use, so a gradient with respect
  to them must come from an output that uses them. What the caller asked for is returned.

Methods that differentiate with respect to A (`CamMethod.attention_gradients`) need the blocks'
graph recorded: a forward pre-hook on the first block hands it a leaf copy of its input that
requires grad. The patch embedding before it stays unrecorded, as the split's backbone is.

Which blocks: those up to and including the block that holds the target layer (the last
block's `norm1` by default: all of them); every block for a layer outside them. The target
layer itself only gives the patch grid. Prefix tokens (class, distillation, registers) are the
attention's token count minus the grid's patches; the rows read out are the tokens the model's
head reads: the class token, DeiT-distilled's class and distillation tokens (its head averages
both), or, for a model pooling the patches, the mean of the patch rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LayerError
from .layers import LayerRef
from .layouts import Layout
from .modelstate import removing, unfused_attention

__all__ = [
    "AttentionMaps",
    "AttentionRecorder",
    "VisionTransformerParts",
    "find_vision_transformer",
    "record_attention",
]


@dataclass(frozen=True)
class VisionTransformerParts:
    """The parts of a ViT the attention methods use, found once on the model."""

    kind: str  # "timm" | "torchvision"
    blocks: tuple[nn.Module, ...]  # in forward order
    attentions: tuple[nn.Module, ...]  # each block's attention module
    readout: tuple[int, ...] | None  # token rows the head reads; None: the mean of the patches
    # Tokens [B, N, C] as a block outputs them → the ViT's output, through its final norm,
    # pooling and head (LeGrad scores every block with it).
    head: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)


def find_vision_transformer(model: nn.Module, method: str) -> VisionTransformerParts:
    """The timm or torchvision ViT in `model` (itself or a sub-module), else a LayerError that
    says what to use instead."""
    for module in model.modules():
        parts = _timm_parts(module) or _torchvision_parts(module)
        if parts is not None:
            return parts
    raise LayerError(
        f"method='{method}' reads the attention weights of a vision transformer's blocks (timm "
        "ViT/DeiT, torchvision ViT) and this model has none; use method='gradcam' (at a CNN's "
        "last stage, or a ViT's last block's norm1 for other transformers)"
    )


def _timm_parts(module: nn.Module) -> VisionTransformerParts | None:
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(module, "forward_head"):
        return None
    attentions = tuple(getattr(block, "attn", None) for block in blocks)
    if not attentions or not all(_is_timm_attention(a) for a in attentions):
        return None
    norm = getattr(module, "norm", nn.Identity())
    pool = getattr(module, "global_pool", "token")
    readout: tuple[int, ...] | None
    if pool != "token":
        readout = None
    elif getattr(module, "dist_token", None) is not None:
        readout = (0, 1)  # DeiT distilled: the head averages the class and distillation heads
    else:
        readout = (0,)
    return VisionTransformerParts(
        "timm",
        tuple(blocks),
        attentions,  # type: ignore[arg-type]  # checked above
        readout,
        lambda tokens: module.forward_head(norm(tokens)),  # type: ignore[operator]
    )


def _is_timm_attention(module: object) -> bool:
    """timm's `Attention`: a `fused_attn` switch and A passing through `attn_drop`."""
    return (
        isinstance(module, nn.Module)
        and hasattr(module, "fused_attn")
        and isinstance(getattr(module, "attn_drop", None), nn.Dropout)
        and hasattr(module, "qkv")
    )


def _torchvision_parts(module: nn.Module) -> VisionTransformerParts | None:
    encoder, heads = getattr(module, "encoder", None), getattr(module, "heads", None)
    blocks = getattr(encoder, "layers", None)
    norm = getattr(encoder, "ln", None)
    if not isinstance(blocks, nn.Sequential) or heads is None or norm is None:
        return None
    attentions = tuple(getattr(block, "self_attention", None) for block in blocks)
    if not attentions or not all(isinstance(a, nn.MultiheadAttention) for a in attentions):
        return None
    return VisionTransformerParts(
        "torchvision",
        tuple(blocks),
        attentions,  # type: ignore[arg-type]  # checked above
        (0,),
        lambda tokens: heads(norm(tokens)[:, 0]),
    )


@dataclass(frozen=True)
class AttentionMaps:
    """Every block's attention for one batch, as the methods see it (LayerView.attention)."""

    weights: tuple[torch.Tensor, ...]  # per block, A [B, heads, N, N], in forward order
    tokens: tuple[torch.Tensor, ...]  # per block, its output [B, N, C]
    grid: tuple[int, int]  # the patch grid (h, w)
    prefix: int  # tokens before the patches
    readout: tuple[int, ...] | None  # rows the head reads; None: the mean of the patch rows
    blocks: int  # the ViT's block count (`weights` may hold the first few)
    # The slots' scores [B, T], recorded: differentiable with respect to `weights` where the
    # method asked for gradients (CamMethod.attention_gradients).
    scores: torch.Tensor
    # Tokens [B, N, C] → the slots' scores [B, T] through the ViT's own final norm and head.
    token_scores: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)

    def patch_map(self, relevance: torch.Tensor) -> torch.Tensor:
        """Token-to-token relevance [B, N, N] → the read-out rows over the patches [B, h, w]."""
        patches = relevance[:, :, self.prefix :]
        if self.readout is None:
            rows = patches[:, self.prefix :].mean(dim=1)
        else:
            rows = patches[:, list(self.readout)].mean(dim=1)
        return rows.unflatten(1, self.grid)

    def selected(self, scores: torch.Tensor, targets: torch.Tensor, rank: int) -> torch.Tensor:
        """The targets' scores of rank `rank`, summed over the batch (images are independent
        in eval mode: one gradient holds each image's own)."""
        return scores.gather(1, targets[:, rank : rank + 1]).sum()

    def gradients(self, output: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """∂output/∂A per block (the graph is kept for the next call)."""
        return torch.autograd.grad(output, self.weights, retain_graph=True, allow_unused=True)


class AttentionRecorder:
    """Hooks that keep every block's attention weights and output during one forward."""

    def __init__(self, parts: VisionTransformerParts, method: str, gradients: bool):
        self.parts, self.method, self.gradients = parts, method, gradients
        self.weights: list[list[torch.Tensor]] = [[] for _ in parts.blocks]
        self.tokens: list[list[torch.Tensor]] = [[] for _ in parts.blocks]
        self._asked: dict[int, tuple[bool, bool]] = {}  # what a torchvision caller asked for

    def hooks(self) -> Iterator[torch.utils.hooks.RemovableHandle]:
        if self.gradients:
            yield self.parts.blocks[0].register_forward_pre_hook(_recorded_from_here)
        for index, (block, attention) in enumerate(
            zip(self.parts.blocks, self.parts.attentions, strict=True)
        ):
            yield block.register_forward_hook(self._keep_tokens(index))
            if self.parts.kind == "timm":
                yield attention.attn_drop.register_forward_hook(self._keep_timm(index))  # type: ignore[union-attr]
            else:
                _check_multihead(attention, self.method)  # type: ignore[arg-type]
                yield attention.register_forward_pre_hook(self._ask_weights, with_kwargs=True)
                yield attention.register_forward_hook(self._keep_multihead(index), with_kwargs=True)

    def _keep_tokens(self, index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                self.tokens[index].append(output)

        return hook

    def _keep_timm(self, index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
            self.weights[index].append(output)  # the very tensor `A @ v` reads

        return hook

    def _ask_weights(
        self, module: nn.Module, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict[str, object]]:
        """nn.MultiheadAttention's pre-hook: per-head weights, whatever the caller asked."""
        given, kwargs = list(args), dict(kwargs)
        asked = []
        # need_weights and average_attn_weights, by keyword or at their places in forward()
        for place, name, wanted in ((4, "need_weights", True), (6, "average_attn_weights", False)):
            if len(given) > place:
                asked.append(bool(given[place]))
                given[place] = wanted
            else:
                asked.append(bool(kwargs.get(name, True)))
                kwargs[name] = wanted
        self._asked[id(module)] = (asked[0], asked[1])
        return tuple(given), kwargs

    def _keep_multihead(self, index: int) -> Callable[..., tuple]:
        def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: tuple) -> tuple:
            weights = output[1]
            value = args[2] if len(args) > 2 else kwargs["value"]
            self.weights[index].append(weights)
            need, average = self._asked[id(module)]
            shown = (weights.mean(dim=1) if average else weights) if need else None
            return _attend(module, weights, value), shown

        return hook

    def check_calls(self) -> None:
        for index, kept in enumerate(self.weights):
            if len(kept) != 1 or len(self.tokens[index]) != 1:
                raise LayerError(
                    f"method='{self.method}': block {index} ran its attention {len(kept)} times "
                    "in one forward; the attention methods need each block to run once"
                )

    def maps(
        self,
        ref: LayerRef,
        layout: Layout,
        scores: torch.Tensor,
        token_scores: Callable[[torch.Tensor], torch.Tensor],
    ) -> AttentionMaps:
        """The blocks up to the one holding `ref` (all for a layer outside them), on the
        grid of the layer's `layout`. `token_scores`: the ViT's output → the slots' scores."""
        used = len(self.parts.blocks)
        for index, block in enumerate(self.parts.blocks):
            if any(module is block for module in ref.path):
                used = index + 1
        weights = tuple(kept[0] for kept in self.weights[:used])
        count, patches = weights[0].shape[-1], layout.grid[0] * layout.grid[1]
        if layout.kind != "tokens" or not 2 <= patches <= count:
            raise LayerError(
                f"method='{self.method}' lays the attention over the patch grid of the target "
                f"layer, and layer '{ref}' is no token layer of this ViT "
                f"({layout.describe() or layout.kind}); choose a block's norm1, e.g. the last's"
            )
        head = self.parts.head
        return AttentionMaps(
            weights=weights,
            tokens=tuple(kept[0] for kept in self.tokens[:used]),
            grid=layout.grid,
            prefix=count - patches,
            readout=self.parts.readout,
            blocks=len(self.parts.blocks),
            scores=scores,
            token_scores=lambda tokens: token_scores(head(tokens)),
        )


def _recorded_from_here(_module: nn.Module, args: tuple) -> tuple | None:
    """The first block's pre-hook: a leaf copy of its input that requires grad, so that the
    blocks' graph is recorded (parameters are frozen: nothing before it is)."""
    first = args[0]
    if not isinstance(first, torch.Tensor) or first.requires_grad:
        return None
    return (first.detach().requires_grad_(True), *args[1:])


def _check_multihead(module: nn.MultiheadAttention, method: str) -> None:
    if not module.batch_first or not module._qkv_same_embed_dim:
        raise LayerError(
            f"method='{method}' reads nn.MultiheadAttention's weights in batch-first "
            "self-attention with one input projection (torchvision's ViT); this model's differs"
        )
    if module.bias_k is not None or module.add_zero_attn:
        raise LayerError(
            f"method='{method}': nn.MultiheadAttention with added key/value tokens "
            "(add_bias_kv, add_zero_attn) is not supported"
        )


def _attend(
    module: nn.MultiheadAttention, weights: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """nn.MultiheadAttention's output computed from per-head weights [B, heads, N, N] and its
    value input [B, N, E]: out_proj(A · V)."""
    embed, heads = module.embed_dim, module.num_heads
    bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * embed :]
    v = F.linear(value, module.in_proj_weight[2 * embed :], bias)
    v = v.unflatten(2, (heads, embed // heads)).transpose(1, 2)  # [B, heads, N, d]
    out = (weights @ v).transpose(1, 2).flatten(2)  # [B, N, E]
    return module.out_proj(out)


@contextmanager
def record_attention(
    model: nn.Module, method: str, *, gradients: bool
) -> Iterator[AttentionRecorder]:
    """Every block's attention during the forwards inside; the model put back afterwards (hooks
    removed, timm's fused attention restored), also when they raise."""
    parts = find_vision_transformer(model, method)
    recorder = AttentionRecorder(parts, method, gradients)
    fused = parts.attentions if parts.kind == "timm" else ()
    handles: list = []
    with unfused_attention(fused), removing(handles):
        handles.extend(recorder.hooks())
        yield recorder
