"""Output keys: the unique, safe stems a run names its outputs by, one per input."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

_UNSAFE_CHARS = re.compile(r"[^\w.-]")  # \w on str is Unicode-aware: letters, digits, '_'
# Room for suffixes such as '-12.overlay.png' under the usual 255-byte file-name limit.
_MAX_COMPONENT_BYTES = 200


def output_keys(names: Sequence[str]) -> list[str]:
    """The output keys `gradcam explain` gives files named one by one: each file's name
    without its extension, made safe and unique ('a/cat.jpg', 'b/cat.png' → 'cat', 'cat-2')."""
    return unique_keys([key_from_parts((Path(name).stem or Path(name).name,)) for name in names])


def key_from_parts(parts: tuple[str, ...]) -> str:
    """A key from path components below the searched folder, each made safe ('_' if none)."""
    return "/".join(_safe_component(part) for part in parts) or "_"


def _safe_component(part: str) -> str:
    """A file-name component of letters, digits and '._-' that is neither hidden nor an option."""
    # NFC: macOS hands out decomposed names; 'é' should give the same key on every system.
    text = _UNSAFE_CHARS.sub("_", unicodedata.normalize("NFC", part))
    text = text.encode("utf-8")[:_MAX_COMPONENT_BYTES].decode("utf-8", errors="ignore")
    if text in ("", ".", ".."):
        return "_"
    if text[0] in "-.":
        return "_" + text[1:]
    return text


def unique_keys(keys: list[str]) -> list[str]:
    """Append -2, -3, ... to later repeats, comparing case-insensitively (macOS, Windows)."""
    used: set[str] = set()
    unique = []
    for key in keys:
        candidate, number = key, 1
        while candidate.casefold() in used:
            number += 1
            candidate = f"{key}-{number}"
        used.add(candidate.casefold())
        unique.append(candidate)
    return unique
