"""Batch mode: inputs → batches → explanations → PNG/NPY files and the JSON report.

Each input gets exactly one result record, in input order. An image that cannot be read, or a
batch the model fails on, becomes an `error` record and the run goes on; a batch that runs out
of memory is split and retried (`oom`). Every file is written atomically (temporary file, then
rename) and only under the output folder; the report is also written now and then while the
run goes on, and `resume` takes a previous run's finished images over.
"""

from __future__ import annotations

import errno
import gc
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .devicedecode import DeviceDecoder, decode_device
from .devicerender import encode_overlays
from .errors import GradcamError, first_line
from .explainer import Explainer, ImageExplanation, RenderOptions
from .faithfulness import GateRule
from .faithrun import Measured, MetricOptions, curves_document, measure_batch, metric_record
from .files import (
    os_reason,
    resolve_inside,
    write_bytes_atomic,
    write_image_atomic,
    write_npy_atomic,
    write_text_atomic,
)
from .inputs import InputItem, output_keys
from .localization import Gate, MaskSource, localization_record, localize, read_mask
from .methods import METHODS
from .oom import BatchSplitter
from .outlock import output_lock
from .pages.run import write_page
from .pages.thumbnails import save_thumbnail
from .panel import Pictures, caption_fields, save_panel
from .pipeline import BoundedWriter, Decoded, decode_batches
from .pngwrite import png_bytes
from .render import colormap_lut, heatmap_palette_image, overlay_image
from .report import (
    REPORT_NAME,
    ExplanationRecord,
    ImageResult,
    Report,
    TargetRef,
    gate_record,
    shard_report_name,
)
from .resume import Checkpoints, Ledger, previous_report, reusable_results
from .signals import stop_requested
from .timing import RunStatus, StageTimes, seconds_writing, writing

__all__ = [
    "RunOptions",
    "run_explain",
    "save_explanations",
    "artifact_stem",
    "REPORT_NAME",
    "shard_report_name",
]

ZERO_MAP_WARNING = "the map is all zero: no positive evidence for this class at this layer"
NONFINITE_MAP_WARNING = (
    "the map had NaN or infinite values (from the model's gradients at this layer); "
    "they were set to 0"
)
# After a stop signal, how long the images already explained may take to be written before the
# run reports what it has and exits (the rest is redone by --resume).
STOP_GRACE_SECONDS = 5.0
NONFINITE_SCORES = (
    "the model's scores for this image are NaN or infinite, so there is nothing to explain; "
    "check the model and its preprocessing on this input"
)


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    classes: tuple[int, ...] = ()
    topk: int = 1
    batch_size: int = 8
    save_raw: bool = False
    render: RenderOptions = RenderOptions()
    masks: MaskSource | None = None  # --mask: measure each map against a true mask
    gate: Gate = Gate()  # --min-energy / --require-hit
    workers: int = 0  # decode processes; 0: decode on one thread of this process
    write_threads: int = 1  # threads that render, encode and write the pictures
    overlay_format: str = "png"  # --format: png or jpg
    heatmap: bool = True  # --no-heatmap: overlays only
    shard: tuple[int, int] | None = None  # (K, N) of --shard K/N: names the report
    resume: bool = False  # --resume: take over the finished images of the report in out_dir
    panel: bool = False  # --panel: one figure per explanation (panel.py)
    report: bool = False  # --report: thumbnails, then OUT/index.html (pages/run.py)
    decode: str = "auto"  # --decode: JPEGs on the model's device (devicedecode), cpu, or auto
    metrics: MetricOptions | None = None  # --metrics/--baselines: faithfulness (faithrun.py)
    gates: tuple[GateRule, ...] = ()  # --gate: rules over the metrics and the localization

    @property
    def report_name(self) -> str:
        return shard_report_name(self.shard)


def _slug(text: str, limit: int = 32) -> str:
    slug = re.sub(r"[^\w.@-]+", "_", text, flags=re.UNICODE).strip("_.")
    return (slug[:limit].rstrip("_.") or "x").lstrip("-") or "x"


def artifact_stem(key: str, target_index: int, target_label: str, layer: str) -> str:
    """`cats/tom` + 281 'tabby, tabby cat' + layer4 → `cats/tom.281-tabby_tabby_cat.layer4`."""
    return f"{key}.{target_index}-{_slug(target_label)}.{_slug(layer, 64)}"


def run_explain(
    explainer: Explainer,
    items: Sequence[InputItem],
    options: RunOptions,
    progress: Callable[[int, int], None] | None = None,
    on_status: Callable[[RunStatus], None] | None = None,
) -> Report:
    """Explain every input, write its pictures, and write OUT/predictions.json (or the
    shard's report). Decoding, the model and writing overlap (`pipeline`); the report's
    `stages` say where the time went (`timing`)."""
    with output_lock(options.out_dir, options.shard):  # one run owns --out (outlock.py)
        return _run_locked(explainer, items, options, progress, on_status)


def _run_locked(
    explainer: Explainer,
    items: Sequence[InputItem],
    options: RunOptions,
    progress: Callable[[int, int], None] | None,
    on_status: Callable[[RunStatus], None] | None = None,
) -> Report:
    start = time.perf_counter()
    stages = StageTimes()
    report = _new_report(explainer, options)
    report_path = resolve_inside(options.out_dir, options.report_name)
    reused = _previous_results(report, items, report_path, options) if options.resume else {}
    ledger = Ledger.start(len(items), reused)
    report.resumed = len(reused)

    def write_report(in_progress: bool = False) -> None:
        report.results = ledger.results()
        report.seconds = time.perf_counter() - start
        report.in_progress = in_progress
        report.batch_size_reduced_to = splitter.limit
        report.stages = stages.record()
        write_text_atomic(report_path, report.to_json())

    checkpoints = Checkpoints(lambda: write_report(in_progress=True))
    errors = 0

    def collect(done: list[ImageResult]) -> None:
        nonlocal errors
        ledger.add(done)
        errors += sum(result.status != "ok" for result in done)
        if done:
            if progress:
                progress(ledger.count, len(items))
            if on_status:
                seconds = time.perf_counter() - start
                on_status(RunStatus(ledger.count, len(items), errors, len(reused), seconds))
            checkpoints.maybe_write()

    todo = [items[index] for index in ledger.todo]
    device = decode_device(options.decode, explainer.device)  # None: Pillow on the CPU
    preprocess = explainer.loaded.preprocess
    batches = decode_batches(
        todo,
        max(1, options.batch_size),
        preprocess,
        options.workers,
        device_decoder=None if device is None else _timed_device_decoder(device, stages),
    )
    splitter = _splitter(explainer, options)
    # Pictures are saved image by image, so every writer thread has work; at most two batches'
    # worth wait, which bounds the memory their photos hold.
    ahead = max(2 * max(1, options.batch_size), 4 * options.write_threads)
    writer: BoundedWriter[ImageResult] = BoundedWriter(options.write_threads, ahead=ahead)
    try:
        for decoded in _waiting_for(batches, stages, count_decode=device is None):
            with stages.busy_in("model"):
                explained = _explain_batch(splitter, decoded)
            measured = None
            if options.metrics is not None:  # the model again, on perturbed copies
                with stages.busy_in("metrics"):
                    measured = _measure_batch(explainer, decoded, explained, options)
            if device is not None:  # JPEG overlays drawn and encoded there too, on this loop
                with stages.busy_in("render"), stages.waiting_for("output"):
                    explained = encode_overlays(decoded, explained, options)
            for job in _save_jobs(decoded, explained, options, measured):
                with stages.waiting_for("output"):  # at once, while the writer keeps up
                    done = writer.submit(_timed_save, stages, *job)
                collect(done)
        with stages.waiting_for("output"):
            done = writer.drain()
        collect(done)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one (signals.py)
        report.interrupted = True  # what was done is reported; the CLI exits 130 (143)
        try:  # the images already explained are a few writes from done: finish them, unless
            # a write is stuck (a hung file system): a stop must end in bounded time
            collect(writer.drain_within(STOP_GRACE_SECONDS))
        except KeyboardInterrupt:  # a second Ctrl-C: keep only what is written
            collect(_finished_in_order(writer))
    finally:
        batches.close()
        writer.close(cancel=report.interrupted)
    try:
        write_report()
    except OSError as exc:  # disk full: the pictures written stay; say the report is missing
        report.write_error = f"cannot write the report {report_path}: {os_reason(exc)}"
    if options.report and options.shard is None:  # a share's page would show a share only
        write_page(options.out_dir, report.to_dict())
    return report


def _waiting_for(batches, stages: StageTimes, count_decode: bool):
    """The decoded batches, counting what the model's loop waits for them (but the first:
    nothing runs before it, however many workers decode) and, with `count_decode`, their
    decode seconds as measured where they were decoded."""
    first = True
    iterator = iter(batches)
    while True:
        clock = time.perf_counter()
        try:
            decoded = next(iterator)
        except StopIteration:
            return
        if not first:
            stages.wait("decode", time.perf_counter() - clock)
        first = False
        if count_decode:
            stages.add("decode", sum(d.seconds for d in decoded))
        yield decoded


def _timed_device_decoder(device, stages: StageTimes):
    """DeviceDecoder for `device`, its calls counted as decode time (the seconds of the decode
    thread: files read, the device's decode and preprocessing, the CPU fallbacks it waits for)."""

    def start(pool):
        decode = DeviceDecoder(device, pool)

        def timed(items, preprocess):
            with stages.busy_in("decode"):
                return decode(items, preprocess)

        return timed

    return start


def _timed_save(stages: StageTimes, save, *args):
    """A writer job, its seconds split into writing (encoding and saving the files, counted by
    `timing.writing`) and rendering (the rest: drawing the pictures, panels, thumbnails)."""
    clock, written = time.perf_counter(), seconds_writing()
    try:
        return save(*args)
    finally:
        write = seconds_writing() - written
        stages.add("write", write)
        stages.add("render", max(0.0, time.perf_counter() - clock - write))


def _new_report(explainer: Explainer, options: RunOptions) -> Report:
    return Report(
        model=explainer.loaded.describe(),
        method=explainer.method.name,
        layers=[str(ref) for ref in explainer.layers],
        device=str(explainer.device),
        out=str(options.out_dir),
        preprocess=explainer.loaded.preprocess.describe(),
        options=_options_record(options),
        method_options=_method_options(explainer),
        measures_localization=options.masks is not None,
        measures_faithfulness=options.metrics is not None,
        gate_rules=[str(rule) for rule in options.gates],
    )


def save_explanations(
    explainer: Explainer, explanations: Sequence[ImageExplanation], options: RunOptions
) -> Report:
    """Write what `gradcam explain` writes for explanations already made in Python: their
    pictures and OUT/predictions.json (and the page with options.report), under --out's lock.
    Keys come from the files the images were read from ('image' for arrays and PIL images)."""
    start = time.perf_counter()
    names = [e.source or "image" for e in explanations]
    items = [
        InputItem(source=name, path=None, key=key)
        for name, key in zip(names, output_keys(names), strict=True)
    ]
    with output_lock(options.out_dir, options.shard):
        report = _new_report(explainer, options)
        report.results = [
            _save(item, e, options) for item, e in zip(items, explanations, strict=True)
        ]
        report.seconds = time.perf_counter() - start
        write_text_atomic(resolve_inside(options.out_dir, options.report_name), report.to_json())
        if options.report and options.shard is None:
            write_page(options.out_dir, report.to_dict())
    return report


def _previous_results(
    report: Report, items: Sequence[InputItem], report_path: Path, options: RunOptions
) -> dict[int, ImageResult]:
    """--resume: the finished results of the report already in --out (none if there is none)."""
    if not report_path.is_file():
        return {}
    previous = previous_report(report_path, report.to_dict())
    return reusable_results(previous, items, options.out_dir)


def _finished_in_order(writer: BoundedWriter) -> list[ImageResult]:
    """After an interrupt: the saves already done, up to the first one that is not."""
    done = []
    while writer.pending and writer.pending[0].done() and not writer.pending[0].cancelled():
        done.append(writer.pending.popleft().result())
    return done


def _options_record(options: RunOptions) -> dict[str, object]:
    render = options.render
    return {
        "classes": list(options.classes),
        "topk": options.topk,
        "batch_size": options.batch_size,
        "save_raw": options.save_raw,
        "colormap": render.colormap,
        "alpha": render.alpha,
        "interpolation": render.interpolation,
        "normalize": render.normalize,
        "mask": str(options.masks.path) if options.masks else None,
        "min_energy": options.gate.min_energy,
        "require_hit": options.gate.require_hit,
        "workers": options.workers,
        "format": options.overlay_format,
        "heatmap": options.heatmap,
        "shard": list(options.shard) if options.shard else None,
        "panel": options.panel,
        "report": options.report,
        "metrics": options.metrics.describe() if options.metrics else None,
        "gate": [str(rule) for rule in options.gates] or None,
    }


def _method_options(explainer: Explainer) -> dict[str, object]:
    return {
        "aug_smooth": explainer.aug_smooth,
        "eigen_smooth": explainer.eigen_smooth,
        "amp": explainer.amp,
    }


def _splitter(explainer: Explainer, options: RunOptions) -> BatchSplitter:
    """Explains decoded inputs in chunks that fit in memory (see `oom`)."""

    def explain(chunk: Sequence[Decoded]) -> list[ImageExplanation]:
        return explainer.explain(
            [d.image for d in chunk],
            arrays=[d.array for d in chunk],
            classes=options.classes or None,
            topk=options.topk,
        )

    def release() -> None:
        gc.collect()
        if explainer.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    return BatchSplitter(explain, release)


def _explain_batch(splitter: BatchSplitter, decoded: list[Decoded]) -> list[ImageExplanation | str]:
    """One outcome per readable input, in order: its explanation, or why it has none."""
    readable = [d for d in decoded if d.error is None]
    if not readable:
        return []
    try:
        return splitter(readable)
    except (RuntimeError, GradcamError) as exc:  # the model fails: these inputs fail
        reason = first_line(exc)
    except KeyboardInterrupt as exc:
        if stop_requested():  # Ctrl-C or SIGTERM: the run stops
            raise
        reason = f"{type(exc).__name__} raised by the model's code"  # `raise KeyboardInterrupt`
    except SystemExit as exc:  # a forward that calls sys.exit() must not end the run
        reason = f"the model's code called sys.exit({exc.code!r})"
    except Exception as exc:  # the user's forward may raise anything
        reason = f"{type(exc).__name__}: {first_line(exc)}"
    return [f"the model failed on this batch: {reason}"] * len(readable)


def _save_jobs(
    decoded: list[Decoded],
    explained: list[ImageExplanation | str],
    options: RunOptions,
    measured: list[dict | None] | None = None,
) -> list[tuple]:
    """One writer job per input, in input order: save its pictures (and its metrics, with
    --metrics: `measured`, one per explained outcome), or record its failure."""
    outcomes = iter(zip(explained, measured or [None] * len(explained), strict=True))
    jobs: list[tuple] = []
    for d in decoded:
        outcome, metrics = (d.error, None) if d.error is not None else next(outcomes)
        if isinstance(outcome, str):
            jobs.append((ImageResult.failed, d.item.source, outcome, d.warnings))
        else:
            jobs.append((_save, d.item, outcome, options, d.warnings, metrics))
    return jobs


def _measure_batch(
    explainer: Explainer,
    decoded: list[Decoded],
    explained: list[ImageExplanation | str],
    options: RunOptions,
) -> list[dict | None]:
    """--metrics: each explained image's faithfulness (faithrun), None for the failed ones.
    A failure here fails the batch's images, as the model's own failure would."""
    assert options.metrics is not None
    readable = [d for d in decoded if d.error is None]
    pairs = [(d, e) for d, e in zip(readable, explained, strict=True) if not isinstance(e, str)]
    if not pairs:
        return [None] * len(explained)
    try:
        found = iter(
            measure_batch(
                explainer,
                [d.array for d, _ in pairs],
                [e for _, e in pairs],
                [d.item.key for d, _ in pairs],
                options.metrics,
                max(1, options.batch_size),
            )
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the user's model may fail on perturbed copies
        reason = f"the model failed on the metrics' perturbed copies: {first_line(exc)}"
        return [e if isinstance(e, str) else reason for e in explained]
    return [None if isinstance(e, str) else next(found) for e in explained]


def _save(
    item: InputItem,
    explanation: ImageExplanation,
    options: RunOptions,
    warnings: Sequence[str] = (),
    measured: dict | None = None,
) -> ImageResult:
    if isinstance(measured, str):  # the metrics could not be measured
        return ImageResult.failed(item.source, measured, warnings)
    if any(p.probability is None for p in explanation.predictions):
        return ImageResult(
            input=item.source,
            status="error",
            error=NONFINITE_SCORES,
            size=list(explanation.image.size),
            predictions=explanation.predictions,
            warnings=list(warnings),
        )
    try:
        records = _save_explanations(item, explanation, options, measured)
    except Exception as exc:  # one image's failure must not end the run
        return ImageResult.failed(item.source, _save_failure(exc, explanation), warnings)
    return ImageResult(
        input=item.source,
        status="ok",
        size=list(explanation.image.size),
        predictions=explanation.predictions,
        explanations=records,
        warnings=list(warnings),
    )


def _save_explanations(
    item: InputItem,
    explanation: ImageExplanation,
    options: RunOptions,
    measured: dict[tuple[int, str], Measured] | None = None,
) -> list[ExplanationRecord]:
    records = []
    masks = _MaskCache(options.masks, explanation.image.size)
    guided_images = _GuidedImages(item.key, explanation, options)
    for (index, layer), raw in explanation.maps.items():
        target = next(t for t in explanation.targets if t.index == index)
        stem = artifact_stem(item.key, index, target.label, layer)
        pictures = _render(explanation, index, layer, options)
        overlay, heatmap = _save_pictures(pictures, stem, options)
        raw, warnings = _checked_map(raw)
        raw_path = None
        if options.save_raw:
            raw_path = f"{stem}.raw.npy"
            write_npy_atomic(resolve_inside(options.out_dir, raw_path), raw)
        guided_picture, guided = guided_images.save(target, layer, stem)
        localization = masks.measure(item.key, target, raw, explanation.crop_box, options.gate)
        mask, mask_path = masks.save(item.key, target, options.out_dir)
        faithfulness = _save_metrics((measured or {}).get((index, layer)), stem, options)
        gate = gate_record(options.gates, {**(localization or {}), **(faithfulness or {})})
        pictures = replace(pictures, guided=guided_picture, mask=mask)
        panel = _save_panel(
            item,
            explanation,
            target,
            layer,
            stem,
            pictures,
            options,
            localization=localization,
            faithfulness=faithfulness,
            gate=gate,
        )
        records.append(
            ExplanationRecord(
                target,
                layer,
                overlay,
                heatmap,
                raw_path,
                warnings,
                guided,
                localization,
                panel,
                mask_path,
                faithfulness,
                gate,
            )
        )
    return records


def _save_metrics(measured: Measured | None, stem: str, options: RunOptions) -> dict | None:
    """The explanation's `faithfulness` record; with --save-raw, its curves in STEM.curves.json."""
    if measured is None:
        return None
    curves = None
    if options.save_raw:
        curves = f"{stem}.curves.json"
        text = json.dumps(curves_document(measured), separators=(",", ":"), allow_nan=False) + "\n"
        with writing():
            write_text_atomic(resolve_inside(options.out_dir, curves), text)
    return metric_record(measured, curves)


def _target_stem(key: str, target_index: int, target_label: str) -> str:
    """The files of one image and target that no layer changes: `cats/tom.281-tabby_tabby_cat`
    (artifact_stem without the layer; no layer's files end in `.guided.png` or `.mask.png`
    right after it, so the names never meet)."""
    return f"{key}.{target_index}-{_slug(target_label)}"


class _GuidedImages:
    """Guided methods: one image's guided pictures, each drawn and written once. With several
    layers and a method whose guided image does not depend on the layer (guided-backprop), a
    target gets one file, `KEY.INDEX-LABEL.guided.png`, that its explanations share; otherwise
    (guided-gradcam, or one layer) each explanation has its own, `STEM.guided.png`."""

    def __init__(self, key: str, explanation: ImageExplanation, options: RunOptions):
        self.key, self.explanation, self.options = key, explanation, options
        self.same: dict[int, bool] = {}  # target index → one guided image for every layer
        self.shared: dict[int, tuple[Image.Image | None, str | None]] = {}

    def save(
        self, target: TargetRef, layer: str, stem: str
    ) -> tuple[Image.Image | None, str | None]:
        """The guided picture of `target` at `layer` and the path of its file; (None, None)
        for the other methods."""
        if not self.explanation.guided:
            return None, None
        if not self._same_at_every_layer(target.index):
            picture = self._picture(target.index, layer)
            return picture, _save_guided(picture, f"{stem}.guided.png", self.options)
        if target.index not in self.shared:
            picture = self._picture(target.index, layer)
            path = f"{_target_stem(self.key, target.index, target.label)}.guided.png"
            self.shared[target.index] = picture, _save_guided(picture, path, self.options)
        return self.shared[target.index]

    def _picture(self, index: int, layer: str) -> Image.Image | None:
        return self.explanation.guided_picture(index, layer, self.options.render)

    def _same_at_every_layer(self, index: int) -> bool:
        if index not in self.same:
            layers = sum(1 for i, _ in self.explanation.guided if i == index)
            method = METHODS.get(self.explanation.method)
            self.same[index] = layers > 1 and method is not None and method.guided_layer_free
        return self.same[index]


def _checked_map(raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The raw map as float32 with non-finite values set to 0 (the pictures draw them as 0
    too), and the warnings it deserves."""
    raw = np.asarray(raw, dtype=np.float32)
    warnings = []
    finite = np.isfinite(raw)
    if not finite.all():
        raw = np.where(finite, raw, np.float32(0.0))
        warnings.append(NONFINITE_MAP_WARNING)
    if not float(raw.max(initial=0.0)) > 0:
        warnings.append(ZERO_MAP_WARNING)
    return raw, warnings


def _save_failure(exc: Exception, explanation: ImageExplanation) -> str:
    """One line on why an explained image could not be saved; files already written stay
    whole (every write is atomic)."""
    if isinstance(exc, OSError):  # disk full, permissions, quota
        hint = "; free some space, then rerun with --resume" if exc.errno == errno.ENOSPC else ""
        return f"cannot write its outputs: {os_reason(exc)}{hint}"
    if isinstance(exc, GradcamError):  # e.g. a symlink in --out that leads elsewhere
        return str(exc)
    if isinstance(exc, MemoryError):
        width, height = explanation.image.size
        return (
            f"not enough memory to draw its pictures at the photo's size ({width}×{height}); "
            "downscale it"
        )
    return f"internal error while drawing its pictures: {type(exc).__name__}: {first_line(exc)}"


class _MaskCache:
    """One image's masks, each file read once however many layers are explained, and written
    into OUT as measured once per target (`KEY.INDEX-LABEL.mask.png`)."""

    def __init__(self, source: MaskSource | None, size: tuple[int, int]):
        self.source, self.size = source, size
        self.read: dict[Path, np.ndarray | str] = {}  # the mask, or why it cannot be used
        self.written: dict[int, str] = {}  # target index → its mask's file in OUT

    def _find(self, key: str, target: TargetRef) -> tuple[Path | None, np.ndarray | str | None]:
        """The mask file of `target` and the mask read from it (bool [H, W] on the photo), or
        why it cannot be used; (None, None) when there is none."""
        if self.source is None:
            return None, None
        path = self.source.find(key, target.index, _slug(target.label))
        if path is None:
            return None, None
        if path not in self.read:
            try:
                self.read[path] = read_mask(path, self.size)
            except GradcamError as exc:
                self.read[path] = str(exc)
        return path, self.read[path]

    def measure(
        self, key: str, target: TargetRef, raw: np.ndarray, crop_box, gate: Gate
    ) -> dict[str, object] | None:
        if self.source is None:
            return None
        path, mask = self._find(key, target)
        if path is None or mask is None:
            error = f"no mask for '{key}' in {self.source.path}"
            return localization_record(None, gate, error=error)
        if isinstance(mask, str):
            return localization_record(None, gate, mask=str(path), error=mask)
        return localization_record(localize(raw, mask, crop_box, str(path)), gate)

    def save(
        self, key: str, target: TargetRef, out_dir: Path
    ) -> tuple[np.ndarray | None, str | None]:
        """The mask `target` was measured against and its file in OUT, written the first time
        (0 outside, 255 inside, the photo's size); (None, None) without a usable mask."""
        _, mask = self._find(key, target)
        if mask is None or isinstance(mask, str):
            return None, None
        if target.index not in self.written:
            path = f"{_target_stem(key, target.index, target.label)}.mask.png"
            picture = Image.fromarray(mask.astype(np.uint8) * 255, "L")
            _write_png(out_dir, path, picture, smooth=True)
            self.written[target.index] = path
        return mask, self.written[target.index]


def _render(explanation: ImageExplanation, index: int, layer: str, options: RunOptions) -> Pictures:
    """The pictures of one explanation, the map placed once for all; the heatmap only when it
    is written or shown in a panel, as a palette image (a quarter of the RGBA's bytes to
    deflate, and the same pixels once decoded). The guided picture and the mask come from
    `_GuidedImages` and `_MaskCache`, which draw them once when explanations share them."""
    render = options.render
    values, inside = explanation.placed(index, layer, render)
    lut = colormap_lut(render.colormap)
    overlay = explanation.encoded_overlay(index, layer, render)
    if overlay is None:
        overlay = overlay_image(explanation.image, values, inside, lut, render.alpha)
    heatmap = None
    if options.heatmap or options.panel:
        heatmap = heatmap_palette_image(values, inside, lut)
    return Pictures(explanation.image, overlay, heatmap)


def _save_pictures(pictures: Pictures, stem: str, options: RunOptions) -> tuple[str, str | None]:
    """Write the overlay (PNG or JPEG), its thumbnail with --report and, unless --no-heatmap,
    the heatmap (PNG)."""
    overlay = f"{stem}.overlay.{options.overlay_format}"
    heatmap = f"{stem}.heatmap.png" if options.heatmap else None
    if options.overlay_format == "png":
        _write_png(options.out_dir, overlay, pictures.overlay)
    else:
        with writing():
            write_image_atomic(resolve_inside(options.out_dir, overlay), pictures.overlay, "jpg")
    if options.report:
        save_thumbnail(options.out_dir, overlay, pictures.overlay)
    if heatmap and pictures.heatmap is not None:  # _render made it: options.heatmap
        _write_png(options.out_dir, heatmap, pictures.heatmap, smooth=True)
    return overlay, heatmap


def _save_guided(picture: Image.Image | None, path: str, options: RunOptions) -> str | None:
    """Guided methods: write the guided image and return its path; None for other methods."""
    if picture is None:
        return None
    _write_png(options.out_dir, path, picture)
    return path


def _write_png(out_dir: Path, relative: str, picture: Image.Image, smooth: bool = False) -> None:
    """`picture` as PNG at out_dir/relative, atomically, with the fast encoder (pngwrite)."""
    with writing():
        write_bytes_atomic(resolve_inside(out_dir, relative), png_bytes(picture, smooth))


def _save_panel(
    item: InputItem,
    explanation: ImageExplanation,
    target: TargetRef,
    layer: str,
    stem: str,
    pictures: Pictures,
    options: RunOptions,
    **measures: dict[str, object] | None,
) -> str | None:
    """--panel: write the explanation's figure and return its path; None without --panel."""
    if not options.panel:
        return None
    fields = caption_fields(
        input=item.source,
        size=explanation.image.size,
        predictions=[asdict(p) for p in explanation.predictions],
        target=asdict(target),
        method=explanation.method,
        layer=layer,
        colormap=options.render.colormap,
        normalize=options.render.normalize,
        **measures,  # localization, faithfulness, gate: each in the caption when measured
    )
    lut = colormap_lut(options.render.colormap)
    return save_panel(options.out_dir, stem, pictures, fields, lut, options.render.colormap)
