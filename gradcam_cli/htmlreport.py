"""`--report` and `gradcam report OUT`: a static page, OUT/index.html, to browse a run.

The page is built from the JSON report alone (no model, no torch), so `gradcam report OUT`
rebuilds it from `predictions.json` at any time. It is self-contained — inline CSS and JS, no
network, no CDN — and every link is relative and percent-encoded, so it works from a file:// URL,
from a zip of OUT unpacked anywhere, and in a CI artifact browser. Without JS (or under a strict
Content-Security-Policy) every card and link is still there; only the filters and the viewer
need the script.

One card per explanation (image × target × layer) and one per failed input. The grid shows small
thumbnails (`KEY.INDEX-LABEL.LAYER.thumb.jpg`, next to the overlays) instead of the full-size
overlays: a page of a few hundred cards stays light. The run writes them from the overlay it
has in memory; the page writer makes any that are missing from the overlay files on disk.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from .captions import (
    baselines_text,
    faithfulness_text,
    gate_text,
    localization_text,
    prediction_text,
    rules_text,
    target_text,
)
from .errors import UsageError
from .files import resolve_inside, write_image_atomic, write_text_atomic
from .report import REPORT_NAME, SHARD_REPORT, read_report_file

__all__ = [
    "PAGE_NAME",
    "THUMBNAIL_SIZE",
    "thumbnail_path",
    "save_thumbnail",
    "read_report",
    "write_page",
    "render_page",
]

PAGE_NAME = "index.html"
THUMBNAIL_SIZE = 256  # longest side, pixels: sharp in a ~240-pixel card
THUMBNAIL_SUFFIX = ".thumb.jpg"
_OVERLAY_SUFFIXES = (".overlay.png", ".overlay.jpg")


# -- thumbnails ------------------------------------------------------------------------------


def thumbnail_path(overlay: str) -> str:
    """`a/cat.281-tabby.layer4.overlay.png` → `a/cat.281-tabby.layer4.thumb.jpg`."""
    for suffix in _OVERLAY_SUFFIXES:
        if overlay.endswith(suffix):
            return overlay[: -len(suffix)] + THUMBNAIL_SUFFIX
    return overlay + THUMBNAIL_SUFFIX


def save_thumbnail(out_dir: Path, overlay: str, picture: Image.Image) -> str:
    """Write the thumbnail of an overlay (JPEG, at most THUMBNAIL_SIZE a side); its path."""
    path = thumbnail_path(overlay)
    small = picture.convert("RGB")  # a copy: the caller's picture is left as it is
    small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    write_image_atomic(resolve_inside(out_dir, path), small, "jpg")
    return path


def _thumbnail_from_disk(out_dir: Path, overlay: str) -> bool:
    """Make a missing thumbnail from the overlay file; False when the overlay is unreadable."""
    try:
        with Image.open(resolve_inside(out_dir, overlay)) as picture:
            picture.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG: decode reduced
            save_thumbnail(out_dir, overlay, picture)
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return True


# -- reading ---------------------------------------------------------------------------------


def read_report(out_dir: str | Path) -> dict:
    """OUT/predictions.json as a dict; UsageError (exit 2) when there is none to read."""
    out_dir = Path(out_dir)
    path = out_dir / REPORT_NAME
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir} is not a folder; give the --out folder of a gradcam run")
    if not path.is_file():
        shares = [p.name for p in out_dir.iterdir() if SHARD_REPORT.fullmatch(p.name)]
        if shares:
            raise UsageError(
                f"no {REPORT_NAME} in {out_dir}, only the shares of a --shard run: "
                f"run `gradcam merge {out_dir}` first, then `gradcam report {out_dir}`"
            )
        raise UsageError(
            f"no {REPORT_NAME} in {out_dir}: run `gradcam explain ... --out {out_dir}` first"
        )
    return read_report_file(path)


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
    failed = any(text is not None and text != "passed" for text in (gate, rules))
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
    for label, text in (
        ("faithfulness", faithfulness_text(faithfulness)),
        ("baselines", baselines_text(faithfulness)),
        ("gate", rules),
    ):
        if text is not None:
            card.lines.append((label, text))
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
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _stale(out_dir: Path, thumbnail: str, overlay: str) -> bool:
    """The thumbnail is missing, or older than its overlay (rewritten by a later run)."""
    try:
        made = resolve_inside(out_dir, thumbnail).stat().st_mtime_ns
        return made < resolve_inside(out_dir, overlay).stat().st_mtime_ns
    except (UsageError, OSError):
        return True


def render_page(document: Mapping, cards: list[_Card], report_link: str | None) -> str:
    """The whole page as text: header, errors, filters, cards, inline CSS and JS."""
    model = document.get("model") or {}
    title = f"gradcam report: {model.get('name', '?')}, {document.get('method', '?')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{_text(title)}</h1>",
        _summary(document, report_link),
        "</header>",
        _errors(cards),
        _filters(document, cards),
        '<main id="grid">',
        *(_card_html(card) for card in cards),
        "</main>",
        _VIEWER,
        f"<script>{_JS}</script>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


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
                f"{figures.get('measured')} maps: hit rate {_fixed(figures.get('hit_rate'))}, "
                f"energy {_fixed(figures.get('mean_energy'))} (mask share "
                f"{_fixed(figures.get('mean_mask_share'))}), IoU {_fixed(figures.get('mean_iou'))}"
                + (f", {figures.get('gate_failures')} failed the gate" if _gated(options) else ""),
            )
        )
    items = "".join(f"<dt>{_text(term)}</dt><dd>{_text(text)}</dd>" for term, text in rows)
    link = f'<p><a href="{_url(report_link)}">{_text(report_link)}</a></p>' if report_link else ""
    return f'<dl class="summary">{items}</dl>{link}'


def _errors(cards: list[_Card]) -> str:
    failed = [card for card in cards if card.status == "error"]
    if not failed:
        return ""
    rows = "".join(
        f"<tr><td>{_text(card.input)}</td><td>{_text(card.error)}</td></tr>" for card in failed
    )
    return (
        f'<section id="errors"><h2>{len(failed)} input(s) failed</h2>'
        f"<table><thead><tr><th>input</th><th>reason</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _filters(document: Mapping, cards: list[_Card]) -> str:
    """Selects for the script; hidden until it runs (they would do nothing without it)."""
    statuses = ["ok", "error"] + (["gate-failed"] if _gated(document.get("options")) else [])
    selects = [
        _select("predicted", "predicted", Counter(c.predicted for c in cards if c.predicted)),
        _select("target", "target", Counter(c.target for c in cards if c.target)),
    ]
    layers = Counter(card.layer for card in cards if card.layer)
    if len(layers) > 1:
        selects.append(_select("layer", "layer", layers))
    counts = Counter(card.status for card in cards)
    selects.append(_select("status", "status", {s: counts.get(s, 0) for s in statuses}))
    return (
        '<nav id="filters" hidden>'
        + "".join(selects)
        + f'<span id="shown">{len(cards)} of {len(cards)} shown</span></nav>'
    )


def _gated(options: Mapping | None) -> bool:
    """Whether the run set a gate (--require-hit, --min-energy, --gate)."""
    options = options or {}
    localization = bool(options.get("require_hit")) or options.get("min_energy") is not None
    return localization or bool(options.get("gate"))


def _select(name: str, label: str, counts: Mapping[str, int]) -> str:
    values = sorted(counts) if name != "status" else list(counts)
    choices = "".join(
        f'<option value="{_text(value)}">{_text(value)} ({counts[value]})</option>'
        for value in values
    )
    return (
        f'<label>{_text(label)} <select name="{name}">'
        f'<option value="">all</option>{choices}</select></label>'
    )


def _card_html(card: _Card) -> str:
    data = " ".join(
        f'data-{key}="{_text(value)}"'
        for key, value in (
            ("status", card.status),
            ("predicted", card.predicted),
            ("target", card.target),
            ("layer", card.layer),
        )
    )
    badge = {"ok": "ok", "error": "error", "gate-failed": "gate failed"}[card.status]
    # Long paths may break after a '/' (escaped first, so the <wbr> tags are ours).
    name = _text(card.input).replace("/", "/<wbr>")
    head = f'<h2 title="{_text(card.input)}">{name}</h2><span class="badge">{_text(badge)}</span>'
    if card.status == "error":
        body = f'<p class="reason">{_text(card.error)}</p>'
        return f'<article class="card error" {data}>{head}{body}</article>'
    return (
        f'<article class="card {card.status}" {data}>{_picture(card)}{head}'
        f"<dl>{''.join(_line(term, text) for term, text in card.lines)}</dl>"
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
            f'<img src="{_url(path)}" width="{width}" height="{height}" '
            f'alt="{_text(alt)}" loading="lazy">'
        )
    if overlay is None:
        return f'<div class="thumb">{image}</div>'
    panel_data = f' data-panel="{_url(panel)}"' if panel else ""
    return f'<a class="thumb open" href="{_url(overlay)}"{panel_data}>{image}</a>'


def _line(term: str, text: str) -> str:
    return f"<dt>{_text(term)}</dt><dd>{_text(text)}</dd>"


def _links(card: _Card) -> str:
    return " ".join(
        f'<a href="{_url(path)}">{_text(name)}</a>' for name, path in card.links.items()
    )


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _url(relative: str) -> str:
    """A relative link to a file under OUT: every character but letters, digits, '/' and
    '_.-~' percent-encoded (so '#', '?', '%', spaces and quotes stay part of the name)."""
    return html.escape(quote(relative, safe="/"), quote=True)


def _fixed(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


_CSS = """
:root { color-scheme: light; --ok: #2e7d32; --gate: #e65100; --error: #c62828; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem 1.5rem; color: #222; }
h1 { font-size: 1.4rem; margin: 0 0 .5rem; }
[hidden] { display: none !important; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; margin: 0; }
dl.summary dt { color: #666; }
dl.summary dd { margin: 0; }
#errors table { border-collapse: collapse; margin: .5rem 0; }
#errors td, #errors th { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; }
#errors h2 { font-size: 1.1rem; color: var(--error); }
#filters { position: sticky; top: 0; background: #fff; padding: .6rem 0; display: flex;
  flex-wrap: wrap; gap: 1rem; align-items: center; border-bottom: 1px solid #ddd; z-index: 1; }
#shown { color: #666; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr));
  gap: 1rem; margin-top: 1rem; }
.card { border: 1px solid #ddd; border-top: 4px solid var(--ok); border-radius: 4px;
  padding: .5rem; overflow-wrap: anywhere; }
.card.gate-failed { border-top-color: var(--gate); }
.card.error { border-top-color: var(--error); }
.card h2 { font-size: .9rem; margin: .4rem 0 .2rem; display: inline; }
.badge { font-size: .75rem; margin-left: .4rem; padding: 0 .3rem; border-radius: 3px;
  color: #fff; background: var(--ok); }
.gate-failed .badge { background: var(--gate); }
.error .badge { background: var(--error); }
.thumb { display: flex; justify-content: center; align-items: center; height: 200px;
  background: #f2f2f2; }
.thumb img { width: 100%; height: 200px; object-fit: contain; }
.card dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 .5rem;
  margin: .4rem 0; font-size: .85rem; }
.card dt { color: #666; }
.card dd { margin: 0; }
.links a { margin-right: .5rem; }
.missing, .reason { color: #666; font-size: .85rem; }
dialog { max-width: 95vw; max-height: 95vh; padding: 1rem; }
dialog img { display: block; max-width: 100%; margin: .5rem 0; }
#viewer-overlay { min-height: 256px; max-height: 70vh; object-fit: contain; }
"""

_VIEWER = """<dialog id="viewer">
<form method="dialog"><button>close</button></form>
<h2 id="viewer-title"></h2>
<img id="viewer-overlay" alt="overlay">
<img id="viewer-panel" alt="panel">
</dialog>"""

# Plain ES5-level DOM code; only textContent and attributes are set, never HTML.
_JS = """
(function () {
  var bar = document.getElementById('filters');
  var selects = Array.prototype.slice.call(bar.querySelectorAll('select'));
  var cards = Array.prototype.slice.call(document.querySelectorAll('#grid .card'));
  var shown = document.getElementById('shown');
  function apply() {
    var count = 0;
    cards.forEach(function (card) {
      var keep = selects.every(function (s) {
        return !s.value || card.getAttribute('data-' + s.name) === s.value;
      });
      card.hidden = !keep;
      if (keep) { count += 1; }
    });
    shown.textContent = count + ' of ' + cards.length + ' shown';
  }
  selects.forEach(function (s) { s.addEventListener('change', apply); });
  bar.hidden = false;
  apply();

  var viewer = document.getElementById('viewer');
  if (!viewer.showModal) { return; }  // no <dialog>: the links open the files themselves
  var overlay = document.getElementById('viewer-overlay');
  var panel = document.getElementById('viewer-panel');
  document.getElementById('grid').addEventListener('click', function (event) {
    var link = event.target.closest('a.open');
    if (!link) { return; }
    event.preventDefault();
    var card = link.closest('.card');
    document.getElementById('viewer-title').textContent = card.querySelector('h2').textContent;
    overlay.src = link.getAttribute('href');
    var panelPath = link.getAttribute('data-panel');
    panel.hidden = !panelPath;
    if (panelPath) { panel.src = panelPath; } else { panel.removeAttribute('src'); }
    viewer.showModal();
  });
  viewer.addEventListener('click', function (event) {
    if (event.target === viewer) { viewer.close(); }
  });
})();
"""
