"""What a run writes for each explanation: overlays, heatmaps, raw maps, guided images, masks,
panels and metric curves, named after the image, the target and the layer, and each image's
result record; `save_explanations` writes explanations made in Python as `gradcam explain` would.

`runner` calls `save_image` for each image of a run; `Explainer.save` (and so
`ImageExplanation.save`) calls `save_explanations`. Every file is written atomically and only
under the output folder.
"""

from __future__ import annotations

import errno
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import GradcamError, first_line
from .explanation import ImageExplanation, RenderOptions
from .faithfulness import GateRule
from .faithrun import Measured, MetricOptions, curves_document, metric_record
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
from .outlock import output_lock
from .pages.run import write_page
from .pages.thumbnails import save_thumbnail
from .panel import Pictures, caption_fields, save_panel
from .pngwrite import png_bytes
from .render import colormap_lut, heatmap_palette_image, overlay_image
from .report import (
    ExplanationRecord,
    ImageResult,
    Report,
    TargetRef,
    gate_record,
    shard_report_name,
)
from .timing import writing

__all__ = [
    "RunOptions",
    "artifact_stem",
    "new_report",
    "save_image",
    "save_explanations",
    "ZERO_MAP_WARNING",
    "NONFINITE_MAP_WARNING",
    "NONFINITE_SCORES",
    "ImageMetrics",
]

ZERO_MAP_WARNING = "the map is all zero: no positive evidence for this class at this layer"
NONFINITE_MAP_WARNING = (
    "the map had NaN or infinite values (from the model's gradients at this layer); "
    "they were set to 0"
)
NO_TARGETS = (
    "nothing to explain: the model kept no detection here (none scored above its own "
    "threshold, or none was of the --target classes and scored at least --min-score), or no "
    "pixel of --region is on the photo"
)
NONFINITE_SCORES = (
    "the model's scores for this image are NaN or infinite, so there is nothing to explain; "
    "check the model and its preprocessing on this input"
)

# --metrics: one image's metrics by (class index, layer), or why they could not be measured.
ImageMetrics = dict[tuple[int, str], Measured] | str


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    classes: tuple[int, ...] = ()
    topk: int = 1
    min_score: float | None = None  # detectors: the detections kept score at least this
    region: Path | None = None  # segmentation: the targets' pixels, a mask on the photo
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


def new_report(described: dict[str, Any], options: RunOptions) -> Report:
    """The report of a run with `options` by the explainer `described` (`Explainer.describe`:
    model, method, layers, device, preprocessing, method options); no results yet."""
    return Report(
        **described,
        out=str(options.out_dir),
        options=_options_record(options),
        measures_localization=options.masks is not None,
        measures_faithfulness=options.metrics is not None,
        gate_rules=[str(rule) for rule in options.gates],
    )


def save_explanations(
    described: dict[str, Any], explanations: Sequence[ImageExplanation], options: RunOptions
) -> Report:
    """Write what `gradcam explain` writes for explanations already made in Python: their
    pictures and OUT/predictions.json (and the page with options.report), under --out's lock.
    Keys come from the files the images were read from ('image' for arrays and PIL images);
    `described`: the explainer that made them (`Explainer.describe`)."""
    start = time.perf_counter()
    names = [e.source or "image" for e in explanations]
    items = [
        InputItem(source=name, path=None, key=key)
        for name, key in zip(names, output_keys(names), strict=True)
    ]
    with output_lock(options.out_dir, options.shard):
        report = new_report(described, options)
        report.results = [
            save_image(item, e, options) for item, e in zip(items, explanations, strict=True)
        ]
        report.seconds = time.perf_counter() - start
        write_text_atomic(resolve_inside(options.out_dir, options.report_name), report.to_json())
        if options.report and options.shard is None:
            write_page(options.out_dir, report.to_dict())
    return report


def _task_options(options: RunOptions) -> dict[str, object]:
    """--min-score and --region as given: a classifier's report is what it was without them."""
    given: dict[str, object] = {}
    if options.min_score is not None:
        given["min_score"] = options.min_score
    if options.region is not None:
        given["region"] = str(options.region)
    return given


def _options_record(options: RunOptions) -> dict[str, object]:
    render = options.render
    return {
        "classes": list(options.classes),
        "topk": options.topk,
        **_task_options(options),
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


def save_image(
    item: InputItem,
    explanation: ImageExplanation,
    options: RunOptions,
    warnings: Sequence[str] = (),
    measured: ImageMetrics | None = None,
) -> ImageResult:
    """Write one image's pictures (and raw maps, panels, masks, metrics as `options` say);
    its result record. A failure here is the image's, recorded: the run goes on."""
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
    if not explanation.targets:  # a detector that kept no detection: nothing to draw
        warnings = [*warnings, NO_TARGETS]
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
    regions = _Regions(item.key, explanation, options.out_dir)
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
        region, region_path = regions.save(target)
        faithfulness = _save_metrics((measured or {}).get((index, layer)), stem, options)
        gate = gate_record(options.gates, {**(localization or {}), **(faithfulness or {})})
        pictures = replace(pictures, guided=guided_picture, mask=mask, region=region)
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
                region_path,
            )
        )
    return records


class _Regions:
    """Segmentation: the pixels each target's logits were summed over, written once per image
    and target as `KEY.INDEX-LABEL.region.png` (255 inside, the photo's size)."""

    def __init__(self, key: str, explanation: ImageExplanation, out_dir: Path):
        self.key, self.explanation, self.out_dir = key, explanation, out_dir
        self.written: dict[int, tuple[np.ndarray, str]] = {}

    def save(self, target: TargetRef) -> tuple[np.ndarray | None, str | None]:
        if target.index not in self.written:
            region = self.explanation.region(target)
            if region is None:
                return None, None
            path = f"{_target_stem(self.key, target.index, target.label)}.region.png"
            _write_png(self.out_dir, path, Image.fromarray(region.astype(np.uint8) * 255, "L"))
            self.written[target.index] = region, path
        return self.written[target.index]


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
        overlay = explanation.with_box(overlay, index)  # a detection's box and label
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
