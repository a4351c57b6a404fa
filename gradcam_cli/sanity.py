"""`gradcam sanity`: does the map depend on what the model learned?

Model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): the
model's weights are re-initialised stage by stage, from the logits down, and each image's map is
compared with the trained model's. A map that barely changes when the weights it claims to
explain are gone does not explain them (guided backpropagation is the paper's example).

    from gradcam_cli.sanity import sanity_check, write_outputs

    result = sanity_check("demo:shapes", ["a.png", "b.png"], method="gradcam")
    result.passed, result.summary[1].spearman.median    # the 2nd stage from the logits
    write_outputs(result, "runs/sanity", report=True)   # sanity.json, .png, .html

Choices, each documented in docs/sanity.md:

- Stages (`find_stages`): the model's direct children that own parameters, in the order a forward
  pass first calls them; while there are fewer than MIN_STAGES, the largest of them (by
  parameters) that has several such children is replaced by its children. A normalisation layer
  (BatchNorm, LayerNorm, GroupNorm, …) joins the stage called just before it, as TF-slim's
  conv2d scopes hold their batch norm in the paper's Inception v3. Parameters the model holds
  itself (a ViT's cls_token and pos_embed) go with the first stage, the stem.
- Randomising a stage: every module of it that owns parameters calls its own
  `reset_parameters()` (torch's initialisation, as the model was built); BatchNorm's also sets
  its running statistics back to mean 0, variance 1, as the paper's TF initialisers do. A module
  without one has each of its parameters drawn again from a normal distribution with that
  tensor's own mean and standard deviation (the learned structure goes, the scale stays).
  Stage i from the logits (0-based) is drawn under `torch.manual_seed(seed + i)`, in both modes,
  so a stage gets the same random weights in either; the caller's RNG state is untouched.
- Cascading: stage 1 (the head), then stages 1–2, …, down to the stem. Independent: each stage
  alone, the others trained.
- Always on a deep copy: the caller's model is never changed (parameters, buffers, modes, hooks).
- The target: each image's class predicted by the trained model (or `target`), kept for every
  randomised model, so the maps answer the same question.
- Compared at the model's input resolution: each raw map is upsampled (bilinear) to the input
  size, as the paper's Grad-CAM maps are (PAIR saliency's GradCam resizes them); guided
  backpropagation's map is at that size already. Spearman's rank correlation of the two maps
  (ties get their average rank); the maps here are never negative (every method ends in a ReLU
  or a magnitude), so the paper's rank correlations with and without absolute values are the
  same number. SSIM (Wang et al. 2004) of the maps min-max scaled to [0, 1] (data range 1),
  Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03: scikit-image's `structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.
- A map that is constant has no ranking: an image whose trained map is constant is left out of
  the figures (null in the JSON); a randomised map that became constant (all zero after the
  ReLU) kept nothing of the original's ranking: its Spearman is 0.
- The verdict: the method passes when the median Spearman over the images is below `threshold`
  (default 0.5) at `by_stage` (default the 2nd stage from the logits: once the head and the last
  stage are randomised).

torch is imported inside the functions that need it; the measures (`mapstats`) are NumPy alone.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UsageError, did_you_mean
from .mapstats import gaussian_window, spearman, ssim, unit_range
from .sanityresult import ImageSanity, SanityResult, Stage

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .explainer import Explainer, ImageInput
    from .preprocess import Preprocess
    from .sources import LoadedModel

__all__ = [
    "MODES",
    "SANITY_NAME",
    "DEFAULT_THRESHOLD",
    "DEFAULT_BY_STAGE",
    "MIN_STAGES",
    "find_stages",
    "randomize_stage",
    "sanity_check",
    "write_outputs",
    "run_sanity",
    "check_mode",
    "check_threshold",
]

MODES = ("cascading", "independent")
SANITY_NAME = "sanity.json"
DEFAULT_THRESHOLD = 0.5
DEFAULT_BY_STAGE = 2  # the head and the last stage randomised
MIN_STAGES = 4  # fewer top-level stages than this: the largest is split into its children
THUMBNAILS_KEPT = 48  # images whose map thumbnails are kept for the page
THUMBNAIL_SIDE = 64

# Layers that normalise the output of the layer before them: they join its stage.
_NORM_TYPES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "LocalResponse")


# -- the measures (mapstats.py) -------------------------------------------------------------------


def _compare(original: np.ndarray, randomized: np.ndarray) -> tuple[float | None, float | None]:
    """(Spearman, SSIM) of two maps at the input resolution; (None, None) when the original is
    constant, Spearman 0 when only the randomised one is; SSIM None for an input smaller than
    its window (--input-size below 11)."""
    if np.ptp(original) == 0:
        return None, None
    rho = spearman(original, randomized)
    similarity = None
    if min(original.shape) >= gaussian_window().size:
        similarity = ssim(unit_range(original), unit_range(randomized))
    return (0.0 if math.isnan(rho) else rho), similarity


# -- stages -------------------------------------------------------------------------------------


def find_stages(model: nn.Module, probe_input: torch.Tensor) -> list[Stage]:
    """The model's stages in forward order, stem first (see the module's docstring): direct
    children that own parameters, ordered by their first call on `probe_input`; the largest
    split into its own children while there are fewer than MIN_STAGES; a normalisation layer
    joined to the stage before it. Modules never called are left out (they cannot change the
    map). The forward runs without gradients in the model's current mode."""
    order = _first_calls(model, probe_input)
    modules = dict(model.named_modules())

    def children(path: str) -> list[str]:
        prefix = f"{path}." if path else ""
        found = [
            f"{prefix}{name}"
            for name, child in modules[path].named_children()
            if f"{prefix}{name}" in order and _owns_parameters(child)
        ]
        return sorted(found, key=order.__getitem__)

    units = children("")
    while len(_grouped(units, modules)) < MIN_STAGES:
        splittable = [u for u in units if len(children(u)) > 1]
        if not splittable:
            break
        largest = max(splittable, key=lambda u: _count(modules[u]))
        at = units.index(largest)
        units[at : at + 1] = children(largest)
    if not units:
        raise UsageError(
            "the model has no parameters that a forward pass uses: there is nothing to randomise"
        )
    groups = _grouped(units, modules)
    own = sum(p.numel() for p in model.parameters(recurse=False))
    stages = [Stage("+".join(g), tuple(g), sum(_count(modules[p]) for p in g)) for g in groups]
    if own:  # a ViT's cls_token, pos_embed: randomised with the stem
        stem = stages[0]
        stages[0] = replace(stem, modules=("", *stem.modules), parameters=stem.parameters + own)
    return stages


def _first_calls(model: nn.Module, probe_input: torch.Tensor) -> dict[str, int]:
    """Dotted path → the rank of its first call in one forward of `probe_input`."""
    import torch

    from .modelstate import removing

    order: dict[str, int] = {}

    def hook(name: str):
        def record(module, args) -> None:
            order.setdefault(name, len(order))

        return record

    handles: list = []
    with removing(handles), torch.no_grad():
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(hook(name)))
        model(probe_input)
    return order


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_norm(module: nn.Module) -> bool:
    return any(kind in type(module).__name__ for kind in _NORM_TYPES)


def _grouped(units: list[str], modules: dict[str, nn.Module]) -> list[list[str]]:
    """Units in call order, each normalisation layer joined to the unit before it."""
    groups: list[list[str]] = []
    for unit in units:
        if groups and _is_norm(modules[unit]):
            groups[-1].append(unit)
        else:
            groups.append([unit])
    return groups


def _stage_tensors(model: nn.Module, stage: Stage) -> Iterator[torch.Tensor]:
    """Every parameter and buffer a stage's randomisation may change (each once)."""
    modules = dict(model.named_modules())
    seen: set[int] = set()
    for path in stage.modules:
        module = modules[path]
        tensors = (
            itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))
            if path == ""  # the model's own parameters, not all of it
            else itertools.chain(module.parameters(), module.buffers())
        )
        for tensor in tensors:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                yield tensor


def randomize_stage(model: nn.Module, stage: Stage, seed: int) -> None:
    """Re-initialise `stage` of `model` in place (see the module's docstring), under
    `torch.manual_seed(seed)`; the process's RNG state is restored afterwards."""
    import torch

    modules = dict(model.named_modules())
    owners = []
    for path in stage.modules:
        top = modules[path]
        owners += [top] if path == "" else list(top.modules())
    devices = sorted(
        {t.device.index or 0 for t in _stage_tensors(model, stage) if t.device.type == "cuda"}
    )
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for module in dict.fromkeys(owners):  # each once, in order
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and module is not model:
                reset()
            else:
                for parameter in own:
                    _redraw(parameter)


def _redraw(parameter: torch.Tensor) -> None:
    """A normal draw with the tensor's own mean and standard deviation."""
    import torch

    values = parameter.detach().float()
    std = float(values.std()) if values.numel() > 1 else 0.0
    fresh = torch.randn(parameter.shape, device=parameter.device) * std + float(values.mean())
    parameter.copy_(fresh.to(parameter.dtype))


@contextmanager
def _restored(model: nn.Module, stage: Stage) -> Iterator[None]:
    """Put the stage's parameters and buffers back as they were on leaving (independent mode)."""
    import torch

    tensors = list(_stage_tensors(model, stage))
    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, value in zip(tensors, saved, strict=True):
                tensor.copy_(value)


# -- options -------------------------------------------------------------------------------------


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(
            f"unknown mode='{mode}'; use {' or '.join(MODES)}." + did_you_mean(str(mode), MODES)
        )
    return mode


def check_threshold(threshold: float) -> float:
    if not (isinstance(threshold, int | float) and -1.0 < threshold <= 1.0):
        raise UsageError(
            f"threshold={threshold} is not a rank correlation to fall below; give a number "
            "in (-1, 1], such as 0.5"
        )
    return float(threshold)


def _stage_position(by_stage: int | str, stages: Sequence[Stage]) -> int:
    """`by_stage` (1-based from the logits, or a stage's name) → a 0-based index from the
    logits."""
    names = [stage.name for stage in reversed(stages)]  # from the logits down
    text = str(by_stage).strip()
    if text.lstrip("-").isdigit():
        number = int(text)
        if not 1 <= number <= len(names):
            raise UsageError(
                f"by_stage={number} is not a stage: the model has {len(names)}, numbered from "
                f"the logits (1 = '{names[0]}' … {len(names)} = '{names[-1]}')"
            )
        return number - 1
    for i, stage in enumerate(reversed(stages)):
        if text == stage.name or text in stage.modules:
            return i
    raise UsageError(
        f"by_stage='{text}' names no stage of the model; give a number from the logits "
        f"(1–{len(names)}) or one of: {', '.join(names)}." + did_you_mean(text, names)
    )


# -- the check -----------------------------------------------------------------------------------


Progress = Callable[[int, int], None]


def sanity_check(
    model: nn.Module | LoadedModel | str,
    images: ImageInput | Sequence[ImageInput],
    *,
    method: str = "gradcam",
    layer: str | nn.Module | None = None,
    mode: str = "cascading",
    target: int | str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    by_stage: int | str = DEFAULT_BY_STAGE,
    seed: int = 0,
    batch_size: int | str = "auto",
    device: str | torch.device | None = None,
    preprocess: Preprocess | None = None,
    labels: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> SanityResult:
    """Randomise the model's stages from the logits down and measure how much each image's map
    changes (module docstring; docs/sanity.md).

    `model`, `layer`, `method`, `device`, `preprocess`, `labels`: as `Explainer` takes them
    (`layer` None: the automatic choice). `images`: paths, PIL images or H×W×3 uint8 arrays
    (one or a sequence); an image that cannot be read is skipped and listed in `skipped`.
    `target`: the class to explain on every image (index or label); default each image's class
    predicted by the trained model.
    `mode`: 'cascading' or 'independent'. `threshold`, `by_stage` (1-based from the logits, or
    a stage's name): the pass rule. `batch_size`: images per pass, or 'auto' (sized as
    `gradcam explain` sizes it). `progress(done, total)`: after each batch of images.
    The caller's model is never changed: everything runs on a deep copy.
    """
    check = _Check(
        model,
        method=method,
        layer=layer,
        mode=mode,
        target=target,
        threshold=threshold,
        by_stage=by_stage,
        seed=seed,
        batch_size=batch_size,
        device=device,
        preprocess=preprocess,
        labels=labels,
    )
    return check.run(images, progress)


class _Check:
    """A sanity check made ready: every option checked, the model copied, its stages found, so
    that a bad value fails before any image (and before `run_sanity` takes the folder)."""

    def __init__(
        self,
        model: nn.Module | LoadedModel | str,
        *,
        method: str = "gradcam",
        layer: str | nn.Module | None = None,
        mode: str = "cascading",
        target: int | str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        by_stage: int | str = DEFAULT_BY_STAGE,
        seed: int = 0,
        batch_size: int | str = "auto",
        device: str | torch.device | None = None,
        preprocess: Preprocess | None = None,
        labels: Sequence[str] | None = None,
    ):
        from .batchsize import parse_batch_size
        from .sources import as_loaded_model

        self.started = time.perf_counter()
        self.mode = check_mode(mode)
        self.threshold = check_threshold(threshold)
        self.seed = seed
        self.batch_size = parse_batch_size(batch_size)
        self.loaded = as_loaded_model(model, preprocess=preprocess, labels=labels)
        self.explainer = _explainer(_working_copy(self.loaded, device), layer, method)
        self.stages = list(reversed(_stages_of(self.explainer)))  # from the logits down
        self.by_stage = _stage_position(by_stage, list(reversed(self.stages)))
        self.target = self.explainer.resolve_targets([target])[0] if target is not None else None

    def run(self, images, progress: Progress | None = None) -> SanityResult:
        """Measure every image (module docstring); unreadable ones are listed in `skipped`."""
        from .batchsize import choose_batch_size
        from .errors import ImageReadError
        from .explainer import _as_photo, _is_one_image, _source_of

        images = [images] if _is_one_image(images) else list(images)
        if not images:
            raise UsageError("images= is empty: give at least one image")
        explainer = self.explainer
        batch_size = choose_batch_size(
            self.batch_size, explainer.probe.activation_bytes, len(images), explainer.device
        )
        measure = _Measure(explainer, self.loaded.model, self.stages, self.mode, self.seed)
        records: list[ImageSanity] = []
        skipped: list[tuple[str, str]] = []
        done = 0
        if progress is not None:
            progress(0, len(images))
        for chunk in _chunks(images, batch_size):
            photos, sources = [], []
            for number, image in enumerate(chunk, start=done):
                source = _source_of(image) or f"image {number}"
                try:
                    photos.append(_as_photo(image))
                except ImageReadError as exc:  # one unreadable file: listed, the rest measured
                    skipped.append((source, str(exc).removeprefix(f"cannot read {source}: ")))
                    continue
                sources.append(source)
            if photos:
                keep = max(0, THUMBNAILS_KEPT - len(records))
                records += measure.batch(photos, sources, self.target, keep)
            done += len(chunk)
            if progress is not None:
                progress(done, len(images))
        if not records:
            reasons = "; ".join(f"{source}: {why}" for source, why in skipped[:3])
            raise UsageError(f"no image could be read ({reasons})")
        height, width = self.loaded.preprocess.input_size
        return SanityResult(
            model=self.loaded.describe(),
            method=explainer.method.name,
            layer="+".join(str(ref) for ref in explainer.layers),  # refinecam's: several
            mode=self.mode,
            seed=self.seed,
            input_size=(height, width),
            stages=tuple(self.stages),
            images=tuple(records),
            threshold=self.threshold,
            by_stage=self.by_stage,
            skipped=tuple(skipped),
            seconds=time.perf_counter() - self.started,
            device=str(explainer.device),
        )


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _working_copy(loaded: LoadedModel, device) -> LoadedModel:
    """A deep copy of the model, on `device`, in eval mode: the one every step changes."""
    from .explainer import _device_for

    target = _device_for(loaded.model, device)
    work = copy.deepcopy(loaded.model).to(target).eval()
    for parameter in work.parameters():
        parameter.requires_grad_(False)
    return replace(loaded, model=work)


def _explainer(work: LoadedModel, layer, method: str) -> Explainer:
    from .explainer import Explainer
    from .methods import METHODS

    several = isinstance(layer, str) and "," in layer or isinstance(layer, list | tuple)
    combines = getattr(METHODS.get(method), "combines_layers", False)  # one map from several
    if several and not combines:
        raise UsageError(
            f"layer={layer!r}: the sanity check compares one map per image; give one layer"
        )
    if work.task != "classification":  # a randomised detector's detections are other ones
        raise UsageError(
            f"the sanity check compares a class's maps as the weights are randomised; "
            f"{work.title} is a {work.task} model, whose targets (regions, detections) would "
            "change with them: not supported yet"
        )
    return Explainer(work, layer, method=method)


def _stages_of(explainer: Explainer) -> list[Stage]:
    import torch

    h, w = explainer.loaded.preprocess.input_size
    probe = torch.zeros(1, 3, h, w, device=explainer.device)
    return find_stages(explainer.model, probe)


class _Measure:
    """One batch of photos through the trained model and every randomised one."""

    def __init__(
        self,
        explainer: Explainer,
        trained: nn.Module,
        stages: Sequence[Stage],
        mode: str,
        seed: int,
    ):
        from .engine import _layer_refs, _Settings
        from .tasks import TargetRequest

        self.explainer, self.stages, self.mode, self.seed = explainer, stages, mode, seed
        model = explainer.model
        self.settings = _Settings(
            explainer.method,
            _layer_refs(model, explainer.layers),
            explainer.probe.outputs_probabilities,
            False,
            explainer.task,
            TargetRequest(),  # each image's top class, unless targets are given
        )
        # The caller's weights, read (never written) to start each batch's cascade from: no
        # third copy of the model.
        self.trained = trained.state_dict()

    def batch(
        self, photos: list, sources: list[str], fixed: int | None, thumbnails: int
    ) -> list[ImageSanity]:
        import torch

        explainer = self.explainer
        arrays = [explainer.loaded.preprocess.to_array(photo) for photo in photos]
        x = torch.from_numpy(np.stack(arrays)).to(explainer.device)
        self._reset()
        targets, original = self._maps(x, None if fixed is None else fixed)
        randomized = []
        for i, stage in enumerate(self.stages):
            if self.mode == "cascading":
                randomize_stage(explainer.model, stage, self.seed + i)
                randomized.append(self._maps(x, targets)[1])
            else:
                with _restored(explainer.model, stage):
                    randomize_stage(explainer.model, stage, self.seed + i)
                    randomized.append(self._maps(x, targets)[1])
        records = []
        for b, source in enumerate(sources):
            pairs = [_compare(original[b], maps[b]) for maps in randomized]
            index = int(targets[b, 0])
            keep = b < thumbnails
            records.append(
                ImageSanity(
                    input=source,
                    target=index,
                    label=explainer.label(index),
                    spearman=tuple(p[0] for p in pairs),
                    ssim=tuple(p[1] for p in pairs),
                    thumbnails=(
                        tuple(_thumbnail(m[b]) for m in [original, *randomized]) if keep else ()
                    ),
                    picture=_picture(arrays[b], explainer.loaded.preprocess) if keep else None,
                )
            )
        return records

    def _reset(self) -> None:
        """The trained weights back (a cascade leaves the model randomised)."""
        import torch

        with torch.no_grad():
            for key, value in self.explainer.model.state_dict().items():
                value.copy_(self.trained[key])

    def _maps(self, x: torch.Tensor, targets) -> tuple[torch.Tensor, np.ndarray]:
        """(targets [B, 1], maps [B, H, W] float64 at the input resolution)."""
        import torch
        import torch.nn.functional as F

        from .engine import _explain_view
        from .modelstate import frozen_eval

        model = self.explainer.model
        if isinstance(targets, int):
            targets = torch.full((x.shape[0], 1), targets, device=x.device, dtype=torch.long)
        with frozen_eval(model), torch.enable_grad():
            view = _explain_view(model, x, self.settings, targets)
        maps = next(iter(view.maps.values()))[:, 0].detach().float()  # [B, h, w]
        size = tuple(x.shape[2:])
        if tuple(maps.shape[1:]) != size:
            maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)
            maps = maps[:, 0]
        return view.targets, maps.cpu().double().numpy()


def _thumbnail(values: np.ndarray) -> np.ndarray:
    from PIL import Image

    scaled = Image.fromarray((unit_range(values) * 255).round().astype(np.uint8), "L")
    return np.asarray(scaled.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR))


def _picture(array: np.ndarray, preprocess) -> np.ndarray:
    """The model's input as a picture (normalisation undone), THUMBNAIL_SIDE a side."""
    from PIL import Image

    mean = np.asarray(preprocess.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(preprocess.std, dtype=np.float32)[:, None, None]
    pixels = np.clip((array * std + mean) * 255, 0, 255).round().astype(np.uint8)
    picture = Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
    return np.asarray(picture.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS))


# -- files ---------------------------------------------------------------------------------------


def write_outputs(
    result: SanityResult, out: str | os.PathLike = "gradcam_sanity", *, report: bool = False
) -> dict[str, Path]:
    """Write `out`/sanity.json and the figure `out`/sanity.png (and with `report` the page
    `out`/sanity.html), atomically, holding `out`'s lock; returns their paths by kind."""
    from .outlock import output_lock

    with output_lock(Path(out)):
        return _write_files(result, Path(out), report)


def _write_files(result: SanityResult, out: Path, report: bool) -> dict[str, Path]:
    """The files, the JSON last (a reader that finds it finds the figure too); the caller
    holds `out`'s lock."""
    import json

    from .files import resolve_inside, write_bytes_atomic, write_text_atomic
    from .pages.sanity import FIGURE_NAME, PAGE_NAME, draw_figure, render_page
    from .pngwrite import png_bytes

    document = result.to_dict()
    document["figure"] = FIGURE_NAME
    document["page"] = PAGE_NAME if report else None
    paths = {"json": out / SANITY_NAME, "figure": out / FIGURE_NAME}
    figure = png_bytes(draw_figure(result), smooth=True)
    write_bytes_atomic(resolve_inside(out, FIGURE_NAME), figure)
    if report:
        paths["page"] = out / PAGE_NAME
        write_text_atomic(resolve_inside(out, PAGE_NAME), render_page(result, FIGURE_NAME))
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    write_text_atomic(resolve_inside(out, SANITY_NAME), text)
    return paths


def run_sanity(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    model: str | LoadedModel | nn.Module,
    *,
    out: str | os.PathLike = "gradcam_sanity",
    report: bool = False,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    labels_file: str | os.PathLike | None = None,
    input_size: int | None = None,
    resize: str | None = None,
    stdin=None,
    on_note: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    **options,
) -> tuple[SanityResult, dict[str, Path]]:
    """What `gradcam sanity` does, as one call: find the images (files, folders, globs, '-' for
    paths on `stdin`, as `gradcam explain` finds them), load the model when it is named by a
    string (with the keywords of `load_model`), check with `options` as `sanity_check` takes
    them, and write the files as `write_outputs` does, holding `out`'s lock for the whole run.
    Inputs that cannot be found or read are listed in `result.skipped`. Every check that can
    fail is made before the model is loaded or before any image, and nothing is written then.
    `on_note(line)` hears the inputs skipped inside `out` and the layer chosen automatically."""
    from .folderrun import ModelOptions, find_run_inputs
    from .outlock import output_lock

    building = ModelOptions(pretrained, weights, num_classes, labels_file, input_size, resize)
    building.refuse_for_built(model)
    check_mode(options.get("mode", "cascading"))
    check_threshold(options.get("threshold", DEFAULT_THRESHOLD))
    run_inputs = find_run_inputs(inputs, out, stdin, on_note)
    out, found, missing = run_inputs.out, run_inputs.found, run_inputs.missing
    model = building.load(model)
    check = _Check(model, **options)
    if on_note is not None and check.explainer.layer_chosen_automatically:
        layer = check.explainer.layers[0]
        on_note(f"no layer= given: using '{layer}' (the last spatial layer the logits depend on)")
    with output_lock(out):
        result = check.run(found, progress)
        result = replace(result, skipped=missing + result.skipped)
        return result, _write_files(result, out, report)
