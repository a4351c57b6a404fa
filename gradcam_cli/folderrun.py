"""What a command over a set of images does before its own work (`gradcam sanity`,
`gradcam concepts`): the model-building options checked against the model given, the output
folder checked, the inputs found and read, and the model loaded when it is named by a string."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from torch import nn

    from .sources import LoadedModel

__all__ = ["ModelOptions", "RunInputs", "find_run_inputs"]


@dataclass(frozen=True)
class ModelOptions:
    """The keywords of `load_model` a run takes for a model named by a string."""

    pretrained: bool = True
    weights: str | os.PathLike | None = None
    num_classes: int | None = None
    labels_file: str | os.PathLike | None = None
    input_size: int | None = None
    resize: str | None = None

    def refuse_for_built(self, model: object) -> None:
        """Options that build a model apply to a model named by a string, not to one built."""
        given = {
            "pretrained": not self.pretrained,
            "weights": self.weights is not None,
            "num_classes": self.num_classes is not None,
            "labels_file": self.labels_file is not None,
            "input_size": self.input_size is not None,
            "resize": self.resize is not None,
        }
        names = [f"{name}=" for name, set_ in given.items() if set_]
        if names and not isinstance(model, str):
            raise UsageError(
                f"{', '.join(names)} build a model named by a string, and this model is built "
                'already: name the model instead ("torchvision:resnet50"), or pass them to '
                "load_model() and give its result"
            )

    def load(self, model: str | LoadedModel | nn.Module) -> LoadedModel | nn.Module:
        """The model, loaded with these options when it is named by a string."""
        if not isinstance(model, str):
            return model
        from .sources import load_model

        return load_model(
            model,
            pretrained=self.pretrained,
            weights=_file_name(self.weights),
            num_classes=self.num_classes,
            labels_file=_file_name(self.labels_file),
            input_size=self.input_size,
            resize=self.resize,
        )


@dataclass(frozen=True)
class RunInputs:
    out: Path  # the output folder, checked writable and not locked by another run
    found: list[Path]  # the images to read
    missing: tuple[tuple[str, str], ...]  # (source, why) of the inputs that cannot be read


def find_run_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike,
    stdin=None,
    on_note: Callable[[str], None] | None = None,
) -> RunInputs:
    """Check `out`, then find the images as `gradcam explain` finds them (files, folders,
    globs, '-' for paths on `stdin`); a UsageError when none can be read."""
    from .files import check_writable_dir
    from .inputs import collect_inputs
    from .job import refuse_when_nothing_exists
    from .outlock import check_unlocked

    out = Path(out)
    check_writable_dir(out)
    check_unlocked(out)
    args = [os.fspath(inputs)] if isinstance(inputs, str | os.PathLike) else inputs
    items = collect_inputs(
        [os.fspath(arg) for arg in args], stdin=stdin, out_dir=out, on_skip=on_note
    )
    refuse_when_nothing_exists(items)
    missing = tuple((item.source, item.error or "") for item in items if item.error)
    found = [item.path for item in items if not item.error and item.path is not None]
    if not found:
        source, why = missing[0]
        raise UsageError(f"none of the inputs can be read ({source}: {why})")
    return RunInputs(out, found, missing)


def _file_name(path: str | os.PathLike | None) -> str | None:
    """A path as load_model takes it (a str stays as given: its messages quote it)."""
    return None if path is None else os.fspath(path)
