"""`--report` and `gradcam report OUT`: a static page, OUT/index.html, to browse a run.

The page is built from the JSON report alone (no model, no torch), so `gradcam report OUT`
rebuilds it from `predictions.json` at any time. Self-contained, as every page is (`document`).

One card per explanation (image × target × layer) and one per failed input. The grid shows the
overlays' thumbnails (`thumbnails`), not the full-size overlays; the page writer makes any that
are missing from the overlay files on disk.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..captions import (
    baselines_text,
    faithfulness_text,
    gate_text,
    localization_text,
    prediction_text,
    rules_text,
    target_text,
)
from ..errors import UsageError
from ..files import resolve_inside, write_text_atomic
from ..report import REPORT_NAME
from .document import (
    breakable,
    definitions,
    errors_section,
    escaped,
    filter_bar,
    fixed,
    page_document,
    select,
    summary_list,
    url,
)
from .thumbnails import UNREADABLE, read_shrunk, save_thumbnail, thumbnail_path

__all__ = ["PAGE_NAME", "write_page", "render_page"]

PAGE_NAME = "index.html"


# -- the page --------------------------------------------------------------------------------


@dataclass
class _Card:
    input: str
    status: str  # ok | gate-failed | error
    error: str | None = None
    predicted: str = ""  # the top label, for the filter
    target: str = ""
    layer: str = ""
    lines: list[tuple[str, str]] = field(default_factory=list)  # (term, text)
    links: dict[str, str] = field(default_factory=dict)  # name → path relative to OUT
    thumbnail: tuple[str, int, int] | None = None  # path, width, height


def write_page(out_dir: str | Path, document: Mapping) -> Path:
    """Make missing thumbnails, then write OUT/index.html atomically; returns its path."""
    out_dir = Path(out_dir)
    cards = list(_cards(out_dir, document))
    page = resolve_inside(out_dir, PAGE_NAME)
    write_text_atomic(page, render_page(document, cards, _existing(out_dir, REPORT_NAME)))
    return page


def _cards(out_dir: Path, document: Mapping) -> Iterable[_Card]:
    method = str(document.get("method", ""))
    for result in document.get("results") or []:
        if not isinstance(result, Mapping):
            continue
        if result.get("status") != "ok":
            yield _Card(str(result.get("input")), "error", error=str(result.get("error")))
            continue
        for explanation in result.get("explanations") or []:
            yield _card(out_dir, result, explanation, method)


def _card(out_dir: Path, result: Mapping, explanation: Mapping, method: str) -> _Card:
    predictions = result.get("predictions") or []
    target = explanation.get("target") or {}
    localization = explanation.get("localization")
    gate = gate_text(localization)
    faithfulness = explanation.get("faithfulness")
    rules = rules_text(explanation.get("gate"))
    failed = any(said is not None and said != "passed" for said in (gate, rules))
    card = _Card(
        input=str(result.get("input")),
        status="gate-failed" if failed else "ok",
        predicted=str(predictions[0].get("label")) if predictions else "",
        target=str(target.get("label")),
        layer=str(explanation.get("layer")),
    )
    card.lines = [
        ("predicted", prediction_text(predictions)),
        ("target", target_text(target, predictions)),
        ("method", f"{method} @ {card.layer}"),
    ]
    measured = localization_text(localization)
    if measured is not None:
        card.lines.append(("mask", measured))
    if gate is not None:
        card.lines.append(("gate", gate))
    for label, said in (
        ("faithfulness", faithfulness_text(faithfulness)),
        ("baselines", baselines_text(faithfulness)),
        ("gate", rules),
    ):
        if said is not None:
            card.lines.append((label, said))
    card.lines += [("warning", str(w)) for w in explanation.get("warnings") or []]
    for name in ("overlay", "panel", "heatmap", "guided", "mask", "raw"):
        path = _existing(out_dir, explanation.get(name))
        if path:
            card.links[name] = path
    curves = _existing(out_dir, (faithfulness or {}).get("curves"))
    if curves:
        card.links["curves"] = curves
    card.thumbnail = _thumbnail(out_dir, card.links.get("overlay"))
    return card


def _existing(out_dir: Path, relative: object) -> str | None:
    """`relative` when it names a file inside OUT; None otherwise (missing, or a path that
    would lead outside OUT: the page links only to files that are there)."""
    if not isinstance(relative, str) or not relative:
        return None
    try:
        found = resolve_inside(out_dir, relative).is_file()
    except (UsageError, OSError):
        return None
    return relative if found else None


def _thumbnail(out_dir: Path, overlay: str | None) -> tuple[str, int, int] | None:
    if overlay is None:
        return None
    path = thumbnail_path(overlay)
    if _stale(out_dir, path, overlay) and not _thumbnail_from_disk(out_dir, overlay):
        return None
    try:
        with Image.open(resolve_inside(out_dir, path)) as thumb:  # reads the header only
            return path, thumb.width, thumb.height
    except UNREADABLE:
        return None


def _thumbnail_from_disk(out_dir: Path, overlay: str) -> bool:
    """Make a missing thumbnail from the overlay file; False when the overlay is unreadable."""
    try:
        save_thumbnail(out_dir, overlay, read_shrunk(resolve_inside(out_dir, overlay)))
    except UNREADABLE:
        return False
    return True


def _stale(out_dir: Path, thumbnail: str, overlay: str) -> bool:
    """The thumbnail is missing, or older than its overlay (rewritten by a later run)."""
    try:
        made = resolve_inside(out_dir, thumbnail).stat().st_mtime_ns
        return made < resolve_inside(out_dir, overlay).stat().st_mtime_ns
    except (UsageError, OSError):
        return True


def render_page(document: Mapping, cards: list[_Card], report_link: str | None) -> str:
    """The whole page as text: header, errors, filters, cards."""
    model = document.get("model") or {}
    title = f"gradcam report: {model.get('name', '?')}, {document.get('method', '?')}"
    body = [
        _errors(cards),
        _filters(document, cards),
        '<main id="grid">',
        *(_card_html(card) for card in cards),
        "</main>",
    ]
    return page_document(title, [_summary(document, report_link)], body, interactive=True)


def _summary(document: Mapping, report_link: str | None) -> str:
    model = document.get("model") or {}
    summary = document.get("summary") or {}
    options = document.get("options") or {}
    rows = [
        ("model", f"{model.get('name')} ({model.get('source')}, weights {model.get('weights')})"),
        ("method", str(document.get("method"))),
        ("layers", ", ".join(str(layer) for layer in document.get("layers") or [])),
        (
            "images",
            f"{summary.get('images')} ({summary.get('ok')} explained, "
            f"{summary.get('errors')} failed) in {summary.get('seconds')} s"
            + (", interrupted" if summary.get("interrupted") else ""),
        ),
        ("colours", f"{options.get('colormap')}, {options.get('normalize')}"),
    ]
    figures = summary.get("localization")
    if isinstance(figures, Mapping) and figures.get("measured"):
        rows.append(
            (
                "localization",
                f"{figures.get('measured')} maps: hit rate {fixed(figures.get('hit_rate'))}, "
                f"energy {fixed(figures.get('mean_energy'))} (mask share "
                f"{fixed(figures.get('mean_mask_share'))}), IoU {fixed(figures.get('mean_iou'))}"
                + (f", {figures.get('gate_failures')} failed the gate" if _gated(options) else ""),
            )
        )
    return summary_list(rows, report_link)


def _errors(cards: list[_Card]) -> str:
    failed = [(card.input, str(card.error)) for card in cards if card.status == "error"]
    return errors_section(f"{len(failed)} input(s) failed", failed)


def _filters(document: Mapping, cards: list[_Card]) -> str:
    statuses = ["ok", "error"] + (["gate-failed"] if _gated(document.get("options")) else [])
    selects = [
        select("predicted", "predicted", Counter(c.predicted for c in cards if c.predicted)),
        select("target", "target", Counter(c.target for c in cards if c.target)),
    ]
    layers = Counter(card.layer for card in cards if card.layer)
    if len(layers) > 1:
        selects.append(select("layer", "layer", layers))
    counts = Counter(card.status for card in cards)
    status = {s: counts.get(s, 0) for s in statuses}
    selects.append(select("status", "status", status, ordered=False))
    return filter_bar(selects, len(cards))


def _gated(options: Mapping | None) -> bool:
    """Whether the run set a gate (--require-hit, --min-energy, --gate)."""
    options = options or {}
    localization = bool(options.get("require_hit")) or options.get("min_energy") is not None
    return localization or bool(options.get("gate"))


def _card_html(card: _Card) -> str:
    data = " ".join(
        f'data-{key}="{escaped(value)}"'
        for key, value in (
            ("status", card.status),
            ("predicted", card.predicted),
            ("target", card.target),
            ("layer", card.layer),
        )
    )
    badge = {"ok": "ok", "error": "error", "gate-failed": "gate failed"}[card.status]
    name = breakable(card.input)
    head = (
        f'<h2 title="{escaped(card.input)}">{name}</h2><span class="badge">{escaped(badge)}</span>'
    )
    if card.status == "error":
        body = f'<p class="reason">{escaped(card.error)}</p>'
        return f'<article class="card error" {data}>{head}{body}</article>'
    return (
        f'<article class="card {card.status}" {data}>{_picture(card)}{head}'
        f"<dl>{definitions(card.lines)}</dl>"
        f'<p class="links">{_links(card)}</p></article>'
    )


def _picture(card: _Card) -> str:
    overlay, panel = card.links.get("overlay"), card.links.get("panel")
    alt = f"overlay of {card.input} for {card.target} at {card.layer}"
    if card.thumbnail is None:
        image = '<span class="missing">no overlay on disk</span>'
    else:
        path, width, height = card.thumbnail
        image = (
            f'<img src="{url(path)}" width="{width}" height="{height}" '
            f'alt="{escaped(alt)}" loading="lazy">'
        )
    if overlay is None:
        return f'<div class="thumb">{image}</div>'
    panel_data = f' data-panel="{url(panel)}"' if panel else ""
    return f'<a class="thumb open" href="{url(overlay)}"{panel_data}>{image}</a>'


def _links(card: _Card) -> str:
    return " ".join(
        f'<a href="{url(path)}">{escaped(name)}</a>' for name, path in card.links.items()
    )
