"""The one entry point: a `--model` spec → the model, its preprocessing, its labels, and where
its weights came from (`LoadedModel`). The spec is resolved once to a source (`names`), which
builds the model; the options then override what the source gives (`options`, `checkpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..preprocess import Preprocess, check_resize
from .checkpoint import load_weights, read_state_dict
from .names import find_source, parse_model_spec
from .options import check_input_size, check_num_classes, override_preprocess, read_labels_file
from .registry import Source
from .timm import timm_labels, timm_preprocess
from .user import USER, custom_preprocess

__all__ = ["LoadedModel", "load_model", "as_loaded_model"]


@dataclass
class LoadedModel:
    """A model ready to explain, and what the JSON says about where it came from."""

    model: nn.Module
    name: str
    source: str  # "timm" | "torchvision" | "demo" | "custom" (a factory) | "module" (built by you)
    # "pretrained:<id>", "embedded:<file>" (demo), a file path, "random" (seeded) or "factory"
    weights: str
    preprocess: Preprocess
    labels: list[str] | None = None
    task: str = "classification"  # or segmentation, detection (`tasks`)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "source": self.source, "weights": self.weights}

    @property
    def title(self) -> str:
        """How messages name it: 'your model path/net.py:make', 'timm:resnet50'."""
        return _title(self.source, self.name)


def _title(source: str, name: str) -> str:
    return f"your model {name}" if source in ("custom", "module") else f"{source}:{name}"


def load_model(
    spec: str,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    labels_file: str | Path | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: str | None = None,
    task: str | None = None,
) -> LoadedModel:
    """Build the model a `--model` spec names, with its preprocessing and labels.

    `task`: what the model does, when it is not known from its library (your own detector:
    it then gets a detector's input, the photo as it is in [0, 1]; `Preprocess.as_given`).

    `resize`: how a photo becomes the input size, 'crop', 'squash' or 'pad' (`Preprocess`);
    None keeps the model's own convention (timm's data config, torchvision's weights
    transforms; crop for your own model)."""
    check_input_size(input_size)
    check_resize(resize)
    check_num_classes(num_classes)
    source, name = _source_of(spec)
    model, provenance = _build(
        source,
        name,
        pretrained=pretrained and weights is None,
        num_classes=num_classes,
        input_size=input_size,
    )
    preprocess = source.preprocess(model, name)
    task = task or source.task(name)
    if task == "detection" and source.task(name) != "detection":
        preprocess = Preprocess.as_given()
    labels = source.labels(model, name) if num_classes is None else None
    if weights is not None:
        state = read_state_dict(weights)
        title = _title(source.prefix, name)
        load_weights(
            model, state, str(weights), model_name=title, classes_fixed=source.classes_fixed
        )
        provenance = str(weights)
    if labels_file is not None:
        labels = read_labels_file(labels_file)
    preprocess = override_preprocess(
        preprocess, input_size=input_size, mean=mean, std=std, resize=resize
    )
    model.eval()
    return LoadedModel(model, name, source.prefix, provenance, preprocess, labels, task=task)


def _source_of(spec: str) -> tuple[Source, str]:
    """The source that builds `spec`, resolved once, and the name it knows the model by."""
    prefix, name = parse_model_spec(spec)
    if prefix == "custom":
        return USER, name
    return find_source(prefix, name), name


def _build(
    source: Source, name: str, *, pretrained: bool, num_classes: int | None, input_size: int | None
) -> tuple[nn.Module, str]:
    # Random initialisation is seeded, so --no-pretrained runs are reproducible; the caller's
    # global RNG state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, provenance = source.build(
            name, pretrained=pretrained, num_classes=num_classes, input_size=input_size
        )
        if provenance == "random":
            _randomize_zero_classifiers(model)
    return model, provenance


def _randomize_zero_classifiers(model: nn.Module) -> None:
    """Random builds: a Linear layer initialised to zeros (torchvision's ViT heads, meant to be
    fine-tuned) gives every image the same logits, so there would be nothing to explain; it
    gets the default random init instead."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.any():
            module.reset_parameters()


def as_loaded_model(
    model: nn.Module | LoadedModel | str,
    *,
    preprocess: Preprocess | None = None,
    labels: Sequence[str] | None = None,
    task: str | None = None,
) -> LoadedModel:
    """What `Explainer` accepts, made a LoadedModel: a `--model` spec is loaded (load_model), a
    LoadedModel is kept, and an nn.Module you built is taken as it is (weights, mode, device:
    nothing is changed), with the preprocessing of its timm data config when it has one, else
    the documented defaults for your own model (`custom_preprocess`). `preprocess` and
    `labels` replace what the model comes with. `task` as for load_model: a detector you built
    gets a detector's input unless `preprocess` says otherwise."""
    if isinstance(model, str):
        loaded = load_model(model, task=task)
    elif isinstance(model, LoadedModel):
        loaded = model
    elif isinstance(model, nn.Module):
        loaded = _your_module(model)
        if task == "detection":
            loaded = replace(loaded, preprocess=Preprocess.as_given(), task=task)
    else:
        raise UsageError(
            f"model= takes an nn.Module, a name such as 'torchvision:resnet50' or a LoadedModel, "
            f"not {type(model).__name__}"
        )
    if preprocess is not None:
        if not isinstance(preprocess, Preprocess):
            raise UsageError(
                f"preprocess= takes a gradcam_cli.Preprocess, not {type(preprocess).__name__}"
            )
        loaded = replace(loaded, preprocess=preprocess)
    if labels is not None:
        loaded = replace(loaded, labels=[str(label) for label in labels])
    return loaded


def _your_module(model: nn.Module) -> LoadedModel:
    """An nn.Module you built: timm models carry their data config (pretrained_cfg) and so
    their preprocessing and labels; other modules get the defaults for your own model."""
    preprocess, labels = custom_preprocess(), None
    if getattr(model, "pretrained_cfg", None):
        preprocess = timm_preprocess(model)
        try:
            labels = timm_labels(model)
        except Exception:  # a config timm cannot map to ImageNet's classes: no names
            labels = None
    name = type(model).__name__
    return LoadedModel(model, name, "module", "yours", preprocess, labels)
