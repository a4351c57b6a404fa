"""Memory stays flat over a long folder run: RSS after 500 images against RSS after 5,000.

    .venv/bin/python benchmarks/memory_flat.py [--images 5000] [--early 500]

Writes IMAGES small generated JPEGs (demo scenes, 128×128), runs `run_explain` over them in this
process with `demo:shapes` (fast, so 5,000 images take about a minute), writing overlays,
heatmaps and the JSON as the CLI does, and samples the process's resident memory from the
progress callback. Reports RSS after EARLY and after all images, and writes
benchmarks/results/memory-flat.md. Not a test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from gradcam_cli.demo.scenes import make_scene
from gradcam_cli.explainer import Explainer
from gradcam_cli.explanation import RenderOptions
from gradcam_cli.inputs import collect_inputs
from gradcam_cli.outputs import RunOptions
from gradcam_cli.pipeline import default_write_threads
from gradcam_cli.runner import run_explain
from gradcam_cli.sources import load_model

RESULTS = Path(__file__).parent / "results"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--early", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gradcam-memory-"))
    samples: dict[int, float] = {}

    def progress(done: int, total: int) -> None:
        samples[done] = rss_mib()

    try:
        photos = work / "photos"
        photos.mkdir()
        for i in range(args.images):
            make_scene(3_000_000 + i).image.save(photos / f"scene_{i:05d}.jpg", quality=90)
        explainer = Explainer(load_model("demo:shapes"))
        options = RunOptions(
            out_dir=work / "out",
            batch_size=args.batch_size,
            write_threads=default_write_threads(),
            render=RenderOptions(),
        )
        report = run_explain(explainer, collect_inputs([str(photos)]), options, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    early = samples[min(n for n in samples if n >= args.early)]
    late = samples[max(samples)]
    peak = max(samples.values())
    text = (
        f"# Memory over a long run: demo:shapes, {args.images} JPEGs 128×128, batch "
        f"{args.batch_size}\n\n`python benchmarks/memory_flat.py {' '.join(sys.argv[1:])}`; "
        f"{len(report.results)} results, {report.errors} errors, {report.seconds:.0f} s.\n\n"
        "| after | RSS |\n|---|---|\n"
        f"| {args.early} images | {early:.0f} MiB |\n"
        f"| {max(samples)} images | {late:.0f} MiB |\n"
        f"| peak of all samples | {peak:.0f} MiB |\n\n"
        f"Growth from {args.early} to {max(samples)} images: "
        f"**{(late / early - 1) * 100:+.1f}%**.\n"
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory-flat.md").write_text(text)


if __name__ == "__main__":
    main()
