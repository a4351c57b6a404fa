"""What every method is: the registry, a method's own options, the LayerView the engine hands a
method for one layer, and the CamMethod base class (package docstring: the notation).

No torch at module level (methods import it inside a function): `gradcam --help` lists the
methods without paying for torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ..errors import UsageError, did_you_mean
from .projection import first_principal_component

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module

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
    integer: bool = False  # a whole number, `least` and up (a seed, a count); else positive
    least: int = 0
    maximum: float | None = None  # a positive number's upper bound, inclusive (a fraction: 1)

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
            if not (math.isfinite(number) and number >= self.least and number == int(number)):
                raise UsageError(
                    f"{self.name}= must be a whole number, {self.least} or more, got {value}"
                )
            return int(number)
        if not (math.isfinite(number) and number > 0):
            raise UsageError(f"{self.name}= must be a positive number, got {value}")
        if self.maximum is not None and number > self.maximum:
            raise UsageError(f"{self.name}= must be at most {self.maximum:g}, got {value}")
        return number


def method_option_names() -> list[str]:
    """Every registered method's own options, by keyword (the CLI's flags for them)."""
    return list(dict.fromkeys(option.name for cls in METHODS.values() for option in cls.options))


def method_option_help(name: str) -> str:
    """The help of a method's own option, with its choices and default (`--help`); an option
    that several methods take (`seed`) has each one's help, in the registry's order."""
    parts = []
    for option in (o for cls in METHODS.values() for o in cls.options if o.name == name):
        choices = f": {', '.join(option.choices)}" if option.choices else ""
        value = option.default
        shown = f"{value:.4g}" if isinstance(value, float) else value  # 2/7: 0.2857
        default = "" if value is None else f"; default {shown}"
        parts.append(f"{option.help}{choices}{default}")
    return ". ".join(parts)


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
        # Guided Grad-CAM is guided backpropagation with layer channels; FullGrad has no such twin.
        other = ", or use method='guided-gradcam'" if cls.guided else ""
        raise UsageError(
            f"eigen_smooth=True combines a layer's channels, and method='{name}' has no layer "
            f"channels to combine; drop eigen_smooth=True{other}"
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
    # Per target rank, H·A [B, C, h, w] with H = ∂²s/∂A² of the method's objective s, through
    # the head only (create_graph on the head's graph); second_order methods only.
    hessian_products: list[Tensor] = field(default_factory=list)
    # Methods that `reruns_with_gradients`: images [B, 3, H, W] of the batch's shape → this
    # layer's activations [B, C, h, w] on them and, per target rank, the gradients of the same
    # targets' scores [B, C, h, w]: a new forward, and a backward through the head only.
    # None otherwise.
    gradients_at: Callable[[Tensor], tuple[Tensor, list[Tensor]]] | None = None
    # full_backward methods: their maps [B, K, H, W] from `CamMethod.backward_maps`, computed
    # once per batch (they do not depend on the layer). None otherwise.
    backward_maps: Tensor | None = None
    # explains_other_images methods: (a method, images [N, 3, h, w], their targets [N, K]) →
    # (that method's maps at this layer [N, K, h', w'], the images' probabilities [N, T]): one
    # forward and that method's own work (Grad-CAM: a head-only backward) per image, batched
    # as given. Classification only. None otherwise.
    explain_images: Callable[[CamMethod, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
    # A ViT's attention in every block (methods with needs_attention only; attention.py).
    attention: AttentionMaps | None = None


class CamMethod:
    """A method: `maps(view)` → [B, K, h, w] float32 >= 0. Capabilities are class attributes."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""  # who defined it, and when: "Selvaraju et al. 2017" (README table)
    summary: ClassVar[str]
    formula: ClassVar[str]  # one line, for docs/methods.md's table
    needs_gradients: ClassVar[bool] = True  # g = ∂y/∂A through the head
    uses_head: ClassVar[bool] = False  # re-runs the head (only) on modified activations
    needs_full_forwards: ClassVar[bool] = False  # runs the whole model on modified images
    guided: ClassVar[bool] = False  # backward to the pixels with ReLU gradients clamped
    guided_layer_free: ClassVar[bool] = False  # the guided image is the same at every layer
    # runs the whole model on other images of the batch's shape, with head-only gradients
    # (`LayerView.gradients_at`: Smooth Grad-CAM++'s noisy copies)
    reruns_with_gradients: ClassVar[bool] = False
    requires_gap_linear_head: ClassVar[bool] = False  # CAM's architecture after the layer
    projects: ClassVar[bool] = False  # always combines channels by their principal component
    supports_eigen_smooth: ClassVar[bool] = True
    second_order: ClassVar[bool] = False  # also H·A, a Hessian-vector product through the head
    combines_layers: ClassVar[bool] = False  # one map from several layers' (combine_layers)
    # Its own backward through the whole model to the pixels, once per batch (layer-free):
    # `backward_maps` gives the engine its maps (FullGrad).
    full_backward: ClassVar[bool] = False
    # Runs another method on other images made from the input (SESS's patches): the engine
    # hands it `LayerView.explain_images`.
    explains_other_images: ClassVar[bool] = False
    needs_attention: ClassVar[bool] = False  # every block's attention weights (ViTs)
    attention_gradients: ClassVar[bool] = False  # ... and the graph to differentiate them
    options: ClassVar[tuple[MethodOption, ...]] = ()  # its own settings, with their defaults

    def __init__(self, **settings: object):
        """`settings`: values for `options` (checked by check_method_options)."""
        self.settings: dict[str, object] = {option.name: option.default for option in self.options}
        self.settings.update(settings)
        self.given = dict(settings)  # what a report records: the settings given

    def objective(self, scores: Tensor, targets: Tensor, rank: int) -> Tensor:
        """What the gradient is taken of, per image [B], from the scores [B, T] (with the
        head's graph): by default the target's own score. Any function of the scores keeps
        the backward through the head only."""
        return scores.gather(1, targets[:, rank : rank + 1])[:, 0]

    def combine_layers(self, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        """The maps [B, K, h, w] by layer → what is reported by layer: the same by default."""
        return maps

    def check_task(self, task: str) -> None:
        """Refuse, before any work, a task (tasks/: classification, segmentation, detection)
        whose targets the method cannot explain; every task by default."""

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

    def backward_maps(
        self,
        model: Module,
        images: Tensor,
        targets: Tensor,
        scores_of: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """full_backward methods: maps [B, K, H, W] for `targets` [B, K] from their own backward
        to the pixels; `scores_of(pixels)` runs the model, recording, → scores [B, T]. Any hook
        it registers on `model` it removes, also on errors."""
        raise NotImplementedError


def refuse_comparing_classes(method: CamMethod, task: str) -> None:
    """`check_task` of a method whose objective compares the target class's score with other
    classes' scores: classifiers only."""
    if task != "classification":
        raise UsageError(
            f"method='{method.name}' as set up here compares the target class's score with "
            f"other classes' scores, so it is for classifiers, and this is a {task} model; "
            "use method='gradcam'"
        )


def check_layer_count(method: CamMethod, count: int) -> None:
    """A method that combines several layers' maps refuses fewer than two layers."""
    if method.combines_layers and count < 2:
        raise UsageError(
            f"method='{method.name}' multiplies the maps of several layers into one; give two "
            "or more layers= (e.g. layers='layer2,layer3,layer4' for a ResNet)"
        )


def cost_note(cls: type[CamMethod]) -> str:
    """What a method costs beyond the one forward pass every method shares. N: its `samples`
    option (SS-CAM's noisy masks, IS-CAM's steps, Smooth Grad-CAM++'s noisy images)."""
    n = "N·" if any(option.name == "samples" for option in cls.options) else ""
    if cls.combines_layers:
        return "head-only backward from the earliest of its layers"
    if cls.second_order:
        return "head-only backward, and a head-only Hessian-vector product"
    if cls.explains_other_images:
        return (
            "P patches per image (scales × windows): one forward and the base method's "
            "head-only backward each, batched"
        )
    if cls.full_backward:
        return "one full backward to the pixels, keeping every bias layer's output gradient"
    if cls.needs_full_forwards:
        return f"{n}C full forward passes per image, batched"
    if cls.reruns_with_gradients:
        runs = "N full forward passes" if n else "one more full forward pass"
        return f"{runs} per image, batched, each with a head-only backward per target"
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
        lines.append(f"| `{name}` | {_cell(cls.formula)} | {cost_note(cls)} |")
    return "\n".join(lines) + "\n"


def readme_table(costs: dict) -> str:
    """README's method table: the registry's paper, map and cost note, with each method's time
    per image as benchmarks/method_cost.py measured it (`costs`: its JSON). A method it has not
    measured is a KeyError: re-measure rather than leave a row without its figure."""
    models = costs["models"]
    lines = [
        "| method | paper | map | cost beyond one forward | CPU time per image (× Grad-CAM) |",
        "|---|---|---|---|---|",
    ]
    for name, cls in METHODS.items():
        row = costs["methods"][name]
        ratio = row["ms"] / models[row["model"]]["gradcam_ms"]
        where = "" if row["model"] == "resnet50" else f" on {row['model']}"
        given = [f"{key}={value}" for key, value in row.get("settings", {}).items()]
        if "layers" in row:
            given.insert(0, f"`{row['layers']}`")
        where += f", {', '.join(given)}" if given else ""
        times = f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.2f}×"
        time = f"{_milliseconds(row['ms'])}{where} ({times})"
        row_cells = [f"`{name}`", cls.paper, _cell(cls.formula), cost_note(cls), time]
        lines.append(f"| {' | '.join(row_cells)} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a markdown table's cell: a bar (|g|) would end the cell."""
    return text.replace("|", "\\|")


def _milliseconds(ms: float) -> str:
    if ms >= 120_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 1000:.1f} s" if ms >= 1_000 else f"{ms:.0f} ms"
