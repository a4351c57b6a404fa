"""The skeleton every page shares, its assets, and the pieces the pages build it from.

A page is one self-contained file: its CSS and JS inline (read from `assets/`, package data),
no network, no CDN; every link relative and percent-encoded. So it works from a file:// URL,
from a zip of its folder unpacked anywhere, and in a CI artifact browser. Without JS (or under
a strict Content-Security-Policy) every card and link is still there; only the filters and the
viewer need the script.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from urllib.parse import quote

__all__ = [
    "asset",
    "page_document",
    "escaped",
    "url",
    "fixed",
    "breakable",
    "definitions",
    "summary_list",
    "errors_section",
    "select",
    "filter_bar",
]

BASE_STYLE = "report.css"  # every page's; a page adds its own sheets after it
SCRIPT = "report.js"  # the filters and the viewer of a page of cards
VIEWER = "viewer.html"  # the dialog the script opens


@functools.cache
def asset(name: str) -> str:
    """The text of `assets/NAME` (read once per process)."""
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def page_document(
    title: str,
    header: Iterable[str],
    body: Iterable[str],
    *,
    styles: Sequence[str] = (),
    interactive: bool = False,
) -> str:
    """A whole page as text: the title as <title> and <h1>, then `header` in the <header>,
    `body`, and with `interactive` the viewer and the script that drive the filters
    (nav#filters) and open a card's `a.open` link in the viewer. Empty parts are left out."""
    # Each sheet ends with its newline; no blank line between them.
    sheets = "\n" + "".join(asset(name) for name in (BASE_STYLE, *styles))
    script = [asset(VIEWER).rstrip("\n"), f"<script>\n{asset(SCRIPT)}</script>"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escaped(title)}</title>",
        f"<style>{sheets}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{escaped(title)}</h1>",
        *header,
        "</header>",
        *body,
        *(script if interactive else []),
        "</body>",
        "</html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def escaped(value: object) -> str:
    """Any value as HTML text or an attribute's value."""
    return html.escape(str(value), quote=True)


def url(relative: str) -> str:
    """A relative link to a file: every character but letters, digits, '/' and '_.-~'
    percent-encoded (so '#', '?', '%', spaces and quotes stay part of the name)."""
    return html.escape(quote(relative, safe="/"), quote=True)


def fixed(value: object, digits: int = 3, missing: str = "n/a") -> str:
    """A number with `digits` decimals; `missing` for anything else (None: not measured)."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) else missing


def breakable(path: str) -> str:
    """A path as HTML text that may wrap after each '/' (escaped first: the <wbr> are ours)."""
    return escaped(path).replace("/", "/<wbr>")


def definitions(rows: Iterable[tuple[str, str]]) -> str:
    """(term, text) rows as the inside of a <dl>."""
    return "".join(f"<dt>{escaped(term)}</dt><dd>{escaped(value)}</dd>" for term, value in rows)


def summary_list(rows: Iterable[tuple[str, str]], link: str | None = None) -> str:
    """The header's figures, and a link to the JSON they come from."""
    found = f'<p><a href="{url(link)}">{escaped(link)}</a></p>' if link else ""
    return f'<dl class="summary">{definitions(rows)}</dl>{found}'


def errors_section(heading: str, rows: Sequence[tuple[str, str]]) -> str:
    """The inputs left out, and why; nothing when there are none."""
    if not rows:
        return ""
    cells = "".join(
        f"<tr><td>{escaped(what)}</td><td>{escaped(why)}</td></tr>" for what, why in rows
    )
    return (
        f'<section id="errors"><h2>{escaped(heading)}</h2>'
        f"<table><thead><tr><th>input</th><th>reason</th></tr></thead>"
        f"<tbody>{cells}</tbody></table></section>"
    )


def select(name: str, label: str, counts: Mapping[str, int], ordered: bool = True) -> str:
    """A filter on the cards' `data-NAME`: one choice per value with its count, values sorted
    (or in the order of `counts` when not `ordered`)."""
    values = sorted(counts) if ordered else list(counts)
    choices = "".join(
        f'<option value="{escaped(value)}">{escaped(value)} ({counts[value]})</option>'
        for value in values
    )
    return (
        f'<label>{escaped(label)} <select name="{name}">'
        f'<option value="">all</option>{choices}</select></label>'
    )


def filter_bar(selects: Iterable[str], cards: int) -> str:
    """The filters for the script; hidden until it runs (they would do nothing without it)."""
    return (
        '<nav id="filters" hidden>'
        + "".join(selects)
        + f'<span id="shown">{cards} of {cards} shown</span></nav>'
    )
