"""stdout carries data only, whatever a user's model prints, and a closed pipe ends us quietly.

A model file may `print` at import, in its constructor or in `forward`, call `os.write(1, ...)`
from C code, or start a child process that inherits file descriptor 1. Replacing `sys.stdout`
catches none of the last two, so `data_stdout` points descriptor 1 itself at stderr while the
run goes on and hands the caller a stream on a copy of the real stdout for the data (the JSON,
a table). Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TextIO

__all__ = ["EXIT_PIPE_CLOSED", "StdoutClosed", "data_stdout", "silence_stdout"]

EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for `ls | head`'s ls


class StdoutClosed(Exception):
    """The reader of stdout went away (`gradcam models | head -1`): stop quietly."""


@contextlib.contextmanager
def data_stdout() -> Iterator[_PipeAware]:
    """While inside, descriptor 1 (and `sys.stdout`) lead to stderr; the stream yielded writes
    (`write`, `flush`: no more) to the real stdout. Restored on exit, whatever happens.

    When `sys.stdout` is not descriptor 1 (a notebook, a test runner's capture), only the
    Python-level streams are swapped: there is no descriptor of ours to protect.
    """
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    if _descriptor(sys.stdout) != 1:
        yield from _swap_streams()
        return
    try:
        saved = os.dup(1)
    except OSError:  # no descriptor 1 at all (started with 1>&-): nothing to protect
        yield _Unwritable()
        return
    real = os.fdopen(saved, "w", encoding="utf-8", closefd=True)
    os.dup2(2, 1)
    try:
        yield _PipeAware(real)
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()  # what user code printed goes to stderr, before we switch back
        with contextlib.suppress(OSError, ValueError):
            real.flush()
        os.dup2(saved, 1)
        with contextlib.suppress(OSError, ValueError):
            real.close()


def _descriptor(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def _swap_streams() -> Iterator[_PipeAware]:
    real = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield _PipeAware(real)
    finally:
        sys.stdout = real


class _PipeAware:
    """A text stream whose writes raise StdoutClosed, not BrokenPipeError, when the reader
    has gone."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            written = self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            raise StdoutClosed from None
        return written

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise StdoutClosed from None


class _Unwritable(_PipeAware):
    def __init__(self) -> None:
        pass

    def write(self, text: str) -> int:
        raise StdoutClosed

    def flush(self) -> None:
        pass


def silence_stdout() -> None:
    """After the reader went away: point descriptor 1 at /dev/null so that Python's own flush
    at exit does not print 'Exception ignored … BrokenPipeError'."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
