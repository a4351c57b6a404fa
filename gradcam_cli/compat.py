"""pytorch-grad-cam's call shape on this library's engine: change one import line.

    # from pytorch_grad_cam import GradCAM
    from gradcam_cli.compat import GradCAM

    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])  # [B, H, W]

Ten of pytorch-grad-cam's methods are here under its class names: GradCAM, GradCAMPlusPlus,
XGradCAM, LayerCAM, HiResCAM, GradCAMElementWise, EigenCAM, EigenGradCAM, ScoreCAM and
AblationCAM. Its newer ones (FullGrad, KPCA_CAM, ShapleyCAM, FinerCAM, FEM, RefineCAM, SESS,
SegEigenCAM, RandomCAM) are in the registry, not here: `Explainer(model, layer, method=...)`
with their options as `method_settings` (docs/methods.md). A call returns
what pytorch-grad-cam returns: numpy float32 [B, H, W] in [0, 1] at the input's size, each
layer's map min-max scaled per image and resized, then several layers averaged and scaled
again. The maps come from the split engine (engine.py): gradients through the head only, so a
call costs about what inference costs.

Targets: None (each image's predicted class), one per image of: a class index,
pytorch-grad-cam's `ClassifierOutputTarget` / `ClassifierOutputSoftmaxTarget` (recognised by
name and `category`, computed vectorised), or any callable that maps one image's output row
(its logits, 1-D) to a number, as pytorch-grad-cam's other targets do. Each is explained
exactly: the engine differentiates the target's own value, softmax included.

Where it differs from pytorch-grad-cam (docs/methods.md, "Checked against the peers", says why):
- The model's mode: pytorch-grad-cam's constructor calls `model.eval()` and computes in
  whatever mode the model is in at the call. Here each call runs in eval mode, with parameters
  frozen, and then restores every module's mode, `requires_grad` and hook; `.grad` is never
  touched, and no hook is held between calls.
- `reshape_transform` is accepted and not used: token ([B, 1+N, C]) and channels-last layouts
  are read from the model itself (layouts.py). A one-time CompatibilityWarning says so.
- `targets` must give one target per image (pytorch-grad-cam silently explains fewer).
- A module that runs several times per forward is refused; name one call by its dotted path
  instead, `target_layers=["layer1.0.relu@1"]` (strings are accepted next to modules).
- EigenCAM / EigenGradCAM / `eigen_smooth`: the principal component's sign is fixed (it
  correlates positively with the channel sum); pytorch-grad-cam keeps whatever the SVD returns.
- ScoreCAM upsamples its masks with half-pixel centres (`align_corners=False`).
- AblationCAM zeroes each channel, as the paper does (pytorch-grad-cam too where the layer's
  minimum is 0; elsewhere it uses min − 1e7); `ablation_layer` is accepted and not used.
"""

from __future__ import annotations

import operator
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import methods
from .engine import explain_batch
from .errors import LayerError, TargetError, UnknownLayerError, UsageError
from .layers import LayerRef, module_paths, resolve_layer
from .logits import extract_logits
from .methods import eigen, gradient, perturbation
from .methods.scaling import unit_range
from .modelstate import removing

__all__ = [
    "BaseCAM",
    "CompatibilityWarning",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "LayerCAM",
    "HiResCAM",
    "GradCAMElementWise",
    "EigenCAM",
    "EigenGradCAM",
    "ScoreCAM",
    "AblationCAM",
]

# pytorch-grad-cam's aug_smooth (ttach): horizontal flip × brightness factor, maps averaged.
_AUG_FLIPS = (False, True)
_AUG_FACTORS = (0.9, 1.0, 1.1)

_warned: set[str] = set()


class CompatibilityWarning(UserWarning):
    """A pytorch-grad-cam argument that this library accepts and does not need."""


def _warn_once(key: str, message: str) -> None:
    """Warn once per process, pointing at the caller's line (the first frame outside here)."""
    if key in _warned:
        return
    _warned.add(key)
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, CompatibilityWarning, stacklevel=level)


class BaseCAM:
    """pytorch-grad-cam's `BaseCAM` call shape; subclasses name the method (`method`).

    After a call, `outputs` holds the model's logits for the (unmodified) input, detached.
    """

    method: ClassVar[type[methods.CamMethod]]
    batch_size: int | None = None  # rows per re-run of the model; None: the engine's chunks

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module | str],
        reshape_transform: Callable | None = None,
    ):
        self.model = model
        self.target_layers = _layer_list(target_layers)
        self.reshape_transform = reshape_transform
        self.layers = _layer_refs(model, self.target_layers)
        self.outputs: torch.Tensor | None = None  # the last call's logits, detached
        if reshape_transform is not None:
            _warn_once(
                "reshape_transform",
                "reshape_transform is accepted and not used: gradcam_cli reads token and "
                "channels-last layouts from the model itself",
            )

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """Maps [B, H, W] float32 in [0, 1]; with `aug_smooth`, the mean over pytorch-grad-cam's
        six views (mirrored or not × brightness 0.9, 1, 1.1), each mapped back."""
        if not aug_smooth:
            return self.forward(input_tensor, targets, eigen_smooth)
        views = []
        for flip in _AUG_FLIPS:
            for factor in _AUG_FACTORS:
                view = input_tensor.flip(-1) if flip else input_tensor
                cam = self.forward(view * factor, targets, eigen_smooth)
                views.append(cam[..., ::-1] if flip else cam)
        return np.stack(views).mean(axis=0)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        images = _as_images(input_tensor, self.model)
        rerun = self.method.uses_head or self.method.needs_full_forwards
        scores = _TargetScores(_parse_targets(targets, len(images)), per_image=not rerun)
        with removing([self.model.register_forward_hook(scores)]):
            result = explain_batch(
                self.model,
                images,
                list(dict.fromkeys(self.layers)),
                classes=scores.columns(),
                method=self._engine_method(),
                eigen_smooth=eigen_smooth,
            )
        self.outputs = scores.logits
        own = [_own_maps(result.maps[str(ref)]) for ref in self.layers]
        return _aggregate(own, (images.shape[2], images.shape[3]))

    def _engine_method(self) -> methods.CamMethod:
        method = self.method()
        if isinstance(method, _InBatches) and self.batch_size is not None:
            if _index(self.batch_size) is None or self.batch_size < 1:
                raise UsageError(f"batch_size must be a whole number >= 1, not {self.batch_size}")
            method.batch_size = self.batch_size
        return method

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None  # nothing is held between calls; exceptions propagate


# -- the methods: pytorch-grad-cam's names over our registry -----------------------------------


class _InBatches:
    """Mixin for a method that re-runs the model: at most `batch_size` rows per run."""

    batch_size: int = perturbation.FORWARD_CHUNK

    def maps(self, view: methods.LayerView) -> torch.Tensor:
        head, forward = (_in_batches(run, self.batch_size) for run in (view.head, view.forward))
        # A mixin: super() is the method class it is mixed into, which mypy cannot know here.
        return super().maps(replace(view, head=head, forward=forward))  # type: ignore[misc]


class _BatchedScoreCAM(_InBatches, perturbation.ScoreCAM):
    pass


class _BatchedAblationCAM(_InBatches, perturbation.AblationCAM):
    pass


class GradCAM(BaseCAM):
    method = gradient.GradCAM


class GradCAMPlusPlus(BaseCAM):
    method = gradient.GradCAMPlusPlus


class XGradCAM(BaseCAM):
    method = gradient.XGradCAM


class LayerCAM(BaseCAM):
    method = gradient.LayerCAM


class HiResCAM(BaseCAM):
    method = gradient.HiResCAM


class GradCAMElementWise(BaseCAM):
    method = gradient.GradCAMElementWise


class EigenCAM(BaseCAM):
    method = eigen.EigenCAM


class EigenGradCAM(BaseCAM):
    method = eigen.EigenGradCAM


class ScoreCAM(BaseCAM):
    """`batch_size`: masked images per forward pass (pytorch-grad-cam's default, 16)."""

    method = _BatchedScoreCAM
    batch_size = 16


class AblationCAM(BaseCAM):
    """`batch_size`: ablated activations per head-only pass. Only the head runs again, so
    `ratio_channels_to_ablate` (pytorch-grad-cam's experimental shortcut) must stay 1.0."""

    method = _BatchedAblationCAM

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module | str],
        reshape_transform: Callable | None = None,
        ablation_layer: object = None,
        batch_size: int = 32,
        ratio_channels_to_ablate: float = 1.0,
    ):
        super().__init__(model, target_layers, reshape_transform)
        if ratio_channels_to_ablate != 1.0:
            raise UsageError(
                f"ratio_channels_to_ablate={ratio_channels_to_ablate} is not supported: every "
                "channel is ablated (only the head runs again, so it is cheap); drop the argument"
            )
        if ablation_layer is not None:
            _warn_once(
                "ablation_layer",
                "ablation_layer is accepted and not used: each channel is set to zero, in the "
                "layer's own layout (the patch tokens of a ViT)",
            )
        self.ablation_layer = ablation_layer
        self.batch_size = batch_size
        self.ratio_channels_to_ablate = ratio_channels_to_ablate


# -- targets: the hook that turns the model's output into the targets' scores ----------------


@dataclass(frozen=True)
class _Category:
    """A class index (ClassifierOutputTarget), or its softmax probability; vectorised."""

    index: int
    softmax: bool = False

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if not 0 <= self.index < rows.shape[1]:
            raise TargetError(
                f"target class {self.index} is out of range: the model has {rows.shape[1]} "
                f"outputs (0–{rows.shape[1] - 1})"
            )
        return (rows.softmax(dim=1) if self.softmax else rows)[:, self.index]


def _parse_targets(targets: Sequence[Any] | None, batch: int) -> list[_Category | Callable | None]:
    if targets is None:
        return [None] * batch
    targets = list(targets)
    if len(targets) != batch:
        raise TargetError(
            f"targets has {len(targets)} entries for a batch of {batch} images; give one per "
            "image, or targets=None for each image's predicted class"
        )
    return [_parse_target(target, i) for i, target in enumerate(targets)]


def _parse_target(target: Any, i: int) -> _Category | Callable | None:
    if target is None:
        return None
    index = None if isinstance(target, bool) else _index(target)
    if index is not None:
        return _Category(index)
    kind, category = type(target).__name__, _index(getattr(target, "category", None))
    if kind in ("ClassifierOutputTarget", "ClassifierOutputSoftmaxTarget") and category is not None:
        return _Category(category, softmax=kind == "ClassifierOutputSoftmaxTarget")
    return target if callable(target) else _bad_target(target, i)  # called as it is


def _index(value: Any) -> int | None:
    """An integer (int, numpy integer, 0-d integer tensor) as an int; anything else None."""
    try:
        return operator.index(value)
    except TypeError:
        return None


def _bad_target(target: Any, i: int) -> NoReturn:
    raise TargetError(
        f"targets[{i}] is {type(target).__name__}: give a class index, a pytorch-grad-cam "
        "target such as ClassifierOutputTarget(281) or ClassifierOutputSoftmaxTarget(281), or a "
        "callable that maps one image's output row to a number"
    )


class _TargetScores:
    """Forward hook on the caller's model: its output becomes the targets' scores.

    `per_image` (gradient and eigen methods; the model runs once): one column, row i holding
    target i's score of image i, so one backward serves the batch. Otherwise (Score-CAM,
    Ablation-CAM, which re-run the model on rows of one image): column j holds target j's score
    of every row, and each image keeps its own column. A target left None becomes its image's
    predicted class at the first call, on the unmodified images, as in pytorch-grad-cam.
    """

    def __init__(self, targets: list[_Category | Callable | None], per_image: bool):
        self.given, self.per_image = targets, per_image
        self.targets: list[_Category | Callable] = []  # resolved at the first call
        self.logits: torch.Tensor | None = None

    def columns(self) -> list[int]:
        """The engine's class indices: a single column z is reported as [-z, z]."""
        width = 1 if self.per_image else len(self.given)
        return [1] if width == 1 else list(range(width))

    def __call__(self, module: nn.Module, args: object, output: object) -> torch.Tensor:
        logits = extract_logits(output)
        if self.logits is None:
            self.logits = logits.detach()
            predicted = self.logits.argmax(dim=1).tolist()
            self.targets = [
                _Category(p) if t is None else t for t, p in zip(self.given, predicted, strict=True)
            ]
        if self.per_image:
            rows = [logits[i : i + 1] for i in range(len(logits))]
            pairs = zip(self.targets, rows, strict=True)
            return torch.cat([_target_scores(t, row) for t, row in pairs])[:, None]
        return torch.stack([_target_scores(t, logits) for t in self.targets], dim=1)


def _target_scores(target: _Category | Callable, rows: torch.Tensor) -> torch.Tensor:
    """[N] scores of `rows` [N, num_outputs]; other callables get one 1-D row at a time."""
    if isinstance(target, _Category):
        return target(rows)
    values = [target(row) for row in rows]
    for value in values:
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TargetError(
                f"a target returned {type(value).__name__}"
                + (f" of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else "")
                + ": a target must return one number, a tensor computed from the output row"
            )
    return torch.stack([v.reshape(()) for v in values]) if values else rows.new_zeros(0)


def _own_maps(maps: torch.Tensor) -> torch.Tensor:
    """[B, K, h, w] → [B, h, w]: each image's map for its own target."""
    if maps.shape[1] == 1:
        return maps[:, 0]
    index = torch.arange(maps.shape[0])
    return maps[index, index]


# -- layers, inputs and pytorch-grad-cam's scaling -----------------------------------------------


def _layer_list(target_layers: Sequence[nn.Module | str]) -> list[nn.Module | str]:
    if isinstance(target_layers, nn.Module | str):
        raise UsageError(
            "target_layers must be a list: target_layers=[model.layer4], not target_layers="
            "model.layer4"
        )
    layers = list(target_layers)
    if not layers:
        raise UsageError("target_layers is empty; give at least one, e.g. [model.layer4]")
    return layers


def _layer_refs(model: nn.Module, target_layers: list[nn.Module | str]) -> list[LayerRef]:
    """Each target layer's LayerRef: modules found by identity, strings as dotted paths."""
    names = module_paths(model)
    refs = []
    for i, layer in enumerate(target_layers):
        if isinstance(layer, str):
            refs.append(resolve_layer(model, layer))
            continue
        name = names.get(id(layer))
        if name is None:
            raise UnknownLayerError(
                f"target_layers[{i}] ({type(layer).__name__}) is not a module of this model "
                "(a copy of the model has its own modules); pass the model's own, e.g. "
                "target_layers=[model.layer4]"
            )
        if name == "":
            raise LayerError(
                f"target_layers[{i}] is the model itself; pass one of its layers, e.g. "
                "target_layers=[model.layer4]"
            )
        refs.append(resolve_layer(model, name))
    return refs


def _as_images(input_tensor: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A detached [B, C, H, W] batch on the model's device, as pytorch-grad-cam moves it."""
    if not isinstance(input_tensor, torch.Tensor) or input_tensor.dim() != 4:
        shape = list(input_tensor.shape) if isinstance(input_tensor, torch.Tensor) else None
        raise UsageError(
            f"input_tensor must be a [batch, channels, height, width] tensor, not "
            f"{shape if shape is not None else type(input_tensor).__name__}"
        )
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else input_tensor.device
    return input_tensor.detach().to(device)


def _scale(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's `scale_cam_image`: per image, minus its minimum, over its maximum."""
    return unit_range(maps, eps=1e-7)


def _aggregate(maps: list[torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's `compute_cam_per_layer` + `aggregate_multi_layers`: each layer's
    map scaled and resized (bilinear, half-pixel centres, as cv2.resize), then the layers'
    mean, scaled again."""
    resized = [
        F.interpolate(_scale(m.float())[:, None], size=size, mode="bilinear", align_corners=False)
        for m in maps
    ]
    mean = torch.cat(resized, dim=1).clamp(min=0).mean(dim=1)
    return _scale(mean).numpy().astype(np.float32)


def _in_batches(run: Callable[..., torch.Tensor], size: int) -> Callable[..., torch.Tensor]:
    """`run(rows, *aligned)` in slices of at most `size` rows, concatenated."""

    def batched(rows: torch.Tensor, *aligned: torch.Tensor) -> torch.Tensor:
        parts = [
            run(rows[i : i + size], *(a[i : i + size] for a in aligned))
            for i in range(0, len(rows), size)
        ]
        return torch.cat(parts)

    return batched
