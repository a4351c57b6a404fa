"""One exception base for the library; the CLI maps it to one stderr line and an exit code.

Every message says what went wrong and what to do next. Importing this module is cheap
(no torch), so the CLI can catch these errors without paying for torch at start-up.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

__all__ = [
    "GradcamError",
    "UsageError",
    "UnknownModelError",
    "ModelDownloadError",
    "WeightsError",
    "UnknownLayerError",
    "LayerError",
    "TargetError",
    "ImageReadError",
    "UserCodeError",
    "did_you_mean",
    "first_line",
    "what_it_did",
    "running_user_code",
]

# Exit codes are a public contract (docs/unattended.md, "Exit codes").
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


class GradcamError(Exception):
    """Base of every error this library raises on purpose."""

    exit_code: int = EXIT_USAGE


class UsageError(GradcamError):
    """A bad option value or combination, found before any image is processed."""


class UnknownModelError(GradcamError):
    """The model name or model spec does not name anything we can build."""


class ModelDownloadError(GradcamError):
    """Pretrained weights could not be fetched (offline, hub down, ...)."""


class WeightsError(GradcamError):
    """A weights file could not be read, is unsafe, or does not fit the architecture."""


class UnknownLayerError(GradcamError):
    """A dotted layer path that names no module of the model."""


class LayerError(GradcamError):
    """The layer exists but cannot be explained (not spatial, called several times, ...)."""


class TargetError(GradcamError):
    """A --target that names no class of the model."""


class ImageReadError(GradcamError):
    """One input could not be read as an image; the run records it and goes on."""

    exit_code = EXIT_SOME_FAILED


class UserCodeError(GradcamError):
    """A model's own code (the user's model file, its factory, a forward pass while the model
    is probed) raised an exception or called sys.exit before any image was processed."""


# The library's errors name its own parameters, written `name=value` (`device='cuda'`,
# `targets=4`, `eigen_smooth=True`); the CLI shows them as the flags that set them
# (`--device cuda`, `--target 4`, `--eigen-smooth`) through `as_cli_flags`.
PARAMETER_FLAGS = {
    "device": "--device",
    "targets": "--target",
    "topk": "--topk",
    "method": "--method",
    "amp": "--amp",
    "layers": "--layer",
    "labels": "--labels",
    "eigen_smooth": "--eigen-smooth",
    "aug_smooth": "--aug-smooth",
    "out": "--out",
    "overlay_format": "--format",
    "batch_size": "--batch-size",
    "workers": "--workers",
    "decode": "--decode",
    "shard": "--shard",
    "input_size": "--input-size",
    "num_classes": "--num-classes",
    "mask": "--mask",
    "min_energy": "--min-energy",
    "require_hit": "--require-hit",
    "model": "--model",
    "weights": "--weights",
    "pretrained": "--pretrained",
    "labels_file": "--labels",
    "mean": "--mean",
    "std": "--std",
    "resize": "--resize",
    "layer": "--layer",
    "mode": "--mode",
    "target": "--target",
    "threshold": "--threshold",
    "by_stage": "--by-stage",
    "metrics": "--metrics",
    "baselines": "--baselines",
    "gates": "--gate",
    "metric_settings": "--metric-steps/--road-percentiles/...",
    "steps": "--metric-steps",
    "deletion_substrate": "--deletion-substrate",
    "insertion_substrate": "--insertion-substrate",
    "score": "--metric-score",
    "road_percentiles": "--road-percentiles",
    "road_noise": "--road-noise",
    "road_seed": "--metric-seed",
    "road_selection": "--road-selection",
    "save_raw": "--save-raw",
    "baseline": "--baseline",
    "min_corr": "--min-corr",
    "max_shift": "--max-shift",
    "max_energy_moved": "--max-energy-moved",
    "max_top1_changes": "--max-top1-changes",
    "allow_method_change": "--allow-method-change",
    "task": "--task",
    "k_sigma": "--k-sigma",
    "kernel": "--kernel",
    "kernel_gamma": "--kernel-gamma",
    "seed": "--seed",
    "comparisons": "--comparisons",
    "comparison_strength": "--comparison-strength",
    "comparison_weights": "--comparison-weights",
    "objective": "--objective",
    "samples": "--samples",
    "noise_std": "--noise-std",
    "scales": "--scales",
    "scale_step": "--scale-step",
    "window_stride": "--window-stride",
    "keep_patches": "--keep-patches",
    "fusion": "--fusion",
    "base_method": "--base-method",
    "head_fusion": "--head-fusion",
    "min_score": "--min-score",
    "region": "--region",
    "k": "--k",
    "top_classes": "--top-classes",
}
_NEGATED_FLAGS = {"pretrained": "--no-pretrained"}  # name=False
_BOOLEAN_FLAGS = {"eigen_smooth", "aug_smooth", "require_hit", "save_raw", "allow_method_change"}
# Not inside a call's arguments ("make(num_classes=10) failed" quotes Python, not the CLI).
_PARAMETER = re.compile(
    r"(?<!\()(?<!, )\b(" + "|".join(PARAMETER_FLAGS) + r")=(?:'([^']*)'|(\[[^\]]*\]|[^\s,;:()]+))?"
)


def as_cli_flags(message: str) -> str:
    """A library message as the command line says it: `device='cuda'` → `--device cuda`,
    `eigen_smooth=True` → `--eigen-smooth`, `targets=` → `--target`."""

    def flag(match: re.Match[str]) -> str:
        name, quoted, bare = match.group(1), match.group(2), match.group(3)
        value = quoted if quoted is not None else bare
        if name in _NEGATED_FLAGS and value == "False":
            return _NEGATED_FLAGS[name]
        if name in _BOOLEAN_FLAGS or not value:
            return PARAMETER_FLAGS[name]
        return f"{PARAMETER_FLAGS[name]} {value}"

    return _PARAMETER.sub(flag, message)


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none: what a
    one-line reason can quote of an exception from torch, Pillow or a user's model."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean X?' (with a leading space) or '' when nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not matches:
        return ""
    if len(matches) == 1:
        return f" Did you mean '{matches[0]}'?"
    quoted = ", ".join(f"'{m}'" for m in matches)
    return f" Did you mean one of {quoted}?"


def what_it_did(exc: BaseException) -> str:
    """'raised RuntimeError: boom', 'raised KeyboardInterrupt', 'called sys.exit(0)': what
    code that is not ours did, in a few words for a one-line error."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({'' if exc.code is None else repr(exc.code)})"
    name = type(exc).__name__
    return f"raised {name}: {first_line(exc)}" if str(exc).strip() else f"raised {name}"


@contextmanager
def running_user_code(doing: str, advice: str) -> Iterator[None]:
    """Run code that is not ours (a model file, its factory, its forward). Whatever it raises,
    even SystemExit, becomes a UserCodeError '{doing} {what_it_did}; {advice}', so a run ends
    with one line and exit 2 instead of a silent exit or an 'internal error'. Our own errors
    pass through, and so does a KeyboardInterrupt that a signal may have raised."""
    try:
        yield
    except GradcamError:
        raise
    except KeyboardInterrupt as exc:
        from .signals import stop_requested

        if stop_requested():  # Ctrl-C or SIGTERM, or nobody watching who could tell
            raise
        raise UserCodeError(f"{doing} {what_it_did(exc)}; {advice}") from exc
    except (Exception, SystemExit) as exc:
        raise UserCodeError(f"{doing} {what_it_did(exc)}; {advice}") from exc
