"""Finding the images a run explains, and decoding each one to an RGB picture.

`collect_inputs` turns command-line arguments (files, folders, globs, '-' for paths on stdin)
into an ordered list of `InputItem`s, each with a unique output key; `load_image` decodes one
file the way a user expects to see it (EXIF orientation applied, transparency on white,
16-bit scaled rather than clipped). Neither imports torch.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError, UsageError
from .files import os_reason

__all__ = [
    "IMAGE_EXTENSIONS",
    "InputItem",
    "DecodedImage",
    "collect_inputs",
    "decode_image",
    "load_image",
    "parse_shard",
    "shard_of",
    "select_shard",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

MISSING = "no such file or directory"
IMAGE_NAMED_FOLDER = "is a directory, not an image (and holds no images)"
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE_CHARS = re.compile(r"[^\w.-]")  # \w on str is Unicode-aware: letters, digits, '_'
# Room for suffixes such as '-12.overlay.png' under the usual 255-byte file-name limit.
_MAX_COMPONENT_BYTES = 200
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class InputItem:
    """One input of a run.

    `source` is the path as the user gave it (or as found under a folder), shown as `input` in
    the JSON; `key` is the unique output stem (a relative POSIX path of safe characters); `error`
    is set when the input could not even be found.
    """

    source: str
    path: Path | None
    key: str
    error: str | None = None


@dataclass(frozen=True)
class _Found:
    """An input before keys are made unique; its key is made from `key_parts`."""

    source: str
    path: Path
    key_parts: tuple[str, ...]
    error: str | None = None


# -- collecting ----------------------------------------------------------------------------


def collect_inputs(args: Sequence[str], stdin: TextIO | None = None) -> list[InputItem]:
    """Expand files, folders, globs and '-' (newline-separated paths on stdin) into inputs.

    Order is the arguments' order, sorted within a folder or glob; the same file reached twice
    is listed once. A folder is searched recursively for IMAGE_EXTENSIONS (hidden entries and
    symlinked folders are skipped, so link loops cannot hang); an explicit file is taken
    whatever its extension, so a wrong one is reported rather than silently dropped. A glob or
    folder with no images adds nothing (several globs where one is empty is a normal call); a
    path that does not exist becomes an item with `error` set. UsageError when nothing is left.
    """
    found = _unique_files(_expand_args(args, stdin))
    if not found:
        raise UsageError(
            f"no input images found in {_describe_args(args)}; "
            "give image files, folders, globs or - for paths on stdin"
        )
    keys = _unique_keys([_key_from_parts(item.key_parts) for item in found])
    return [
        InputItem(source=item.source, path=item.path, key=key, error=item.error)
        for item, key in zip(found, keys, strict=True)
    ]


def _expand_args(args: Sequence[str], stdin: TextIO | None) -> Iterator[_Found]:
    for arg in args:
        if arg == "-":
            for line in (stdin or sys.stdin).read().splitlines():
                # A '-' read from stdin is a file named '-', not a second read of stdin.
                if line.strip():
                    yield from _expand_one(line.strip())
        else:
            yield from _expand_one(arg)


def _expand_one(arg: str) -> Iterator[_Found]:
    path = Path(arg)
    try:
        mode = os.stat(arg).st_mode
    except OSError as exc:
        if _GLOB_CHARS.search(arg):
            yield from _expand_glob(arg)
        else:
            yield _Found(arg, path, (path.stem or path.name,), error=_stat_reason(exc))
        return
    if stat.S_ISDIR(mode):
        found = list(_walk_folder(arg, key_prefix=()))
        if not found and _is_image_name(os.path.normpath(arg)):
            yield _Found(arg, path, (path.stem,), error=IMAGE_NAMED_FOLDER)
        yield from found
    elif stat.S_ISREG(mode):
        yield _Found(arg, path, (path.stem,))
    else:  # a pipe or a device: reading it could block forever
        yield _Found(arg, path, (path.stem,), error="not a regular file")


def _expand_glob(pattern: str) -> Iterator[_Found]:
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_dir():
            # Keys keep the matched folder's own name: 'shots/*' gives 'a/cat' and 'b/cat'.
            yield from _walk_folder(match, key_prefix=(path.name,))
        elif path.is_file() and _is_image_name(match):
            yield _Found(match, path, (path.stem,))


def _walk_folder(folder: str, key_prefix: tuple[str, ...]) -> Iterator[_Found]:
    """Image files under `folder`, sorted; keys are their paths below it without extension."""
    found: list[tuple[tuple[str, ...], str]] = []  # (parts below folder, path), for sorting
    image_named_folders: list[tuple[str, ...]] = []
    # followlinks=False: a symlinked folder is listed but never entered, so loops cannot hang.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        below = tuple(part for part in dirpath[len(folder) :].split(os.sep) if part)
        for name in filenames:
            if not name.startswith(".") and _is_image_name(name):
                found.append(((*below, name), os.path.join(dirpath, name)))
        image_named_folders += [
            (*below, name)
            for name in dirnames
            if _is_image_name(name) and not os.path.islink(os.path.join(dirpath, name))
        ]
    # A folder named 'x.jpg' looks like an image: say why it gives none rather than drop it.
    empty = [p for p in image_named_folders if not any(f[: len(p)] == p for f, _ in found)]
    found += [(parts, os.path.join(folder, *parts)) for parts in empty]
    found.sort()
    for parts, source in found:
        stem = os.path.splitext(parts[-1])[0]
        error = IMAGE_NAMED_FOLDER if parts in empty else None
        yield _Found(source, Path(source), (*key_prefix, *parts[:-1], stem), error=error)


def _stat_reason(exc: OSError) -> str:
    """'no such file or directory', 'permission denied', 'too many levels of symbolic links'."""
    if isinstance(exc, FileNotFoundError) or not exc.strerror:
        return MISSING
    return os_reason(exc)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _unique_files(items: Iterator[_Found]) -> list[_Found]:
    """Drop repeats of the same file, keeping the first."""
    seen: set[tuple[object, ...]] = set()
    unique = []
    for item in items:
        identity = _file_identity(item.path)
        if identity not in seen:
            seen.add(identity)
            unique.append(item)
    return unique


def _file_identity(path: Path) -> tuple[object, ...]:
    """(device, inode) for an existing file: one stat, and it sees through links and './'."""
    try:
        info = os.stat(path)
    except OSError:
        return (os.path.abspath(path),)
    if info.st_ino == 0:  # some network and FAT file systems report no inode numbers
        return (os.path.realpath(path),)
    return (info.st_dev, info.st_ino)


def _describe_args(args: Sequence[str]) -> str:
    if not args:
        return "the arguments (none were given)"
    shown = ", ".join(f"'{arg}'" for arg in args[:3])
    return shown + (f" and {len(args) - 3} more" if len(args) > 3 else "")


# -- keys ----------------------------------------------------------------------------------


def _key_from_parts(parts: tuple[str, ...]) -> str:
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


def _unique_keys(keys: list[str]) -> list[str]:
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


# -- decoding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedImage:
    """A decoded photo and what the user should know about how it was read."""

    image: Image.Image  # RGB, fully loaded
    warnings: tuple[str, ...] = ()  # e.g. only the first frame of an animation was used


def load_image(path: Path) -> Image.Image:
    """Decode `path` to a fully loaded RGB image; ImageReadError with a one-line reason otherwise.

    See `decode_image`, which also returns the warnings (such as "first frame only").
    """
    return decode_image(path).image


def decode_image(path: Path) -> DecodedImage:
    """Decode `path` as a viewer shows it; ImageReadError with a one-line reason otherwise.

    - EXIF orientation is applied, so the map lands on the photo as the user sees it.
    - Animated GIF/WebP/PNG and multi-page TIFF: the first frame, with a warning saying so.
    - Transparent pixels are composited onto white: their stored colour is arbitrary (often
      black or leftover paint), and the model should see what a viewer sees.
    - 16-bit images are scaled by 65535 (Pillow's convert would clip everything above 255 to
      white); float images by their maximum.
    - PNG checksums are verified (Pillow's decoder skips them; libpng and browsers do not).
    - Images over Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) are refused.
      Pillow itself only warns up to twice the limit, and decoding then takes gigabytes.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"cannot read {path}: is a directory")
    try:
        with Image.open(path) as image:
            _refuse_over_pixel_limit(image)
            if image.format == "PNG":
                _verify_png(path)
            frames = _frame_count(image)
            image.load()  # inside the try: truncated data fails here, not later in a worker
            upright = ImageOps.exif_transpose(image)
            return DecodedImage(_to_rgb(upright), _frames_warning(image.format, frames))
    # Every exception: a damaged file can make a Pillow plugin raise almost anything, and one
    # bad input must become one failed result, not the end of a run over a thousand images.
    except Exception as exc:
        raise ImageReadError(f"cannot read {path}: {_decode_reason(exc, path)}") from exc


def _refuse_over_pixel_limit(image: Image.Image) -> None:
    """Pillow raises DecompressionBombError only past twice its limit; raise it from the limit."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit and pixels > limit:
        raise Image.DecompressionBombError(f"Image size ({pixels} pixels) exceeds limit")


def _verify_png(path: Path) -> None:
    """Check every chunk's CRC (verify() needs a file of its own: it consumes the image)."""
    with Image.open(path) as check:
        check.verify()


def _frame_count(image: Image.Image) -> int:
    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1:
        image.seek(0)  # counting seeks through the file; decode the first frame
    return frames


def _frames_warning(image_format: str | None, frames: int) -> tuple[str, ...]:
    if frames <= 1:
        return ()
    unit = "pages" if image_format == "TIFF" else "frames"
    what = f"multi-page {image_format}" if unit == "pages" else f"animated {image_format}"
    return (f"{what} with {frames} {unit}: only the first was explained",)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _on_white(image.convert("RGBA"))
    if image.mode.startswith("I;16") or image.mode == "I":
        return _scaled_to_rgb(np.asarray(image, dtype=np.float64), 65535.0)
    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0)
        return _scaled_to_rgb(pixels, float(pixels.max(initial=0.0)))
    return image.convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scaled_to_rgb(pixels: np.ndarray, full_scale: float) -> Image.Image:
    """Grey levels in [0, full_scale] to an 8-bit RGB image (all black when full_scale <= 0)."""
    if full_scale <= 0:
        grey = np.zeros(pixels.shape, dtype=np.uint8)
    else:
        grey = np.rint(np.clip(pixels / full_scale, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _decode_reason(exc: BaseException, path: Path) -> str:
    """One line saying why decoding failed, in words a user can act on."""
    detail = _one_line(exc)
    if isinstance(exc, Image.DecompressionBombError):
        pixels = re.search(r"(\d+) pixels", detail)
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        limit = Image.MAX_IMAGE_PIXELS or 0
        return (
            f"image too large: {size}, over the {limit:,}-pixel limit (decompression bomb "
            "guard); downscale it below that to explain it"
        )
    if isinstance(exc, FileNotFoundError):
        return MISSING
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop)"
    if isinstance(exc, UnidentifiedImageError):
        return _unidentified_reason(path)
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it"
    if "truncated" in detail.lower() or isinstance(exc, EOFError):
        return f"truncated ({detail or 'file ends early'})"
    if isinstance(exc, OSError) and exc.strerror and not detail.startswith("broken"):
        return os_reason(exc)
    return f"damaged or unsupported image ({detail or type(exc).__name__})"


_HEAD_BYTES = 512


def _one_line(exc: BaseException) -> str:
    """The message on one line, whatever the plugin put in it; chunk names without b'...'."""
    return re.sub(r"\bb'(\w+)'", r"\1", " ".join(str(exc).split()))


def _unidentified_reason(path: Path) -> str:
    """Why Pillow could not even tell the format: say what the file is instead."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError:
        head = b"?"
    if not head:
        return "empty file (0 bytes)"
    damaged = _plugin_complaint(path, head)
    if damaged:
        return damaged
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<!doctype html") or b"<html" in text:
        return "an HTML page, not an image"
    if text.startswith(b"<?xml") or b"<svg" in text:
        return "an XML/SVG document, not a bitmap image (convert it to PNG first)"
    if _looks_like_text(head):
        return "a text file, not an image"
    return "not an image format Pillow can decode (unknown file signature)"


def _plugin_complaint(path: Path, head: bytes) -> str | None:
    """A plugin that recognises the signature but rejects the header: its reason.

    Image.open hides these ("cannot identify image file"), yet they name the damage:
    "broken PNG file (bad header checksum in b'IHDR')".
    """
    for image_format in Image.ID:
        factory, accept = Image.OPEN[image_format]
        if accept is None:  # plugins that accept anything tell nothing
            continue
        try:
            recognised = bool(accept(head[:16]))
        except Exception:  # some accept() functions fail on short input
            recognised = False
        if not recognised:
            continue
        try:
            with open(path, "rb") as handle:
                factory(handle, str(path)).close()
        except Exception as exc:
            return f"damaged {image_format} header ({_one_line(exc) or type(exc).__name__})"
        return None
    return None


def _looks_like_text(head: bytes) -> bool:
    for cut in range(4):  # the read may end inside a multi-byte character
        try:
            decoded = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return bool(decoded) and all(ch.isprintable() or ch in "\t\r\n" for ch in decoded)
    return False


# -- sharding ----------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard K/N` → (K, N), 1 ≤ K ≤ N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"--shard takes K/N (e.g. 2/8 for the second of 8 shares), got '{text}'")
    k, n = int(match[1]), int(match[2])
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be from 1 to N")
    return k, n


def shard_of(key: str, shards: int) -> int:
    """The shard (1..N) an input belongs to, from its key alone.

    A hash, not a position in the list: every process agrees on the split even when they list
    the files in another order or some see more files, and an input never moves to another shard
    when others are added.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards + 1


def select_shard(items: Sequence[InputItem], shard: tuple[int, int] | None) -> list[InputItem]:
    if shard is None:
        return list(items)
    k, n = shard
    return [item for item in items if shard_of(item.key, n) == k]
