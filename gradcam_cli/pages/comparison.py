"""`gradcam compare --report`: OUT/comparison.html, the pairs of a comparison, worst first.

Each pair is a card: the base run's overlay, the new run's, and the absolute difference of the
two maps (each min-max scaled, as the overlays draw them), placed on the photo's frame so the
three line up. The pictures are written into OUT/comparison/ (thumbnails of the runs' overlays,
the difference, as JPEGs), so the page and that folder are all a CI artifact needs; the links
to the full-size overlays and raw maps are relative to the runs' folders and work while they
keep their places. Self-contained like every page (`document`); it shares the run's page's
style, filters and viewer.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..comparison import COMPARISON_NAME, Comparison, Pair
from ..errors import UsageError
from ..files import resolve_inside, write_image_atomic, write_text_atomic
from ..mapstats import UNIT_BOX, Box, common_grid
from ..render import colormap_lut, heatmap_image, normalize_map, place_map
from .document import (
    breakable,
    definitions,
    escaped,
    filter_bar,
    fixed,
    page_document,
    select,
    summary_list,
    url,
)
from .thumbnails import THUMBNAIL_SIZE, UNREADABLE, read_shrunk

__all__ = ["COMPARISON_PAGE", "PICTURES", "write_comparison_page", "render_comparison_page"]

COMPARISON_PAGE = "comparison.html"
PICTURES = "comparison"  # OUT/comparison/: the cards' pictures
DIFFERENCE_COLORMAP = "magma"  # sequential: dark where the maps agree, bright where they differ
_BACKGROUND = (242, 242, 242)  # outside the maps' boxes, as the cards' empty picture frames
_LEFT_OUT_SHOWN = 20  # rows of the "not compared" table shown unfolded


def write_comparison_page(comparison: Comparison, out: str | Path) -> Path:
    """Write the cards' pictures into OUT/comparison/ and OUT/comparison.html; the page's path."""
    out = Path(out)
    ranked = list(enumerate(comparison.pairs, 1))
    # Decoding, encoding and fsync release the GIL: a thread per core keeps them all busy.
    with ThreadPoolExecutor(max_workers=_threads()) as pool:
        cards = list(pool.map(lambda item: _card(comparison, item[1], item[0], out), ranked))
    page = resolve_inside(out, COMPARISON_PAGE)
    write_text_atomic(page, render_comparison_page(comparison, cards))
    return page


def _threads() -> int:
    """One per core, at most 8: no model shares the machine here."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))


# -- pictures ---------------------------------------------------------------------------------


def _stem(pair: Pair) -> str:
    """The new map's file name without `.raw.npy`: unique, as each new map is in one pair."""
    raw = pair.new.raw
    return raw[: -len(".raw.npy")] if raw.endswith(".raw.npy") else raw


def _overlay_thumbnail(run_dir: Path, overlay: str | None, out: Path, name: str) -> str | None:
    """A thumbnail of a run's overlay in OUT/comparison/; its path, or None when unreadable."""
    if overlay is None:
        return None
    path = f"{PICTURES}/{name}"
    try:
        small = read_shrunk(resolve_inside(run_dir, overlay))
    except (*UNREADABLE, UsageError):
        return None
    write_image_atomic(resolve_inside(out, path), small, "jpg")
    return path


def difference_picture(pair: Pair, base_map: np.ndarray, new_map: np.ndarray) -> Image.Image:
    """|minmax(base) − minmax(new)| on the maps' common grid, coloured, placed on the photo's
    frame at thumbnail size (or on the grid alone when the geometry is unknown)."""
    base_box, new_box, photo = _geometry(pair)
    a, b, frame = common_grid(
        normalize_map(base_map, "minmax").astype(np.float64),
        normalize_map(new_map, "minmax").astype(np.float64),
        base_box,
        new_box,
    )
    if photo is None:  # the grid alone, a cell a pixel before scaling
        photo, frame = (a.shape[1], a.shape[0]), (0.0, 0.0, float(a.shape[1]), float(a.shape[0]))
    scale = THUMBNAIL_SIZE / max(photo)
    canvas = (max(1, round(photo[0] * scale)), max(1, round(photo[1] * scale)))
    box = (frame[0] * scale, frame[1] * scale, frame[2] * scale, frame[3] * scale)
    values, inside = place_map(np.abs(a - b), canvas, box, "bilinear")
    coloured = heatmap_image(values, inside, colormap_lut(DIFFERENCE_COLORMAP))
    picture = Image.new("RGB", canvas, _BACKGROUND)
    picture.paste(coloured, mask=coloured.getchannel("A"))
    return picture


def _geometry(pair: Pair) -> tuple[Box, Box, tuple[int, int] | None]:
    """Each map's crop box and the photo's size; without them, one unit box for both."""
    if pair.base.box is None or pair.new.box is None or pair.new.size is None:
        return UNIT_BOX, UNIT_BOX, None
    return pair.base.box, pair.new.box, pair.new.size


def _difference_file(comparison: Comparison, pair: Pair, out: Path, name: str) -> str:
    maps = [
        np.load(resolve_inside(folder, side.raw), allow_pickle=False)
        for folder, side in ((comparison.base_dir, pair.base), (comparison.new_dir, pair.new))
    ]
    path = f"{PICTURES}/{name}"
    write_image_atomic(resolve_inside(out, path), difference_picture(pair, *maps), "jpg")
    return path


# -- cards ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Card:
    pair: Pair
    rank: int  # 1: the worst
    pictures: dict[str, str | None]  # caption → path under OUT (None: no overlay on disk)
    links: dict[str, str]  # name → the runs' files, relative to OUT


def _card(comparison: Comparison, pair: Pair, rank: int, out: Path) -> _Card:
    stem = _stem(pair)
    pictures = {
        "base": _overlay_thumbnail(comparison.base_dir, pair.base.overlay, out, f"{stem}.base.jpg"),
        "new": _overlay_thumbnail(comparison.new_dir, pair.new.overlay, out, f"{stem}.new.jpg"),
        "|difference|": _difference_file(comparison, pair, out, f"{stem}.difference.jpg"),
    }
    links = {
        f"{run} {kind}": link
        for run, folder, side in (
            ("base", comparison.base_dir, pair.base),
            ("new", comparison.new_dir, pair.new),
        )
        for kind, relative in (("overlay", side.overlay), ("raw", side.raw))
        if (link := _link(out, folder, relative)) is not None
    }
    return _Card(pair, rank, pictures, links)


def _link(out: Path, run_dir: Path, relative: str | None) -> str | None:
    """A run's file as a link relative to OUT, when it is there."""
    if not relative:
        return None
    try:
        path = resolve_inside(run_dir, relative)
    except UsageError:
        return None
    if not path.is_file():
        return None
    return Path(os.path.relpath(path, out)).as_posix()


def _status(pair: Pair) -> str:
    if pair.gate is None:
        return "measured"
    return "failed" if pair.failed else "passed"


def _lines(pair: Pair) -> list[tuple[str, str]]:
    base, new = pair.base.target, pair.new.target
    lines = [("target", _target_text(base, new, pair.match))]
    lines.append(("correlation", f"{_number(pair.pearson)} (rank {_number(pair.spearman)})"))
    moved = pair.peak_shift
    lines.append(("peak moved", f"{moved:.1f} px" if moved is not None else "none (a blank map)"))
    lines.append(("energy moved", _number(pair.energy_moved)))
    top1 = f"{pair.base.top1.get('label')} → {pair.new.top1.get('label')}"
    lines.append(("top-1", top1 if pair.top1_changed else f"{pair.new.top1.get('label')}, kept"))
    if pair.probability_change is not None:
        lines.append(("probability", f"{pair.probability_change:+.3f}"))
    if pair.localization is not None:
        found = pair.localization
        lines.append(
            (
                "localization",
                f"energy {_signed(found['energy_change'])}, IoU {_signed(found['iou_change'])}, "
                f"hit {found['hit']['base']} → {found['hit']['new']}",
            )
        )
    lines.append(("layer", pair.layers))
    lines += [("gate", reason) for reason in pair.shortfalls]
    return lines


def _target_text(base: Mapping, new: Mapping, match: str) -> str:
    before, after = base.get("probability"), new.get("probability")
    odds = f" ({_number(before, 'n/a')} → {_number(after, 'n/a')})"
    if match == "class":
        return f"{base.get('label')}{odds}"
    return f"{base.get('label')} → {new.get('label')} (each run's top-1){odds}"


def _number(value: object, missing: str = "none (a blank map)") -> str:
    return fixed(value, missing=missing)


def _signed(value: object) -> str:
    return f"{value:+.3f}" if isinstance(value, int | float) else "n/a"


# -- the page ---------------------------------------------------------------------------------


def render_comparison_page(comparison: Comparison, cards: list[_Card]) -> str:
    base, new = comparison.base["run"], comparison.new["run"]
    body = [
        _left_out(comparison),
        _filters(cards),
        '<main id="grid">',
        *(_card_html(card) for card in cards),
        "</main>",
    ]
    return page_document(
        f"gradcam compare: {base} → {new}",
        [_summary(comparison)],
        body,
        styles=["comparison.css"],
        interactive=True,
    )


def _run_text(run: Mapping) -> str:
    model = run.get("model") or {}
    layers = ", ".join(map(str, run.get("layers") or []))
    return (
        f"{run.get('run')}: {model.get('name')} ({model.get('source')}, weights "
        f"{model.get('weights')}), {run.get('method')} @ {layers}"
    )


def _summary(comparison: Comparison) -> str:
    summary = comparison.summary()
    gates = {name: value for name, value in asdict(comparison.gates).items() if value is not None}
    rows = [
        ("base", _run_text(comparison.base)),
        ("new", _run_text(comparison.new)),
        ("pairs", f"{summary['pairs']} over {summary['inputs_compared']} inputs"),
        ("figures", comparison.figures().split(": ", 1)[1]),
        ("gates", ", ".join(f"{name} {value:g}" for name, value in gates.items()) or "none"),
        ("verdict", comparison.verdict()),
    ]
    return summary_list(rows, COMPARISON_NAME)


def _left_out(comparison: Comparison) -> str:
    """The inputs and explanations that were not compared, and why."""
    rows = [(name, "only in the base run") for name in comparison.only_in_base]
    rows += [(name, "only in the new run") for name in comparison.only_in_new]
    rows += [
        (f["input"], f"failed in the {'base' if f['base'] else 'new'} run: {f['base'] or f['new']}")
        for f in comparison.failed
    ]
    rows += [
        (
            f"{u['input']} [{u['target']['label']} @ {u['layer']}]",
            f"no partner in the other run ({u['run']} only)",
        )
        for u in comparison.unpaired
    ]
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{escaped(what)}</td><td>{escaped(why)}</td></tr>" for what, why in rows
    )
    shown = " open" if len(rows) <= _LEFT_OUT_SHOWN else ""  # a long list starts folded
    return (
        f'<section id="errors"><details{shown}><summary><h2>{len(rows)} not compared</h2>'
        "</summary><table><thead><tr><th>input</th><th>why</th></tr></thead>"
        f"<tbody>{body}</tbody></table></details></section>"
    )


def _filters(cards: list[_Card]) -> str:
    """Selects for the shared script (data-NAME of each card); hidden until it runs."""
    pairs = [card.pair for card in cards]
    selects = []
    statuses = Counter(_status(pair) for pair in pairs)
    if "measured" not in statuses:
        gate = {s: statuses.get(s, 0) for s in ("failed", "passed")}
        selects.append(select("status", "gate", gate, ordered=False))
    selects.append(
        select("top1", "top-1", Counter("changed" if p.top1_changed else "kept" for p in pairs))
    )
    layers = Counter(pair.layer for pair in pairs)
    if len(layers) > 1:
        selects.append(select("layer", "layer", layers))
    return filter_bar(selects, len(cards))


def _card_html(card: _Card) -> str:
    pair = card.pair
    status = _status(pair)
    data = " ".join(
        f'data-{key}="{escaped(value)}"'
        for key, value in (
            ("status", status),
            ("top1", "changed" if pair.top1_changed else "kept"),
            ("layer", pair.layer),
            ("input", pair.input),
        )
    )
    name = breakable(pair.input)
    badge = f'<span class="badge">{escaped(status)}</span>' if pair.gate is not None else ""
    rank = f'<span class="rank">#{card.rank}</span>'
    head = f'<h2 title="{escaped(pair.input)}">{rank} {name}</h2>{badge}'
    lines = definitions(_lines(pair))
    links = " ".join(
        f'<a href="{url(path)}">{escaped(kind)}</a>' for kind, path in card.links.items()
    )
    css = {"failed": "gate-failed", "passed": "ok", "measured": "measured"}[status]
    return (
        f'<article class="card {css}" {data}>{_pictures(card)}{head}'
        f'<dl>{lines}</dl><p class="links">{links}</p></article>'
    )


def _pictures(card: _Card) -> str:
    """base | new | |difference|; a click opens the two full-size overlays in the viewer."""
    figures = []
    for caption, path in card.pictures.items():
        image = (
            f'<img src="{url(path)}" alt="{escaped(caption)}" loading="lazy">'
            if path
            else '<span class="missing">no overlay on disk</span>'
        )
        figures.append(f"<figure>{image}<figcaption>{escaped(caption)}</figcaption></figure>")
    base, new = card.links.get("base overlay"), card.links.get("new overlay")
    if base and new:
        opens = f'class="trio open" href="{url(base)}" data-panel="{url(new)}"'
        return f"<a {opens}>{''.join(figures)}</a>"
    return f'<div class="trio">{"".join(figures)}</div>'
