"""`--batch-size auto` against the old fixed batch of 8, on a folder of tiny images.

    .venv/bin/python benchmarks/autobatch.py [--images 10000] [--model demo:shapes] [--rounds 2]

Writes IMAGES random 8×8 PNGs, then alternates, ROUNDS times, `gradcam explain DIR` through
`run_job` (what the CLI runs, default outputs: overlay and heatmap PNGs and the JSON) with
`batch_size=8` and with `batch_size="auto"`, in this one process (the model is built per run, as
the CLI does; its load is not in the report's seconds). Reports images/s (best round) and
writes benchmarks/results/autobatch-cpu.md. Not a test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import machine  # noqa: E402

from gradcam_cli.job import prepare_job  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def write_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"tiny_{i:05d}.png")


def run(folder: Path, out: Path, model: str, batch_size: int | str) -> tuple[float, int]:
    job = prepare_job(folder, model, out=out, batch_size=batch_size)
    report = job.run()
    assert report.errors == 0, report.results[0]
    shutil.rmtree(out)
    return report.seconds, job.run_options.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--model", default="demo:shapes")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gradcam-autobatch-"))
    times: dict[str, list[float]] = {"8": [], "auto": []}
    chosen = 0
    try:
        folder = work / "images"
        folder.mkdir()
        write_images(folder, args.images)
        for round_ in range(args.rounds):
            for setting in times:
                value = setting if setting == "auto" else int(setting)
                seconds, used = run(folder, work / "out", args.model, value)
                times[setting].append(seconds)
                chosen = used if setting == "auto" else chosen
            print(f"round {round_ + 1}: {times} (auto chose {chosen})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = {setting: args.images / min(runs) for setting, runs in times.items()}
    text = (
        f"# Automatic batch size: {args.model}, {args.images} PNGs 8×8, cpu\n\n"
        f"{machine('cpu')}. Default outputs (overlay + heatmap PNGs, JSON); best of "
        f"{args.rounds} alternating rounds; seconds as the report counts them (model load "
        f"excluded). `python benchmarks/autobatch.py {' '.join(sys.argv[1:])}`\n\n"
        "| batch size | images/s | seconds | × batch 8 |\n|---|---|---|---|\n"
        f"| 8 (the old default) | {rate['8']:.1f} | {min(times['8']):.2f} | 1.00× |\n"
        f"| auto (chose {chosen}) | {rate['auto']:.1f} | {min(times['auto']):.2f} "
        f"| **{rate['auto'] / rate['8']:.2f}×** |\n"
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "autobatch-cpu.md").write_text(text)


if __name__ == "__main__":
    main()
