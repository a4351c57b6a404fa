"""The model libraries `--model LIBRARY:NAME` can name, each a `Source` that registers itself.

A source answers four questions about a name: does it have it, how is it built (pretrained or
seeded random, with another class count or input size), how is a photo prepared for it, and
what are its class names. Adding a library is one module with one `@register_source` class,
imported by `gradcam_cli.sources`. The user's own model (`file.py:Class`) is a source too, but
unregistered: it has no prefix and lists no names (`sources.user`).

This module imports neither torch nor any library: `gradcam models` and the name checks read
the registry before anything heavy is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from torch import nn

    from ..errors import UnknownModelError
    from ..preprocess import Preprocess

__all__ = ["Source", "register_source", "registered", "source_named", "bare_sources"]


class Source:
    """One library of models. Subclasses set the class attributes and the methods they need."""

    prefix: ClassVar[str]  # `--model PREFIX:NAME`; the JSON's "source"
    order: ClassVar[int]  # where its names are listed (and, among bare sources, looked up)
    bare: ClassVar[bool] = False  # answers a name given without a prefix
    classes_fixed: ClassVar[bool] = False  # its weights fit one class count only

    def has(self, name: str) -> bool:
        return name in self.names()

    def names(self, pretrained: bool = False) -> list[str]:
        """The names it builds (with pretrained weights only: those it can download)."""
        raise NotImplementedError

    def refusal(self, name: str) -> UnknownModelError | None:
        """Why a name it knows, but does not serve, is refused (None: it does not know it)."""
        return None

    def build(
        self, name: str, *, pretrained: bool, num_classes: int | None, input_size: int | None
    ) -> tuple[nn.Module, str]:
        """The model, and where its weights came from: 'pretrained:<id>', 'embedded:<file>',
        'random' (seeded by the caller) or 'factory'."""
        raise NotImplementedError

    def preprocess(self, model: nn.Module, name: str) -> Preprocess:
        raise NotImplementedError

    def labels(self, model: nn.Module, name: str) -> list[str] | None:
        return None

    def task(self, name: str) -> str:
        """What the model does: classification, segmentation or detection (`tasks`)."""
        return "classification"


_REGISTRY: dict[str, Source] = {}


def register_source(cls: type[Source]) -> type[Source]:
    """Class decorator: register one instance under its prefix; a prefix is registered once
    (as torchvision's `register_model` refuses a second model of a name)."""
    if cls.prefix in _REGISTRY:
        raise ValueError(f"a model source '{cls.prefix}' is registered already")
    _REGISTRY[cls.prefix] = cls()
    return cls


def registered() -> list[Source]:
    """Every source, in listing order: the demo model, timm, torchvision."""
    return sorted(_REGISTRY.values(), key=lambda source: source.order)


def source_named(prefix: str) -> Source | None:
    return _REGISTRY.get(prefix)


def bare_sources() -> list[Source]:
    """The sources a name without a prefix is looked up in, first answer wins: timm (its
    registry is a superset of torchvision's architectures and knows pretrained tags), then
    torchvision."""
    return [source for source in registered() if source.bare]
