"""`gradcam compare` on 1,000 pairs: how long a CI gate over a golden set takes.

    .venv/bin/python benchmarks/compare_runs.py [--pairs 1000] [--rounds 3]

Writes two synthetic runs into a temporary folder, as `gradcam explain --save-raw` lays them
out: PAIRS inputs (640×480 photos recorded, resnet50's preprocessing), one explanation each, a
7×7 float32 raw map (resnet50's layer4 at 224) and a 256×192 JPEG overlay. The new run's maps are
the base's with seeded noise added, and one input in 20 has another top-1 class, so the
measures, the top-1 pairing and the gates all have work to do. Then, ROUNDS times each,
alternating, fresh processes of the venv's console script, timed from launch to exit:

- (a) `gradcam compare BASE NEW --min-corr 0.8 --out TMP/a`: comparison.json only;
- (b) the same with `--report`: also the page and its pictures (two thumbnails and the
  difference image per pair);
- (c) `gradcam --help`: the start-up floor of any command.

Reports the medians, the comparison's own seconds (`summary.seconds` of comparison.json: reading
the reports and the maps, pairing, measuring), and writes benchmarks/results/compare_runs.md.
No torch is involved. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# The benchmarks describe their machine alike (compare.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import cpu_name  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GRADCAM = Path(sys.executable).parent / "gradcam"
PREPROCESS = {
    "input_size": [224, 224],
    "resize_shorter": 256,
    "resize_mode": "shorter",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bilinear",
}


def write_run(folder: Path, maps: np.ndarray, classes: list[int], overlay: bytes) -> None:
    folder.mkdir(parents=True)
    results = []
    for i, (values, index) in enumerate(zip(maps, classes, strict=True)):
        stem = f"img{i:05d}.{index}-class{index}.layer4"
        np.save(folder / f"{stem}.raw.npy", values.astype(np.float32))
        (folder / f"{stem}.overlay.jpg").write_bytes(overlay)
        target = {"index": index, "label": f"class{index}", "probability": 0.6, "score": 3.0}
        results.append(
            {
                "input": f"golden/img{i:05d}.jpg",
                "status": "ok",
                "error": None,
                "size": [640, 480],
                "predictions": [{k: target[k] for k in ("index", "label", "probability")}],
                "explanations": [
                    {
                        "target": target,
                        "layer": "layer4",
                        "overlay": f"{stem}.overlay.jpg",
                        "heatmap": None,
                        "raw": f"{stem}.raw.npy",
                        "localization": None,
                    }
                ],
                "warnings": [],
            }
        )
    document = {
        "schema_version": 1,
        "model": {"name": "resnet50", "source": "torchvision", "weights": "synthetic"},
        "method": "gradcam",
        "method_options": {"aug_smooth": False, "eigen_smooth": False, "amp": None},
        "layers": ["layer4"],
        "preprocess": PREPROCESS,
        "options": {"classes": [], "topk": 1, "save_raw": True},
        "results": results,
    }
    (folder / "predictions.json").write_text(json.dumps(document))


def make_runs(root: Path, pairs: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    base = np.maximum(rng.normal(size=(pairs, 7, 7)), 0.0)
    new = np.maximum(base + rng.normal(scale=0.5, size=base.shape), 0.0)
    classes = list(rng.integers(0, 1000, size=pairs))
    changed = [c if i % 20 else (c + 1) % 1000 for i, c in enumerate(classes)]
    picture = Image.fromarray(rng.integers(0, 255, size=(192, 256, 3), dtype=np.uint8))
    overlay_path = root / "overlay.jpg"
    picture.save(overlay_path, quality=90)
    overlay = overlay_path.read_bytes()
    write_run(root / "base", base, [int(c) for c in classes], overlay)
    write_run(root / "new", new, [int(c) for c in changed], overlay)
    return root / "base", root / "new"


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 1):  # 1: the gate failed, as it should on noisy maps
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")
    return seconds


def machine() -> str:
    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="compare-runs-"))
    try:
        base, new = make_runs(root, args.pairs)
        runs = {
            "(a) `gradcam compare BASE NEW --min-corr 0.8`": ["--min-corr", "0.8"],
            "(b) the same with `--report`": ["--min-corr", "0.8", "--report"],
        }
        times: dict[str, list[float]] = {name: [] for name in [*runs, "(c) `gradcam --help`"]}
        inner: list[float] = []
        for round_ in range(args.rounds):
            for i, (name, extra) in enumerate(runs.items()):
                out = root / f"out-{round_}-{i}"
                times[name].append(
                    timed([str(GRADCAM), "compare", str(base), str(new), *extra, "--out", str(out)])
                )
                inner.append(
                    json.loads((out / "comparison.json").read_text())["summary"]["seconds"]
                )
            times["(c) `gradcam --help`"].append(timed([str(GRADCAM), "--help"]))
        summary = json.loads((root / "out-0-0" / "comparison.json").read_text())["summary"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        f"# `gradcam compare` on {args.pairs:,} pairs",
        "",
        f"{machine()}; load average {os.getloadavg()[0]:.1f} when it ended. Median of "
        f"{args.rounds} fresh processes each, alternating. `python benchmarks/compare_runs.py`",
        "",
        f"Two synthetic runs of {args.pairs:,} explanations (7×7 float32 raw maps, 640×480 photos "
        "through resnet50's preprocessing, 256×192 JPEG overlays); the new maps are the base's "
        "with noise, and one input in 20 changed its top-1 class.",
        "",
        "| run | wall s | min–max | per pair |",
        "|---|---|---|---|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        per_pair = (
            f"{median / args.pairs * 1000:.2f} ms" if name.startswith(("(a)", "(b)")) else "–"
        )
        lines.append(
            f"| {name} | {median:.2f} | {min(values):.2f}–{max(values):.2f} | {per_pair} |"
        )
    lines += [
        "",
        f"The comparison itself (`summary.seconds`: reading both reports and {2 * args.pairs:,} "
        f"maps, pairing, measuring): median {statistics.median(inner):.2f} s. Measured: Pearson "
        f"median {summary['pearson']['median']:.3f}, {summary['top1_changes']} top-1 changes, "
        f"{summary['gate_failures']} pairs under `--min-corr 0.8`.",
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compare_runs.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
