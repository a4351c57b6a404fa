"""Weights files: reading a checkpoint without running code, fitting it to a model (or saying
why it does not fit and what to do), and the message for pretrained weights that could not
be downloaded.

A checkpoint is read only through `torch.load(weights_only=True)` or safetensors: anything else
is refused with an explanation, never unpickled.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelDownloadError, WeightsError, first_line

__all__ = ["read_state_dict", "load_weights", "download_failed"]


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


def _mismatch_message(
    source: str,
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    missing: Sequence[str],
    unexpected: Sequence[str],
    mismatched: Sequence[str],
    hint: str,
) -> str:
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


def download_failed(name: str, exc: Exception) -> ModelDownloadError:
    """A library's hub could not be reached (or refused): one line, and the offline ways."""
    return ModelDownloadError(
        f"could not download pretrained weights for '{name}' ({_first_sentence(exc)}); "
        "use weights=PATH for a local file or pretrained=False for random weights"
    )
