"""Out of memory on a batch: split it in halves and retry, down to single images.

A batch that does not fit (CUDA out-of-memory, a CPU allocation that fails) is not a reason to
fail its images: halves are tried, then quarters, down to one image; only an image that does
not fit alone fails, with a reason that names memory and what to change. The largest size that
fitted is remembered, so later batches start there instead of failing again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["OUT_OF_MEMORY_ALONE", "BatchSplitter", "is_out_of_memory"]

T = TypeVar("T")
R = TypeVar("R")

OUT_OF_MEMORY_ALONE = (
    "out of memory even with this image alone in its batch; "
    "try a smaller --input-size, fewer --topk classes or layers, or --device cpu"
)
_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS out-of-memory, torch's CPU allocator failing, or Python's MemoryError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(message in text for message in _MESSAGES)


class BatchSplitter(Generic[T, R]):
    """Calls `explain(chunk) -> one result per item` on chunks that fit in memory.

    `release()` runs after each out-of-memory error, before the retry (on CUDA: empty the
    allocator's cache). `limit` is the largest chunk that fitted once a batch had run out of
    memory (None before): later batches are cut to it. It is what fitted, not the half of what
    failed, so one image too large to fit at all does not slow every later batch down.
    """

    def __init__(self, explain: Callable[[Sequence[T]], Sequence[R]], release: Callable[[], None]):
        self.explain = explain
        self.release = release
        self.limit: int | None = None
        self.ran_out = False

    def __call__(self, batch: Sequence[T]) -> list[R | str]:
        """One result per item, in order: what `explain` returned, or OUT_OF_MEMORY_ALONE."""
        results: list[R | str] = []
        start = 0
        while start < len(batch):
            size = len(batch) - start
            if self.limit is not None:  # read each time: a failure below may lower it
                size = min(size, self.limit)
            results += self._fitted(batch[start : start + size])
            start += size
        return results

    def _fitted(self, chunk: Sequence[T]) -> list[R | str]:
        try:
            explained: list[R | str] = list(self.explain(chunk))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        else:
            if self.ran_out:
                self.limit = max(self.limit or 0, len(chunk))
            return explained
        # Outside the except block: the error's traceback, and the tensors its frames hold,
        # are gone before the retry asks for memory again.
        self.ran_out = True
        self.release()
        if len(chunk) == 1:
            return [OUT_OF_MEMORY_ALONE]
        half = (len(chunk) + 1) // 2
        return self(chunk[:half]) + self(chunk[half:])
