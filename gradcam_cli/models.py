"""Model name → (model, preprocessing, labels, provenance).

Sources, chosen by the `--model` spec:

- `timm:NAME` (pretrained tags allowed: `timm:resnet50.a1_in1k`) and `torchvision:NAME`;
- a bare `NAME`: timm first (its registry is a superset of torchvision's architectures and
  knows pretrained tags), then torchvision; the JSON records which library it came from;
- `demo:shapes`: the small shape classifier shipped inside the package, weights included, for
  offline use (`gradcam_cli.demo`);
- `path/to/file.py:callable` or `package.module:callable`: the user's own model, built by
  calling `callable()` (with `num_classes=N` when `--num-classes` is given).

Pretrained weights are downloaded by default. `--weights FILE` loads a local state_dict instead,
only through `torch.load(weights_only=True)` or safetensors, so a checkpoint can never run code.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import pickle
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .errors import (
    ModelDownloadError,
    UnknownModelError,
    UsageError,
    WeightsError,
    did_you_mean,
    first_line,
)
from .preprocess import Preprocess

__all__ = [
    "LoadedModel",
    "load_model",
    "parse_model_spec",
    "resolve_source",
    "list_model_names",
    "no_model_matches",
    "read_state_dict",
    "load_weights",
    "read_labels_file",
    "custom_preprocess",
    "override_preprocess",
]

SOURCES = ("timm", "torchvision", "demo")
DEMO_MODELS = ("shapes",)  # `demo:shapes`, trained and shipped with the package (gradcam_cli.demo)


@dataclass
class LoadedModel:
    """A model ready to explain, and what the JSON says about where it came from."""

    model: nn.Module
    name: str
    source: str  # "timm" | "torchvision" | "demo" | "custom"
    # "pretrained:<id>", "embedded:<file>" (demo), a file path, "random" (seeded) or "factory"
    weights: str
    preprocess: Preprocess
    labels: list[str] | None = None

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "source": self.source, "weights": self.weights}


# -- model specs -------------------------------------------------------------------------------


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split a `--model` value into (source, name); source is timm, torchvision, custom or ''."""
    spec = spec.strip()
    if not spec:
        raise UsageError("--model is empty; give a name such as resnet50 or timm:convnext_tiny")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in SOURCES:
        return prefix, rest
    if sep:
        return "custom", spec
    return "", spec


def _timm_has(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _torchvision_classifiers() -> list[str]:
    """torchvision's image classifiers: not its detection, segmentation, video, optical-flow
    or quantized models, which live in sub-modules of torchvision.models."""
    import torchvision
    from torchvision.models import list_models

    return list_models(module=torchvision.models)


def _torchvision_has(name: str) -> bool:
    return name in _torchvision_classifiers()


def _known_names() -> list[str]:
    import timm

    return sorted(set(timm.list_models()) | set(_torchvision_classifiers()))


def _not_a_classifier(name: str) -> UnknownModelError | None:
    from torchvision.models import list_models

    if name not in list_models():
        return None
    return UnknownModelError(
        f"'{name}' is a torchvision detection, segmentation, video or optical-flow model; "
        "gradcam explains image classifiers. List them with `gradcam models PATTERN`"
    )


def list_model_names(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """`SOURCE:NAME` for every model `--model` accepts whose name matches the shell pattern:
    the demo model, timm's, torchvision's classifiers. `pretrained`: only those with
    pretrained weights, timm's with their tags (`timm:resnet50.a1_in1k`)."""
    import fnmatch

    import timm
    from torchvision.models import get_model_weights

    pattern = pattern.lower()
    names = [f"demo:{name}" for name in DEMO_MODELS if fnmatch.fnmatch(name, pattern)]
    names += [f"timm:{name}" for name in timm.list_models(pattern, pretrained=pretrained)]
    for name in sorted(fnmatch.filter(_torchvision_classifiers(), pattern)):
        if not pretrained or list(get_model_weights(name)):
            names.append(f"torchvision:{name}")
    return names


def no_model_matches(pattern: str) -> UnknownModelError:
    """The error for a `gradcam models` pattern that matches nothing, with a suggestion."""
    words = pattern.strip("*?").split("*")[0] or pattern
    return UnknownModelError(
        f"no model name matches '{pattern}'."
        + did_you_mean(words, [*DEMO_MODELS, *_known_names()])
        + " Patterns are shell-style: 'resnet*', '*vit*small*'"
    )


def resolve_source(source: str, name: str) -> str:
    """Which library builds `name`; raises UnknownModelError with a suggestion."""
    if source == "timm" and _timm_has(name):
        return "timm"
    if source == "torchvision" and _torchvision_has(name):
        return "torchvision"
    if source == "demo" and name in DEMO_MODELS:
        return "demo"
    if not source:
        if _timm_has(name):
            return "timm"
        if _torchvision_has(name):
            return "torchvision"
    wrong_kind = _not_a_classifier(name) if source in ("torchvision", "") else None
    if wrong_kind is not None:
        raise wrong_kind
    where = f"{source} " if source else "timm or torchvision "
    known = list(DEMO_MODELS) if source == "demo" else _known_names()
    raise UnknownModelError(
        f"unknown model '{name}': {where}has no model of that name."
        + did_you_mean(name.split(".")[0], known)
        + " List names with `gradcam models PATTERN`, or load your own with path/to/file.py:Class."
    )


# -- builders ----------------------------------------------------------------------------------


def _build_demo(pretrained: bool) -> tuple[nn.Module, str]:
    from .demo.model import WEIGHTS_PATH, ShapesNet

    model = ShapesNet()
    if not pretrained:
        return model, "random"
    if not WEIGHTS_PATH.is_file():  # a broken install, or a checkout before `make demo-model`
        raise WeightsError(
            f"the demo model's weights are missing ({WEIGHTS_PATH}); "
            "rebuild them with `make demo-model`, or reinstall gradcam-cli"
        )
    load_weights(model, read_state_dict(WEIGHTS_PATH), "demo:shapes")
    return model, f"embedded:{WEIGHTS_PATH.name}"


def _download_failed(name: str, exc: Exception) -> ModelDownloadError:
    return ModelDownloadError(
        f"could not download pretrained weights for '{name}' ({_first_sentence(exc)}); "
        "use --weights PATH for a local file or --no-pretrained for random weights"
    )


def _build_timm(
    name: str, pretrained: bool, num_classes: int | None, input_size: int | None = None
) -> tuple[nn.Module, str]:
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if not pretrained:
        return _create_timm(name, False, kwargs, input_size), "random"
    try:
        model = _create_timm(name, True, kwargs, input_size)
    except RuntimeError as exc:  # no pretrained tag for this architecture
        if "No pretrained weights exist" in str(exc):
            raise UsageError(f"{exc}; pass --no-pretrained or --weights PATH") from exc
        raise _download_failed(name, exc) from exc
    except Exception as exc:  # hub clients raise many types: OSError, HTTP errors, ...
        raise _download_failed(name, exc) from exc
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    ident = cfg.get("hf_hub_id") or f"{cfg.get('architecture', name)}.{cfg.get('tag', '')}"
    return model, f"pretrained:{ident}"


def _create_timm(
    name: str, pretrained: bool, kwargs: dict[str, object], input_size: int | None
) -> nn.Module:
    """timm.create_model; with --input-size, built for that size where the architecture has
    one (ViT, Swin, MaxViT, ...: timm resamples pretrained position embeddings to it)."""
    import timm

    if input_size is not None:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=input_size, **kwargs)
        except TypeError as exc:  # a CNN: any size goes, and its constructor has no img_size
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _randomize_zero_classifiers(model: nn.Module) -> None:
    """Random builds: a Linear layer initialised to zeros (torchvision's ViT heads, meant to be
    fine-tuned) gives every image the same logits, so there would be nothing to explain; it
    gets the default random init instead."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.any():
            module.reset_parameters()


def _torchvision_weights_enum(name: str):
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def _build_torchvision(
    name: str, pretrained: bool, num_classes: int | None
) -> tuple[nn.Module, str]:
    from torchvision.models import get_model

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if name in ("inception_v3", "googlenet"):
        # Random-init builds default to auxiliary heads and a warning; eval needs neither.
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    enum = _torchvision_weights_enum(name)
    if not pretrained or enum is None:
        if pretrained and enum is None:
            raise UsageError(
                f"torchvision has no pretrained weights for '{name}'; "
                "pass --no-pretrained or --weights PATH"
            )
        return get_model(name, weights=None, **kwargs), "random"
    if num_classes is not None and num_classes != len(enum.meta["categories"]):
        raise UsageError(
            f"--num-classes {num_classes} does not fit torchvision's pretrained '{name}' "
            f"({len(enum.meta['categories'])} classes); add --weights PATH or --no-pretrained"
        )
    kwargs.pop("init_weights", None)
    kwargs.pop("aux_logits", None)
    try:
        model = get_model(name, weights=enum, **kwargs)
    except Exception as exc:  # urllib errors, hash mismatch, ...
        raise _download_failed(name, exc) from exc
    return model, f"pretrained:{enum}"


def _import_callable(spec: str):
    """`file.py:callable` or `package.module:callable` → the callable."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UnknownModelError(f"'{spec}' is not a model spec; use path/to/file.py:Class")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise UnknownModelError(f"cannot build '{spec}': file {target} not found")
        module_name = f"_gradcam_user_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise UnknownModelError(f"cannot import {target} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # like running the file: its sibling modules import
        loader_spec.loader.exec_module(module)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # like `python -m`: the current folder imports
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UnknownModelError(f"cannot import module '{target}' for '{spec}': {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise UnknownModelError(
            f"'{target}' has no '{attr}'." + did_you_mean(attr, names)
        ) from None


def _build_custom(spec: str, num_classes: int | None) -> nn.Module:
    factory = _import_callable(spec)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise UsageError(
            f"calling {spec}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UnknownModelError(f"{spec} returned {type(model).__name__}, not a torch nn.Module")
    return model


# -- weights files -----------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors or a torch checkpoint, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(
                f"cannot read {path} as safetensors ({_first_sentence(exc)}); the file may be "
                "truncated or damaged: copy it again"
            ) from exc
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for users
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # objects other than tensors and plain containers
        raise WeightsError(
            f"refused to load {path}: it holds Python objects{_unpickled_global(exc)}, not "
            "only tensors, and unpickling them could run code; it is loaded only with "
            "weights_only=True. Save it with torch.save(model.state_dict(), ...) or as "
            ".safetensors"
        ) from exc
    except Exception as exc:  # empty, truncated, not a checkpoint at all
        raise WeightsError(
            f"cannot read {path} as a torch checkpoint ({_error_text(exc)}); the file may be "
            "truncated or damaged: copy it again, or save it with torch.save(model.state_dict(), "
            "...) or as .safetensors"
        ) from exc
    return _unwrap_state_dict(obj, path)


def _unpickled_global(exc: Exception) -> str:
    """' (posix.system)': what the pickle wanted to import or call, when torch says."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f" ({found.group(1)})" if found else ""


def _first_sentence(exc: Exception) -> str:
    """`first_line`, cut to its first sentence when long (hub and safetensors errors ramble)."""
    text = first_line(exc)
    return text.split(". ")[0] if len(text) > 100 and ". " in text else text


def _error_text(exc: Exception) -> str:
    """'KeyError: 101' where the message alone would say nothing."""
    text = _first_sentence(exc)
    if isinstance(exc, RuntimeError) or text == type(exc).__name__:
        return text
    return f"{type(exc).__name__}: {text}"


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts often save {"state_dict": ...} or {"model": ...}; DDP adds "module.".
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` strictly, or say which keys and shapes do not fit and what to do."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise WeightsError(
            _mismatch_message(source, expected, state, missing, unexpected, mismatched)
        )
    model.load_state_dict(state, strict=True)


def _mismatch_message(source, expected, state, missing, unexpected, mismatched) -> str:
    def some(keys: Sequence[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    parts = []
    if mismatched:
        shapes = [
            f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in mismatched[:3]
        ]
        parts.append("shapes differ: " + "; ".join(shapes))
    if missing:
        parts.append(f"missing keys: {some(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {some(unexpected)}")
    hint = "check that --model names the architecture the checkpoint was trained with"
    head = [k for k in mismatched if state[k].shape[1:] == expected[k].shape[1:]]
    if head:  # only the first dimension differs: a classifier trained for another class count
        hint = (
            f"the checkpoint looks trained for {state[head[-1]].shape[0]} classes: "
            f"add --num-classes {state[head[-1]].shape[0]}"
        )
    return f"weights {source} do not fit the model: " + "; ".join(parts) + f"; {hint}"


# -- preprocessing and labels ------------------------------------------------------------------


def _timm_preprocess(model: nn.Module) -> Preprocess:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    crop_pct = cfg.get("crop_pct") or 1.0
    mode = "squash" if cfg.get("crop_mode") == "squash" else "shorter"
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocess(
        input_size=(h, w),
        resize_shorter=int(min(h, w) / crop_pct),  # timm: floor(img_size / crop_pct)
        resize_mode=mode,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=interpolation if interpolation in ("bilinear", "nearest") else "bicubic",
    )


def _torchvision_preprocess(name: str) -> Preprocess:
    enum = _torchvision_weights_enum(name)
    if enum is None:
        return Preprocess()
    t = enum.transforms()
    crop = t.crop_size[0]
    resize = t.resize_size[0]
    interpolation = getattr(t.interpolation, "value", "bilinear")
    return Preprocess(
        input_size=(crop, crop),
        resize_shorter=resize,
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
    )


def custom_preprocess(input_size: int = 224) -> Preprocess:
    """Documented defaults for the user's own model: shorter side → input size, centre crop,
    ImageNet mean/std, bilinear."""
    return Preprocess(input_size=(input_size, input_size), resize_shorter=input_size)


def _timm_labels(model: nn.Module) -> list[str] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(info.num_classes())]


def _torchvision_labels(name: str) -> list[str] | None:
    enum = _torchvision_weights_enum(name)
    return list(enum.meta["categories"]) if enum is not None else None


def read_labels_file(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read --labels {path}: {exc.strerror or exc}") from exc
    labels = [line.strip() for line in lines if line.strip()]
    if not labels:
        raise UsageError(f"--labels {path} is empty; give one class name per line")
    return labels


# -- the one entry point -----------------------------------------------------------------------


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
) -> LoadedModel:
    """Build the model a `--model` spec names, with its preprocessing and labels."""
    if num_classes is not None and num_classes < 1:
        raise UsageError(f"--num-classes must be at least 1, got {num_classes}")
    source, name = parse_model_spec(spec)
    use_hub = pretrained and weights is None
    labels: list[str] | None = None
    if source != "custom":
        source = resolve_source(source, name)
    # Random initialisation is seeded, so --no-pretrained runs are reproducible; the caller's
    # global RNG state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if source == "custom":
            model = _build_custom(name, num_classes)
            provenance, preprocess = "factory", custom_preprocess()
        elif source == "demo":
            from .demo.model import LABELS, PREPROCESS

            if num_classes is not None:
                raise UsageError("demo:shapes has 4 classes; --num-classes does not apply")
            model, provenance = _build_demo(use_hub)
            preprocess, labels = PREPROCESS, list(LABELS)
        elif source == "timm":
            model, provenance = _build_timm(name, use_hub, num_classes, input_size)
            preprocess = _timm_preprocess(model)
            labels = _timm_labels(model) if num_classes is None else None
        else:
            model, provenance = _build_torchvision(name, use_hub, num_classes)
            preprocess = _torchvision_preprocess(name)
            labels = _torchvision_labels(name) if num_classes is None else None
        if provenance == "random" and source in ("timm", "torchvision"):
            _randomize_zero_classifiers(model)
    if weights is not None:
        load_weights(model, read_state_dict(weights), str(weights))
        provenance = str(weights)
    if labels_file is not None:
        labels = read_labels_file(labels_file)
    preprocess = override_preprocess(preprocess, input_size=input_size, mean=mean, std=std)
    model.eval()
    return LoadedModel(model, name, source, provenance, preprocess, labels)


def override_preprocess(
    preprocess: Preprocess,
    *,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preprocess:
    """Apply --input-size/--mean/--std, keeping the model's resize-to-crop ratio."""
    changes: dict[str, object] = {}
    if input_size is not None:
        if input_size < 8:
            raise UsageError(f"--input-size must be at least 8 pixels, got {input_size}")
        ratio = preprocess.resize_shorter / min(preprocess.input_size)
        changes["input_size"] = (input_size, input_size)
        changes["resize_shorter"] = int(round(input_size * ratio))
    for option, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        if len(values) != 3:
            raise UsageError(f"--{option} takes three numbers (R G B), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise UsageError(f"--{option} values must be finite numbers, got {list(values)}")
        if option == "std" and any(v <= 0 for v in values):
            raise UsageError("--std values must be positive")
        changes[option] = tuple(float(v) for v in values)
    return replace(preprocess, **changes) if changes else preprocess
