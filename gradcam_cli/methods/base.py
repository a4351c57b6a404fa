"""What every method is: the registry, a method's own options, the LayerView the engine hands a
method for one layer, and the CamMethod base class (package docstring: the notation).

No torch at module level (methods import it inside a function): `gradcam --help` lists the
methods without paying for torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..errors import UsageError, did_you_mean
from .projection import first_principal_component

if TYPE_CHECKING:
    from torch import Tensor

    from ..attention_capture import AttentionMaps

METHODS: dict[str, type[CamMethod]] = {}


def register_method(cls: type[CamMethod]) -> type[CamMethod]:
    """Class decorator: add a method to the registry under `cls.name`, refusing duplicates."""
    if cls.name in METHODS:
        raise ValueError(f"method name '{cls.name}' is registered twice")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **settings: object) -> CamMethod:
    """The method named `name`, with its own options (`CamMethod.options`) where given."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise UsageError(
            f"unknown method='{name}'."
            + did_you_mean(name, METHODS, n=1)
            + f" Choose one of: {', '.join(METHODS)}"
        ) from None
    return cls(**settings)


@dataclass(frozen=True)
class MethodOption:
    """A method's own setting (`CamMethod.options`): a keyword of Explainer's
    `method_settings` and a flag of `gradcam explain` (`--k-sigma`), a number or a choice."""

    name: str
    default: float | str | None
    help: str
    choices: tuple[str, ...] = ()
    integer: bool = False  # a whole number, 0 and up (a seed); else a positive number

    def checked(self, method: str, value: object) -> float | str:
        if self.choices:
            if value not in self.choices:
                raise UsageError(
                    f"{self.name}='{value}' is not one of {', '.join(self.choices)} for "
                    f"method='{method}'." + did_you_mean(str(value), self.choices, n=1)
                )
            return str(value)
        try:
            number = float(value)  # type: ignore[arg-type]  # anything float() takes
        except (TypeError, ValueError):
            number = float("nan")
        if self.integer:
            if not (math.isfinite(number) and number >= 0 and number == int(number)):
                raise UsageError(f"{self.name}= must be a whole number, 0 or more, got {value}")
            return int(number)
        if not (math.isfinite(number) and number > 0):
            raise UsageError(f"{self.name}= must be a positive number, got {value}")
        return number


def method_option_names() -> list[str]:
    """Every registered method's own options, by keyword (the CLI's flags for them)."""
    return list(dict.fromkeys(option.name for cls in METHODS.values() for option in cls.options))


def method_option_help(name: str) -> str:
    """The help of a method's own option, with its choices and default (`--help`)."""
    option = next(o for cls in METHODS.values() for o in cls.options if o.name == name)
    choices = f": {', '.join(option.choices)}" if option.choices else ""
    default = "" if option.default is None else f"; default {option.default}"
    return f"{option.help}{choices}{default}"


def check_method_options(name: str, *, eigen_smooth: bool = False, **settings: object) -> CamMethod:
    """The method named `name` with its `settings` checked, and against the smoothing options,
    before any work starts: a setting of another method is refused, naming whose it is."""
    cls = get_method(name).__class__
    own = {option.name: option for option in cls.options}
    for key, value in settings.items():
        if key not in own:
            owners = [m for m, c in METHODS.items() if key in {o.name for o in c.options}]
            whose = f"an option of method={'/'.join(owners)}" if owners else "no method's option"
            raise UsageError(f"{key}= is {whose}, not of method='{name}'")
        settings[key] = own[key].checked(name, value)
    method = cls(**settings)
    if eigen_smooth and not method.supports_eigen_smooth:
        raise UsageError(
            f"eigen_smooth=True combines a layer's channels, and method='{name}' has no layer "
            "channels to combine; drop eigen_smooth=True, or use method='guided-gradcam'"
        )
    return method


@dataclass(frozen=True)
class LayerView:
    """What a method sees of one target layer, for B images and K target classes each."""

    activations: Tensor  # A [B, C, h, w], the layer's output as the module returned it
    gradients: list[Tensor]  # per target rank, g [B, C, h, w]; empty unless needs_gradients
    targets: Tensor  # [B, K] slots: class indices, or a detector's detections (tasks/)
    scores: Tensor  # [B, T] the images' scores of every slot
    images: Tensor  # [B, 3, H, W] the model's input
    # The model after the layer, on activations we supply: (rows [N, C, h, w], image index [N])
    # → class scores [N, num_classes]. The engine runs the head alone where it can.
    head: Callable[[Tensor, Tensor], Tensor]
    # The whole model without gradients: (images [N, 3, H, W], which image each is a copy of
    # [N]) → scores [N, T].
    forward: Callable[[Tensor, Tensor], Tensor]
    guided_gradients: list[Tensor]  # per rank, guided ∂y/∂x [B, 3, H, W]; guided methods only
    layer: str = ""
    eigen_smooth: bool = False
    # Maps [B, K, h, w] → the part of them over the images (a detector pads the input it
    # resizes: Score-CAM's masks must cover the image, not the padding). Identity otherwise.
    frame: Callable[[Tensor], Tensor] = lambda maps: maps
    # A ViT's attention in every block (methods with needs_attention only; attention.py).
    attention: AttentionMaps | None = None


class CamMethod:
    """A method: `maps(view)` → [B, K, h, w] float32 >= 0. Capabilities are class attributes."""

    name: ClassVar[str]
    summary: ClassVar[str]
    formula: ClassVar[str]  # one line, for docs/methods.md's table
    needs_gradients: ClassVar[bool] = True  # g = ∂y/∂A through the head
    uses_head: ClassVar[bool] = False  # re-runs the head (only) on modified activations
    needs_full_forwards: ClassVar[bool] = False  # runs the whole model on modified images
    guided: ClassVar[bool] = False  # backward to the pixels with ReLU gradients clamped
    guided_layer_free: ClassVar[bool] = False  # the guided image is the same at every layer
    requires_gap_linear_head: ClassVar[bool] = False  # CAM's architecture after the layer
    projects: ClassVar[bool] = False  # always combines channels by their principal component
    supports_eigen_smooth: ClassVar[bool] = True
    needs_attention: ClassVar[bool] = False  # every block's attention weights (ViTs)
    attention_gradients: ClassVar[bool] = False  # ... and the graph to differentiate them
    options: ClassVar[tuple[MethodOption, ...]] = ()  # its own settings, with their defaults

    def __init__(self, **settings: object):
        """`settings`: values for `options` (checked by check_method_options)."""
        self.settings: dict[str, object] = {option.name: option.default for option in self.options}
        self.settings.update(settings)
        self.given = dict(settings)  # what a report records: the settings given

    def maps(self, view: LayerView) -> Tensor:
        import torch

        ranks = range(view.targets.shape[1])
        return torch.stack([self.combine(view, self.contributions(view, r)) for r in ranks], 1)

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        """Each channel's part of the map, [B, C, h, w]: by default w_k · A_k."""
        return self.weights(view, rank)[:, :, None, None] * view.activations.float()

    def weights(self, view: LayerView, rank: int) -> Tensor:
        """Channel weights [B, C] for the target of rank `rank`."""
        raise NotImplementedError

    def combine_weighted(self, view: LayerView, weights: Tensor) -> Tensor:
        """Channel weights for every target at once, [B, C, K] → maps [B, K, h, w]."""
        import torch

        activations = view.activations.float()
        ranks = range(weights.shape[2])
        return torch.stack(
            [self.combine(view, weights[:, :, r, None, None] * activations) for r in ranks], 1
        )

    def combine(self, view: LayerView, contributions: Tensor) -> Tensor:
        """[B, C, h, w] → [B, h, w]: channel sum (or principal component), then ReLU."""
        if self.projects or view.eigen_smooth:
            return first_principal_component(contributions).clamp(min=0)
        return contributions.sum(dim=1).clamp(min=0)

    def guided_images(self, guided_gradients: list[Tensor], maps: Tensor) -> Tensor:
        """Guided methods: the input-resolution image per target, [B, K, 3, H, W]."""
        raise NotImplementedError


def cost_note(cls: type[CamMethod]) -> str:
    """What a method costs beyond the one forward pass every method shares."""
    if cls.needs_full_forwards:
        return "C full forward passes per image, batched"
    if cls.needs_attention and cls.attention_gradients:
        return "the blocks recorded from the first; a backward to every block's attention"
    if cls.needs_attention:
        return "none: attention weights only (no gradient)"
    if cls.guided and cls.needs_gradients:
        return "head-only backward, and one full backward to the pixels"
    if cls.guided:
        return "one full backward to the pixels"
    if cls.uses_head and not cls.needs_gradients:
        return "C head-only passes per image, batched"
    if cls.uses_head:
        return "head-only backward, and one head-only pass to check the head"
    if cls.needs_gradients:
        return "head-only backward"
    return "none"


def methods_table() -> str:
    """docs/methods.md's method table, from the registry (tests/test_docs.py keeps them equal)."""
    lines = ["| method | map | cost beyond one forward |", "|---|---|---|"]
    for name, cls in METHODS.items():
        lines.append(f"| `{name}` | {cls.formula} | {cost_note(cls)} |")
    return "\n".join(lines) + "\n"
