"""Whether two reports describe the same run: the shares `gradcam merge` joins must, and so must
the report `--resume` continues and the run that continues it."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SAME_RUN_KEYS", "SPEED_OPTIONS", "run_differences", "option_differences"]

# The top-level keys that say what a run computes: two reports that differ in one of these
# describe different runs.
SAME_RUN_KEYS = ("schema_version", "model", "method", "method_options", "layers", "preprocess")
# Options that change how fast a run goes, not what it writes.
SPEED_OPTIONS = frozenset({"batch_size", "workers"})


def run_differences(one: Mapping[str, object], other: Mapping[str, object]) -> list[str]:
    """The SAME_RUN_KEYS on which two reports differ, in that order; empty: the same run."""
    return [key for key in SAME_RUN_KEYS if one.get(key) != other.get(key)]


def option_differences(one: Mapping[str, object], other: Mapping[str, object]) -> list[str]:
    """The options, as flags (`--topk`), that differ between two reports' `options` and change
    what a run writes (not SPEED_OPTIONS), sorted."""
    old, new = _options(one), _options(other)
    return [
        f"--{key.replace('_', '-')}"
        for key in sorted(set(old) | set(new))
        if key not in SPEED_OPTIONS and old.get(key) != new.get(key)
    ]


def _options(document: Mapping[str, object]) -> Mapping[str, object]:
    options = document.get("options")
    return options if isinstance(options, Mapping) else {}
