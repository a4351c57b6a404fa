"""Grad-CAM's cost against plain inference and the peers, on one machine, model and input.

    .venv/bin/python benchmarks/compare.py [--device cpu|cuda] [--batches 1 8 16 32]
                                           [--repeats 5] [--model resnet50] [--layer layer4]

Every (approach, batch) runs in its own fresh subprocess — so one cannot warm caches or leave
memory behind for another — on torchvision MODEL with seeded random weights and the same seeded
input at 224². Each child:

1. builds the model and input, then measures peak memory of ONE cold call above what was
   resident before it (CPU: the process's peak RSS, reset through /proc/self/clear_refs; CUDA:
   `max_memory_allocated` above `memory_allocated`);
2. runs 2 warm-up calls, then REPEATS timed calls, and reports the median.

The cells run in ROUNDS interleaved rounds (every approach once per round), and each figure is
the best round's: background noise only ever adds time, and interleaving spreads it evenly.

Approaches, each what a user writes to get the predicted class's map:

- `inference`: `torch.inference_mode()` forward + argmax — the floor;
- `ours`, `ours top-5`: `gradcam_cli.explain_batch` (split at the layer, head-only backward);
- `pytorch-grad-cam`: `GradCAM(model, [layer])(input)` (it also resizes the maps to the input);
- `captum`: a no-grad forward for the predicted class, then `LayerGradCam(...).attribute`;
- `torchcam`: forward with grad, then `GradCAM(model, layer)(classes, logits)`.

`ours` tunes the process's allocator by itself (gradcam_cli/allocator.py) at its first call;
`inference, tuned` and `torchcam, tuned` apply the same settings before they start, so the
table is fair to every approach, and `ours, untuned` runs with GRADCAM_TUNE_ALLOCATOR=0.

It prints a markdown table and writes benchmarks/results/compare-<device>.md. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
APPROACHES = (
    "inference",
    "inference, tuned",
    "ours",
    "ours top-5",
    "ours, untuned",
    "pytorch-grad-cam",
    "captum",
    "torchcam",
    "torchcam, tuned",
)
OURS = ("ours", "ours top-5", "ours, untuned")


# -- the child: one approach at one batch size --------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_mib() -> float:
    """The process's resident memory now, in MiB."""
    return _rss_kib("VmRSS") / 1024


def cpu_peak_mib(call, baseline_mib: float | None = None) -> float:
    """Run `call` once; the process's peak RSS during it above the RSS before it (or above
    `baseline_mib`, a `rss_mib()` taken earlier), in MiB. The peak, VmHWM, is reset to the
    current RSS through /proc/self/clear_refs first."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    before = _rss_kib("VmRSS") / 1024 if baseline_mib is None else baseline_mib
    call()
    return _rss_kib("VmHWM") / 1024 - before


def _make_call(approach: str, model, layer_name: str, x):
    import torch

    layer = model.get_submodule(layer_name)
    if approach == "inference":

        def call():
            with torch.inference_mode():
                return model(x).argmax(1)

    elif approach.startswith("ours"):
        from gradcam_cli.engine import explain_batch
        from gradcam_cli.layers import resolve_layer

        ref = [resolve_layer(model, layer_name)]
        topk = 5 if "top-5" in approach else 1

        def call():
            return explain_batch(model, x, ref, topk=topk).maps

    elif approach == "pytorch-grad-cam":
        from pytorch_grad_cam import GradCAM

        cam = GradCAM(model, [layer])

        def call():
            return cam(input_tensor=x, targets=None)  # None: the predicted class

    elif approach == "captum":
        from captum.attr import LayerGradCam

        explainer = LayerGradCam(model, layer)

        def call():
            with torch.no_grad():
                target = model(x).argmax(1)
            return explainer.attribute(x, target=target)

    elif approach == "torchcam":
        from torchcam.methods import GradCAM as TorchcamGradCAM

        extractor = TorchcamGradCAM(model, layer_name)

        def call():
            logits = model(x)
            return extractor(logits.argmax(1).tolist(), logits)

    else:
        raise SystemExit(f"unknown approach {approach}")
    return call


def child(approach: str, batch: int, device: str, repeats: int, model_name: str, layer: str):
    import warnings

    if approach == "ours, untuned":
        os.environ["GRADCAM_TUNE_ALLOCATOR"] = "0"
    elif approach.endswith(", tuned"):
        from gradcam_cli.allocator import tune_allocator

        assert tune_allocator(), "the allocator could not be tuned here"
    approach = approach.split(",")[0]

    import torch
    import torchvision

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None).eval().to(device)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    call = _make_call(approach, model, layer, x)

    def synced():
        out = call()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        synced()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = cpu_peak_mib(synced)
    for _ in range(2):
        synced()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        synced()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": statistics.median(times), "peak_mib": peak}))


# -- the parent: every child, then the table ----------------------------------------------------


def run_child(approach, batch, args) -> dict:
    command = [sys.executable, __file__, "--child", approach, "--batch", str(batch)]
    command += ["--device", args.device, "--repeats", str(args.repeats)]
    command += ["--model", args.model, "--layer", args.layer]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    """The fastest round's time and the smallest round's memory (both only grow with noise)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    return {
        "seconds": min(r["seconds"] for r in ok),
        "peak_mib": min(r["peak_mib"] for r in ok),
    }


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` says (the other benchmarks
    describe their machine with it too)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return cpu


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = cpu_name()
    cores = len(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    return f"{cpu}, {cores} cores, {threads} torch threads, torch {torch.__version__}"


def table(results: dict, batches: list[int]) -> str:
    lines = [
        "| batch | approach | median time | × inference | × inference, tuned "
        "| peak memory above model | × inference | × inference, tuned | ours is faster by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for batch in batches:
        floor, tuned = results[("inference", batch)], results[("inference, tuned", batch)]
        mine = results[("ours", batch)]
        for approach in APPROACHES:
            r = results[(approach, batch)]
            if "error" in r:
                lines.append(f"| {batch} | {approach} | failed: {r['error']} | | | | | | |")
                continue
            versus = (
                f"{r['seconds'] / mine['seconds']:.2f}×"
                if approach not in ("inference", "inference, tuned", *OURS) and "error" not in mine
                else ""
            )
            lines.append(
                f"| {batch} | {approach} | {r['seconds'] * 1000:.1f} ms "
                f"| {_ratio(r, floor, 'seconds')} | {_ratio(r, tuned, 'seconds')} "
                f"| {r['peak_mib']:.1f} MiB | {_ratio(r, floor, 'peak_mib')} "
                f"| {_ratio(r, tuned, 'peak_mib')} | {versus} |"
            )
    return "\n".join(lines)


def _ratio(result: dict, reference: dict, key: str) -> str:
    if "error" in reference or reference[key] <= 0:
        return ""
    return f"{result[key] / reference[key]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch, args.device, args.repeats, args.model, args.layer)
        return
    rounds: dict[tuple[str, int], list[dict]] = {}
    for round_ in range(args.rounds):
        for batch in args.batches:
            for approach in APPROACHES:
                result = run_child(approach, batch, args)
                rounds.setdefault((approach, batch), []).append(result)
                print(f"round {round_ + 1} batch {batch:>3} {approach:<18} {result}", flush=True)
    results = {cell: best(runs) for cell, runs in rounds.items()}
    text = (
        f"# Grad-CAM cost: torchvision {args.model} (random init), `{args.layer}`, 224², "
        f"{args.device}\n\n{machine(args.device)}. Median of {args.repeats} calls after 2 "
        f"warm-ups, best of {args.rounds} interleaved rounds; peak memory of one cold call above "
        "what was resident before it; each cell a fresh process. `python benchmarks/compare.py "
        + " ".join(sys.argv[1:])
        + "`\n\n"
        + table(results, args.batches)
        + "\n"
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"compare-{args.device}.md").write_text(text)


if __name__ == "__main__":
    main()
