"""Layers: dotted paths, a probe of every module's output, and the automatic choice.

The probe runs one image through the model and records, for every module, its output, how it
lies (`layouts`: a conv map, channels-last, or tokens), and whether the logits depend on its
spatial positions. The automatic choice is the last layer, in forward order, that is usable:
for a CNN its last spatial stage; for a class-token ViT the last block's `norm1`, since only the
class token of the blocks' outputs reaches the head, while `norm1` feeds the attention in which
the class token reads the patches.

A layer is named by its dotted path (`layer4`, `layer4.2`); integer parts index a module's
children in order, negative ones from the end (`features.-1`); `layer4[2]` is accepted as
`layer4.2`. A module that runs several times per forward (a shared `nn.ReLU`) is refused unless
one call is chosen with `@N` (`layer1.0.relu@2`): we never silently pick one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import LayerError, UnknownLayerError, UsageError, did_you_mean, running_user_code
from .layouts import Layout, NotSpatialError, declared_prefix_tokens, infer_layout
from .modelstate import frozen_eval, removing
from .tasks import Task, get_task

__all__ = [
    "LayerRef",
    "LayerInfo",
    "Probe",
    "parse_layers",
    "resolve_layer",
    "module_paths",
    "probe_layers",
    "layer_table",
]

# Never the automatic choice: modules that pass their input through unchanged or only move its
# axes (torchvision Swin's `Permute`), adaptive pools, which only resample the map before them
# (VGG's 7×7 avgpool after `features`), linear projections inside a block (a ViT's `qkv`,
# whose query part is unused for the patches), and attention weights (a softmax over tokens).
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_NOT_DEFAULT = {cls.__name__ for cls in _PASS_THROUGH} | {"Permute", "Linear", "Softmax"}


@dataclass(frozen=True)
class LayerRef:
    """A resolved target: the module's canonical dotted name, optionally which call, and the
    modules from the model down to it, found once by `resolve_layer` and carried to the hook."""

    name: str
    call: int | None = None
    path: tuple[nn.Module, ...] = field(default=(), repr=False, compare=False)

    @property
    def module(self) -> nn.Module:
        """The module itself: what the engine hooks, with no search of the model by name."""
        return self.path[-1]

    def __str__(self) -> str:
        return self.name if self.call is None else f"{self.name}@{self.call}"


def parse_layers(value: str | Sequence[str] | None) -> list[str]:
    """`"layer4, layer3"` or ["layer4", "layer3"] → ["layer4", "layer3"]: order kept, no repeats."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    names = [p.strip() for p in parts if p.strip()]
    if not names and value:
        raise UsageError("layers= is empty; give a dotted path such as layer4 or features.-1")
    return list(dict.fromkeys(names))


def resolve_layer(model: nn.Module, path: str) -> LayerRef:
    """A user's layer path → its canonical LayerRef, or UnknownLayerError with a suggestion."""
    text, call = _split_call(path)
    parts = [p for p in re.sub(r"\[(-?\d+)\]", r".\1", text).split(".") if p != ""]
    if not parts:
        raise UnknownLayerError(f"'{path}' names no layer; use a dotted path such as layer4")
    modules: list[nn.Module] = [model]
    names: list[str] = []
    for part in parts:
        child = _child(modules[-1], part)
        if child is None:
            raise UnknownLayerError(_unknown_layer_message(model, path, names, part, modules[-1]))
        names.append(child[0])
        modules.append(child[1])
    return LayerRef(".".join(names), call, tuple(modules))


def module_paths(model: nn.Module) -> dict[int, str]:
    """id(module) → its dotted path in `model` ('' for the model itself): how a module object
    given as a target (model.layer4) is found by identity, not by a name it might share."""
    return {id(module): name for name, module in model.named_modules()}


def _split_call(path: str) -> tuple[str, int | None]:
    text, sep, index = path.strip().partition("@")
    if not sep:
        return text, None
    if not index.isdigit():
        raise UsageError(f"'{path}': the call index after '@' must be a number (e.g. relu@0)")
    return text, int(index)


def _child(module: nn.Module, part: str) -> tuple[str, nn.Module] | None:
    """The child `part` names (its name, or its index among the children), with its name."""
    children = [(name, child) for name, child in module._modules.items() if child is not None]
    for name, child in children:
        if name == part:
            return name, child
    if re.fullmatch(r"-?\d+", part):
        index = int(part)
        if -len(children) <= index < len(children):
            return children[index]
    return None


def _unknown_layer_message(
    model: nn.Module, path: str, found: list[str], part: str, parent: nn.Module
) -> str:
    where = ".".join(found) or "the model"
    children = [name for name, child in parent._modules.items() if child is not None]
    if not children:
        return f"unknown layer '{path}': {where} has no sub-modules, so '{part}' cannot be found"
    all_names = [name for name, _ in model.named_modules() if name]
    # Siblings first: a typo usually sits at the level where the walk stopped.
    hint = did_you_mean(part, children) or did_you_mean(".".join([*found, part]), all_names)
    shown = ", ".join(children[:12]) + (", ..." if len(children) > 12 else "")
    return (
        f"unknown layer '{path}': {where} has no child '{part}' (its children: {shown})."
        f"{hint} See all layers with `gradcam layers MODEL`."
    )


# -- the probe: one forward and backward at the model's input size -----------------------------


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # the module's class name
    shape: tuple[int, ...] | None  # output shape of its first call, None when not a tensor
    calls: int
    order: int  # when its first call finished, in forward order; -1 when never called
    reaches_logits: bool  # through its spatial positions (patch tokens, not prefix tokens)
    reason: str  # why it cannot be a target; "" when it can
    layout: Layout | None = None  # how its output lies at the probe's input size

    @property
    def usable(self) -> bool:
        return not self.reason

    @property
    def map_shape(self) -> tuple[int, int, int] | None:
        """(C, h, w) of the map it gives, at the probe's input size."""
        if self.layout is None or self.shape is None:
            return None
        channels = self.shape[-1] if self.layout.kind != "nchw" else self.shape[1]
        return (channels, *self.layout.grid)


@dataclass(frozen=True)
class Probe:
    layers: list[LayerInfo]
    num_outputs: int  # width of the model's logits
    # The forward ends in nn.Sigmoid/nn.Softmax: its outputs are probabilities, not logits.
    outputs_probabilities: bool = False
    # False when the logits do not depend on the image at all (e.g. a zero-initialised head).
    depends_on_input: bool = True
    # Bytes of every tensor the leaf modules output for one image: what a forward writes, an
    # upper bound of its working set (batchsize.py sizes batches by it).
    activation_bytes: int = 0
    # The module whose layers the automatic choice picks from (`Task.default_scope`).
    scope: str | None = None

    def get(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(name)

    def default_layer(self) -> str:
        """The last layer, in forward order, with a spatial output that the logits depend on
        (inside `scope`, when the task names one: a detector's backbone)."""
        candidates = [i for i in self.layers if i.usable and i.kind not in _NOT_DEFAULT]
        if self.scope:
            inside = [i for i in candidates if i.name.startswith(self.scope + ".")]
            candidates = inside or candidates
        if not self.depends_on_input:
            raise LayerError(
                "the model's outputs do not depend on the input image at all (every gradient is "
                "zero, e.g. a classifier initialised to zeros), so there is nothing to explain; "
                "load trained weights (--pretrained or --weights PATH)"
            )
        if not candidates:
            raise LayerError(
                "found no layer with a spatial output (a [B, C, H, W] map, channels-last, or "
                "patch tokens) that the logits depend on; name one with --layer "
                "(see `gradcam layers MODEL`)"
            )
        return max(candidates, key=lambda info: info.order).name


_FIX_IT = "fix the model, or rerun with --verbose for the traceback"


def probe_layers(
    model: nn.Module,
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
    *,
    model_name: str | None = None,
    task: Task | str | None = None,
) -> Probe:
    """Run one image through the model and record what every module outputs.

    `task` (default classification) says what the output is: the probe differentiates a
    random mix of its scores (a segmentation model's logits at every pixel, a detector's
    backbone features), and a detector's layers are read at the size it resized the image to.

    A full backward from a random mix of the logits tells which outputs the logits depend on.
    It is done once per run, on one image, so its cost does not matter. What the model's code
    raises (or a sys.exit in it) is a UserCodeError naming `model_name` ("your model
    net.py:make", "timm:resnet50"; `LoadedModel.title`).
    """
    records: dict[str, dict] = {}
    outputs: list[tuple[str, torch.Tensor]] = []
    counter = iter(range(1 << 62))
    handles: list = []
    last_leaf: list[tuple[nn.Module, object]] = []
    written = [0]  # activation bytes

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if not module._modules:
                last_leaf[:] = [(module, output)]
                if isinstance(output, torch.Tensor):
                    written[0] += output.numel() * output.element_size()
            rec = records.setdefault(name, {"calls": 0, "shape": None, "order": -1})
            rec["calls"] += 1
            if rec["calls"] == 1:
                rec["order"] = next(counter)
                if isinstance(output, torch.Tensor):
                    rec["shape"] = tuple(output.shape)
                    if output.requires_grad:
                        outputs.append((name, output))

        return hook

    task = get_task(task)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, *input_size, generator=generator).to(device).requires_grad_(True)
    paths = _paths_by_name(model)
    with frozen_eval(model), removing(handles), torch.enable_grad():
        for name, path in paths.items():
            handles.append(path[-1].register_forward_hook(make_hook(name)))
        doing = f"running {model_name or 'the model'} on a {input_size[0]}×{input_size[1]} image"
        advice = (
            "fix the model, or give a size it takes with --input-size "
            "(--verbose shows the traceback)"
        )
        with running_user_code(doing, advice):
            logits, frame = task.probe_output(model, x)
        mix = torch.randn(logits.shape, generator=generator).to(logits.device)
        with running_user_code(doing.replace("running", "the backward pass of", 1), _FIX_IT):
            found: Sequence[torch.Tensor | None] = (
                torch.autograd.grad(
                    (logits * mix).sum(), [x, *(t for _, t in outputs)], allow_unused=True
                )
                if logits.requires_grad
                else [None] * (1 + len(outputs))
            )
    input_gradient, *grads = found
    gradients = dict(zip([name for name, _ in outputs], grads, strict=True))
    infos = [
        _layer_info(name, path, records.get(name), gradients.get(name), frame or input_size)
        for name, path in paths.items()
    ]
    return Probe(
        infos,
        num_outputs=task.num_classes(model, logits),
        outputs_probabilities=_ends_in_probabilities(last_leaf, logits),
        depends_on_input=input_gradient is not None and bool((input_gradient != 0).any()),
        activation_bytes=written[0],
        scope=task.default_scope(model),
    )


def _paths_by_name(model: nn.Module) -> dict[str, tuple[nn.Module, ...]]:
    """Every module's dotted name → the modules from the model down to it (as LayerRef.path),
    in one walk of the model: named_modules yields each parent before its children."""
    paths: dict[str, tuple[nn.Module, ...]] = {"": (model,)}
    for name, module in model.named_modules():
        if name:
            paths[name] = (*paths[name.rpartition(".")[0]], module)
    del paths[""]
    return paths


def _ends_in_probabilities(last_leaf: list[tuple[nn.Module, object]], logits: torch.Tensor) -> bool:
    """True when the last module to run is a Sigmoid/Softmax whose output is the model's."""
    if not last_leaf:
        return False
    module, output = last_leaf[0]
    return (
        isinstance(module, nn.Sigmoid | nn.Softmax)
        and isinstance(output, torch.Tensor)
        and output.numel() == logits.numel()
        and torch.equal(output.detach().flatten(), logits.detach().flatten())
    )


def _layer_info(
    name: str,
    path: tuple[nn.Module, ...],
    rec: dict | None,
    gradient: torch.Tensor | None,
    input_size: tuple[int, int],
) -> LayerInfo:
    module = path[-1]
    kind = type(module).__name__
    if rec is None:
        return LayerInfo(name, kind, None, 0, -1, False, "not called in forward")
    shape, calls, order = rec["shape"], rec["calls"], rec["order"]
    if shape is None:
        return LayerInfo(name, kind, None, calls, order, False, "output is not a tensor")
    try:
        layout = infer_layout(
            shape, input_size, module=module, prefix=declared_prefix_tokens(path), batch=1
        )
    except NotSpatialError as exc:
        return LayerInfo(name, kind, shape, calls, order, False, str(exc))
    # != 0 rather than > 0: a NaN gradient (a model that gives NaN on the random probe image)
    # still shows the dependence.
    reaches = gradient is not None and bool((layout.to_map(gradient) != 0).any())
    reason = ""
    if calls > 1:
        reason = f"runs {calls} times per forward (pick one with @N)"
    elif (
        not reaches
        and layout.kind == "tokens"
        and gradient is not None
        and bool((gradient != 0).any())
    ):
        reason = "only the class token(s) reach the logits, not its patch tokens"
    elif not reaches:
        reason = "the logits do not depend on it"
    return LayerInfo(name, kind, shape, calls, order, reaches, reason, layout)


def layer_table(probe: Probe, default: str | None, usable_only: bool = False) -> list[str]:
    """`gradcam layers`: a line per layer, `>` the default and `*` the usable ones, with the
    output's shape, the map it gives and how it was read, or why it cannot be used."""
    shown = [info for info in probe.layers if info.usable or not usable_only]
    width = max([len(info.name) for info in shown] + [24])
    lines = [f"  {'layer':<{width}} {'type':<24} {'output':<16} {'map':<14} notes"]
    for info in shown:
        mark = ">" if info.name == default else ("*" if info.usable else " ")
        output = "×".join(map(str, info.shape[1:])) if info.shape else "-"
        layout = info.map_shape and "×".join(map(str, info.map_shape)) or "-"
        notes = "; ".join(n for n in (info.layout and info.layout.describe(), info.reason) if n)
        line = f"{mark} {info.name:<{width}} {info.kind:<24} {output:<16} {layout:<14} {notes}"
        lines.append(line.rstrip())
    return lines
