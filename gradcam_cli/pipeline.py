"""The stages around the model in a batch run, overlapped so the model never waits.

    decode + preprocess  ──▶  forward + gradients  ──▶  render + PNG encode + write
    (worker processes, or      (the calling thread,       (a pool of threads: Pillow's
     one thread)                batch by batch)             encoders and NumPy release the GIL)

Both hand-offs are bounded — a few batches decoded and not yet explained, a few images explained
and not yet written — so memory stays flat however many images a run has. Nothing here imports
torch: worker processes start light.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from PIL import Image

from .errors import GradcamError, UsageError, did_you_mean
from .inputs import InputItem, decode_image, recorded_warnings
from .preprocess import Preprocess

__all__ = [
    "Decoded",
    "decode_batches",
    "BoundedWriter",
    "default_workers",
    "default_write_threads",
    "parse_workers",
    "check_batch_size",
    "check_decode",
    "DECODE_MODES",
    "MAX_WORKERS",
    "MAX_BATCH_SIZE",
]

T = TypeVar("T")


@dataclass
class Decoded:
    """One input after decoding: the photo and the model's view of it, or why it failed."""

    item: InputItem
    image: Image.Image | None = None
    # float32 [3, h, w], normalised: a NumPy array, or a tensor on the model's device when the
    # input was decoded there (devicedecode)
    array: Any = None
    error: str | None = None
    warnings: tuple[str, ...] = ()  # how it was read (first frame of an animation, ...)
    pixels: Any = None  # decoded on the device: the photo there, a uint8 tensor [3, H, W]
    seconds: float = 0.0  # spent decoding and preprocessing it, where that ran (timing.py)


def default_workers() -> int:
    """Decode processes for `--workers auto`: the cores the model leaves, at most 4.

    With 2 cores or fewer a process only competes with the model for them; a thread (0
    workers) then overlaps decoding with the model's waits at no cost.
    """
    cores = _cores()
    return 0 if cores <= 2 else min(4, cores // 2)


def default_write_threads() -> int:
    """Threads that render and encode: one per two cores, at most 4 (the model needs the rest;
    on 2 cores a second thread only slows the model's own threads down)."""
    return max(1, min(4, _cores() // 2))


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Decode processes: each costs ~100 MB; a single model rarely keeps more than 8 busy.
MAX_WORKERS = 64
# Images per batch: the decoded arrays of the batches decoded ahead are held in memory
# (3 × 224 × 224 float32 = 0.6 MB an image), so a runaway value fills RAM before the model runs.
MAX_BATCH_SIZE = 4096


def check_batch_size(batch_size: int) -> int:
    """`--batch-size`: 1 to MAX_BATCH_SIZE; UsageError otherwise."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise UsageError(
            f"batch_size= must be 1–{MAX_BATCH_SIZE}, got {batch_size} (the batches decoded "
            "ahead are held in memory); a batch too large for the device is split by itself"
        )
    return batch_size


# `decode=`: JPEGs decoded and preprocessed on the model's device (devicedecode), or by Pillow on
# the CPU; auto: on the device when it is a CUDA GPU that torchvision can decode on.
DECODE_MODES = ("auto", "cpu", "device")


def check_decode(mode: str) -> str:
    if mode not in DECODE_MODES:
        raise UsageError(
            f"decode= takes {', '.join(DECODE_MODES)}, got '{mode}'"
            + did_you_mean(mode, DECODE_MODES)
        )
    return mode


def parse_workers(text: str) -> int:
    """`--workers`: `auto` (see default_workers) or a count, 0 meaning a decode thread."""
    if text == "auto":
        return default_workers()
    try:
        workers = int(text)
    except ValueError:
        raise UsageError(f"workers= takes a number or auto, got '{text}'") from None
    if not 0 <= workers <= MAX_WORKERS:
        raise UsageError(
            f"workers= must be 0 (decode in a thread) to {MAX_WORKERS}, got {workers}: each "
            "worker is a process of its own, and one model keeps only a few busy"
        )
    return workers


def _decode_one(item: InputItem, preprocess: Preprocess) -> Decoded:
    """Decode and preprocess one input; what fails is its error, what warns its warnings.

    The warnings go into the result, not raw onto stderr: a worker process would print
    Python's two-line form, a thread a line that does not name the file. (recorded_warnings
    is process-global; with `--workers 0` this runs on a thread: see its cost there.)
    """
    if item.error is not None:
        return Decoded(item, error=item.error)
    if item.path is None:  # made for a picture already in memory (save_explanations): no file
        return Decoded(item, error=f"cannot read {item.source}: it names no file")
    with recorded_warnings() as caught:
        try:
            decoded = decode_image(item.path)
            image = decoded.image
            # A thin strip the model would see a sliver of: refused before anything is resized.
            reason = preprocess.oversize_reason(*image.size)
            error = f"cannot read {item.path}: {reason}" if reason else None
            array = None if error else preprocess.to_array(image)
        except GradcamError as exc:
            error = str(exc)
    if error is not None:
        return Decoded(item, error=error, warnings=tuple(caught))
    return Decoded(item, image, array, warnings=(*decoded.warnings, *caught))


def _decode_batch(items: list[InputItem], preprocess: Preprocess) -> list[Decoded]:
    decoded = []
    for item in items:
        start = time.perf_counter()
        one = _decode_one(item, preprocess)
        one.seconds = time.perf_counter() - start  # measured in the worker: the busy time
        decoded.append(one)
    return decoded


DecodeBatch = Callable[[list[InputItem], Preprocess], list[Decoded]]


def decode_batches(
    items: Sequence[InputItem],
    batch_size: int,
    preprocess: Preprocess,
    workers: int = 0,
    ahead: int = 2,
    device_decoder: Callable[[Executor | None], DecodeBatch] | None = None,
) -> Generator[list[Decoded], None, None]:
    """Yield the inputs decoded, batch by batch in input order, decoding ahead meanwhile.

    `workers` processes (0: one thread of this process) keep up to `ahead` batches per worker
    decoded in advance; the rest of the list is not touched until the consumer catches up.
    A single batch is decoded on that one thread whatever `workers` says: the model waits for it
    either way, and starting worker processes (each importing NumPy and Pillow) only delays it.
    With a `device_decoder` (given the worker pool, it returns what decodes a batch: the
    runner passes `devicedecode.DeviceDecoder` for the model's device), one thread decodes with
    it, `ahead` batches in advance; it hands the inputs it cannot take to the workers.
    """
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    if len(batches) < 2:
        workers = 0  # nothing to decode ahead of the model: a process pool is pure start-up
    pool: Executor | None = None
    if workers > 0:
        # forkserver: children start from a clean process, not a copy of one whose torch
        # thread pools and locks are in use (fork), and faster than spawn.
        context = multiprocessing.get_context("forkserver")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_decode_worker)
    decode: DecodeBatch = _decode_batch
    window = max(1, ahead * max(1, workers))
    if device_decoder is not None:
        decode, window = device_decoder(pool), max(1, ahead)
    if pool is None or device_decoder is not None:
        executor: Executor = ThreadPoolExecutor(1, thread_name_prefix="gradcam-decode")
    else:
        executor = pool
    executors = [executor] if pool in (None, executor) else [executor, pool]
    try:
        yield from _bounded_map(executor, decode, batches, window, preprocess)
    except BaseException:  # the consumer stopped early (Ctrl-C, SIGTERM, an error)
        for running in executors:
            _stop_now(running)
        raise
    for running in executors:
        running.shutdown(wait=True)


def _stop_now(executor: Executor) -> None:
    """Shut the decoders down without waiting: one may be stuck in a read (a hung network file
    system) and a stop must end in bounded time. Worker processes are killed; a thread cannot
    be, and is left to finish (or to the process's exit)."""
    # ProcessPoolExecutor has no public way to kill its workers before Python 3.14
    # (terminate_workers); its _processes dict is gone after shutdown, so read it first.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):  # already gone, or closed
            pass


def _start_decode_worker() -> None:
    _leave_stop_signals_to_the_parent()
    # Pillow warns of images over its pixel limit; decode_image refuses them with an error
    # result that says more, and a worker's raw two-line warning would only clutter stderr.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _leave_stop_signals_to_the_parent() -> None:
    """Decode workers ignore Ctrl-C and SIGTERM: a terminal's Ctrl-C reaches the whole process
    group, and a worker dying mid-task would break the pool before the parent can stop cleanly.
    The parent shuts them down; if it dies, their pipe closes and they exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _bounded_map(
    executor: Executor, fn: Callable, batches: Iterable, window: int, *args
) -> Iterator:
    pending: deque[Future] = deque()
    try:
        for batch in batches:
            pending.append(executor.submit(fn, batch, *args))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # the consumer stopped early (Ctrl-C, an error): drop what was not started
        for future in pending:
            future.cancel()


class BoundedWriter(Generic[T]):
    """Runs save jobs on threads; results come back in submission order, at most `ahead` wait."""

    def __init__(self, threads: int, ahead: int):
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="gradcam-write")
        self.ahead = max(1, ahead)
        self.pending: deque[Future[T]] = deque()

    def submit(self, fn: Callable[..., T], *args) -> list[T]:
        """Queue a job; returns the results of the oldest jobs once too many are waiting."""
        self.pending.append(self.pool.submit(fn, *args))
        done = []
        while len(self.pending) > self.ahead:
            done.append(self.pending.popleft().result())
        return done

    def drain(self) -> list[T]:
        done = [future.result() for future in self.pending]
        self.pending.clear()
        return done

    def drain_within(self, seconds: float) -> list[T]:
        """After a stop: the results of the jobs that finish within `seconds`, in order, up to
        the first that does not (a write stuck in a system call must not hold the stop)."""
        wait(self.pending, timeout=seconds)
        done = []
        while self.pending and self.pending[0].done() and not self.pending[0].cancelled():
            done.append(self.pending.popleft().result())
        return done

    def close(self, cancel: bool = False) -> None:
        """Wait for every job; with `cancel`, drop those not started and wait for none."""
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)
