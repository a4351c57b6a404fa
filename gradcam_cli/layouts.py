"""Layouts: a layer's output seen as the [B, C, h, w] map every method works on.

- `nchw`: convolutional maps [B, C, h, w], used as they are.
- `nhwc`: channels-last maps [B, h, w, C] (Swin's stages, the inside of timm ConvNeXt and MaxViT
  blocks): permuted.
- `tokens`: [B, P + h·w, C] (ViT, DeiT, BEiT, EVA, LeViT, ...): the P prefix tokens (class,
  distillation, register tokens) are dropped and the h·w patch tokens laid out on the patch grid.

Nothing is hard-coded: the prefix count is read from the model (timm's `num_prefix_tokens`,
torchvision's `class_token`, or the token parameters themselves), and the grid from the number
of tokens and the size of the input actually given, since both change with the input size
(a ViT-B/16 has 14×14 patches at 224 and 24×24 at 384). A 4-d output is NCHW unless only its
middle two axes are laid out like the input's pixels, as a channels-last map's are.

Gradients are taken against the layer's output in its own layout; `to_map` is a reshape, so the
gradient of the map is the same reshape of that gradient.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LayerError

__all__ = ["Layout", "NotSpatialError", "infer_layout", "declared_prefix_tokens"]

# Prefix counts tried when the model does not declare one: none, a class token, a class and a
# distillation token. Kept short, since a longer search would fit a grid to almost any count;
# register tokens are declared (timm's num_prefix_tokens, or the token parameters themselves).
USUAL_PREFIXES = (0, 1, 2)
# Attributes that hold tokens prepended to the patches: [1, n, C] parameters.
_TOKEN_PARAMETERS = ("class_token", "cls_token", "dist_token", "reg_token", "register_tokens")


class NotSpatialError(LayerError):
    """A layer's output cannot be read as a map over the image (the reason is the message)."""


@dataclass(frozen=True)
class Layout:
    """How one call's output lies; `grid` is (h, w) for that call's input size."""

    kind: str  # "nchw" | "nhwc" | "tokens"
    grid: tuple[int, int]
    prefix: int = 0  # tokens only: leading tokens that are not patches

    def to_map(self, output: torch.Tensor) -> torch.Tensor:
        """The output (or its gradient) as [B, C, h, w]; a view where the layout allows."""
        if self.kind == "nchw":
            return output
        if self.kind == "nhwc":
            return output.permute(0, 3, 1, 2)
        patches = output[:, self.prefix :]
        return patches.transpose(1, 2).unflatten(2, self.grid)

    def from_map(self, maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] back in this layout; prefix tokens are taken from `like`, an output of
        the same layer [N, P + h·w, C] (a map has no place for them)."""
        if self.kind == "nchw":
            return maps
        if self.kind == "nhwc":
            return maps.permute(0, 2, 3, 1).contiguous()
        patches = maps.flatten(2).transpose(1, 2)
        return torch.cat([like[:, : self.prefix].to(patches.dtype), patches], dim=1)

    def describe(self) -> str:
        """'tokens: 1 prefix + 14×14', 'channels-last 7×7', '' for a plain NCHW map."""
        h, w = self.grid
        if self.kind == "tokens":
            return f"tokens: {self.prefix} prefix + {h}×{w}"
        return f"channels-last {h}×{w}" if self.kind == "nhwc" else ""


def infer_layout(
    shape: tuple[int, ...],
    input_size: tuple[int, int],
    *,
    module: nn.Module | None = None,
    prefix: int | None = None,
    batch: int | None = None,
) -> Layout:
    """The layout of an output of `shape` for a batch of `batch` inputs of `input_size` (H, W).

    `prefix` is the prefix-token count the model declares (`declared_prefix_tokens`); when it
    does not fit the token count (CaiT's patch blocks run before its class token is added), or
    is None, the first of USUAL_PREFIXES that leaves a patch grid of the input's proportions is
    used. NotSpatialError says why an output is no map.
    """
    if batch is not None and len(shape) in (3, 4) and shape[0] != batch:
        raise NotSpatialError(
            f"output {list(shape)}: its first axis is not the batch of {batch} (windows or "
            "heads folded into it)"
        )
    if len(shape) == 4:
        return _four_dim_layout(shape, input_size, module)
    if len(shape) == 3:
        return _token_layout(shape, input_size, prefix)
    raise NotSpatialError(f"output {list(shape)} has no spatial axes")


def _four_dim_layout(
    shape: tuple[int, ...], input_size: tuple[int, int], module: nn.Module | None
) -> Layout:
    _, c, h, w = shape
    nchw = h * w > 1 and _proportional(h, w, input_size)
    # Channels-last only where its grid is a strided copy of the input's: a stricter test, since
    # anything [B, C, H, W]-shaped with C ≈ H passes the loose one.
    nhwc = c * h > 1 and _strided_grid(c, h, input_size)
    if nhwc and (not nchw or _acts_on_last_axis(module, w)):
        return Layout("nhwc", (c, h))
    if nchw:
        return Layout("nchw", (h, w))
    if h * w <= 1:
        raise NotSpatialError("output is 1×1: no spatial extent")
    raise NotSpatialError(
        f"output {list(shape)} is not laid out like a {input_size[0]}×{input_size[1]} image "
        "([B, C, H, W] or [B, H, W, C])"
    )


def _token_layout(
    shape: tuple[int, ...], input_size: tuple[int, int], declared: int | None
) -> Layout:
    count = shape[1]
    candidates = [declared] if declared is not None else []
    for prefix in [*candidates, *USUAL_PREFIXES]:
        grid = token_grid(count - prefix, input_size)
        if grid is not None:
            return Layout("tokens", grid, prefix)
    raise NotSpatialError(
        f"output {list(shape)}: {count} tokens do not form a patch grid of a "
        f"{input_size[0]}×{input_size[1]} image"
    )


def token_grid(patches: int, input_size: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) with h·w = patches, laid out like an input of `input_size` at one stride."""
    if patches < 2:
        return None
    for h in _divisors(patches):
        if _strided_grid(h, patches // h, input_size):
            return h, patches // h
    return None


def _divisors(n: int) -> Iterator[int]:
    return (d for d in range(1, n + 1) if n % d == 0)


def _strided_grid(h: int, w: int, input_size: tuple[int, int]) -> bool:
    """True if (h, w) is what a stride s, rounded down or up, makes of the input (H, W)."""
    height, width = input_size
    if not (1 <= h <= height and 1 <= w <= width):
        return False
    strides = {height // h, -(-height // h), round(height / h)}
    return any(
        s >= 1 and h in (height // s, -(-height // s)) and w in (width // s, -(-width // s))
        for s in strides
    )


def _proportional(h: int, w: int, input_size: tuple[int, int]) -> bool:
    """(h, w) has the input's proportions, within one cell (valid convolutions shave edges)."""
    height, width = input_size
    return abs(h * width - w * height) < max(height, width)


def _acts_on_last_axis(module: nn.Module | None, channels: int) -> bool:
    """A Linear or a LayerNorm over the last axis: its output is channels-last."""
    if isinstance(module, nn.Linear):
        return module.out_features == channels
    if isinstance(module, nn.LayerNorm) and "2d" not in type(module).__name__.lower():
        return tuple(module.normalized_shape) == (channels,)
    return False


def declared_prefix_tokens(path: Sequence[nn.Module]) -> int | None:
    """How many tokens precede the patches, as the model says: the innermost module on the
    layer's path (`LayerRef.path`, the model first) that declares it (a ViT inside a wrapper
    counts), else None."""
    declared = (_prefix_tokens_of(module) for module in reversed(path))
    return next((count for count in declared if count is not None), None)


def _prefix_tokens_of(module: nn.Module) -> int | None:
    declared = getattr(module, "num_prefix_tokens", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    tokens = [getattr(module, name, None) for name in _TOKEN_PARAMETERS]
    found = [t for t in tokens if isinstance(t, torch.Tensor) and t.dim() == 3]
    return sum(t.shape[1] for t in found) if found else None
