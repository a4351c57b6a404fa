"""Methods that re-run part of the model on modified inputs: Ablation-CAM (the head alone, one
channel zeroed) and Score-CAM (the whole model, the image masked by each channel)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import CamMethod, LayerView, register_method
from .scaling import unit_range

if TYPE_CHECKING:
    from torch import Tensor

# Masked images per full forward pass (Score-CAM), as pytorch-grad-cam and torchcam batch them.
FORWARD_CHUNK = 32
# Ablated activations per head-only pass: at most this many rows, and about this many bytes.
HEAD_CHUNK_ROWS = 256
HEAD_CHUNK_BYTES = 64 << 20


@register_method
class AblationCAM(CamMethod):
    """Desai & Ramaswamy 2020: the score's relative drop when one channel is zeroed.

    Only the head runs again, on the stored activations with one channel zeroed per row (the
    engine's `view.head`): the backbone never runs twice.
    """

    name = "ablationcam"
    paper = "Desai & Ramaswamy 2020"
    summary = "Ablation-CAM: relative score drop when a channel is zeroed (head-only re-runs)"
    formula = "ReLU(Σ_k w_k A_k), w_k = (y − y[A_k = 0]) / y"
    needs_gradients = False
    uses_head = True

    def maps(self, view: LayerView) -> Tensor:
        import torch

        ablated = _ablated_scores(view)  # [B, C, num_classes]
        targets = view.targets  # [B, K]
        dropped = ablated.gather(2, targets[:, None, :].expand(-1, ablated.shape[1], -1))
        original = view.scores.float().gather(1, targets)[:, None, :]  # [B, 1, K]
        safe = torch.where(original == 0, torch.ones_like(original), original)
        weights = (original - dropped) / safe  # [B, C, K]
        return self.combine_weighted(view, weights)


def _ablated_scores(view: LayerView) -> Tensor:
    """[B, C, num_classes]: the scores with channel k of A set to zero, for every k."""
    import torch

    activations = view.activations
    channels = activations.shape[1]
    row_bytes = activations[0].numel() * activations.element_size()
    step = max(1, min(HEAD_CHUNK_ROWS, HEAD_CHUNK_BYTES // max(1, row_bytes)))
    per_image = []
    for b in range(activations.shape[0]):
        parts = []
        for start in range(0, channels, step):
            ablate = torch.arange(start, min(channels, start + step), device=activations.device)
            rows = activations[b].expand(len(ablate), -1, -1, -1).clone()
            rows[torch.arange(len(ablate)), ablate] = 0
            index = torch.full((len(ablate),), b, dtype=torch.long, device=activations.device)
            parts.append(view.head(rows, index).float())
        per_image.append(torch.cat(parts))
    return torch.stack(per_image)


@register_method
class ScoreCAM(CamMethod):
    """Wang et al. 2020: each channel, upsampled and min-max scaled, masks the input."""

    name = "scorecam"
    paper = "Wang et al. 2020"
    summary = "Score-CAM: scores of the image masked by each channel (full forwards)"
    formula = "ReLU(Σ_k w_k A_k), w = softmax_k y(x ⊙ minmax(up(A_k)))"
    needs_gradients = False
    needs_full_forwards = True

    def maps(self, view: LayerView) -> Tensor:
        return self.combine_weighted(view, softmax_weights(view, masked_scores(view)))


def softmax_weights(view: LayerView, masked: Tensor) -> Tensor:
    """Score-CAM's weights [B, C, K]: the softmax over channels of the targets' scores in
    `masked` [B, C, num_classes] (a baseline score, the same for every channel, would cancel)."""
    targets = view.targets
    selected = masked.gather(2, targets[:, None, :].expand(-1, masked.shape[1], -1))
    return selected.softmax(dim=1)


# (masks [n, H, W] of channels start … start + n − 1, in [0, 1], start) → the masks to use.
MaskTransform = Callable[["Tensor", int], "Tensor"]


def masked_scores(view: LayerView, transform: MaskTransform | None = None) -> Tensor:
    """[B, C, num_classes]: the scores of each image masked by each of its upsampled channels,
    min-max scaled, then changed by `transform` where given (SS-CAM's noise, IS-CAM's scale)."""
    import torch
    import torch.nn.functional as F

    images, activations = view.images, view.activations.float()
    size = tuple(images.shape[2:])
    per_image: list[list[Tensor]] = [[] for _ in range(images.shape[0])]
    # chunks outer, images inner: a transform's draw for a chunk serves every image in a row
    for start in range(0, activations.shape[1], FORWARD_CHUNK):
        for b, parts in enumerate(per_image):
            chunk = view.frame(activations[b : b + 1, start : start + FORWARD_CHUNK])
            masks = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False)[0]
            masks = unit_range(masks, eps=1e-8)  # a constant channel masks everything
            if transform is not None:
                masks = transform(masks, start)
            rows = torch.full((masks.shape[0],), b, dtype=torch.long, device=images.device)
            parts.append(view.forward(images[b] * masks[:, None].to(images.dtype), rows).float())
    return torch.stack([torch.cat(parts) for parts in per_image])
