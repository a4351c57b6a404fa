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
import json
import os
import re
import stat
import sys
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError

from .errors import ImageReadError, UsageError
from .files import os_reason
from .report import REPORT_NAME, SHARD_REPORT

__all__ = [
    "IMAGE_EXTENSIONS",
    "InputItem",
    "DecodedImage",
    "collect_inputs",
    "output_keys",
    "decode_image",
    "decode_reason",
    "load_image",
    "open_regular",
    "refuse_over_pixel_limit",
    "recorded_warnings",
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


def collect_inputs(
    args: Sequence[str],
    stdin: TextIO | None = None,
    *,
    out_dir: Path | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> list[InputItem]:
    """Expand files, folders, globs and '-' (newline-separated paths on stdin) into inputs.

    Order is the arguments' order, sorted within a folder or glob; the same file reached twice
    is listed once. A folder is searched recursively for IMAGE_EXTENSIONS (hidden entries and
    symlinked folders are skipped, so link loops cannot hang); an explicit file is taken
    whatever its extension, so a wrong one is reported rather than silently dropped. A glob or
    folder with no images adds nothing (several globs where one is empty is a normal call); a
    path that does not exist, or that is no regular file (a FIFO, a socket, a device: reading
    it could block for ever), becomes an item with `error` set. UsageError when nothing is left.

    Folders and globs never take a run's own outputs: files inside `out_dir`, and files under
    a folder holding a gradcam report (another run's output), are skipped, and `on_skip` is
    called once with a line saying how many; a file named explicitly is still taken.
    """
    skips = _Skips(out_dir)
    found = _unique_files(_expand_args(args, stdin, skips))
    message = skips.message()
    if message and on_skip is not None:
        on_skip(message)
    if not found:
        skipped = f" ({message})" if message else ""
        raise UsageError(
            f"no input images found in {_describe_args(args)}{skipped}; "
            "give image files, folders, globs or - for paths on stdin"
        )
    keys = _unique_keys([_key_from_parts(item.key_parts) for item in found])
    return [
        InputItem(source=item.source, path=item.path, key=key, error=item.error)
        for item, key in zip(found, keys, strict=True)
    ]


def _expand_args(args: Sequence[str], stdin: TextIO | None, skips: _Skips) -> Iterator[_Found]:
    for arg in args:
        if arg == "-":
            for line in (stdin or sys.stdin).read().splitlines():
                # A '-' read from stdin is a file named '-', not a second read of stdin.
                if line.strip():
                    yield from _expand_one(line.strip(), skips)
        else:
            yield from _expand_one(arg, skips)


def _expand_one(arg: str, skips: _Skips) -> Iterator[_Found]:
    path = Path(arg)
    try:
        mode = os.stat(arg).st_mode
    except OSError as exc:
        if _GLOB_CHARS.search(arg):
            yield from _expand_glob(arg, skips)
        else:
            yield _Found(arg, path, (path.stem or path.name,), error=_stat_reason(exc))
        return
    if stat.S_ISDIR(mode):
        found = list(_walk_folder(arg, (), skips))
        if not found and _is_image_name(os.path.normpath(arg)) and not skips.skipped(arg):
            yield _Found(arg, path, (path.stem,), error=IMAGE_NAMED_FOLDER)
        yield from found
    elif stat.S_ISREG(mode):
        yield _Found(arg, path, (path.stem,))
    else:  # a pipe or a device: reading it could block forever
        yield _Found(arg, path, (path.stem,), error=not_regular_reason(mode))


def _expand_glob(pattern: str, skips: _Skips) -> Iterator[_Found]:
    root = _glob_root(pattern)
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        try:
            mode = os.stat(match).st_mode
        except OSError:  # a dangling link or a loop: nothing a glob stands for
            continue
        if stat.S_ISDIR(mode):
            # Keys keep the matched folder's own name: 'shots/*' gives 'a/cat' and 'b/cat'.
            yield from _walk_folder(match, (path.name,), skips)
        elif _is_image_name(match) and not skips.skip_file(match, root):
            error = None if stat.S_ISREG(mode) else not_regular_reason(mode)
            yield _Found(match, path, (path.stem,), error=error)


def _glob_root(pattern: str) -> str:
    """The folder a glob searches from: its components before the first wildcard."""
    head = []
    for part in pattern.split(os.sep):
        if _GLOB_CHARS.search(part):
            break
        head.append(part)
    return os.sep.join(head) if head != [""] else os.sep


def _walk_folder(folder: str, key_prefix: tuple[str, ...], skips: _Skips) -> Iterator[_Found]:
    """Image files under `folder`, sorted; keys are their paths below it without extension.

    os.scandir, not os.walk: each image-named entry is stat'ed (through symlinks), so a FIFO,
    a socket or a device becomes an item with its error instead of a read that never ends.
    """
    found: list[tuple[tuple[str, ...], str, str | None]] = []  # (parts below folder, path, error)
    image_named_folders: list[tuple[str, ...]] = []
    pending: list[tuple[str, tuple[str, ...]]] = [(folder, ())]
    while pending:
        dirpath, below = pending.pop()
        try:
            with os.scandir(dirpath) as listing:
                entries = [entry for entry in listing if not entry.name.startswith(".")]
        except OSError:  # unreadable folder: os.walk's default, skipped
            continue
        if skips.skip_folder(dirpath, entries, below_a_walk=bool(below)):
            continue
        if below and _is_image_name(below[-1]):
            image_named_folders.append(below)
        for entry in entries:
            if _is_real_folder(entry):
                # A symlinked folder is never entered (is_dir without following), so loops
                # cannot hang.
                pending.append((entry.path, (*below, entry.name)))
            elif _is_image_name(entry.name) and not _is_linked_folder(entry):
                found.append(((*below, entry.name), entry.path, _entry_error(entry)))
    # A folder named 'x.jpg' looks like an image: say why it gives none rather than drop it.
    empty = [p for p in image_named_folders if not any(f[: len(p)] == p for f, _, _ in found)]
    found += [(parts, os.path.join(folder, *parts), IMAGE_NAMED_FOLDER) for parts in empty]
    found.sort()
    for parts, source, error in found:
        stem = os.path.splitext(parts[-1])[0]
        yield _Found(source, Path(source), (*key_prefix, *parts[:-1], stem), error=error)


def _is_real_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_linked_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink() and entry.is_dir()
    except OSError:  # a symlink loop: decoding will say so
        return False


def _entry_error(entry: os.DirEntry) -> str | None:
    """Why a listed file cannot be an image before it is opened: it is no regular file."""
    try:
        mode = entry.stat().st_mode  # follows symlinks: a link to /dev/zero is a device
    except OSError:  # dangling link, loop, no permission: decoding says which
        return None
    return None if stat.S_ISREG(mode) else not_regular_reason(mode)


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def not_regular_reason(mode: int) -> str:
    """'not a regular file: a named pipe (FIFO)' (a socket, a character or block device)."""
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "a special file")
    return f"not a regular file: {kind}"


# -- skipping a run's own outputs -----------------------------------------------------------

# A report's head is read to tell it from a user's file of the same name: a gradcam report
# starts with "schema_version" and has a "results" list.
_REPORT_HEAD_BYTES = 1 << 20
_REPORT_START = re.compile(rb'\A\s*\{\s*"schema_version"\s*:\s*\d+\s*,')
_REPORT_RESULTS = re.compile(rb'"results"\s*:\s*\[')
_SHOWN_FOLDERS = 3


class _Skips:
    """Which folders a folder walk or a glob leaves out, and how many files it left there.

    --out is recognised by device and inode (and by its resolved path for folders named
    inside it), so './out', 'out' and a symlink to it are the same folder; another run's
    output by the report it holds.
    """

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.out_real = os.path.realpath(out_dir) if out_dir is not None else None
        self.out_id = _folder_identity(out_dir) if out_dir is not None else None
        self.in_out = 0
        self.in_reports = 0
        self.report_folders: list[str] = []
        self._verdicts: dict[str, str | None] = {}

    def skip_folder(
        self, folder: str, entries: list[os.DirEntry] | None = None, below_a_walk: bool = False
    ) -> bool:
        """True (and its images counted) when `folder` is --out or holds a report.

        `below_a_walk`: a folder entered by a walk that did not skip its parent, so it can only
        be --out itself, not lie inside it: one stat, no resolving of its path.
        """
        verdict = self._verdict(folder, entries, below_a_walk)
        if verdict is None:
            return False
        self._count(verdict, folder, _count_images(folder))
        return True

    def skip_file(self, path: str, root: str) -> bool:
        """True (and counted) when a glob's match lies in --out or in a folder holding a
        report, between the glob's `root` and the file."""
        folder = os.path.dirname(path) or os.curdir
        while True:
            verdict = self._verdict(folder)
            if verdict is not None:
                self._count(verdict, folder, 1)
                return True
            parent = os.path.dirname(folder) or os.curdir
            if parent == folder or len(folder) <= len(root):
                return False
            folder = parent

    def skipped(self, folder: str) -> bool:
        return self._verdicts.get(folder) is not None

    def _verdict(
        self, folder: str, entries: list[os.DirEntry] | None = None, below_a_walk: bool = False
    ) -> str | None:
        if folder not in self._verdicts:
            self._verdicts[folder] = self._judge(folder, entries, below_a_walk)
        return self._verdicts[folder]

    def _judge(
        self, folder: str, entries: list[os.DirEntry] | None, below_a_walk: bool
    ) -> str | None:
        if self.out_id is not None:
            if _folder_identity(folder) == self.out_id:
                return "out"
            if not below_a_walk and _is_below(folder, self.out_real):
                return "out"
        if entries is None:
            try:
                with os.scandir(folder) as listing:
                    entries = list(listing)
            except OSError:
                return None
        for entry in entries:
            if _is_report_name(entry.name) and _is_report(entry.path):
                return "report"
        return None

    def _count(self, verdict: str, folder: str, files: int) -> None:
        if verdict == "out":
            self.in_out += files
        else:
            self.in_reports += files
            if folder not in self.report_folders:
                self.report_folders.append(folder)

    def message(self) -> str | None:
        """'skipped 12 files inside out='gradcam_out' and 6 in folders holding another run's
        report (runs/a); name a file explicitly to explain it', or None."""
        parts = []
        if self.in_out:
            parts.append(f"{_files(self.in_out)} inside out='{self.out_dir}'")
        if self.in_reports:
            shown = ", ".join(self.report_folders[:_SHOWN_FOLDERS])
            more = len(self.report_folders) - _SHOWN_FOLDERS
            shown += f" and {more} more" if more > 0 else ""
            count = self.in_reports if parts else _files(self.in_reports)
            parts.append(f"{count} in folders holding another run's report ({shown})")
        if not parts:
            return None
        return f"skipped {' and '.join(parts)}; name a file explicitly to explain it"


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def _folder_identity(folder: str | os.PathLike) -> tuple[int, int] | None:
    try:
        info = os.stat(folder)
    except OSError:  # --out not made yet: nothing inside it to skip
        return None
    return (info.st_dev, info.st_ino) if info.st_ino else None


def _is_below(folder: str, root: str | None) -> bool:
    if root is None:
        return False
    real = os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _count_images(folder: str) -> int:
    """Image-named files under `folder`, as a walk would find them (for the skip message)."""
    count = 0
    for _, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        count += sum(not n.startswith(".") and _is_image_name(n) for n in filenames)
    return count


def _is_report_name(name: str) -> bool:
    return name == REPORT_NAME or SHARD_REPORT.fullmatch(name) is not None


def _is_report(path: str) -> bool:
    """Whether `path` is a gradcam report: read whole when small, by its head otherwise."""
    try:
        with open_regular(Path(path)) as handle:
            head = handle.read(_REPORT_HEAD_BYTES + 1)
    except OSError:
        return False
    if len(head) <= _REPORT_HEAD_BYTES:
        try:
            document = json.loads(head)
        except ValueError:
            return False
        return (
            isinstance(document, dict)
            and isinstance(document.get("schema_version"), int)
            and isinstance(document.get("results"), list)
        )
    return bool(_REPORT_START.match(head) and _REPORT_RESULTS.search(head))


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


def output_keys(names: Sequence[str]) -> list[str]:
    """The output keys `gradcam explain` gives files named one by one: each file's name
    without its extension, made safe and unique ('a/cat.jpg', 'b/cat.png' → 'cat', 'cat-2')."""
    return _unique_keys([_key_from_parts((Path(name).stem or Path(name).name,)) for name in names])


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
    try:
        with open_regular(path) as handle, Image.open(handle) as image:
            refuse_over_pixel_limit(image)
            if image.format == "PNG":
                _verify_png(path)
            frames = _frame_count(image)
            image.load()  # inside the try: truncated data fails here, not later in a worker
            upright = ImageOps.exif_transpose(image)
            return DecodedImage(_to_rgb(upright), _frames_warning(image.format, frames))
    # Every exception: a damaged file can make a Pillow plugin raise almost anything, and one
    # bad input must become one failed result, not the end of a run over a thousand images.
    except Exception as exc:
        raise ImageReadError(f"cannot read {path}: {decode_reason(exc, path)}") from exc


class _NotRegularFile(OSError):
    """A FIFO, a socket or a device where an image file was expected."""


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading, never blocking: a FIFO (or a device, a socket) raises
    _NotRegularFile, a folder IsADirectoryError.

    stat first, so that a device is never even opened; then open without blocking
    (O_NONBLOCK: opening a FIFO with no writer would wait for one for ever) and fstat what
    was opened, since the file may have been swapped for a FIFO between the two calls.
    """
    _check_regular(os.stat(path).st_mode, path)
    fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_regular(os.fstat(fd).st_mode, path)
        if _O_NONBLOCK:
            os.set_blocking(fd, True)  # a regular file: reads never wait anyway
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _check_regular(mode: int, path: Path) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if not stat.S_ISREG(mode):
        raise _NotRegularFile(not_regular_reason(mode))


# At most this many warnings are kept per image (a damaged EXIF block can warn once per tag).
_MAX_WARNINGS = 5


@contextmanager
def recorded_warnings() -> Iterator[list[str]]:
    """Record the warnings this thread raises in the block, as one-line texts, each once.

    For the warnings an image's decoding raises ("Corrupt EXIF data ..."): they belong in that
    image's result, not printed raw and nameless on stderr. UserWarning and RuntimeWarning are
    recorded every time (filter "always"; Pillow's file warnings are of these kinds); other
    kinds only where the filters in force let them through. Pillow's pixel-limit warning is
    dropped: its refusal (an error result) says more.

    warnings.catch_warnings is process-global before Python 3.14, and with `--workers 0` the
    decoding runs on a thread: for the block's duration, warnings that other threads raise
    (the model's, on the main thread) are shown as before, but under the "always" filter, so a
    repeated one may be shown again; and two such blocks entered on two threads at once could
    restore each other's filters out of order (a run has one decode thread; the CLI's own
    catch_warnings is entered before it starts and left after it ends).
    """
    lines: list[str] = []
    extra = 0
    me = threading.get_ident()
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.simplefilter("always", RuntimeWarning)
        show = warnings.showwarning  # what shows them otherwise: the CLI's, or Python's

        def record(message, category, filename, lineno, file=None, line=None) -> None:
            nonlocal extra
            if threading.get_ident() != me:
                show(message, category, filename, lineno, file, line)
            elif not issubclass(category, Image.DecompressionBombWarning):
                text = " ".join(str(message).split())
                if text and text not in lines:
                    if len(lines) < _MAX_WARNINGS:
                        lines.append(text)
                    else:
                        extra += 1

        warnings.showwarning = record
        try:
            yield lines
        finally:
            if extra:
                lines.append(f"and {extra} more warnings")


def refuse_over_pixel_limit(image: Image.Image) -> None:
    """Pillow raises DecompressionBombError only past twice its limit; raise it from the limit."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit and pixels > limit:
        raise Image.DecompressionBombError(f"Image size ({pixels} pixels) exceeds limit")


def _verify_png(path: Path) -> None:
    """Check every chunk's CRC (verify() needs a file of its own: it consumes the image)."""
    with open_regular(path) as handle, Image.open(handle) as check:
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


def decode_reason(exc: BaseException, path: Path) -> str:
    """One line saying why decoding failed, in words a user can act on."""
    detail = _one_line(exc)
    if isinstance(exc, _NotRegularFile):
        return detail
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
    if isinstance(exc, ValueError) and "MAX_TEXT_" in detail:
        return _png_text_reason(detail)
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
        with open_regular(path) as handle:
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
            with open_regular(path) as handle:
                factory(handle, str(path)).close()
        except Exception as exc:
            detail = _one_line(exc)
            if detail == "unknown pixel mode":  # a valid header Pillow has no decoder for
                return _unsupported_mode_reason(image_format, path)
            return f"damaged {image_format} header ({detail or type(exc).__name__})"
        return None
    return None


def _png_text_reason(detail: str) -> str:
    """PngImagePlugin refuses text and ICC chunks past its limits, against zlib bombs."""
    if "MAX_TEXT_MEMORY" in detail:
        limit = f"PngImagePlugin.MAX_TEXT_MEMORY, {_megabytes(PngImagePlugin.MAX_TEXT_MEMORY)}"
        what = "its text chunks add up to more than"
    else:
        limit = f"PngImagePlugin.MAX_TEXT_CHUNK, {_megabytes(PngImagePlugin.MAX_TEXT_CHUNK)}"
        what = "a text or ICC-profile chunk larger than"
    return (
        f"unsupported PNG: {what} Pillow's safety limit ({limit} decompressed); "
        "save it again without metadata to explain it"
    )


def _megabytes(size: int) -> str:
    return f"{size / 2**20:g} MB"


_PHOTOMETRIC = {0: "white is zero", 1: "black is zero", 2: "RGB", 3: "palette", 5: "CMYK"}


def _unsupported_mode_reason(image_format: str, path: Path) -> str:
    """Why Pillow has no mode for a well-formed file: for a TIFF, its channels and bits."""
    generic = f"unsupported {image_format}: a pixel layout Pillow cannot decode"
    if image_format != "TIFF":
        return f"{generic}; save it as RGB or RGBA to explain it"
    try:
        samples, bits, photometric = _tiff_layout(path)
    except Exception:  # the layout is only for the message
        return f"{generic}; save it as RGB or RGBA to explain it"
    depth = f"{bits[0]} bits" if len(set(bits)) == 1 else f"{', '.join(map(str, bits))} bits"
    if samples > 4:
        return (
            f"unsupported TIFF: {samples} channels (samples per pixel) of {depth}; "
            "save it as RGB or RGBA to explain it"
        )
    kind = _PHOTOMETRIC.get(photometric, f"photometric {photometric}")
    channels = "1 channel" if samples == 1 else f"{samples} channels"
    return f"{generic} ({channels} of {depth}, {kind}); save it as 8-bit RGB, RGBA or grey"


def _tiff_layout(path: Path) -> tuple[int, tuple[int, ...], int | None]:
    """(samples per pixel, bits per sample, photometric) from the first IFD of a TIFF."""
    with open_regular(path) as handle:
        header = handle.read(8)
        if header[2:3] == b"+":  # BigTIFF: a 16-byte header
            header += handle.read(8)
        directory = TiffImagePlugin.ImageFileDirectory_v2(header)
        handle.seek(directory.next)
        directory.load(handle)
    samples = int(directory.get(277, 1))
    bits = directory.get(258, (1,))
    bits = tuple(int(b) for b in (bits if isinstance(bits, tuple) else (bits,))) or (1,)
    photometric = directory.get(262)
    return samples, bits, None if photometric is None else int(photometric)


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
        raise UsageError(f"shard= takes K/N (e.g. 2/8 for the second of 8 shares), got '{text}'")
    k, n = int(match[1]), int(match[2])
    if not 1 <= k <= n:
        raise UsageError(f"shard='{text}': K must be from 1 to N")
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
