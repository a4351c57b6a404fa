"""What kind of file a path is, before anything decodes it.

An image by its name (IMAGE_EXTENSIONS); a regular file, or a FIFO, a socket or a device,
which is never read: reading one could block for ever. `open_regular` is the one way this
package opens a file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

MISSING = "no such file or directory"


def is_image_name(name: str) -> bool:
    """Whether a folder search takes `name`: by its extension, in any case."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


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


class NotRegularFile(OSError):
    """A FIFO, a socket or a device where an image file was expected."""


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading, never blocking: a FIFO (or a device, a socket) raises
    NotRegularFile, a folder IsADirectoryError.

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
        raise NotRegularFile(not_regular_reason(mode))
