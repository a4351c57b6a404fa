"""Your own model: `path/to/file.py:callable` or `package.module:callable`, built by calling
`callable()` (with `num_classes=N` when `--num-classes` is given). Not a registered source: it
has no prefix and lists no names; `parse_model_spec` calls any other `X:Y` spec yours.

Your code runs while the model is built: what it raises or exits with becomes one error line
naming your file (`running_user_code`), and a failed import leaves no half-imported module.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..errors import UnknownModelError, UsageError, did_you_mean, first_line, running_user_code
from ..preprocess import Preprocess
from .registry import Source

__all__ = ["UserSource", "USER", "import_callable", "custom_preprocess"]

_FIX_IT = "fix it, or rerun with --verbose for the traceback"


def import_callable(spec: str) -> Callable[..., object]:
    """`file.py:callable` or `package.module:callable` → the callable."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise UnknownModelError(f"'{spec}' is not a model spec; use path/to/file.py:Class")
    if target.endswith(".py"):
        module = _import_file(target, spec)
    else:
        module = _import_module(target, spec)
    try:
        return getattr(module, attr)
    except AttributeError:
        defines = _what_it_defines(module, attr)
        raise UnknownModelError(f"'{target}' has no '{attr}'.{defines}") from None


def _import_file(target: str, spec: str) -> types.ModuleType:
    """Your model file, imported as `_gradcam_user_<stem>` with its folder on sys.path."""
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
    return module


def _import_module(target: str, spec: str) -> types.ModuleType:
    """`package.module`, found as `python -m` would: the current folder imports."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        with running_user_code(f"importing your model module {target}", _FIX_IT):
            return importlib.import_module(target)
    except ImportError as exc:
        raise UnknownModelError(
            f"cannot import module '{target}' for '{spec}': {first_line(exc)}"
        ) from exc


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
    factory = import_callable(spec)
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


def custom_preprocess(input_size: int = 224) -> Preprocess:
    """Documented defaults for the user's own model: shorter side → input size, centre crop
    (`resize='crop'`; one trained on `Resize((H, W))` wants 'squash'), ImageNet mean/std,
    bilinear."""
    return Preprocess(input_size=(input_size, input_size), resize_shorter=input_size)


class UserSource(Source):
    prefix = "custom"  # the JSON's "source" for a model built by your factory

    def build(
        self, name: str, *, pretrained: bool, num_classes: int | None, input_size: int | None
    ) -> tuple[nn.Module, str]:
        return _build_custom(name, num_classes), "factory"

    def preprocess(self, model: nn.Module, name: str) -> Preprocess:
        return custom_preprocess()


USER = UserSource()
