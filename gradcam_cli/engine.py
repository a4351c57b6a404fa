"""The split: backbone → detached leaf at the target layer → head, gradients through the head only.

For each target layer a forward hook swaps the layer's output for a leaf
`A = out.detach().requires_grad_()` and hands the rest of the model `A.clone()`: in-place ops
downstream (DenseNet's `F.relu(features, inplace=True)`) then neither fail nor change the stored
A. With parameters frozen, nothing upstream of the first target requires grad, so autograd
records only the head. A later target (downstream of an earlier one) is already part of the
recorded graph: its output is kept as a graph node and its gradient comes from the same call.
`torch.autograd.grad` never computes a parameter gradient, so `.grad` is never touched.

The method (methods/) then turns each layer's A and gradients into maps. It may name what the
gradient is taken of (`objective`: any function of the scores, still through the head only), ask
for H·A as well (`second_order`: the head's backward graph differentiated once more), or make one
map of the layers' maps (`combines_layers`). Methods that re-run part of the model get
callables: `head` runs only the part after the layer on activations they supply (Ablation-CAM),
`forward` the whole model (Score-CAM), `gradients_at` the whole model on other images with this
split again, for the same targets (Smooth Grad-CAM++'s noisy copies: the backward still walks
the head only). Guided methods get their own full backward to the pixels,
with ReLU gradients clamped (guided.py). Attention methods (ViTs) get every block's attention
weights (attention_capture.py), with the blocks' graph recorded from the first block where they
differentiate them. `aug_smooth` repeats all of this on flipped and rescaled
copies of the images and averages the maps mapped back.

What a target is comes from the task (tasks/): a class of a classifier, a class's region of a
segmentation model, a detection of a detector. Its Scoring gives every forward's scores as one
matrix [N, T] over slots, so that all of the above is the same for the three.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .allocator import tune_allocator
from .attention_capture import AttentionMaps, AttentionRecorder, record_attention
from .errors import LayerError, first_line
from .guided import guided_relus
from .layers import LayerRef, resolve_layer
from .layouts import Layout, NotSpatialError, declared_prefix_tokens, infer_layout
from .methods import CamMethod, LayerView, check_layer_count, get_method
from .modelstate import frozen_eval, removing
from .tasks import Scoring, TargetDetails, TargetRequest, Task, get_task, no_details

__all__ = [
    "BatchExplanation",
    "HeadOnlyFallbackWarning",
    "AUG_VIEWS",
    "explain_batch",
]

# --aug-smooth: every (horizontal flip, scale) pair; (False, 1.0) is the image itself.
AUG_VIEWS: tuple[tuple[bool, float], ...] = tuple(
    (flip, scale) for scale in (1.0, 0.9, 1.1) for flip in (False, True)
)


class HeadOnlyFallbackWarning(RuntimeWarning):
    """The head could not be run alone after a layer; full forward passes were used instead."""


@dataclass(frozen=True)
class BatchExplanation:
    """What one forward/backward over a batch produced (all tensors on the CPU, float32)."""

    scores: torch.Tensor  # [B, T] the slots' scores (a single logit becomes [-z, z])
    probabilities: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, K] slots explained: class indices, or detections
    maps: dict[str, torch.Tensor]  # layer name → [B, K, h, w], after ReLU, before any resizing
    # Guided methods only: layer name → [B, K, 3, H, W], the signed input-resolution image.
    guided: dict[str, torch.Tensor] = field(default_factory=dict)
    # (image, slots) → what each slot is beyond a class (a detection's box, a segmentation
    # class's region and pixel share); None for a classifier's classes and for padding.
    describe: Callable[[int, Sequence[int]], list[TargetDetails | None]] = field(
        default=lambda image, slots: no_details(slots)
    )
    null_slot: int | None = None  # the slot that pads images with fewer targets; dropped
    ranking: torch.Tensor | None = None  # [B, T] what predictions are ordered by (None: prob.)


class _Capture:
    """Forward hook for one target layer: makes its output differentiable and keeps it.

    The output keeps its own layout (tokens, channels-last, ...): gradients are taken against
    it as the module returned it, and `layout` turns both into [B, C, h, w] maps, for this
    batch's input size.
    """

    def __init__(
        self,
        ref: LayerRef,
        images: torch.Tensor,
        frame_size: Callable[[], tuple[int, int] | None] = lambda: None,
    ):
        self.ref = ref
        self.batch, self.input_size = images.shape[0], (images.shape[2], images.shape[3])
        self.frame_size = frame_size  # what the layers saw, when the model resized the input
        self.prefix = declared_prefix_tokens(ref.path)  # prefix tokens, as the model declares
        self.calls = 0
        self.handle: torch.Tensor | None = None  # the tensor gradients are taken against
        self.layout: Layout | None = None

    def __call__(self, module: nn.Module, args: object, output: object) -> object:
        index = self.calls
        self.calls += 1
        wanted = 0 if self.ref.call is None else self.ref.call
        if index != wanted:
            return None
        if not isinstance(output, torch.Tensor):
            raise LayerError(
                f"layer '{self.ref}' outputs {type(output).__name__}, not a tensor; choose "
                "another layer (`gradcam layers MODEL` marks the usable ones)"
            )
        try:
            self.layout = infer_layout(
                tuple(output.shape),
                self.frame_size() or self.input_size,
                module=module,
                prefix=self.prefix,
                batch=self.batch,
            )
        except NotSpatialError as exc:
            raise LayerError(
                f"layer '{self.ref}' cannot be explained: {exc}; choose a layer with a spatial "
                "output (`gradcam layers MODEL` marks the usable ones)"
            ) from None
        # Downstream of an earlier target the output is already in the recorded graph;
        # otherwise this is where the graph starts: a leaf, so nothing upstream is recorded.
        self.handle = output if output.requires_grad else output.detach().requires_grad_(True)
        return self.handle.clone()

    def output(self) -> torch.Tensor:
        """The tensor gradients are taken against (after check_calls, which makes sure the
        hook fired and so that it and `layout` are set)."""
        assert self.handle is not None and self.layout is not None
        return self.handle

    def to_map(self, tensor: torch.Tensor) -> torch.Tensor:
        """The output, or its gradient, as a map [B, C, h, w] (after check_calls)."""
        assert self.layout is not None
        return self.layout.to_map(tensor)

    def activations(self) -> torch.Tensor:
        """A as a map [B, C, h, w], detached (after check_calls)."""
        return self.to_map(self.output().detach())

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


def explain_batch(
    model: nn.Module,
    images: torch.Tensor,
    layers: str | LayerRef | Sequence[str | LayerRef],
    *,
    classes: Sequence[int] | None = None,
    topk: int = 1,
    method: CamMethod | str | None = None,
    outputs_probabilities: bool = False,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    task: Task | str | None = None,
    min_score: float | None = None,
    regions: torch.Tensor | None = None,
) -> BatchExplanation:
    """Explain a batch [B, 3, H, W] at `layers` for the given classes, else the top-k predicted.

    `task` (tasks/, default classification): for segmentation the classes' regions (`regions`
    [B, H, W] bool in the input's frame replace the predicted pixels), for detection the
    detections (`classes` filters them, `min_score` too, top-k by score).

    `method`: a registered name or a CamMethod (default Grad-CAM). `outputs_probabilities`: the
    model ends in a sigmoid/softmax (see `Probe`); its outputs are then reported as
    probabilities and explained as they are. `eigen_smooth`: combine the channels by their first
    principal component instead of their sum. `aug_smooth`: average the maps of the image and
    its flipped and rescaled copies (`AUG_VIEWS`), each mapped back to the image's frame and
    scaled to a maximum of 1 (so the averaged map lies in [0, 1]).

    The model is left as it was found: modes, requires_grad, hooks (also when this raises).
    Images are independent in eval mode, so one gradient call per target rank serves the whole
    batch: the summed scores' gradient w.r.t. A holds each image's own gradient.

    The first call tunes the process's allocator (allocator.py; GRADCAM_TUNE_ALLOCATOR=0: not).
    """
    tune_allocator()
    method = get_method(method) if isinstance(method, str) else method or get_method("gradcam")
    request = TargetRequest(tuple(classes or ()), topk, min_score, regions)
    refs = _layer_refs(model, layers)
    check_layer_count(method, len(refs))
    settings = _Settings(
        method,
        refs,
        outputs_probabilities,
        eigen_smooth,
        get_task(task),
        request,
    )
    method.check_task(settings.task.name)
    with frozen_eval(model), torch.enable_grad():
        first = _explain_view(model, images, settings)
        maps, guided_gradients = first.maps, first.guided_gradients
        if aug_smooth:
            maps = _aug_smoothed(model, images, settings, first)
        guided = {}
        if method.guided:
            guided = {name: method.guided_images(guided_gradients, m) for name, m in maps.items()}
    scoring, targets = first.scoring, first.targets.cpu()
    return BatchExplanation(
        scores=first.scores.float().cpu(),
        probabilities=scoring.probabilities().float().cpu(),
        targets=targets,
        maps={name: m.detach().float().cpu() for name, m in maps.items()},
        guided={name: g.detach().float().cpu() for name, g in guided.items()},
        describe=scoring.details,
        null_slot=scoring.null_slot,
        ranking=scoring.ranking().float().cpu(),
    )


def _layer_refs(
    model: nn.Module, layers: str | LayerRef | Sequence[str | LayerRef]
) -> tuple[LayerRef, ...]:
    """Dotted paths ("layer4", "layer4@1") resolved on `model`; LayerRefs as they are."""
    items = [layers] if isinstance(layers, (str, LayerRef)) else list(layers)
    return tuple(resolve_layer(model, i) if isinstance(i, str) else i for i in items)


@dataclass(frozen=True)
class _Settings:
    method: CamMethod
    layers: tuple[LayerRef, ...]
    outputs_probabilities: bool
    eigen_smooth: bool
    task: Task
    request: TargetRequest


@dataclass(frozen=True)
class _ViewResult:
    scoring: Scoring
    scores: torch.Tensor  # [B, T], detached
    targets: torch.Tensor  # [B, K]
    maps: dict[str, torch.Tensor]  # layer → [B, K, h, w]
    guided_gradients: list[torch.Tensor]  # per rank [B, 3, H, W]; guided methods only


def _explain_view(
    model: nn.Module,
    images: torch.Tensor,
    settings: _Settings,
    targets: torch.Tensor | None = None,
) -> _ViewResult:
    """One forward with the captures, the head-only gradients, then the method's maps.
    `targets`: the slots to explain (an augmented view: the image's own); None: chosen here."""
    method = settings.method
    scoring = settings.task.scoring(settings.request, settings.outputs_probabilities)
    captures = [_Capture(ref, images, scoring.frame_size) for ref in settings.layers]
    handles: list = []
    with removing(handles), scoring.watch(model), _attention_for(model, method) as attention:
        for capture in captures:  # the modules resolve_layer found: no search by name
            handles.append(capture.ref.module.register_forward_hook(capture))
        output = model(images)
        for capture in captures:
            capture.check_calls()
        if attention is not None:
            attention.check_calls()
    scores = scoring.bind(output)
    if targets is None:
        targets = scoring.choose(scores.detach())
    if not scores.requires_grad and targets.shape[1] > 0:
        raise LayerError(
            f"the model's {settings.task.name} scores do not depend on layer "
            f"'{captures[0].ref}'; choose a layer that its output is computed from"
        )
    recorded_scores = scores  # attention methods differentiate it themselves
    gradients, hessian_products = (
        _gradients(scores, targets, captures, method) if method.needs_gradients else ({}, {})
    )
    guided_gradients = _guided_gradients(model, images, targets, scoring) if method.guided else []
    backward_maps = None
    if method.full_backward:  # layer-free: once for every layer
        scores_of = _recorded_scores(model, scoring)
        backward_maps = method.backward_maps(model, images, targets, scores_of)
    scores = scores.detach()
    maps = {}
    for capture in captures:
        if targets.shape[1] == 0:  # nothing to explain in this batch (no detection kept)
            maps[str(capture.ref)] = scoring.frame(capture.activations()[:, :0].float())
            continue
        view = LayerView(
            activations=capture.activations(),
            gradients=gradients.get(str(capture.ref), []),
            targets=targets,
            scores=scores,
            images=images,
            head=_HeadRunner(model, capture, images, scores, scoring, f"method='{method.name}'"),
            forward=_forward_scores(model, scoring),
            guided_gradients=guided_gradients,
            layer=str(capture.ref),
            eigen_smooth=settings.eigen_smooth,
            frame=scoring.frame,
            hessian_products=hessian_products.get(str(capture.ref), []),
            gradients_at=(
                _gradients_at(model, capture.ref, scoring, targets, method)
                if method.reruns_with_gradients
                else None
            ),
            backward_maps=backward_maps,
            explain_images=(
                _images_explainer(model, capture.ref, settings)
                if method.explains_other_images
                else None
            ),
            attention=_attention_maps(attention, capture, recorded_scores, scoring),
        )
        maps[str(capture.ref)] = scoring.frame(method.maps(view))
    return _ViewResult(scoring, scores, targets, method.combine_layers(maps), guided_gradients)


def _attention_maps(
    recorder: AttentionRecorder | None,
    capture: _Capture,
    scores: torch.Tensor,
    scoring: Scoring,
) -> AttentionMaps | None:
    """The blocks' attention for one target layer, on its grid (None: not recorded)."""
    if recorder is None:
        return None

    def token_scores(output: torch.Tensor) -> torch.Tensor:
        return scoring.scores(output, torch.arange(len(output), device=output.device))

    assert capture.layout is not None  # after check_calls
    return recorder.maps(capture.ref, capture.layout, scores, token_scores)


def _gradients(
    scores: torch.Tensor, targets: torch.Tensor, captures: list[_Capture], method: CamMethod
) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """Per layer, per target rank: ∂(summed objective)/∂A as a map [B, C, h, w], through the
    head only; and for second-order methods H·A (H = the objective's Hessian in A), by a second
    differentiation of the head's backward graph (create_graph: the head's, nothing upstream)."""
    outputs = [c.output() for c in captures]
    second = method.second_order
    per_layer: dict[str, list[torch.Tensor]] = {str(c.ref): [] for c in captures}
    products: dict[str, list[torch.Tensor]] = {str(c.ref): [] for c in captures} if second else {}
    ranks = targets.shape[1]
    for rank in range(ranks):
        selected = method.objective(scores, targets, rank).sum()
        grads = torch.autograd.grad(
            selected,
            outputs,
            retain_graph=second or rank < ranks - 1,
            create_graph=second,
            allow_unused=True,
        )
        for capture, grad in zip(captures, grads, strict=True):
            name = str(capture.ref)
            per_layer[name].append(_as_map(capture, None if grad is None else grad.detach()))
            if second:
                products[name].append(_as_map(capture, _hessian_product(grad, capture.output())))
    return per_layer, products


def _as_map(capture: _Capture, tensor: torch.Tensor | None) -> torch.Tensor:
    """A gradient (or H·A) at the layer as a map [B, C, h, w]; None (the objective does not
    depend on the layer): zeros of A's shape."""
    return torch.zeros_like(capture.activations()) if tensor is None else capture.to_map(tensor)


def _hessian_product(grad: torch.Tensor | None, output: torch.Tensor) -> torch.Tensor | None:
    """H·A: the derivative of g·A (A held fixed) in A, through the head's graph; None where g
    does not depend on A (a head linear in A: H = 0)."""
    if grad is None or not grad.requires_grad:
        return None
    (product,) = torch.autograd.grad(
        grad, output, grad_outputs=output.detach(), retain_graph=True, allow_unused=True
    )
    return None if product is None else product.detach()


def _gradients_at(
    model: nn.Module, ref: LayerRef, scoring: Scoring, targets: torch.Tensor, method: CamMethod
) -> Callable[[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
    """LayerView's `gradients_at` for methods that re-run the model with gradients (Smooth
    Grad-CAM++): the same split on other images — a leaf at this layer, so the backward walks
    the head only — for the same targets, scored as the first forward's slots."""

    def gradients_at(images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        capture = _Capture(ref, images, scoring.frame_size)
        with removing([ref.module.register_forward_hook(capture)]):
            output = model(images)
        capture.check_calls()
        scores = scoring.scores(output, torch.arange(images.shape[0], device=images.device))
        gradients, _ = _gradients(scores, targets, [capture], method)
        return capture.activations(), gradients[str(ref)]

    return gradients_at


def _guided_gradients(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, scoring: Scoring
) -> list[torch.Tensor]:
    """Per target rank: guided ∂y/∂x [B, 3, H, W], from one forward with guided ReLUs."""
    pixels = images.detach().requires_grad_(True)  # a new tensor: the caller's is untouched
    with guided_relus():
        scores = _recorded_scores(model, scoring)(pixels)
    ranks = targets.shape[1]
    return [
        torch.autograd.grad(
            scores.gather(1, targets[:, rank : rank + 1]).sum(),
            pixels,
            retain_graph=rank < ranks - 1,
        )[0]
        for rank in range(ranks)
    ]


def _recorded_scores(model: nn.Module, scoring: Scoring) -> Callable[[torch.Tensor], torch.Tensor]:
    """pixels [B, 3, H, W] → scores [B, T], recorded (full_backward methods)."""

    def scores_of(pixels: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(pixels.shape[0], device=pixels.device)
        return scoring.scores(model(pixels), rows)

    return scores_of


def _images_explainer(
    model: nn.Module, ref: LayerRef, settings: _Settings
) -> Callable[[CamMethod, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """explains_other_images methods: another method's maps at this layer, and probabilities,
    for other images and the targets given for them (one `_explain_view` per call). Their
    check_task keeps them to tasks whose targets mean the same on those images."""

    def explain(
        method: CamMethod, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sub = replace(settings, method=method, layers=(ref,))
        result = _explain_view(model, images, sub, targets)
        return result.maps[str(ref)], result.scoring.probabilities()

    return explain


def _forward_scores(
    model: nn.Module, scoring: Scoring
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def forward(images: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return scoring.scores(model(images), image_index)

    return forward


# -- the head alone ------------------------------------------------------------------------------


class _Replace:
    """Forward hook: the layer's chosen call returns the given rows instead of its output."""

    def __init__(self, ref: LayerRef, rows: torch.Tensor):
        self.ref, self.rows, self.calls, self.fired = ref, rows, 0, False

    def __call__(self, module: nn.Module, args: object, output: object) -> object:
        index = self.calls
        self.calls += 1
        if index != (self.ref.call or 0):
            return None
        self.fired = True
        return self.rows.clone()  # the head may work in place (DenseNet's ReLU)


class _HeadRunner:
    """The model after one layer, run on activations we supply.

    Head only: call the model on an EMPTY batch and let the layer's hook return the N rows
    instead of its (empty) output. The backbone then costs nothing and the head runs on N rows.
    This is checked once, on the unmodified activations, against the real scores; where it
    fails (something from before the layer reaches the head, e.g. a skip connection, or an op
    that refuses an empty batch) full forward passes of the images are used instead — correct
    but slower — with a HeadOnlyFallbackWarning. Never a wrong answer.

    Rows come as maps [N, C, h, w] and go back into the layer's own layout; a token layer's
    prefix tokens (the class token) are the image's own, unchanged.
    """

    def __init__(
        self,
        model: nn.Module,
        capture: _Capture,
        images: torch.Tensor,
        scores: torch.Tensor,
        scoring: Scoring,
        who: str,
    ):
        assert capture.layout is not None
        self.model, self.ref, self.images = model, capture.ref, images
        self.module = capture.ref.module
        self.layout, self.outputs = capture.layout, capture.output().detach()
        self.scores, self.scoring = scores, scoring
        self.who = who  # who asked, as the fallback warning names it: "method='gradcam'"
        self.head_only: bool | None = None  # unknown until checked

    def __call__(self, maps: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        return self.run_rows(self.layout.from_map(maps, self.outputs[image_index]), image_index)

    def run_rows(self, rows: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """The head on rows already in the layer's own layout (prefix tokens included)."""
        if self.head_only is None:
            self.head_only = self._head_only_reproduces_the_scores()
        if self.head_only:
            out = self._try_head_only(rows, image_index)
            if out is not None:
                return out
            self._fall_back("the head alone failed on a batch of rows")
        return self._run(self.images[image_index], rows, image_index)

    def _run(self, inputs: torch.Tensor, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        hook = _Replace(self.ref, rows)
        with removing([self.module.register_forward_hook(hook)]), torch.no_grad():
            output = self.model(inputs)
        if not hook.fired:
            raise LayerError(f"layer '{self.ref}' was not called when re-running the model")
        return self.scoring.scores(output, index)

    def _try_head_only(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        try:
            out = self._run(self.images[:0], rows, index)
        except Exception:  # any op may refuse an empty batch or mismatched shapes: fall back
            return None
        return out if tuple(out.shape) == (rows.shape[0], self.scores.shape[1]) else None

    def _head_only_reproduces_the_scores(self) -> bool:
        index = torch.arange(self.outputs.shape[0], device=self.outputs.device)
        out = self._try_head_only(self.outputs, index)
        scale = 1.0 + float(self.scores.abs().max())
        if out is not None and torch.allclose(out.float(), self.scores.float(), 1e-4, 1e-4 * scale):
            return True
        self._fall_back("running the head alone does not reproduce the model's scores")
        return False

    def _fall_back(self, reason: str) -> None:
        self.head_only = False
        warnings.warn(
            f"{self.who} at layer '{self.ref}': {reason} (something from before "
            "the layer reaches the output, e.g. a skip connection or a detector's FPN); using "
            "full forward passes instead: correct, but slower",
            HeadOnlyFallbackWarning,
            stacklevel=4,
        )


# -- augmentation smoothing ------------------------------------------------------------------------


def _aug_smoothed(
    model: nn.Module, images: torch.Tensor, settings: _Settings, first: _ViewResult
) -> dict[str, torch.Tensor]:
    """Mean over AUG_VIEWS of each view's map, mapped back and scaled to a maximum of 1.

    The targets are the un-augmented image's, for every view. `first` is the (False, 1.0) view.
    """
    sizes = {name: tuple(m.shape[2:]) for name, m in first.maps.items()}
    totals = {name: _unit_max(m.float()) for name, m in first.maps.items()}
    for flip, scale in AUG_VIEWS:
        if (flip, scale) == (False, 1.0):
            continue
        view = _explain_augmented(model, _augment(images, flip, scale), settings, first.targets)
        for name, maps in view.maps.items():
            totals[name] += _unit_max(_restore(maps.float(), flip, sizes[name]))
    return {name: total / len(AUG_VIEWS) for name, total in totals.items()}


def _explain_augmented(
    model: nn.Module, images: torch.Tensor, settings: _Settings, targets: torch.Tensor
) -> _ViewResult:
    try:
        return _explain_view(model, images, settings, targets)
    except RuntimeError as exc:
        h, w = images.shape[2:]
        raise LayerError(
            f"aug_smooth=True runs the model on rescaled copies of the image ({h}×{w}) and the "
            f"model failed on one ({first_line(exc)}); drop aug_smooth=True for this model"
        ) from exc


def _augment(images: torch.Tensor, flip: bool, scale: float) -> torch.Tensor:
    if scale != 1.0:
        size = [max(1, round(side * scale)) for side in images.shape[2:]]
        images = F.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0
        )
    return images.flip(-1) if flip else images


def _restore(maps: torch.Tensor, flip: bool, size: tuple[int, ...]) -> torch.Tensor:
    """A view's maps [B, K, h', w'] back in the original image's frame at its map size."""
    if flip:
        maps = maps.flip(-1)
    if tuple(maps.shape[2:]) != tuple(size):
        shrinking = maps.shape[2] > size[0] or maps.shape[3] > size[1]
        maps = F.interpolate(
            maps, size=list(size), mode="bilinear", align_corners=False, antialias=shrinking
        )
    return maps.clamp(min=0)


def _unit_max(maps: torch.Tensor) -> torch.Tensor:
    """Each [h, w] map divided by its maximum; an all-zero map stays zero."""
    peak = maps.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp(min=torch.finfo(maps.dtype).tiny), 0.0)


def _attention_for(
    model: nn.Module, method: CamMethod
) -> contextlib.AbstractContextManager[AttentionRecorder | None]:
    """record_attention for the methods that read attention (`needs_attention`), else nothing."""
    if not method.needs_attention:
        return contextlib.nullcontext()
    return record_attention(model, method.name, gradients=method.attention_gradients)
