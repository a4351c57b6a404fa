"""What each faithfulness metric costs per image: torchvision resnet50 on the CPU.

    .venv/bin/python benchmarks/faithfulness_cost.py [--images 3] [--batch-size 32] [--rounds 2]

resnet50 with seeded random weights (weights=None), 224×224, torch threads = the cores this
process may use. Each image is one of sample_images/photos, preprocessed as the model's own
preprocessing does; its map is Grad-CAM at `layer4` for the predicted class, upsampled bilinearly
to the input (what `gradcam explain --metrics` measures). For each metric group, separately —
deletion, insertion, drop (average drop + increase in confidence: one masked image), road_morf,
road_lerf — and for all six together, `gradcam_cli.faithfulness.measure` runs on each image
at the default settings and --batch-size, after one warm-up call, in ROUNDS interleaved rounds;
the figure is the median over the images of each image's fastest round. The map's own cost (one
Grad-CAM) and one plain forward per image at the same batch size are given for scale.

Writes benchmarks/results/faithfulness_cost.md. Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import machine  # noqa: E402

from gradcam_cli.explainer import Explainer  # noqa: E402
from gradcam_cli.faithfulness import MetricSettings, measure  # noqa: E402
from gradcam_cli.sources import load_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "faithfulness_cost.md"
PHOTOS = Path(__file__).resolve().parent.parent / "sample_images" / "photos"
# Each row: what --metrics names, and the metrics measure() is asked for.
GROUPS = (
    ("deletion", ("deletion",)),
    ("insertion", ("insertion",)),
    ("drop (average drop + increase)", ("drop",)),
    ("road_morf", ("road_morf",)),
    ("road_lerf", ("road_lerf",)),
    ("all six", ("all",)),
)


def inputs(loaded, count: int) -> torch.Tensor:
    photos = sorted(PHOTOS.glob("*.jpg"))[:count]
    if len(photos) < count:
        raise SystemExit(f"only {len(photos)} photos in {PHOTOS}; use --images {len(photos)}")
    arrays = [loaded.preprocess.to_array(Image.open(p).convert("RGB")) for p in photos]
    return torch.from_numpy(np.stack(arrays))


def gradcam_maps(explainer: Explainer, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Grad-CAM at the input resolution for each image's predicted class, and those classes."""
    with torch.inference_mode():
        targets = explainer.model(x).argmax(1).tolist()
    size = tuple(x.shape[2:])
    maps = []
    for image, target in zip(x, targets, strict=True):
        raw = explainer(image[None], targets=[target])[0, 0]
        placed = F.interpolate(raw[None, None], size=size, mode="bilinear", align_corners=False)
        maps.append(placed[0, 0])
    return torch.stack(maps), targets


def seconds(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def wall_and_cpu_seconds(call) -> tuple[float, float]:
    """Wall time, and this process's CPU time (all threads): the second is the work done, less
    sensitive to other processes on the machine than the first."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def forward_seconds(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> float:
    """One image's share of a plain inference forward at `batch_size` (best of 3)."""
    batch = x[torch.arange(batch_size) % len(x)]
    with torch.inference_mode():
        model(batch)
        best = min(seconds(lambda: model(batch)) for _ in range(3))
    return best / batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="each image's best round counts")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]

    loaded = load_model("torchvision:resnet50", pretrained=False)
    model = loaded.model.eval()
    explainer = Explainer(loaded, ["layer4"])
    x = inputs(loaded, args.images)
    cam_seconds = statistics.median(
        seconds(lambda image=image: explainer(image[None])) for image in x
    )
    maps, targets = gradcam_maps(explainer, x)
    forward = forward_seconds(model, x, args.batch_size)
    settings = MetricSettings()

    def run(i: int, metrics: tuple[str, ...]):
        return measure(model, x[i], maps[i], targets[i], metrics, settings, args.batch_size)

    passes = {label: run(0, metrics).forward_passes for label, metrics in GROUPS}  # warm-up
    # (group, image) → the fastest (wall, CPU) seconds over the rounds: other processes on the
    # machine only ever add time, and interleaving the groups spreads what they add.
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(args.rounds):
        for label, metrics in GROUPS:
            for i in range(len(x)):
                found = wall_and_cpu_seconds(lambda i=i, metrics=metrics: run(i, metrics))
                best[label, i] = min(best.get((label, i), found), found)
    rows = []
    for label, _ in GROUPS:
        times = [best[label, i][0] for i in range(len(x))]
        cpu = statistics.median(best[label, i][1] for i in range(len(x)))
        rows.append((label, passes[label], statistics.median(times), cpu, times))

    load_end = os.getloadavg()[0]
    lines = [
        "# Faithfulness metrics: cost per image, torchvision resnet50, CPU",
        "",
        f"resnet50 (random init, seed 0), {x.shape[2]}×{x.shape[3]}, batch size "
        f"{args.batch_size}; the map: Grad-CAM at `layer4` for the predicted class. Median over "
        f"{len(x)} images (sample_images/photos) of each image's best of {args.rounds} "
        "interleaved rounds, after one warm-up call; default settings "
        "(deletion/insertion 20 steps, ROAD at 10…90%).",
        "",
        f"Machine: {machine('cpu')}. Load average (1 min) {load_start:.1f} at the start and "
        f"{load_end:.1f} at the end: other agents shared the machine.",
        "",
        "| metrics | images through the model | s per image | × one forward | CPU s per image "
        "| each image, its best round (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, passes, median, cpu, times in rows:
        lines.append(
            f"| {label} | {passes} | {median:.2f} | {median / forward:.0f}× | {cpu:.2f} | "
            + ", ".join(f"{t:.2f}" for t in times)
            + " |"
        )
    lines += [
        "",
        f"For scale: one plain forward, per image at batch {args.batch_size}: {forward:.3f} s; "
        f"the Grad-CAM map itself (one image, batch 1): {cam_seconds:.3f} s. ROAD's noisy linear "
        "imputation (9 images per order, a sparse solve each) runs on one thread by design "
        "(`faithfulness._one_thread`). "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
        f"`python benchmarks/faithfulness_cost.py {' '.join(sys.argv[1:])}`.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
