"""Batch mode: inputs → batches → explanations → their files (`outputs`) and the JSON report.

Each input gets exactly one result record, in input order. An image that cannot be read, or a
batch the model fails on, becomes an `error` record and the run goes on; a batch that runs out
of memory is split and retried (`oom`). Every file is written atomically (temporary file, then
rename) and only under the output folder; the report is also written now and then while the
run goes on, and `resume` takes a previous run's finished images over.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from .devicedecode import DeviceDecoder, decode_device
from .devicerender import encode_overlays
from .errors import GradcamError, first_line
from .explainer import Explainer
from .explanation import ImageExplanation
from .faithrun import measure_batch, model_predict
from .files import os_reason, resolve_inside, write_text_atomic
from .inputs import InputItem
from .oom import BatchSplitter
from .outlock import output_lock
from .outputs import ImageMetrics, RunOptions, new_report, save_image
from .pages.run import write_page
from .pipeline import BoundedWriter, Decoded, decode_batches
from .report import ImageResult, Report
from .resume import Checkpoints, Ledger, previous_report, reusable_results
from .signals import stop_requested
from .timing import RunStatus, StageTimes, seconds_writing

__all__ = ["run_explain"]

# After a stop signal, how long the images already explained may take to be written before the
# run reports what it has and exits (the rest is redone by --resume).
STOP_GRACE_SECONDS = 5.0


def run_explain(
    explainer: Explainer,
    items: Sequence[InputItem],
    options: RunOptions,
    progress: Callable[[int, int], None] | None = None,
    on_status: Callable[[RunStatus], None] | None = None,
) -> Report:
    """Explain every input, write its pictures, and write OUT/predictions.json (or the
    shard's report). Decoding, the model and writing overlap (`pipeline`); the report's
    `stages` say where the time went (`timing`)."""
    with output_lock(options.out_dir, options.shard):  # one run owns --out (outlock.py)
        return _run_locked(explainer, items, options, progress, on_status)


def _run_locked(
    explainer: Explainer,
    items: Sequence[InputItem],
    options: RunOptions,
    progress: Callable[[int, int], None] | None,
    on_status: Callable[[RunStatus], None] | None = None,
) -> Report:
    start = time.perf_counter()
    stages = StageTimes()
    report = new_report(explainer.describe(), options)
    report_path = resolve_inside(options.out_dir, options.report_name)
    reused = _previous_results(report, items, report_path, options) if options.resume else {}
    ledger = Ledger.start(len(items), reused)
    report.resumed = len(reused)

    def write_report(in_progress: bool = False) -> None:
        report.results = ledger.results()
        report.seconds = time.perf_counter() - start
        report.in_progress = in_progress
        report.batch_size_reduced_to = splitter.limit
        report.stages = stages.record()
        write_text_atomic(report_path, report.to_json())

    checkpoints = Checkpoints(lambda: write_report(in_progress=True))
    errors = 0

    def collect(done: list[ImageResult]) -> None:
        nonlocal errors
        ledger.add(done)
        errors += sum(result.status != "ok" for result in done)
        if done:
            if progress:
                progress(ledger.count, len(items))
            if on_status:
                seconds = time.perf_counter() - start
                on_status(RunStatus(ledger.count, len(items), errors, len(reused), seconds))
            checkpoints.maybe_write()

    todo = [items[index] for index in ledger.todo]
    device = decode_device(options.decode, explainer.device)  # None: Pillow on the CPU
    preprocess = explainer.loaded.preprocess
    batches = decode_batches(
        todo,
        max(1, options.batch_size),
        preprocess,
        options.workers,
        device_decoder=None if device is None else _timed_device_decoder(device, stages),
    )
    splitter = _splitter(explainer, options)
    # Pictures are saved image by image, so every writer thread has work; at most two batches'
    # worth wait, which bounds the memory their photos hold.
    ahead = max(2 * max(1, options.batch_size), 4 * options.write_threads)
    writer: BoundedWriter[ImageResult] = BoundedWriter(options.write_threads, ahead=ahead)
    try:
        for decoded in _waiting_for(batches, stages, count_decode=device is None):
            with stages.busy_in("model"):
                explained = _explain_batch(splitter, decoded)
            measured = None
            if options.metrics is not None:  # the model again, on perturbed copies
                with stages.busy_in("metrics"):
                    measured = _measure_batch(explainer, decoded, explained, options)
            if device is not None:  # JPEG overlays drawn and encoded there too, on this loop
                with stages.busy_in("render"), stages.waiting_for("output"):
                    explained = encode_overlays(decoded, explained, options)
            for job in _save_jobs(decoded, explained, options, measured):
                with stages.waiting_for("output"):  # at once, while the writer keeps up
                    done = writer.submit(_timed_save, stages, *job)
                collect(done)
        with stages.waiting_for("output"):
            done = writer.drain()
        collect(done)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one (signals.py)
        report.interrupted = True  # what was done is reported; the CLI exits 130 (143)
        try:  # the images already explained are a few writes from done: finish them, unless
            # a write is stuck (a hung file system): a stop must end in bounded time
            collect(writer.drain_within(STOP_GRACE_SECONDS))
        except KeyboardInterrupt:  # a second Ctrl-C: keep only what is written
            collect(_finished_in_order(writer))
    finally:
        batches.close()
        writer.close(cancel=report.interrupted)
    try:
        write_report()
    except OSError as exc:  # disk full: the pictures written stay; say the report is missing
        report.write_error = f"cannot write the report {report_path}: {os_reason(exc)}"
    if options.report and options.shard is None:  # a share's page would show a share only
        write_page(options.out_dir, report.to_dict())
    return report


def _waiting_for(batches, stages: StageTimes, count_decode: bool):
    """The decoded batches, counting what the model's loop waits for them (but the first:
    nothing runs before it, however many workers decode) and, with `count_decode`, their
    decode seconds as measured where they were decoded."""
    first = True
    iterator = iter(batches)
    while True:
        clock = time.perf_counter()
        try:
            decoded = next(iterator)
        except StopIteration:
            return
        if not first:
            stages.wait("decode", time.perf_counter() - clock)
        first = False
        if count_decode:
            stages.add("decode", sum(d.seconds for d in decoded))
        yield decoded


def _timed_device_decoder(device, stages: StageTimes):
    """DeviceDecoder for `device`, its calls counted as decode time (the seconds of the decode
    thread: files read, the device's decode and preprocessing, the CPU fallbacks it waits for)."""

    def start(pool):
        decode = DeviceDecoder(device, pool)

        def timed(items, preprocess):
            with stages.busy_in("decode"):
                return decode(items, preprocess)

        return timed

    return start


def _timed_save(stages: StageTimes, save, *args):
    """A writer job, its seconds split into writing (encoding and saving the files, counted by
    `timing.writing`) and rendering (the rest: drawing the pictures, panels, thumbnails)."""
    clock, written = time.perf_counter(), seconds_writing()
    try:
        return save(*args)
    finally:
        write = seconds_writing() - written
        stages.add("write", write)
        stages.add("render", max(0.0, time.perf_counter() - clock - write))


def _previous_results(
    report: Report, items: Sequence[InputItem], report_path: Path, options: RunOptions
) -> dict[int, ImageResult]:
    """--resume: the finished results of the report already in --out (none if there is none)."""
    if not report_path.is_file():
        return {}
    previous = previous_report(report_path, report.to_dict())
    return reusable_results(previous, items, options.out_dir)


def _finished_in_order(writer: BoundedWriter) -> list[ImageResult]:
    """After an interrupt: the saves already done, up to the first one that is not."""
    done = []
    while writer.pending and writer.pending[0].done() and not writer.pending[0].cancelled():
        done.append(writer.pending.popleft().result())
    return done


def _splitter(explainer: Explainer, options: RunOptions) -> BatchSplitter:
    """Explains decoded inputs in chunks that fit in memory (see `oom`)."""

    def explain(chunk: Sequence[Decoded]) -> list[ImageExplanation]:
        return explainer.explain(
            [_photo(d) for d in chunk],
            arrays=[d.array for d in chunk],
            classes=options.classes or None,
            topk=options.topk,
            min_score=options.min_score,
            region=options.region,
        )

    def release() -> None:
        gc.collect()
        if explainer.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    return BatchSplitter(explain, release)


def _photo(decoded: Decoded) -> Image.Image:
    assert decoded.image is not None, "only the readable inputs are explained"
    return decoded.image


def _explain_batch(splitter: BatchSplitter, decoded: list[Decoded]) -> list[ImageExplanation | str]:
    """One outcome per readable input, in order: its explanation, or why it has none."""
    readable = [d for d in decoded if d.error is None]
    if not readable:
        return []
    try:
        return splitter(readable)
    except (RuntimeError, GradcamError) as exc:  # the model fails: these inputs fail
        reason = first_line(exc)
    except KeyboardInterrupt as exc:
        if stop_requested():  # Ctrl-C or SIGTERM: the run stops
            raise
        reason = f"{type(exc).__name__} raised by the model's code"  # `raise KeyboardInterrupt`
    except SystemExit as exc:  # a forward that calls sys.exit() must not end the run
        reason = f"the model's code called sys.exit({exc.code!r})"
    except Exception as exc:  # the user's forward may raise anything
        reason = f"{type(exc).__name__}: {first_line(exc)}"
    return [f"the model failed on this batch: {reason}"] * len(readable)


def _save_jobs(
    decoded: list[Decoded],
    explained: list[ImageExplanation | str],
    options: RunOptions,
    measured: list[ImageMetrics | None] | None = None,
) -> list[tuple]:
    """One writer job per input, in input order: save its pictures (and its metrics, with
    --metrics: `measured`, one per explained outcome), or record its failure."""
    outcomes = iter(zip(explained, measured or [None] * len(explained), strict=True))
    jobs: list[tuple] = []
    for d in decoded:
        outcome, metrics = (d.error, None) if d.error is not None else next(outcomes)
        if isinstance(outcome, str):
            jobs.append((ImageResult.failed, d.item.source, outcome, d.warnings))
        else:
            jobs.append((save_image, d.item, outcome, options, d.warnings, metrics))
    return jobs


def _measure_batch(
    explainer: Explainer,
    decoded: list[Decoded],
    explained: list[ImageExplanation | str],
    options: RunOptions,
) -> list[ImageMetrics | None]:
    """--metrics: each explained image's faithfulness (faithrun), None for the failed ones.
    A failure here fails the batch's images, as the model's own failure would."""
    assert options.metrics is not None
    readable = [d for d in decoded if d.error is None]
    pairs = [(d, e) for d, e in zip(readable, explained, strict=True) if not isinstance(e, str)]
    if not pairs:
        return [None] * len(explained)
    try:
        predict = model_predict(
            explainer.model,
            explainer.probe.outputs_probabilities,
            options.metrics.settings.score,
            explainer.autocast,
        )
        found = iter(
            measure_batch(
                predict,
                explainer.device,
                [d.array for d, _ in pairs],
                [e for _, e in pairs],
                [d.item.key for d, _ in pairs],
                options.metrics,
                max(1, options.batch_size),
            )
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the user's model may fail on perturbed copies
        reason = f"the model failed on the metrics' perturbed copies: {first_line(exc)}"
        return [e if isinstance(e, str) else reason for e in explained]
    return [None if isinstance(e, str) else next(found) for e in explained]
