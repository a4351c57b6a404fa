"""The warnings decoding one image raises, kept for that image's result rather than shown."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

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
