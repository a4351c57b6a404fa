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
import inspect
import math
import pickle
import re
import stat
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    running_user_code,
)
from .files import os_reason
from .inputs import open_regular
from .preprocess import Preprocess, ResizeMode, check_resize

__all__ = [
    "LoadedModel",
    "load_model",
    "as_loaded_model",
    "check_input_size",
    "check_num_classes",
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
    source: str  # "timm" | "torchvision" | "demo" | "custom" (a factory) | "module" (built by you)
    # "pretrained:<id>", "embedded:<file>" (demo), a file path, "random" (seeded) or "factory"
    weights: str
    preprocess: Preprocess
    labels: list[str] | None = None

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "source": self.source, "weights": self.weights}

    @property
    def title(self) -> str:
        """How messages name it: 'your model path/net.py:make', 'timm:resnet50'."""
        return _title(self.source, self.name)


def _title(source: str, name: str) -> str:
    return f"your model {name}" if source in ("custom", "module") else f"{source}:{name}"


def as_loaded_model(
    model: nn.Module | LoadedModel | str,
    *,
    preprocess: Preprocess | None = None,
    labels: Sequence[str] | None = None,
) -> LoadedModel:
    """What `Explainer` accepts, made a LoadedModel: a `--model` spec is loaded (load_model), a
    LoadedModel is kept, and an nn.Module you built is taken as it is (weights, mode, device:
    nothing is changed), with the preprocessing of its timm data config when it has one, else
    the documented defaults for your own model (`custom_preprocess`). `preprocess` and
    `labels` replace what the model comes with."""
    if isinstance(model, str):
        loaded = load_model(model)
    elif isinstance(model, LoadedModel):
        loaded = model
    elif isinstance(model, nn.Module):
        loaded = LoadedModel(
            model,
            name=type(model).__name__,
            source="module",
            weights="yours",
            preprocess=_module_preprocess(model),
            labels=_module_labels(model),
        )
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


def _module_preprocess(model: nn.Module) -> Preprocess:
    """timm models carry their data config (pretrained_cfg); other modules get the defaults."""
    if getattr(model, "pretrained_cfg", None):
        return _timm_preprocess(model)
    return custom_preprocess()


def _module_labels(model: nn.Module) -> list[str] | None:
    if getattr(model, "pretrained_cfg", None):
        try:
            return _timm_labels(model)
        except Exception:  # a config timm cannot map to ImageNet's classes: no names
            return None
    return None


# -- option values -----------------------------------------------------------------------------

# Activations, and so memory, grow with the square of the input size: 4096² is already 336× the
# pixels of 224², and anything larger fails to allocate rather than explaining anything.
INPUT_SIZE_RANGE = (8, 4096)
NUM_CLASSES_RANGE = (1, 100_000)


def check_input_size(value: int | None) -> None:
    """--input-size: 8–4096 pixels (None: the model's own)."""
    low, high = INPUT_SIZE_RANGE
    if value is not None and not low <= value <= high:
        raise UsageError(
            f"input_size= must be {low}–{high} pixels, got {value} (a model's memory for "
            "activations grows with the square of the size); give one in that range"
        )


def check_num_classes(value: int | None) -> None:
    """--num-classes: 1–100000 (None: the model's own)."""
    low, high = NUM_CLASSES_RANGE
    if value is not None and not low <= value <= high:
        raise UsageError(
            f"num_classes= must be {low}–{high}, got {value}; give the number of classes "
            "the model's head should have"
        )


# -- model specs -------------------------------------------------------------------------------


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split a `--model` value into (source, name); source is timm, torchvision, custom or ''."""
    spec = spec.strip()
    if not spec:
        raise UsageError("model= is empty; give a name such as resnet50 or timm:convnext_tiny")
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


def _name_matcher(pattern: str) -> Callable[[str], bool]:
    """`gradcam models PATTERN`'s test of one printed name (`timm:resnet50`): a bare word (no
    `*?[`) is a case-insensitive substring of it; a shell pattern matches all of it, prefix
    included (`timm:resnet5*`, `*demo*`), or the name after the prefix (`resnet5*`)."""
    import fnmatch

    if not any(char in pattern for char in "*?["):
        word = pattern.casefold()
        return lambda printed: word in printed.casefold()
    whole = re.compile(fnmatch.translate(pattern), re.IGNORECASE).match
    return lambda printed: bool(whole(printed) or whole(printed.partition(":")[2]))


def _printed_names(
    matches: Callable[[str], bool] | None = None,
    pretrained: bool = False,
    sources: Sequence[str] = SOURCES,
) -> list[str]:
    """`SOURCE:NAME` for every model `--model` accepts from `sources` (of those `matches`
    keeps): the demo model, timm's, torchvision's classifiers, in that order."""
    keep = matches or (lambda printed: True)
    names: list[str] = []
    if "demo" in sources:
        names += [f"demo:{name}" for name in DEMO_MODELS if keep(f"demo:{name}")]
    if "timm" in sources:
        import timm

        timm_names = (f"timm:{name}" for name in timm.list_models(pretrained=pretrained))
        names += [name for name in timm_names if keep(name)]
    if "torchvision" in sources:
        from torchvision.models import get_model_weights

        for name in sorted(_torchvision_classifiers()):
            printed = f"torchvision:{name}"
            if keep(printed) and (not pretrained or list(get_model_weights(name))):
                names.append(printed)
    return names


def list_model_names(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """`SOURCE:NAME` for every model `--model` accepts whose printed name matches `pattern`:
    the demo model, timm's, torchvision's classifiers. A bare word (no `*?[`) finds the names
    that contain it, in any case (`vit`, `timm:conv`); a shell pattern matches the names as
    printed (`timm:resnet5*`, `*demo*`) or without their prefix (`resnet5*`). `pretrained`:
    only those with pretrained weights, timm's with their tags (`timm:resnet50.a1_in1k`)."""
    return _printed_names(_name_matcher(pattern), pretrained)


def _close_names(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The `n` choices closest to `word` in spelling (what `did_you_mean` would name)."""
    import difflib

    return difflib.get_close_matches(word, list(dict.fromkeys(choices)), n=n, cutoff=0.6)


def _spelling_choices(printed: Sequence[str], prefixed: bool) -> list[str]:
    """What a misspelt model name is compared with: the printed names when it has a prefix;
    else the bare names, their architectures (without a pretrained tag) and their families
    (`vit`, `convnext`, `efficientnet`: a word `gradcam models` finds)."""
    if prefixed:
        return list(printed)
    bare = [name.partition(":")[2] for name in printed]
    archs = [name.split(".")[0] for name in bare]
    families = [arch.split("_")[0] for arch in archs if "_" in arch]
    return [*bare, *archs, *families]


def no_model_matches(pattern: str, pretrained: bool = False) -> UnknownModelError:
    """The error for a `gradcam models` pattern that matches nothing: the names close to it in
    spelling, and how a word and a pattern match."""
    chunks = [chunk for chunk in re.split(r"[*?]|\[[^\]]*\]?", pattern) if chunk]
    word = max(chunks, key=len, default=pattern).casefold()
    printed = _printed_names(pretrained=pretrained)
    spelled = _close_names(word, _spelling_choices(printed, ":" in word))
    elsewhere = ""
    if pretrained:
        without = len(list_model_names(pattern))
        if without:
            elsewhere = (
                f" {without} model name{'s' if without > 1 else ''} without pretrained "
                f"weights match{'' if without > 1 else 'es'}: drop --pretrained to list "
                f"{'them' if without > 1 else 'it'}."
            )
    return UnknownModelError(
        f"no model name matches '{pattern}'."
        + elsewhere
        + did_you_mean(word, spelled)
        + " A word lists the names that contain it ('vit', 'timm:conv'); a shell pattern "
        "matches whole names, with or without their library ('resnet5*', 'timm:*vit*small*')"
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
    raise UnknownModelError(
        f"unknown model '{name}': {where}has no model of that name."
        + _elsewhere(source, name)
        + _suggestion(source, name)
        + " List names with `gradcam models PATTERN`, or load your own with path/to/file.py:Class."
    )


def _suggestion(source: str, name: str) -> str:
    """' Did you mean ...?' with names of the library asked for (both when none was), never
    the rejected name itself (with a pretrained tag, its architecture may exist); then the
    models whose names contain the word (or match the pattern), as `gradcam models` lists
    them."""
    import timm

    arch = name.split(".")[0]
    if source == "demo":
        known = list(DEMO_MODELS)
    elif source == "timm":
        known = timm.list_models()
    elif source == "torchvision":
        known = _torchvision_classifiers()
    else:
        known = _known_names()
    spelled = _close_names(arch, [known_name for known_name in known if known_name != arch])
    return did_you_mean(arch, spelled) + _containing(source, arch, spelled)


CONTAINING_SHOWN = 5  # names listed in an unknown model's error; `gradcam models` has them all


def _containing(source: str, word: str, spelled: Sequence[str]) -> str:
    """' Models containing 'vit': timm:vit_base_mci_224, … (N more: `gradcam models vit`).'
    The names the did-you-mean already gave are left out; in each library those that start
    with the word come first, then the shortest, and the libraries take turns (timm first)."""
    import itertools
    import shlex

    if not word.strip():
        return ""
    is_pattern = any(char in word for char in "*?[")
    sources: tuple[str, ...]
    if not source:
        pattern, sources = word, SOURCES
    else:  # a word anywhere in the name, not only right after the prefix
        pattern, sources = (f"{source}:{word}" if is_pattern else f"{source}:*{word}*"), (source,)
    found = _printed_names(_name_matcher(pattern), sources=sources)
    rest = [printed for printed in found if printed.partition(":")[2] not in spelled]
    if not rest:
        return ""
    folded = word.strip("*?").casefold()

    def rank(printed: str) -> tuple[bool, int, str]:
        bare = printed.partition(":")[2]
        return (not bare.casefold().startswith(folded), len(bare), bare)

    by_source = [
        sorted((printed for printed in rest if printed.startswith(f"{name}:")), key=rank)
        for name in ("timm", "torchvision", "demo")
    ]
    turns = (names[i] for i in range(len(rest)) for names in by_source if i < len(names))
    shown = list(itertools.islice(turns, CONTAINING_SHOWN))
    more = len(rest) - len(shown)
    kind = "matching" if is_pattern else "containing"
    command = f"`gradcam models {shlex.quote(pattern)}`"
    tail = f" ({more} more: {command})" if more else ""
    return f" Models {kind} '{word}': {', '.join(shown)}{tail}."


def _elsewhere(source: str, name: str) -> str:
    """' timm has a model of that name: use timm:NAME.' when the other library has it."""
    others = {"timm": ("torchvision",), "torchvision": ("timm",), "demo": ("timm", "torchvision")}
    for other in others.get(source, ()):
        if (_timm_has if other == "timm" else _torchvision_has)(name):
            return f" {other} has a model of that name: use {other}:{name}."
    return ""


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
        "use weights=PATH for a local file or pretrained=False for random weights"
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
            raise UsageError(f"{exc}; pass pretrained=False or weights=PATH") from exc
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
                "pass pretrained=False or weights=PATH"
            )
        return get_model(name, weights=None, **kwargs), "random"
    if num_classes is not None and num_classes != len(enum.meta["categories"]):
        raise UsageError(
            f"num_classes={num_classes} does not fit torchvision's pretrained '{name}' "
            f"({len(enum.meta['categories'])} classes); add weights=PATH or pretrained=False"
        )
    kwargs.pop("init_weights", None)
    kwargs.pop("aux_logits", None)
    try:
        model = get_model(name, weights=enum, **kwargs)
    except Exception as exc:  # urllib errors, hash mismatch, ...
        raise _download_failed(name, exc) from exc
    return model, f"pretrained:{enum}"


_FIX_IT = "fix it, or rerun with --verbose for the traceback"


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
        try:
            with running_user_code(f"importing your model file {target}", _FIX_IT):
                loader_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)  # no half-imported module for the next try
            raise
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # like `python -m`: the current folder imports
        try:
            with running_user_code(f"importing your model module {target}", _FIX_IT):
                module = importlib.import_module(target)
        except ImportError as exc:
            raise UnknownModelError(
                f"cannot import module '{target}' for '{spec}': {first_line(exc)}"
            ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        defines = _what_it_defines(module, attr)
        raise UnknownModelError(f"'{target}' has no '{attr}'.{defines}") from None


DEFINED_SHOWN = 12  # callables an unknown factory's error names


def _what_it_defines(module: types.ModuleType, attr: str) -> str:
    """' Did you mean 'Net'? It defines: Net, build_model.' The did-you-mean looks at every
    public callable the module holds, its imports included; the list names the classes and
    functions it defines itself (a model is an nn.Module subclass or a function), in the order
    they are written."""
    public = {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and callable(value) and not inspect.ismodule(value)
    }
    own = [
        name
        for name, value in public.items()
        if getattr(value, "__module__", None) == module.__name__ and _may_build_a_model(value)
    ]
    hint = did_you_mean(attr, public)
    if not own:
        return f"{hint} It defines no model: no nn.Module subclass, no function."
    listed = ", ".join(own[:DEFINED_SHOWN])
    more = f" (+{len(own) - DEFINED_SHOWN} more)" if len(own) > DEFINED_SHOWN else ""
    return f"{hint} It defines: {listed}{more}."


def _may_build_a_model(value: object) -> bool:
    return inspect.isfunction(value) or (inspect.isclass(value) and issubclass(value, nn.Module))


def _build_custom(spec: str, num_classes: int | None) -> nn.Module:
    factory = _import_callable(spec)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:  # it takes no num_classes, or needs arguments we cannot give
        raise UsageError(
            f"calling {spec}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed: "
            f"{first_line(exc)}; it must need no arguments, and take a num_classes keyword "
            "when num_classes= is given"
        ) from exc
    except ValueError:  # no signature to read (a builtin): the call itself will tell
        pass
    with running_user_code(f"your model {spec}", _FIX_IT):
        model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise UnknownModelError(f"{spec} returned {type(model).__name__}, not a torch nn.Module")
    return model


# -- weights files -----------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors or a torch checkpoint, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise WeightsError(f"weights file {path} is not a regular file; give a checkpoint")
        raise WeightsError(f"weights file {path} not found")
    try:
        with path.open("rb") as file:
            start = file.read(9)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc
    if path.suffix == ".safetensors" or _is_safetensors(start, path.stat().st_size):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(
                f"cannot read {path} as safetensors ({_first_sentence(exc)}); the file may be "
                "truncated or damaged: copy it again"
            ) from exc
    if start and not start.startswith(TORCH_MAGIC):  # empty: "truncated or damaged" below
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint or safetensors file; give a state_dict saved "
            "with torch.save(model.state_dict(), ...) or as .safetensors"
        )
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


# How torch.save files start: a zip archive (torch >= 1.6), or a pickle (the legacy format).
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _is_safetensors(start: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header."""
    return (
        len(start) == 9 and start[8:9] == b"{" and 8 + int.from_bytes(start[:8], "little") <= size
    )


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


def load_weights(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    model_name: str = "the model",
    classes_fixed: bool = False,
) -> None:
    """Load `state` strictly, or say which keys and shapes do not fit and what to do.

    `--num-classes N` is suggested only when the final classifier alone differs, in its
    class count, and never for a model whose class count is fixed (`classes_fixed`)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        classes = None if missing or unexpected else _head_classes(model, state, mismatched)
        if classes is None:
            hint = (
                f"the checkpoint is for another architecture than {model_name}: check that "
                "model= names the one it was trained with"
            )
        elif classes_fixed:
            hint = (
                f"the checkpoint is for {classes} classes, and {model_name} has a fixed "
                "number: drop weights=, or name the checkpoint's own model with model="
            )
        else:
            hint = f"the checkpoint looks trained for {classes} classes: add num_classes={classes}"
        raise WeightsError(
            _mismatch_message(source, expected, state, missing, unexpected, mismatched, hint)
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # a model's own loading hooks
        raise WeightsError(f"loading weights {source} failed: {_error_text(exc)}") from exc


def _head_classes(
    model: nn.Module, state: Mapping[str, torch.Tensor], mismatched: Sequence[str]
) -> int | None:
    """N when the only keys that do not fit are the final classifier's weight and bias (the
    last parameters the model registers), differing only in their first dimension, N."""
    names = [name for name, _ in model.named_parameters()]
    if not names or not mismatched:
        return None
    head = names[-1].rpartition(".")[0]
    expected = dict(model.named_parameters())
    counts = set()
    for key in mismatched:
        module, _, kind = key.rpartition(".")
        if module != head or kind not in ("weight", "bias") or key not in expected:
            return None
        got, want = state[key].shape, expected[key].shape
        if len(got) != len(want) or got[1:] != want[1:]:
            return None
        counts.add(got[0])
    return counts.pop() if len(counts) == 1 else None


def _mismatch_message(source, expected, state, missing, unexpected, mismatched, hint) -> str:
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
    return f"weights {source} do not fit the model: " + "; ".join(parts) + f"; {hint}"


# -- preprocessing and labels ------------------------------------------------------------------


def _timm_preprocess(model: nn.Module) -> Preprocess:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    crop_pct = cfg.get("crop_pct") or 1.0
    # timm's crop modes: 'squash' and 'border' (a letterbox) as in Preprocess, else 'center'
    crop_mode = cfg.get("crop_mode")
    mode: ResizeMode = (
        "squash" if crop_mode == "squash" else "pad" if crop_mode == "border" else "shorter"
    )
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
    """Documented defaults for the user's own model: shorter side → input size, centre crop
    (`resize='crop'`; one trained on `Resize((H, W))` wants 'squash'), ImageNet mean/std,
    bilinear."""
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
    """Class names, one a line in class-index order, from UTF-8 text (a BOM is dropped).

    Blank lines at the end are ignored; one anywhere else would shift every later class's
    index, so it is refused, like text that is not UTF-8, with its line number."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO waits, /dev/zero never ends
            raise UsageError(
                f"labels_file='{path}' is not a regular file; give a text file with one class "
                "name per line"
            )
        with open_regular(path) as handle:  # swapped for a FIFO since the stat: no wait
            data = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read labels_file='{path}': {os_reason(exc)}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"labels_file='{path}': line {line} is not UTF-8 text; save the file as UTF-8, "
            "one class name per line"
        ) from None
    lines = [line.strip() for line in re.split(r"\r\n|\r|\n", text)]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UsageError(f"labels_file='{path}' is empty; give one class name per line")
    for number, line in enumerate(lines, start=1):
        if not line:
            raise UsageError(
                f"labels_file='{path}': line {number} is blank, which would shift the classes "
                "after it; give one class name per line, in class-index order"
            )
        if "\x00" in line:
            raise UsageError(
                f"labels_file='{path}': line {number} holds a NUL byte; give a text file with "
                "one class name per line"
            )
    return lines


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
    resize: str | None = None,
) -> LoadedModel:
    """Build the model a `--model` spec names, with its preprocessing and labels.

    `resize`: how a photo becomes the input size, 'crop', 'squash' or 'pad' (`Preprocess`);
    None keeps the model's own convention (timm's data config, torchvision's weights
    transforms; crop for your own model)."""
    check_input_size(input_size)
    check_resize(resize)
    check_num_classes(num_classes)
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
                raise UsageError("demo:shapes has 4 classes; num_classes= does not apply")
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
        load_weights(
            model,
            read_state_dict(weights),
            str(weights),
            model_name=_title(source, name),
            classes_fixed=source == "demo",
        )
        provenance = str(weights)
    if labels_file is not None:
        labels = read_labels_file(labels_file)
    preprocess = override_preprocess(
        preprocess, input_size=input_size, mean=mean, std=std, resize=resize
    )
    model.eval()
    return LoadedModel(model, name, source, provenance, preprocess, labels)


def override_preprocess(
    preprocess: Preprocess,
    *,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: str | None = None,
) -> Preprocess:
    """Apply --resize/--input-size/--mean/--std. Crop keeps the model's resize-to-crop ratio
    at any input size; squash and pad crop nothing (`Preprocess.with_resize`)."""
    if resize is not None:
        preprocess = preprocess.with_resize(resize)
    changes: dict[str, object] = {}
    if input_size is not None:
        check_input_size(input_size)
        ratio = preprocess.resize_shorter / min(preprocess.input_size)
        changes["input_size"] = (input_size, input_size)
        changes["resize_shorter"] = int(round(input_size * ratio))
    for option, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        if len(values) != 3:
            raise UsageError(f"{option}= takes three numbers (R G B), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise UsageError(f"{option}= values must be finite numbers, got {list(values)}")
        if option == "std" and any(v <= 0 for v in values):
            raise UsageError("std= values must be positive")
        changes[option] = tuple(float(v) for v in values)
    return replace(preprocess, **changes) if changes else preprocess
