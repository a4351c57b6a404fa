"""Batch mode: inputs → batches → explanations → PNG/NPY files and the JSON report.

Each input gets exactly one result record, in input order. An image that cannot be read, or a
batch the model fails on, becomes an `error` record and the run goes on. Every file is written
atomically (temporary file, then rename) and only under the output folder.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import GradcamError
from .explainer import Explainer, ImageExplanation, RenderOptions
from .files import (
    resolve_inside,
    write_image_atomic,
    write_npy_atomic,
    write_png_atomic,
    write_text_atomic,
)
from .htmlreport import save_thumbnail, write_page
from .inputs import InputItem
from .localization import Gate, MaskSource, localization_record, localize, read_mask
from .panel import Pictures, caption_fields, save_panel
from .pipeline import BoundedWriter, Decoded, decode_batches
from .render import colormap_lut
from .report import (
    REPORT_NAME,
    ExplanationRecord,
    ImageResult,
    Report,
    TargetRef,
    shard_report_name,
)

__all__ = ["RunOptions", "run_explain", "artifact_stem", "REPORT_NAME", "shard_report_name"]

ZERO_MAP_WARNING = "the map is all zero: no positive evidence for this class at this layer"


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
    panel: bool = False  # --panel: one figure per explanation (panel.py)
    report: bool = False  # --report: thumbnails, then OUT/index.html (htmlreport.py)

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
) -> Report:
    """Explain every input, write its pictures, and write OUT/predictions.json (or the
    shard's report). Decoding, the model and writing overlap (`pipeline`)."""
    start = time.perf_counter()
    report = Report(
        model=explainer.loaded.describe(),
        method=explainer.method.name,
        layers=[str(ref) for ref in explainer.layers],
        device=str(explainer.device),
        out=str(options.out_dir),
        preprocess=explainer.loaded.preprocess.describe(),
        options=_options_record(options),
        method_options=_method_options(explainer),
        measures_localization=options.masks is not None,
    )

    def collect(done: list[ImageResult]) -> None:
        report.results.extend(done)
        if done and progress:
            progress(len(report.results), len(items))

    batches = decode_batches(
        items, max(1, options.batch_size), explainer.loaded.preprocess, options.workers
    )
    # Pictures are saved image by image, so every writer thread has work; at most two batches'
    # worth wait, which bounds the memory their photos hold.
    ahead = max(2 * max(1, options.batch_size), 4 * options.write_threads)
    writer: BoundedWriter[ImageResult] = BoundedWriter(options.write_threads, ahead=ahead)
    try:
        for decoded in batches:
            explained = _explain_batch(explainer, decoded, options)
            for job in _save_jobs(decoded, explained, options):
                collect(writer.submit(*job))
        collect(writer.drain())
    except KeyboardInterrupt:
        report.interrupted = True  # what was done is reported; the CLI exits 130
        try:  # the images already explained are a few writes from done: finish them
            collect(writer.drain())
        except KeyboardInterrupt:  # a second Ctrl-C: keep only what is written
            collect(_finished_in_order(writer))
    finally:
        batches.close()
        writer.close(cancel=report.interrupted)
    report.seconds = time.perf_counter() - start
    write_text_atomic(resolve_inside(options.out_dir, options.report_name), report.to_json())
    if options.report and options.shard is None:  # a share's page would show a share only
        write_page(options.out_dir, report.to_dict())
    return report


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
    }


def _method_options(explainer: Explainer) -> dict[str, object]:
    return {
        "aug_smooth": explainer.aug_smooth,
        "eigen_smooth": explainer.eigen_smooth,
        "amp": explainer.amp,
    }


def _explain_batch(
    explainer: Explainer, decoded: list[Decoded], options: RunOptions
) -> list[ImageExplanation] | str:
    """The batch's explanations (readable inputs only, in order), or why the model failed."""
    readable = [d for d in decoded if d.error is None]
    if not readable:
        return []
    try:
        return explainer.explain(
            [d.image for d in readable],
            arrays=[d.array for d in readable],
            classes=options.classes or None,
            topk=options.topk,
        )
    except (RuntimeError, GradcamError) as exc:  # e.g. out of memory: these inputs fail
        return f"the model failed on this batch: {_first_line(exc)}"


def _save_jobs(
    decoded: list[Decoded], explained: list[ImageExplanation] | str, options: RunOptions
) -> list[tuple]:
    """One writer job per input, in input order: save its pictures, or record its failure."""
    explanations = iter(explained) if isinstance(explained, list) else None
    jobs: list[tuple] = []
    for d in decoded:
        if d.error is not None:
            jobs.append((ImageResult.failed, d.item.source, d.error))
        elif explanations is None:
            jobs.append((ImageResult.failed, d.item.source, str(explained)))
        else:
            jobs.append((_save, d.item, next(explanations), options))
    return jobs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _save(item: InputItem, explanation: ImageExplanation, options: RunOptions) -> ImageResult:
    records = []
    masks = _MaskCache(options.masks, explanation.image.size)
    try:
        for (index, layer), raw in explanation.maps.items():
            target = next(t for t in explanation.targets if t.index == index)
            stem = artifact_stem(item.key, index, target.label, layer)
            pictures = _render(explanation, index, layer, options)
            overlay, heatmap = _save_pictures(pictures, stem, options)
            raw_path = None
            if options.save_raw:
                raw_path = f"{stem}.raw.npy"
                write_npy_atomic(resolve_inside(options.out_dir, raw_path), raw.astype(np.float32))
            warnings = [] if float(raw.max(initial=0.0)) > 0 else [ZERO_MAP_WARNING]
            guided = _save_guided(pictures.guided, f"{stem}.guided.png", options)
            localization = masks.measure(item.key, target, raw, explanation.crop_box, options.gate)
            panel = _save_panel(
                item, explanation, target, layer, stem, pictures, localization, options
            )
            records.append(
                ExplanationRecord(
                    target, layer, overlay, heatmap, raw_path, warnings, guided, localization, panel
                )
            )
    except OSError as exc:  # disk full, permissions: this image fails, files written stay whole
        return ImageResult.failed(item.source, f"cannot write outputs: {exc.strerror or exc}")
    return ImageResult(
        input=item.source,
        status="ok",
        size=list(explanation.image.size),
        predictions=explanation.predictions,
        explanations=records,
    )


class _MaskCache:
    """One image's masks, each file read once however many layers are explained."""

    def __init__(self, source: MaskSource | None, size: tuple[int, int]):
        self.source, self.size = source, size
        self.read: dict[Path, np.ndarray | str] = {}  # the mask, or why it cannot be used

    def measure(
        self, key: str, target: TargetRef, raw: np.ndarray, crop_box, gate: Gate
    ) -> dict[str, object] | None:
        if self.source is None:
            return None
        path = self.source.find(key, target.index, _slug(target.label))
        if path is None:
            error = f"no mask for '{key}' in {self.source.path}"
            return localization_record(None, gate, error=error)
        if path not in self.read:
            try:
                self.read[path] = read_mask(path, self.size)
            except GradcamError as exc:
                self.read[path] = str(exc)
        mask = self.read[path]
        if isinstance(mask, str):
            return localization_record(None, gate, mask=str(path), error=mask)
        return localization_record(localize(raw, mask, crop_box, str(path)), gate)


def _render(explanation: ImageExplanation, index: int, layer: str, options: RunOptions) -> Pictures:
    """The pictures of one explanation, the map placed once for all; the heatmap only when it
    is written or shown in a panel."""
    if options.heatmap or options.panel:
        overlay, heatmap = explanation.pictures(index, layer, options.render)
    else:
        overlay, heatmap = explanation.overlay(index, layer, options.render), None
    guided = explanation.guided_picture(index, layer, options.render)
    return Pictures(explanation.image, overlay, heatmap, guided)


def _save_pictures(pictures: Pictures, stem: str, options: RunOptions) -> tuple[str, str | None]:
    """Write the overlay (PNG or JPEG), its thumbnail with --report and, unless --no-heatmap,
    the RGBA heatmap (PNG)."""
    overlay = f"{stem}.overlay.{options.overlay_format}"
    heatmap = f"{stem}.heatmap.png" if options.heatmap else None
    path = resolve_inside(options.out_dir, overlay)
    write_image_atomic(path, pictures.overlay, options.overlay_format)
    if options.report:
        save_thumbnail(options.out_dir, overlay, pictures.overlay)
    if heatmap and pictures.heatmap is not None:  # _render made it: options.heatmap
        write_png_atomic(resolve_inside(options.out_dir, heatmap), pictures.heatmap)
    return overlay, heatmap


def _save_guided(picture: Image.Image | None, path: str, options: RunOptions) -> str | None:
    """Guided methods: write the guided image and return its path; None for other methods."""
    if picture is None:
        return None
    write_png_atomic(resolve_inside(options.out_dir, path), picture)
    return path


def _save_panel(
    item: InputItem,
    explanation: ImageExplanation,
    target: TargetRef,
    layer: str,
    stem: str,
    pictures: Pictures,
    localization: dict[str, object] | None,
    options: RunOptions,
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
        localization=localization,
        colormap=options.render.colormap,
        normalize=options.render.normalize,
    )
    lut = colormap_lut(options.render.colormap)
    return save_panel(options.out_dir, stem, pictures, fields, lut, options.render.colormap)
