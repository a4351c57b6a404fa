"""The options that change what a source gives: the input size and class count (checked before
anything is built), the preprocessing (`--resize`, `--input-size`, `--mean`, `--std`) and the
class names (`--labels FILE`).
"""

from __future__ import annotations

import math
import re
import stat
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..files import os_reason
from ..inputs import open_regular
from ..preprocess import Preprocess

__all__ = ["check_input_size", "check_num_classes", "override_preprocess", "read_labels_file"]

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
    changes: dict[str, Any] = {}  # Preprocess field → value
    if input_size is not None:
        check_input_size(input_size)
        ratio = preprocess.resize_shorter / min(preprocess.input_size)
        changes["input_size"] = (input_size, input_size)
        changes["resize_shorter"] = int(round(input_size * ratio))
    for option, values in (("mean", mean), ("std", std)):
        if values is not None:
            changes[option] = _channel_values(option, values)
    return replace(preprocess, **changes) if changes else preprocess


def _channel_values(option: str, values: Sequence[float]) -> tuple[float, ...]:
    """--mean/--std: three finite numbers, R G B; a std divides, so it must be positive."""
    if len(values) != 3:
        raise UsageError(f"{option}= takes three numbers (R G B), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{option}= values must be finite numbers, got {list(values)}")
    if option == "std" and any(v <= 0 for v in values):
        raise UsageError("std= values must be positive")
    return tuple(float(v) for v in values)


def read_labels_file(path: str | Path) -> list[str]:
    """Class names, one a line in class-index order, from UTF-8 text (a BOM is dropped).

    Blank lines at the end are ignored; one anywhere else would shift every later class's
    index, so it is refused, like text that is not UTF-8, with its line number."""
    path = Path(path)
    data = _read_regular_file(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"labels_file='{path}': line {bad_line} is not UTF-8 text; save the file as UTF-8, "
            "one class name per line"
        ) from None
    lines = [line.strip() for line in re.split(r"\r\n|\r|\n", text)]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UsageError(f"labels_file='{path}' is empty; give one class name per line")
    for number, line in enumerate(lines, start=1):
        _check_label(path, number, line)
    return lines


def _read_regular_file(path: Path) -> bytes:
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO waits, /dev/zero never ends
            raise UsageError(
                f"labels_file='{path}' is not a regular file; give a text file with one class "
                "name per line"
            )
        with open_regular(path) as handle:  # swapped for a FIFO since the stat: no wait
            return handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read labels_file='{path}': {os_reason(exc)}") from exc


def _check_label(path: Path, number: int, line: str) -> None:
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
