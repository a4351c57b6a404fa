"""Ablation-CAM, ours vs pytorch-grad-cam's, on torchvision resnet18 `layer4`, batch 1, CPU.

Ours re-runs only the head (global pool + fc) on the 512 ablated copies of the stored
activations; pytorch-grad-cam re-runs the whole network up to the layer for every batch of 32
ablated channels. Both run here, in one process, on the same seeded random weights and input;
the maps are checked to agree before any time is reported. Not a test: run it by hand,

    .venv/bin/python benchmarks/ablation.py [--repeats 5] [--size 224]

It prints the table and writes benchmarks/results/ablation.md.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
import tqdm
from pytorch_grad_cam import AblationCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from gradcam_cli.engine import explain_batch
from gradcam_cli.layers import resolve_layer

# The benchmarks describe their machine alike (compare.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import cpu_name  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ablation.md"


def ours(model: torch.nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    result = explain_batch(
        model, x, [resolve_layer(model, "layer4")], classes=[target], method="ablationcam"
    )
    return result.maps["layer4"][0, 0].numpy()


def peer(model: torch.nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """pytorch-grad-cam's AblationCAM (default batch_size 32), raw map before its resizing."""
    cam = AblationCAM(model, [model.layer4])
    seen: list[np.ndarray] = []
    original = cam.get_cam_image

    def keep(*args, **kwargs):
        seen.append(np.asarray(original(*args, **kwargs)))
        return seen[-1]

    cam.get_cam_image = keep
    cam(x, [ClassifierOutputTarget(target)])
    cam.activations_and_grads.release()
    return np.maximum(seen[0][0], 0)


def median_seconds(run, repeats: int) -> tuple[float, list[float]]:
    run()  # warm-up: allocator, thread pool, first-call overheads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def machine() -> str:
    cpu = cpu_name()
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    tqdm.tqdm = functools.partial(tqdm.tqdm, disable=True)  # pytorch-grad-cam's progress bar

    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None).eval()
    peer_model = copy.deepcopy(model)  # pytorch-grad-cam swaps modules in and out of its model
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = int(model(x).argmax())

    ours_map, peer_map = ours(model, x, target), peer(peer_model, x, target)
    correlation = float(np.corrcoef(ours_map.ravel(), peer_map.ravel())[0, 1])
    assert correlation >= 0.999, f"the maps disagree (correlation {correlation:.6f})"

    ours_s, ours_all = median_seconds(lambda: ours(model, x, target), args.repeats)
    peer_s, peer_all = median_seconds(lambda: peer(peer_model, x, target), args.repeats)
    ratio = peer_s / ours_s
    rows = [
        "| implementation | median s | all runs (s) |",
        "|---|---|---|",
        f"| gradcam-cli `ablationcam` (head only) | {ours_s:.4f} | "
        + ", ".join(f"{t:.4f}" for t in ours_all)
        + " |",
        f"| pytorch-grad-cam `AblationCAM` | {peer_s:.3f} | "
        + ", ".join(f"{t:.3f}" for t in peer_all)
        + " |",
    ]
    text = "\n".join(
        [
            "# Ablation-CAM: head-only re-runs vs full re-runs",
            "",
            f"torchvision resnet18 (random init, seed 0), layer `layer4` (512 channels), "
            f"batch 1, input {args.size}×{args.size}, CPU; median of {args.repeats} runs after "
            "one warm-up, both in one process (`benchmarks/ablation.py`).",
            "",
            f"Machine: {machine()}.",
            "",
            *rows,
            "",
            f"**Ours is {ratio:.0f}× faster.** The maps agree: correlation {correlation:.6f}, "
            f"same argmax: {bool(ours_map.argmax() == peer_map.argmax())}.",
            "",
        ]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
