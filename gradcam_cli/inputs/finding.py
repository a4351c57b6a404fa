"""Finding the inputs of a run: files, folders, globs and '-' (paths on stdin).

`collect_inputs` turns command-line arguments into an ordered list of `InputItem`s, each with
a unique output key; folders and globs leave out a run's own outputs (see `skips`).
"""

from __future__ import annotations

import glob
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..errors import UsageError
from ..files import os_reason
from .filekinds import MISSING, is_image_name, not_regular_reason
from .keys import key_from_parts, unique_keys
from .skips import Skips

IMAGE_NAMED_FOLDER = "is a directory, not an image (and holds no images)"
_GLOB_CHARS = re.compile(r"[*?\[]")


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
    a folder holding a gradcam report (another run's output) or comparison.json (a `gradcam
    compare` output, its thumbnails), are skipped, and `on_skip` is called once with a line
    saying how many; a file named explicitly is still taken.
    """
    skips = Skips(out_dir)
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
    keys = unique_keys([key_from_parts(item.key_parts) for item in found])
    return [
        InputItem(source=item.source, path=item.path, key=key, error=item.error)
        for item, key in zip(found, keys, strict=True)
    ]


def _expand_args(args: Sequence[str], stdin: TextIO | None, skips: Skips) -> Iterator[_Found]:
    for arg in args:
        if arg == "-":
            for line in (stdin or sys.stdin).read().splitlines():
                # A '-' read from stdin is a file named '-', not a second read of stdin.
                if line.strip():
                    yield from _expand_one(line.strip(), skips)
        else:
            yield from _expand_one(arg, skips)


def _expand_one(arg: str, skips: Skips) -> Iterator[_Found]:
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
        if not found and is_image_name(os.path.normpath(arg)) and not skips.skipped(arg):
            yield _Found(arg, path, (path.stem,), error=IMAGE_NAMED_FOLDER)
        yield from found
    elif stat.S_ISREG(mode):
        yield _Found(arg, path, (path.stem,))
    else:  # a pipe or a device: reading it could block forever
        yield _Found(arg, path, (path.stem,), error=not_regular_reason(mode))


def _expand_glob(pattern: str, skips: Skips) -> Iterator[_Found]:
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
        elif is_image_name(match) and not skips.skip_file(match, root):
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


def _walk_folder(folder: str, key_prefix: tuple[str, ...], skips: Skips) -> Iterator[_Found]:
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
        if below and is_image_name(below[-1]):
            image_named_folders.append(below)
        for entry in entries:
            if _is_real_folder(entry):
                # A symlinked folder is never entered (is_dir without following), so loops
                # cannot hang.
                pending.append((entry.path, (*below, entry.name)))
            elif is_image_name(entry.name) and not _is_linked_folder(entry):
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


def _stat_reason(exc: OSError) -> str:
    """'no such file or directory', 'permission denied', 'too many levels of symbolic links'."""
    if isinstance(exc, FileNotFoundError) or not exc.strerror:
        return MISSING
    return os_reason(exc)


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
