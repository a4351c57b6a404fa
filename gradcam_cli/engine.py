"""The split: backbone → detached leaf at the target layer → head, gradients through the head only.

For each target layer a forward hook swaps the layer's output for a leaf
`A = out.detach().requires_grad_()` and hands the rest of the model `A.clone()`: in-place ops
downstream (DenseNet's `F.relu(features, inplace=True)`) then neither fail nor change the stored
A. With parameters frozen, nothing upstream of the first target requires grad, so autograd
records only the head. A later target (downstream of an earlier one) is already part of the
recorded graph: its output is kept as a graph node and its gradient comes from the same call.
`torch.autograd.grad` never computes a parameter gradient, so `.grad` is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LayerError, TargetError
from .layers import LayerRef, extract_logits
from .methods import CamMethod, GradCAM
from .modelstate import frozen_eval, removing

__all__ = ["BatchExplanation", "explain_batch", "class_scores", "class_probabilities"]


@dataclass(frozen=True)
class BatchExplanation:
    """What one forward/backward over a batch produced (all tensors on the CPU, float32)."""

    scores: torch.Tensor  # [B, num_classes] class scores (a single logit becomes [-z, z])
    probabilities: torch.Tensor  # [B, num_classes]
    targets: torch.Tensor  # [B, K] class indices explained
    maps: dict[str, torch.Tensor]  # layer name → [B, K, h, w], after ReLU, before any resizing


class _Capture:
    """Forward hook for one target layer: makes its output differentiable and keeps it."""

    def __init__(self, ref: LayerRef):
        self.ref = ref
        self.calls = 0
        self.handle: torch.Tensor | None = None  # the tensor gradients are taken against

    def __call__(self, module: nn.Module, args: object, output: object) -> object:
        index = self.calls
        self.calls += 1
        wanted = 0 if self.ref.call is None else self.ref.call
        if index != wanted:
            return None
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            is_tensor = isinstance(output, torch.Tensor)
            shape = list(output.shape) if is_tensor else type(output).__name__
            raise LayerError(
                f"layer '{self.ref}' outputs {shape}, not a [B, C, H, W] map; choose a "
                "convolutional layer (`gradcam layers MODEL` marks the usable ones)"
            )
        # Downstream of an earlier target the output is already in the recorded graph;
        # otherwise this is where the graph starts: a leaf, so nothing upstream is recorded.
        self.handle = output if output.requires_grad else output.detach().requires_grad_(True)
        return self.handle.clone()

    def check_calls(self) -> None:
        if self.ref.call is None and self.calls > 1:
            raise LayerError(
                f"layer '{self.ref.name}' runs {self.calls} times per forward, so its map is "
                f"ambiguous; pick one call with '{self.ref.name}@0' … "
                f"'{self.ref.name}@{self.calls - 1}', or choose another layer"
            )
        if self.handle is None:
            raise LayerError(
                f"layer '{self.ref}' was not called during the forward pass "
                f"(it ran {self.calls} times); choose another layer"
            )


def class_scores(outputs: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """Per-class scores. A single-output model gets two classes, negative and positive:
    [-z, z] for a logit z (article 004), [1 - p, p] for a model that ends in a sigmoid."""
    if outputs.shape[1] != 1:
        return outputs
    negative = 1 - outputs if probabilities else -outputs
    return torch.cat([negative, outputs], dim=1)


def class_probabilities(outputs: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """Softmax over logits; sigmoid of a single logit (not softmax(2z)); probabilities as is."""
    scores = class_scores(outputs, probabilities)
    if probabilities:
        return scores
    return torch.sigmoid(scores) if outputs.shape[1] == 1 else scores.softmax(dim=1)


def _choose_targets(scores: torch.Tensor, classes: Sequence[int] | None, topk: int) -> torch.Tensor:
    num_classes = scores.shape[1]
    if classes:
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise TargetError(
                f"class index {bad[0]} is out of range: the model has "
                f"{num_classes} classes (0–{num_classes - 1})"
            )
        wanted = torch.as_tensor(list(classes), device=scores.device)
        return wanted.unsqueeze(0).expand(scores.shape[0], -1)
    return scores.topk(min(topk, num_classes), dim=1).indices


def explain_batch(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[LayerRef],
    *,
    classes: Sequence[int] | None = None,
    topk: int = 1,
    method: CamMethod | None = None,
    outputs_probabilities: bool = False,
) -> BatchExplanation:
    """Explain a batch [B, 3, H, W] at `layers` for the given classes, else the top-k predicted.

    `outputs_probabilities`: the model ends in a sigmoid/softmax (see `Probe`); its outputs are
    then reported as probabilities and explained as they are.

    The model is left as it was found: modes, requires_grad, hooks (also when this raises).
    Images are independent in eval mode, so one gradient call per target rank serves the whole
    batch: the summed scores' gradient w.r.t. A holds each image's own gradient.
    """
    method = method or GradCAM()
    captures = [_Capture(ref) for ref in layers]
    modules = dict(model.named_modules())
    handles: list = []
    with frozen_eval(model), removing(handles), torch.enable_grad():
        for capture in captures:
            handles.append(modules[capture.ref.name].register_forward_hook(capture))
        logits = extract_logits(model(images))
        for capture in captures:
            capture.check_calls()
        scores = class_scores(logits, outputs_probabilities)
        targets = _choose_targets(scores.detach(), classes, topk)
        if not scores.requires_grad:
            raise LayerError(
                f"the logits do not depend on layer '{captures[0].ref}'; "
                "choose a layer that the classifier's output is computed from"
            )
        maps = _maps_per_target(scores, targets, captures, method)
    logits = logits.detach().float()
    return BatchExplanation(
        scores=class_scores(logits, outputs_probabilities).cpu(),
        probabilities=class_probabilities(logits, outputs_probabilities).cpu(),
        targets=targets.cpu(),
        maps={name: m.cpu() for name, m in maps.items()},
    )


def _maps_per_target(
    scores: torch.Tensor, targets: torch.Tensor, captures: list[_Capture], method: CamMethod
) -> dict[str, torch.Tensor]:
    handles = [c.handle for c in captures]
    per_layer: dict[str, list[torch.Tensor]] = {str(c.ref): [] for c in captures}
    ranks = targets.shape[1]
    for rank in range(ranks):
        selected = scores.gather(1, targets[:, rank : rank + 1]).sum()
        grads = torch.autograd.grad(
            selected, handles, retain_graph=rank < ranks - 1, allow_unused=True
        )
        for capture, grad in zip(captures, grads, strict=True):
            activations = capture.handle.detach()
            grad = torch.zeros_like(activations) if grad is None else grad
            per_layer[str(capture.ref)].append(method(activations, grad))
    return {name: torch.stack(maps, dim=1) for name, maps in per_layer.items()}
