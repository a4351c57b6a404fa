"""A batch job: what `gradcam explain` does, as one library call.

    from gradcam_cli.job import run_job

    report = run_job(["photos/"], "demo:shapes", out="runs/demo", topk=2)
    report.errors, report.results[0].explanations[0].overlay   # a path under runs/demo

`JobOptions` holds every choice of the job and checks each one when it is made, so a bad value
fails the same way from Python and from the shell, before anything heavy runs. `prepare_job`
does the checks that touch the disk (the output folder, its lock, the masks), finds the inputs
and loads the model, in that order: nothing heavy before a cheap check can fail, and nothing is
written until the job runs (`Job.run` takes `out`'s lock and makes the folder).

torch is imported only when a model is loaded: importing this module stays light.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from .batchsize import choose_batch_size, parse_batch_size
from .errors import UsageError
from .inputs import MISSING, InputItem, collect_inputs, parse_shard, select_shard
from .localization import Gate, MaskSource
from .timing import RunStatus

if TYPE_CHECKING:
    from torch import nn

    from .explainer import Explainer
    from .explanation import RenderOptions
    from .faithfulness import GateRule, MetricSettings
    from .faithrun import MetricOptions
    from .outputs import RunOptions
    from .report import Report
    from .sources import LoadedModel

__all__ = ["JobOptions", "Job", "RunStatus", "prepare_job", "run_job"]

Note = Callable[[str], None]
Progress = Callable[[int, int], None]
OnStatus = Callable[[RunStatus], None]

# JobOptions fields that say how to build a model named by a string (see load_model).
_MODEL_BUILDING = ("weights", "num_classes", "labels", "input_size", "mean", "std", "resize")


@dataclass(frozen=True)
class JobOptions:
    """Every choice of a batch job but its inputs and model, checked when made (UsageError).

    The names follow `gradcam explain`'s options; the defaults are the CLI's. After checking,
    `workers` is a count, `shard` a (K, N) pair or None, and the paths are Paths.
    """

    out: Path = Path("gradcam_out")
    # The model, when it is named by a string (load_model).
    pretrained: bool = True
    weights: Path | None = None
    num_classes: int | None = None
    labels: Path | None = None  # class names, one per line
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    resize: str | None = None  # crop, squash or pad; None: the model's own convention
    # The explainer.
    layers: str | Sequence[str] | None = None  # None: chosen automatically
    method: str = "gradcam"
    aug_smooth: bool = False
    eigen_smooth: bool = False
    # The method's own options (methods.MethodOption), None where not given.
    k_sigma: float | None = None
    kernel: str | None = None
    kernel_gamma: float | None = None
    seed: int | None = None
    comparisons: int | None = None
    comparison_strength: float | None = None
    comparison_weights: str | None = None
    objective: str | None = None
    samples: int | None = None
    noise_std: float | None = None
    scales: int | None = None
    scale_step: float | None = None
    window_stride: float | None = None
    keep_patches: float | None = None
    fusion: str | None = None
    base_method: str | None = None
    head_fusion: str | None = None
    device: str = "auto"
    amp: str | None = None
    # What to explain: these classes (indices or labels), or each image's top-k.
    targets: Sequence[str | int] = ()
    topk: int = 1
    # What the model does (tasks/): None, what it is known to be, else classification; a
    # detector's detections kept from this score (0–1); a segmentation target's pixels (a mask
    # in the photo's frame) instead of those predicted as the class.
    task: str | None = None
    min_score: float | None = None
    region: Path | None = None
    # The pictures and files written.
    colormap: str = "jet"
    alpha: float = 0.5
    interpolation: str = "bilinear"
    normalize: str = "minmax"
    overlay_format: str = "png"
    heatmap: bool = True
    save_raw: bool = False
    panel: bool = False
    report_page: bool = False  # OUT/index.html
    # Localization against true masks, and the gate a CI job fails on.
    mask: Path | None = None
    min_energy: float | None = None
    require_hit: bool = False
    # Faithfulness (faithfulness.py): metrics and group names (deletion, insertion, drop, road,
    # all), baselines measured beside each map, their protocol, and gates over the metrics and
    # the localization figures ("insertion_auc>=0.4").
    metrics: str | Sequence[str] = ()
    baselines: str | Sequence[str] = ()
    metric_settings: MetricSettings | None = None  # None: the peers' defaults
    gates: str | Sequence[str] = ()
    # A run to compare this one with afterwards (`compare.compare_runs`; `gradcam explain
    # --baseline`): checked before the run, and it implies save_raw.
    baseline: Path | None = None
    # Running.
    batch_size: int | str = "auto"  # "auto": batchsize.py picks it from the model and memory
    workers: int | str = "auto"
    decode: str = "auto"  # JPEGs decoded on the model's device, by Pillow ("cpu"), or auto
    shard: tuple[int, int] | str | None = None  # "K/N" or (K, N)
    resume: bool = False

    def __post_init__(self) -> None:
        self._normalize()
        self._check()

    def _normalize(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put("out", Path(self.out))
        for name in ("weights", "labels", "mask", "baseline"):
            if getattr(self, name) is not None:
                put(name, Path(getattr(self, name)))
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                put(name, tuple(getattr(self, name)))
        if self.layers is not None and not isinstance(self.layers, str):
            put("layers", tuple(self.layers))
        for name in ("metrics", "baselines", "gates"):  # "a,b" or ["a", "b"]
            put(name, _listed(getattr(self, name), split=name != "gates"))
        if isinstance(self.targets, str | int):
            put("targets", (self.targets,))
        put("targets", tuple(self.targets or ()))

    def _check(self) -> None:
        """The checks of `gradcam explain`, in its order; the messages name its options."""
        from .files import check_image_format
        from .methods import check_method_options
        from .pipeline import check_decode, parse_workers
        from .preprocess import check_resize
        from .render import check_alpha, check_interpolation, check_normalization, colormap_lut
        from .sources import check_input_size, check_num_classes

        check_method_options(self.method, eigen_smooth=self.eigen_smooth, **self.method_settings)
        check_interpolation(self.interpolation)
        check_normalization(self.normalize)
        colormap_lut(self.colormap)
        check_alpha(self.alpha)
        check_image_format(self.overlay_format)
        if self.topk < 1:
            raise UsageError(f"topk= must be at least 1, got {self.topk}")
        check_input_size(self.input_size)
        check_resize(self.resize)
        if self.task is not None:
            from .tasks import get_task

            object.__setattr__(self, "task", get_task(self.task).name)
        if self.targets and self.topk != 1 and self.task != "detection":
            raise UsageError(
                "targets= and topk= exclude each other: name classes or ask for top-k (a "
                "detector takes both, its top-k detections of those classes: add "
                "task='detection')"
            )
        if self.min_score is not None:
            from .tasks.detection import check_min_score

            check_min_score(self.min_score)
        if self.region is not None:
            object.__setattr__(self, "region", Path(self.region))
        check_num_classes(self.num_classes)
        if self.shard is not None:
            shard = self.shard if isinstance(self.shard, str) else "/".join(map(str, self.shard))
            object.__setattr__(self, "shard", parse_shard(shard))
        object.__setattr__(self, "workers", parse_workers(str(self.workers)))
        object.__setattr__(self, "batch_size", parse_batch_size(self.batch_size))
        check_decode(self.decode)
        self._check_faithfulness()
        if self.gate.active and self.mask is None:
            raise UsageError(
                "min_energy= and require_hit=True measure against a mask: add mask=PATH"
            )

    def _check_faithfulness(self) -> None:
        from .faithfulness import check_baselines, check_gates, check_metrics, parse_gate

        if self.metrics:
            object.__setattr__(self, "metrics", check_metrics(self.metrics))
        if self.baselines:
            if not self.metrics:
                raise UsageError("baselines= are measured with the metrics: add metrics=...")
            object.__setattr__(self, "baselines", check_baselines(self.baselines))
        if self.metric_settings is not None and not self.metrics:
            raise UsageError("metric_settings= apply to the metrics: add metrics=...")
        rules = tuple(parse_gate(text) for text in self.gates)
        check_gates(rules, self.metrics, has_mask=self.mask is not None)
        object.__setattr__(self, "gates", rules)

    @property
    def metric_options(self) -> MetricOptions | None:
        """`metrics` and what goes with them, for the runner; None without metrics."""
        if not self.metrics:
            return None
        from .faithfulness import MetricSettings
        from .faithrun import MetricOptions

        settings = self.metric_settings or MetricSettings()
        return MetricOptions(tuple(self.metrics), tuple(self.baselines), settings)

    @property
    def method_settings(self) -> dict[str, object]:
        """The method's own options that were given (the others keep their defaults)."""
        given = {
            "k_sigma": self.k_sigma,
            "kernel": self.kernel,
            "kernel_gamma": self.kernel_gamma,
            "seed": self.seed,
            "comparisons": self.comparisons,
            "comparison_strength": self.comparison_strength,
            "comparison_weights": self.comparison_weights,
            "objective": self.objective,
            "samples": self.samples,
            "noise_std": self.noise_std,
            "scales": self.scales,
            "scale_step": self.scale_step,
            "window_stride": self.window_stride,
            "keep_patches": self.keep_patches,
            "fusion": self.fusion,
            "base_method": self.base_method,
            "head_fusion": self.head_fusion,
        }
        return {name: value for name, value in given.items() if value is not None}

    @property
    def share(self) -> tuple[int, int] | None:
        """`shard` once checked: (K, N), or None for the whole run."""
        return cast("tuple[int, int] | None", self.shard)

    @property
    def gate(self) -> Gate:
        return Gate(min_energy=self.min_energy, require_hit=self.require_hit)

    @property
    def render(self) -> RenderOptions:
        from .explanation import RenderOptions

        return RenderOptions(
            colormap=self.colormap,
            alpha=self.alpha,
            interpolation=self.interpolation,
            normalize=self.normalize,
        )

    def run_options(
        self, classes: tuple[int, ...], masks: MaskSource | None, batch_size: int
    ) -> RunOptions:
        """What the runner needs, once the targets, the masks and the batch size are known."""
        from .outputs import RunOptions
        from .pipeline import default_write_threads

        return RunOptions(
            out_dir=self.out,
            classes=classes,
            topk=self.topk,
            min_score=self.min_score,
            region=self.region,
            batch_size=batch_size,
            save_raw=self.save_raw or self.baseline is not None,  # the comparison reads them
            masks=masks,
            gate=self.gate,
            workers=int(self.workers),
            decode=self.decode,
            write_threads=default_write_threads(),
            shard=self.share,
            overlay_format=self.overlay_format,
            heatmap=self.heatmap,
            resume=self.resume,
            panel=self.panel,
            report=self.report_page,
            render=self.render,
            metrics=self.metric_options,
            gates=cast("tuple[GateRule, ...]", self.gates),
        )


@dataclass(frozen=True)
class Job:
    """A checked job, ready to run: its inputs found (this share's), its explainer built."""

    items: tuple[InputItem, ...]
    explainer: Explainer
    options: JobOptions
    run_options: RunOptions

    @property
    def report_path(self) -> Path:
        """Where the JSON report goes: OUT/predictions.json, or the share's report."""
        return self.options.out / self.run_options.report_name

    def run(self, progress: Progress | None = None, *, on_status: OnStatus | None = None) -> Report:
        """Explain every input and write the files and the report under `out` (taking its
        lock); `progress(done, total)` as images are finished (tqdm-style), and/or
        `on_status(RunStatus)`, which adds the errors so far and the seconds since the start.
        A stop (Ctrl-C) ends the run with the report written and `report.interrupted` set."""
        from .runner import run_explain

        return run_explain(
            self.explainer, self.items, self.run_options, progress=progress, on_status=on_status
        )


def prepare_job(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    model: str | LoadedModel | nn.Module,
    options: JobOptions | None = None,
    *,
    on_note: Note | None = None,
    stdin: TextIO | None = None,
    **values: Any,
) -> Job:
    """Check a job and make it ready to run, writing nothing; UsageError (or another
    GradcamError) when it cannot run.

    `inputs`: image files, folders, globs, or "-" for paths read from `stdin` (default
    sys.stdin). `model`: a model spec as for `load_model` ("torchvision:resnet50", "demo:shapes",
    "file.py:Net"), or a model object as `Explainer` takes it (a LoadedModel, an nn.Module).
    `options`, and/or the JobOptions fields as keywords (keywords win). `on_note(line)` hears
    what the user should know before the run: files skipped inside `out` or in another run's
    folder, the layer chosen automatically.
    """
    options = _options(options, values)
    _check_model_options(model, options)
    from .files import check_writable_dir
    from .outlock import check_unlocked

    check_writable_dir(options.out)
    check_unlocked(options.out, options.share)
    masks = MaskSource(options.mask) if options.mask is not None else None
    args = [os.fspath(inputs)] if isinstance(inputs, str | os.PathLike) else inputs
    found = collect_inputs(
        [os.fspath(arg) for arg in args], stdin=stdin, out_dir=options.out, on_skip=on_note
    )
    items = select_shard(found, options.share)
    refuse_when_nothing_exists(items)
    if options.baseline is not None:  # the run to compare with: readable, with raw maps
        from .compare import check_baseline, read_baseline

        baseline = read_baseline(options.baseline, out=options.out, shard=options.share)
    explainer = _explainer(model, options)
    _check_task_options(explainer, options, items)
    classes = tuple(explainer.resolve_targets(list(options.targets)))
    if options.baseline is not None:  # ... and of the method and layers about to run
        check_baseline(baseline, explainer)
    if options.topk > explainer.num_classes and explainer.task.name != "detection":
        raise UsageError(
            f"topk={options.topk} is more than the model's {explainer.num_classes} classes; "
            f"give 1–{explainer.num_classes}"
        )
    if on_note is not None and single_output_default(explainer, options):
        on_note(single_output_note(explainer))
    if explainer.layer_chosen_automatically and on_note is not None:
        on_note(
            f"no layers= given: using '{explainer.layers[0]}' "
            "(the last spatial layer the logits depend on)"
        )
    batch_size = choose_batch_size(
        options.batch_size, explainer.probe.activation_bytes, len(items), explainer.device
    )
    return Job(tuple(items), explainer, options, options.run_options(classes, masks, batch_size))


def run_job(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    model: str | LoadedModel | nn.Module,
    options: JobOptions | None = None,
    *,
    progress: Progress | None = None,
    on_status: OnStatus | None = None,
    on_note: Note | None = None,
    stdin: TextIO | None = None,
    **values: Any,
) -> Report:
    """Do what `gradcam explain` does and return its report: check, find the inputs, load the
    model, explain every input, and write the pictures and OUT/predictions.json.

        report = run_job("photos/", "torchvision:resnet50", out="runs/x", topk=3)

    Arguments as for `prepare_job`; `progress` and `on_status` as for `Job.run`.
    """
    job = prepare_job(inputs, model, options, on_note=on_note, stdin=stdin, **values)
    return job.run(progress=progress, on_status=on_status)


def single_output_default(explainer: Explainer, options: JobOptions) -> bool:
    """A one-output model explaining each image's predicted class (no targets, top-1)."""
    return explainer.probe.num_outputs == 1 and not options.targets and options.topk == 1


def single_output_note(explainer: Explainer) -> str:
    """What a model with one output explains by default, and how to pin its positive class:
    the predicted class flips between images near 0.5 (article 004 always explains the
    positive output)."""
    negative, positive = explainer.label(0), explainer.label(1)
    return (
        f"the model has a single output: class 1 '{positive}' when its probability is above "
        f"0.5, else class 0 '{negative}'; each image's predicted class is "
        f"explained, so the class can change from image to image: to explain '{positive}' "
        "on every image, give targets=1"
    )


def _listed(value: str | Sequence[str], split: bool) -> tuple[str, ...]:
    """A comma-separated string or a sequence → a tuple of non-empty items."""
    items = [value] if isinstance(value, str) else list(value or ())
    if split:
        items = [part for item in items for part in str(item).split(",")]
    return tuple(item.strip() for item in map(str, items) if item.strip())


def refuse_when_nothing_exists(items: Sequence[InputItem]) -> None:
    """Inputs that all do not exist are a mistyped command (UsageError, nothing written), not
    a run whose every image failed."""
    if items and all(item.error == MISSING for item in items):
        shown = ", ".join(f"'{item.source}'" for item in items[:3])
        more = f" and {len(items) - 3} more" if len(items) > 3 else ""
        raise UsageError(f"no such file or directory: {shown}{more}; check the input paths")


def _options(options: JobOptions | None, values: dict[str, Any]) -> JobOptions:
    if options is None:
        return JobOptions(**values)
    return replace(options, **values) if values else options


def _check_model_options(model: str | LoadedModel | nn.Module, options: JobOptions) -> None:
    """Options that build a model apply to a model named by a string, not to one loaded."""
    if isinstance(model, str):
        return
    defaults = {f.name: f.default for f in fields(JobOptions)}
    given = [name for name in _MODEL_BUILDING if getattr(options, name) != defaults[name]]
    if not options.pretrained:
        given.insert(0, "pretrained")
    if given:
        raise UsageError(
            f"{', '.join(f'{name}=' for name in given)} build a model named by a string, and "
            'this model is built already: name the model instead ("torchvision:resnet50"), '
            "or pass them to load_model() and give its result"
        )


def _explainer(model: str | LoadedModel | nn.Module, options: JobOptions) -> Explainer:
    """Load the model (when named) and build the explainer: the heavy part, done last."""
    from . import sources
    from .explainer import Explainer

    if isinstance(model, str):
        model = sources.load_model(
            model,
            pretrained=options.pretrained,
            weights=options.weights,
            num_classes=options.num_classes,
            labels_file=options.labels,
            input_size=options.input_size,
            mean=options.mean,
            std=options.std,
            resize=options.resize,
            task=options.task,
        )
    return Explainer(
        model,
        options.layers,
        method=options.method,
        device=options.device,
        aug_smooth=options.aug_smooth,
        eigen_smooth=options.eigen_smooth,
        method_settings=options.method_settings,
        amp=options.amp,
        task=options.task,
    )


def _check_task_options(
    explainer: Explainer, options: JobOptions, items: Sequence[InputItem]
) -> None:
    """Options that only some tasks honour, and a region that must fit every photo: refused
    before any image is explained."""
    from .explainer import check_target_options, region_mask
    from .inputs import photo_size

    task = explainer.task.name
    check_target_options(task, options.min_score, options.region)
    if options.metrics and task != "classification":
        raise UsageError(
            f"metrics= perturb the image and re-score a class; a {task} model's targets "
            "(regions, detections) are not measured that way yet: drop metrics="
        )
    if options.region is not None:  # the mask read once per photo size, not once per photo
        sizes = {photo_size(item.path) for item in items if item.path is not None}
        for size in sizes:
            if size is not None:  # unreadable: its decoding says why, as its own error
                region_mask(options.region, size)
