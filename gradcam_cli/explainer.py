"""The library's front door: a model, its target layers and a method → explanations of images.

    from PIL import Image
    from gradcam_cli import Explainer, load_model

    explainer = Explainer(load_model("resnet50"), layers=["layer4"])
    [result] = explainer.explain([Image.open("cat.jpg").convert("RGB")])
    result.predictions[0].label, result.overlay(result.targets[0])   # a PIL image

The CLI's batch runner uses exactly this object. The explanations are ImageExplanations
(explanation.py); `Explainer.save` writes them as `gradcam explain` does (outputs.py).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from PIL import Image
from torch import nn

from .engine import explain_batch
from .errors import (
    LayerError,
    TargetError,
    UnknownLayerError,
    UsageError,
    did_you_mean,
    running_user_code,
)
from .explanation import ImageExplanation, RenderOptions
from .files import check_image_format
from .inputs import decode_image
from .layers import LayerRef, Probe, module_paths, parse_layers, probe_layers, resolve_layer
from .methods import check_layer_count, check_method_options
from .outputs import RunOptions, save_explanations
from .preprocess import Preprocess
from .report import Prediction, TargetRef
from .sources import LoadedModel, as_loaded_model
from .tasks import SegmentationTask, TargetDetails, Task, get_task
from .tasks.detection import check_min_score

__all__ = ["Explainer", "resolve_device"]

BINARY_LABELS = ["negative", "positive"]


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; an unavailable device is a usage error."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device='{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("device='cuda': no CUDA GPU is visible to torch; use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device='{name}': only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError("device='mps': Apple MPS is not available here; use device='cpu'")
    elif device.type != "cpu":
        raise UsageError(f"unsupported --device '{name}'; use auto, cpu, cuda, cuda:N or mps")
    return device


LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None
ImageInput = str | os.PathLike | Image.Image | np.ndarray


class Explainer:
    """A model made ready to explain: device, layers resolved and checked, method.

        cam = Explainer(model, layers="layer4")   # an nn.Module, "torchvision:resnet50", ...
        result = cam.explain("cat.jpg")           # a path, PIL image or H×W×3 array
        result.overlay()                          # PIL image at the photo's size
        maps = cam(x, targets=[281])              # preprocessed [B,3,H,W] → raw maps [B,K,h,w]

    `model`: an nn.Module (taken as it is: the caller's module is never moved to another
    device, left in another mode, with hooks, or with changed requires_grad or .grad), a
    `--model` spec such as "torchvision:resnet50" or "demo:shapes" (loaded with
    `load_model`), or a LoadedModel (the library's own: it is moved to `device`).
    `layers`: a dotted path ("layer4", "features.-1"), comma-separated paths, a module of the
    model, a list of those, or None for the automatic choice. `device`: None keeps the model
    where it is; another device explains on a copy of an nn.Module (its memory twice).
    `preprocess`, `labels`: replace the model's own (timm models carry their data config).
    `task`: classification, segmentation or detection (tasks/); None: what the model is
    known to be (torchvision's segmentation models and detectors), else classification.
    `method_settings`: the method's own options (`methods.MethodOption`: fem's k_sigma,
    kpcacam's kernel and kernel_gamma, sscam's samples, noise_std and seed, …), checked now.
    """

    def __init__(
        self,
        model: nn.Module | LoadedModel | str,
        layers: LayerSpec = None,
        *,
        method: str = "gradcam",
        device: str | torch.device | None = None,
        preprocess: Preprocess | None = None,
        labels: Sequence[str] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        amp: str | None = None,
        task: str | Task | None = None,
        method_settings: dict[str, object] | None = None,
    ):
        name = task.name if isinstance(task, Task) else task
        loaded = as_loaded_model(model, preprocess=preprocess, labels=labels, task=name)
        self.loaded = loaded
        self.task = get_task(task if task is not None else loaded.task)
        if aug_smooth and self.task.name != "classification":
            raise UsageError(
                f"aug_smooth=True is for classifiers: a {self.task.name} model's targets "
                "(regions, boxes) would have to be flipped and rescaled with the image"
            )
        self.method = check_method_options(
            method, eigen_smooth=eigen_smooth, **(method_settings or {})
        )
        self.method.check_task(self.task.name)
        self.aug_smooth, self.eigen_smooth = aug_smooth, eigen_smooth
        self.device = _device_for(loaded.model, device)
        self.amp = amp
        self._amp_dtype = _amp_dtype(amp, self.device)
        self.model = _on_device(loaded, self.device)
        self.probe: Probe = probe_layers(
            self.model,
            loaded.preprocess.input_size,
            self.device,
            model_name=loaded.title,
            task=self.task,
        )
        names = parse_layers(_layer_names(loaded.model, layers))
        self.layer_chosen_automatically = not names
        if not names:
            names = [self.probe.default_layer()]
        self.layers = [self._checked_layer(name) for name in names]
        check_layer_count(self.method, len(self.layers))
        self.num_classes = self._class_count(loaded.labels)
        self.labels = self._checked_labels(loaded.labels)
        if isinstance(self.task, SegmentationTask) and self.labels:
            self.task = SegmentationTask(background=background_classes(self.labels))
        if self.method.requires_gap_linear_head or self.method.needs_attention:
            self._check_method_on_a_probe_image()

    # -- set-up checks (all before any image is processed) ---------------------------------

    def _checked_layer(self, name: str) -> LayerRef:
        ref = resolve_layer(self.model, name)
        info = self.probe.get(ref.name)
        if ref.call is not None:
            if ref.call >= info.calls:
                raise LayerError(
                    f"layer '{ref.name}' runs {info.calls} time(s) per forward; "
                    f"@{ref.call} is past the last call (@{info.calls - 1})"
                )
            return ref
        if info.reason:
            raise LayerError(
                f"layer '{ref.name}' ({info.kind}) cannot be explained: "
                f"{info.reason}. Try '{self.probe.default_layer()}', or see "
                "`gradcam layers MODEL` for the usable layers"
            )
        return ref

    def _check_method_on_a_probe_image(self) -> None:
        """Methods with architectural needs (CAM's head, a ViT's attention) fail here, before
        any image."""
        generator = torch.Generator().manual_seed(0)
        probe_image = torch.rand(1, 3, *self.loaded.preprocess.input_size, generator=generator)
        h, w = self.loaded.preprocess.input_size
        with running_user_code(
            f"running {self.loaded.title} with method='{self.method.name}' on a {h}×{w} image",
            "fix the model, or rerun with --verbose for the traceback",
        ):
            explain_batch(
                self.model,
                probe_image.to(self.device),
                self.layers,
                method=self.method,
                outputs_probabilities=self.probe.outputs_probabilities,
                task=self.task,
            )

    def _class_count(self, labels: list[str] | None) -> int:
        """The classes a target may name: a single logit is two; a detector whose class count
        is not found in the model has as many as its labels (0: any index)."""
        if self.task.name == "classification" and self.probe.num_outputs == 1:
            return 2
        if self.probe.num_outputs == 0 and labels:
            return len(labels)
        return self.probe.num_outputs

    def _checked_labels(self, labels: list[str] | None) -> list[str] | None:
        if labels is None:
            one_logit = self.probe.num_outputs == 1 and self.task.name == "classification"
            return list(BINARY_LABELS) if one_logit else None
        if len(labels) != self.num_classes:
            raise UsageError(
                f"{len(labels)} labels for a model with {self.num_classes} "
                "classes; give one label per class, in class-index order"
            )
        return labels

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels and 0 <= index < len(self.labels) else str(index)

    def resolve_targets(self, values: Sequence[str | int]) -> list[int]:
        """`--target` values (class indices or labels) → class indices, checked now."""
        return list(dict.fromkeys(self._target_index(value) for value in values))

    def _target_index(self, value: str | int) -> int:
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if index < 0 or (self.num_classes and index >= self.num_classes):
                raise TargetError(
                    f"targets={index} is out of range: the model has "
                    f"{self.num_classes} classes (0–{self.num_classes - 1})"
                )
            return index
        if not self.labels:
            raise TargetError(
                f"targets='{text}': this model has no class names; give a class "
                f"index 0–{self.num_classes - 1} or name the classes with labels="
            )
        return _label_index(text, self.labels)

    # -- the work --------------------------------------------------------------------------

    @overload
    def explain(  # type: ignore[overload-overlap]  # a str is a Sequence too: one image, as here
        self,
        images: ImageInput,
        *,
        targets: Sequence[int | str] | None = None,
        topk: int = 1,
        classes: Sequence[int] | None = None,
        arrays: Sequence[np.ndarray] | None = None,
        min_score: float | None = None,
        region: RegionInput | None = None,
    ) -> ImageExplanation: ...

    @overload
    def explain(
        self,
        images: Sequence[ImageInput],
        *,
        targets: Sequence[int | str] | None = None,
        topk: int = 1,
        classes: Sequence[int] | None = None,
        arrays: Sequence[np.ndarray] | None = None,
        min_score: float | None = None,
        region: RegionInput | None = None,
    ) -> list[ImageExplanation]: ...

    def explain(
        self,
        images,
        *,
        targets=None,
        topk=1,
        classes=None,
        arrays=None,
        min_score=None,
        region=None,
    ):
        """Explain images: `targets` (class indices or labels) for each, else each image's
        top-k. An image is a file path, a PIL image or an H×W×3 uint8 array; one image gives
        one ImageExplanation, a list gives a list.

        A detector explains its detections: those of the `targets` classes (any without),
        scoring at least `min_score` (0–1), the top-k by score. A segmentation model explains
        each target class over the pixels it predicts as the class, or over `region` (a mask:
        a bool H×W array, a PIL image or a file, in the photo's frame; every image must have
        its size).

        `classes` are class indices already checked (the batch runner's); `arrays` the images
        already preprocessed (`Preprocess.to_array`), as its decode workers make them: NumPy
        arrays, or tensors on the device where they were decoded (`devicedecode`).
        """
        options = {"min_score": min_score, "region": region}
        if _is_one_image(images) or not isinstance(images, Sequence | Iterator):
            return self.explain([images], targets=targets, topk=topk, classes=classes, **options)[0]
        images = list(images)
        if topk < 1:
            raise UsageError(f"topk= must be at least 1, got {topk}")
        check_target_options(self.task.name, min_score, region)
        if targets is not None:
            classes = self.resolve_targets(list(targets))
        sources = [_source_of(image) for image in images]
        images = [_as_photo(image) for image in images]
        if arrays is None:
            arrays = [self.loaded.preprocess.to_array(image) for image in images]
        regions = None if region is None else self._regions(region, images)
        # What was asked: classes, or top-k; a detector's top-k detections of those classes.
        detections = self.task.name == "detection"
        request = (tuple(classes or ()), topk if detections or not classes else 1)
        explained = []
        for part in self._batches(arrays):  # of one size each
            batch = self._stacked([arrays[i] for i in part])
            batch_regions = None if regions is None else torch.stack([regions[i] for i in part])
            with self.autocast():
                result = self._explain_tensor(
                    batch, classes, topk, min_score=min_score, regions=batch_regions
                )
            explained += [
                (i, self._image_explanation(row, images[i], result, sources[i], request))
                for row, i in enumerate(part)
            ]
        return [explanation for _, explanation in sorted(explained, key=lambda pair: pair[0])]

    def _batches(self, arrays: Sequence) -> list[list[int]]:
        """The images' positions, grouped into batches of one input size (a photo's own, with
        `resize='keep'`), in order."""
        if self.loaded.preprocess.fixed_size:
            return [list(range(len(arrays)))]
        groups: dict[tuple, list[int]] = {}
        for i, array in enumerate(arrays):
            groups.setdefault(tuple(array.shape), []).append(i)
        return list(groups.values())

    def _stacked(self, arrays: Sequence) -> torch.Tensor:
        if any(isinstance(array, torch.Tensor) for array in arrays):  # decoded on the device
            batch = torch.stack([torch.as_tensor(a).to(self.device) for a in arrays])
        else:
            batch = torch.from_numpy(np.stack(arrays))
        if batch.device.type == "cpu" and self.device.type == "cuda":  # page-locked, so the
            batch = batch.pin_memory()  # copy overlaps the GPU's work
        return batch.to(self.device, non_blocking=True)

    def _regions(self, region: RegionInput, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """`region=` on each photo → bool [H, W] in the model's input frame; read and placed
        once per photo size."""
        placed: dict[tuple[int, int], torch.Tensor] = {}
        nearest = replace(self.loaded.preprocess, interpolation="nearest")
        for size in dict.fromkeys(image.size for image in images):
            mask = region_mask(region, size)
            picture = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
            placed[size] = torch.from_numpy(np.asarray(nearest.model_view(picture)) >= 128)
        return [placed[image.size] for image in images]

    def __call__(
        self, x: torch.Tensor, targets: Sequence[int | str] | None = None, topk: int = 1
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Raw maps of a preprocessed batch [B, 3, H, W]: [B, K, h, w] float32 on x's device
        (K: the targets, else the top-k classes), after ReLU, before any resizing; a dict by
        layer name when several layers are explained."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise UsageError(f"x must be a tensor [B, 3, H, W], got {shape}")
        classes = self.resolve_targets(list(targets)) if targets is not None else None
        with self.autocast():
            result = self._explain_tensor(x.to(self.device), classes, topk)
        maps = {name: m.to(x.device) for name, m in result.maps.items()}
        return next(iter(maps.values())) if len(maps) == 1 else maps

    def autocast(self):
        """The autocast context of amp= (none without it): the model runs under it."""
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    def _explain_tensor(
        self,
        batch: torch.Tensor,
        classes,
        topk: int,
        min_score: float | None = None,
        regions: torch.Tensor | None = None,
    ):
        return explain_batch(
            self.model,
            batch,
            self.layers,
            classes=classes,
            topk=topk,
            method=self.method,
            outputs_probabilities=self.probe.outputs_probabilities,
            aug_smooth=self.aug_smooth,
            eigen_smooth=self.eigen_smooth,
            task=self.task,
            min_score=min_score,
            regions=regions,
        )

    def _image_explanation(
        self, i: int, image: Image.Image, result, source: str | None = None, request=((), 1)
    ) -> ImageExplanation:
        probabilities, scores = result.probabilities[i], result.scores[i]
        crop_box = self.loaded.preprocess.crop_box(*image.size)
        frame = self.loaded.preprocess.model_input_size(*image.size)
        ranking = result.ranking[i] if result.ranking is not None else probabilities
        if result.null_slot is not None:  # never a prediction
            ranking = ranking[: result.null_slot]
        top = ranking.argsort(descending=True, stable=True)[:5].tolist()  # ties: in slot order
        top = [slot for slot in top if result.null_slot is None or ranking[slot] > 0] or top[:1]
        predictions = [
            Prediction.make(**self._slot(slot, details, probabilities, scores, crop_box, frame))
            for slot, details in zip(top, result.describe(i, top), strict=True)
        ]
        slots = result.targets[i].tolist()
        ranks = [rank for rank, slot in enumerate(slots) if slot != result.null_slot]
        details = result.describe(i, [slots[rank] for rank in ranks])
        targets = [
            TargetRef.make(**self._slot(slots[rank], found, probabilities, scores, crop_box, frame))
            for rank, found in zip(ranks, details, strict=True)
        ]
        maps = {
            (target.index, layer): layer_maps[i, rank].numpy()
            for layer, layer_maps in result.maps.items()
            for rank, target in zip(ranks, targets, strict=True)
        }
        guided = {
            (target.index, layer): layer_images[i, rank].numpy()
            for layer, layer_images in result.guided.items()
            for rank, target in zip(ranks, targets, strict=True)
        }
        regions = {
            target.index: found.region
            for target, found in zip(targets, details, strict=True)
            if found is not None and found.region is not None
        }
        return ImageExplanation(
            image,
            crop_box,
            predictions,
            targets,
            maps,
            guided,
            self.method.name,
            source,
            self,
            request,
            regions=regions,
        )

    def _slot(
        self,
        slot: int,
        details: TargetDetails | None,
        probabilities: torch.Tensor,
        scores: torch.Tensor,
        crop_box: tuple[float, float, float, float],
        frame: tuple[int, int],
    ) -> dict[str, Any]:
        """Prediction.make's / TargetRef.make's arguments for a slot: a class, or what the
        task says it is (a detection's class and box on the photo, a class's pixel share)."""
        found: dict[str, Any] = {
            "index": slot,
            "label": self.label(slot),
            "probability": probabilities[slot].item(),
            "score": scores[slot].item(),
        }
        if details is None:
            return found
        found["probability"] = details.probability
        found["pixel_share"] = details.pixel_share
        if details.box is not None:  # a detection: index numbers it, class_index is its class
            found["label"] = self.label(details.class_index)
            found["class_index"] = details.class_index
            found["box"] = _box_on_photo(details.box, crop_box, frame)
        return found

    # -- what a report records, and saving -------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What a run's report records about this explainer: model, method, layers, device,
        preprocessing and method options (`outputs.new_report`)."""
        task = {} if self.task.name == "classification" else {"task": self.task.name}
        return {
            "model": {**self.loaded.describe(), **task},  # a classifier's says nothing new
            "method": self.method.name,
            "layers": [str(ref) for ref in self.layers],
            "device": str(self.device),
            "preprocess": self.loaded.preprocess.describe(),
            "method_options": {
                "aug_smooth": self.aug_smooth,
                "eigen_smooth": self.eigen_smooth,
                **self.method.given,  # the method's own options, where given (kernel=...)
                "amp": self.amp,
            },
        }

    def save(
        self,
        explanations: Sequence[ImageExplanation],
        out: str | os.PathLike,
        *,
        render: RenderOptions = RenderOptions(),
        overlay_format: str = "png",
        heatmap: bool = True,
        save_raw: bool = False,
        panel: bool = False,
        report: bool = False,
    ) -> Path:
        """Write what `gradcam explain` writes for explanations this Explainer made, asked for
        the same targets, into the folder `out` (`ImageExplanation.save`'s options); returns
        the report's path."""
        requests = {explanation.request for explanation in explanations}
        if len(requests) > 1:
            raise UsageError("these explanations were asked for different targets; save each apart")
        classes, topk = requests.pop() if requests else ((), 1)
        options = RunOptions(
            out_dir=Path(out),
            classes=classes,
            topk=topk,
            batch_size=1,  # one image: what `gradcam explain` of it records too
            save_raw=save_raw,
            render=render,
            overlay_format=check_image_format(overlay_format),
            heatmap=heatmap,
            panel=panel,
            report=report,
        )
        save_explanations(self.describe(), explanations, options)
        return Path(out) / options.report_name


RegionInput = str | os.PathLike | Image.Image | np.ndarray


def check_target_options(task: str, min_score: float | None, region: object) -> None:
    """min_score= is for detectors (0–1), region= for segmentation models."""
    if min_score is not None and task != "detection":
        raise UsageError(f"min_score= is for detectors; this model's task is {task}")
    check_min_score(min_score)
    if region is not None and task != "segmentation":
        raise UsageError(f"region= is for segmentation models; this model's task is {task}")


def background_classes(labels: Sequence[str]) -> tuple[int, ...]:
    """The classes named background (torchvision's `__background__`, `background`, `bg`)."""
    names = {"background", "bg"}
    return tuple(i for i, label in enumerate(labels) if label.strip(" _").casefold() in names)


def region_mask(region: RegionInput, size: tuple[int, int]) -> np.ndarray:
    """A region (bool array, PIL image or mask file; non-zero is inside) → bool [H, W], which
    must be the photo's `size` (width, height)."""
    if isinstance(region, (str, os.PathLike)):
        from .errors import ImageReadError
        from .localization import read_mask

        try:
            return read_mask(os.fspath(region), size)
        except ImageReadError as exc:  # an option's value: a usage error, found before any image
            raise UsageError(f"region= {exc}") from None
    array = np.asarray(region.convert("L") if isinstance(region, Image.Image) else region)
    if array.ndim == 3:
        array = array.max(axis=2)
    if array.ndim != 2 or (array.shape[1], array.shape[0]) != tuple(size):
        shape = "×".join(map(str, array.shape[1::-1])) if array.ndim >= 2 else str(array.shape)
        raise UsageError(
            f"region= is {shape} but the photo is {size[0]}×{size[1]}; the region must be "
            "a mask in the photo's own frame"
        )
    return array > 0


def _box_on_photo(
    box: tuple[float, float, float, float],
    crop_box: tuple[float, float, float, float],
    frame: tuple[int, int],
) -> list[float]:
    """A box in the model's input pixels → in the photo's pixels, through the crop box."""
    x0, y0, x1, y1 = crop_box
    height, width = frame
    sx, sy = (x1 - x0) / width, (y1 - y0) / height
    return [x0 + box[0] * sx, y0 + box[1] * sy, x0 + box[2] * sx, y0 + box[3] * sy]


def _device_for(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device asked for, checked; None: where the model's parameters already are."""
    if device is None:
        tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")
    return device if isinstance(device, torch.device) else resolve_device(device)


def _on_device(loaded: LoadedModel, device: torch.device) -> nn.Module:
    """The model on `device`: your nn.Module is copied there, never moved; a model the library
    loaded is moved."""
    model = loaded.model
    if all(t.device == device for t in itertools.chain(model.parameters(), model.buffers())):
        return model
    if loaded.source == "module":
        return copy.deepcopy(model).to(device)
    return model.to(device)


def _layer_names(model: nn.Module, layers: LayerSpec) -> str | list[str] | None:
    """Module objects in `layers` → their dotted names in `model`; paths pass through."""
    if layers is None or isinstance(layers, str):
        return layers
    items = [layers] if isinstance(layers, nn.Module) else list(layers)
    paths = module_paths(model)
    found = []
    for item in items:
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, nn.Module) and paths.get(id(item)):  # the model itself has ''
            found.append(paths[id(item)])
        else:
            what = type(item).__name__
            raise UnknownLayerError(
                f"layers=: the {what} given is not a submodule of the model; give one of its "
                "modules (model.layer4) or a dotted path ('layer4')"
            )
    return found


def _is_one_image(images: object) -> bool:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return True
    return isinstance(images, np.ndarray) and images.ndim in (2, 3)


def _source_of(image: ImageInput) -> str | None:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else None


def _as_photo(image: ImageInput) -> Image.Image:
    """A path (decoded as the CLI decodes it), a PIL image or an H×W(×3) array → RGB image."""
    if isinstance(image, (str, os.PathLike)):
        return decode_image(Path(image)).image
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            raise UsageError(
                f"an image array must be uint8 H×W×3 (values 0–255), got {array.dtype}; "
                "for float pixels in [0, 1] pass (array * 255).round().astype('uint8')"
            )
        if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
            return Image.fromarray(array.squeeze()).convert("RGB")
        raise UsageError(f"an image array must be H×W×3, got shape {array.shape}")
    raise UsageError(
        f"an image is a file path, a PIL image or an H×W×3 array, not {type(image).__name__}"
    )


AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def _amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """--amp: the autocast dtype. Maps and scores are still computed in float32."""
    if amp is None:
        return None
    if amp not in AMP_DTYPES:
        raise UsageError(f"amp= takes bf16 or fp16, got '{amp}'" + did_you_mean(amp, AMP_DTYPES))
    if amp == "fp16" and device.type == "cpu":
        raise UsageError("amp='fp16' needs a GPU; on the CPU use amp='bf16'")
    return getattr(torch, AMP_DTYPES[amp])


WORD_MATCHES_SHOWN = 10  # classes a `--target` word's error lists


def _label_index(text: str, labels: Sequence[str]) -> int:
    """Exact label (any case), else a unique comma-separated synonym ("tabby, tabby cat").

    A word that is neither is never taken as a class: the error lists the classes whose label
    holds it as a whole word ('cat': tabby cat, tiger cat, Persian cat, …), even when only one
    does (`-t dog` must not explain "hot dog" because the model has no "dog"); only when none
    does, the labels closest in spelling."""
    wanted = text.casefold()
    exact = [i for i, label in enumerate(labels) if label.casefold() == wanted]
    synonyms = [
        i
        for i, label in enumerate(labels)
        if wanted in (part.strip().casefold() for part in label.split(","))
    ]
    matches = exact or synonyms
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        listed = ", ".join(f"{i} ({labels[i]})" for i in matches[:5])
        raise TargetError(f"targets='{text}' names several classes: {listed}; give the index")
    word = re.compile(rf"(?<!\w){re.escape(wanted)}(?!\w)")
    holding = [i for i, label in enumerate(labels) if wanted and word.search(label.casefold())]
    if holding:
        listed = "; ".join(f"{i} {labels[i]}" for i in holding[:WORD_MATCHES_SHOWN])
        more = len(holding) - WORD_MATCHES_SHOWN
        listed += f"; … ({more} more)" if more > 0 else ""
        if len(holding) == 1:
            [index] = holding
            parts = [part.strip() for part in labels[index].split(",")]
            name = next((part for part in parts if word.search(part.casefold())), labels[index])
            which = (
                f"the one class with the word '{text}' is {listed}: give targets={index}, "
                f"or the name '{name}', if it is the one you mean"
            )
        else:
            which = (
                f"classes with the word '{text}': {listed}; give the index, or one of the "
                "names in full"
            )
        raise TargetError(f"targets='{text}' names no class exactly; {which}")
    names = {part.strip() for label in labels for part in (label, *label.split(","))}
    raise TargetError(
        f"targets='{text}' is not a class of this model."
        + did_you_mean(text, sorted(names))
        + " Give a class index or an exact label"
    )
