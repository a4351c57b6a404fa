"""Start-up: one photo through `gradcam explain` against a minimal classify-one-image script.

    .venv/bin/python benchmarks/startup.py [--rounds 5]

Writes one 640×480 JPEG into a temporary folder, then alternates, ROUNDS times, fresh processes
of (a), (b) and (c), timing each from launch to exit: wall clock (`time.perf_counter` around
`subprocess.run`) and CPU time (user + system, the child's rusage), which other work on a shared
machine disturbs less than wall time:

- (a) the floor: a minimal script that imports torch and torchvision, builds
  `torchvision.models.resnet18(weights=None)`, opens the photo with Pillow, resizes its shorter
  side to 256, centre-crops 224 and normalises with ImageNet's mean and std (torchvision's
  `ImageClassification` transform), runs the model under `torch.inference_mode()` and prints
  the argmax;
- (b) `gradcam explain one.jpg -m torchvision:resnet18 --no-pretrained --out TMP`, the venv's
  console script: the same model and preprocessing, plus Grad-CAM at `layer4`, the overlay and
  heatmap PNGs and the JSON;
- (c) `gradcam --help`.

Reports the medians of each and the ratios (b)/(a), and writes benchmarks/results/startup-cpu.md.
Everything runs on the CPU. Not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import machine  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GRADCAM = Path(sys.executable).parent / "gradcam"

FLOOR = """
import sys
import torch
import torchvision
from PIL import Image
from torchvision.transforms import functional as F

model = torchvision.models.resnet18(weights=None).eval()
image = Image.open(sys.argv[1]).convert("RGB")
image = F.center_crop(F.resize(image, 256), 224)
x = F.normalize(F.to_tensor(image), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
with torch.inference_mode():
    print(int(model(x.unsqueeze(0)).argmax(1)))
"""


def write_photo(path: Path) -> None:
    """A 640×480 JPEG: a smooth gradient with noise, like a photo in size and compressibility."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640] / 640
    pixels = 40 + 180 * (0.6 * x + 0.4 * y)[..., None] * np.array([1.0, 0.7, 0.4])
    pixels = pixels + rng.normal(0, 4, size=pixels.shape)
    Image.fromarray(np.uint8(np.clip(pixels, 0, 255))).save(path, quality=90)


def timed(command: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds from launch to exit of one fresh process; a failure stops the run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gradcam-startup-"))
    runs = {
        "floor": [sys.executable, "-c", FLOOR, str(work / "one.jpg")],
        "explain": [
            str(GRADCAM),
            "explain",
            str(work / "one.jpg"),
            "-m",
            "torchvision:resnet18",
            "--no-pretrained",
            "--out",
            str(work / "out"),
        ],
        "help": [str(GRADCAM), "--help"],
    }
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    try:
        write_photo(work / "one.jpg")
        for round_ in range(args.rounds):
            for name, command in runs.items():
                seconds, cpu_seconds = timed(command)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
                shutil.rmtree(work / "out", ignore_errors=True)
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{name} {wall[name][-1]:.2f} s" for name in runs),
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {name: statistics.median(t) for name, t in wall.items()}
    median_cpu = {name: statistics.median(t) for name, t in cpu.items()}

    def row(label: str, name: str) -> str:
        spread = f"{min(wall[name]):.2f}–{max(wall[name]):.2f}"
        return (
            f"| {label} | {median[name]:.2f} | {spread} "
            f"| **{median[name] / median['floor']:.2f}×** | {median_cpu[name]:.2f} "
            f"| **{median_cpu[name] / median_cpu['floor']:.2f}×** |\n"
        )

    text = (
        "# Start-up: one 640×480 JPEG, torchvision resnet18 (random init), cpu\n\n"
        f"{machine('cpu')}; load average {os.getloadavg()[0]:.1f} when it ended. Median of "
        f"{args.rounds} fresh processes each, alternating. "
        f"`{' '.join(['python benchmarks/startup.py', *sys.argv[1:]])}`\n\n"
        "| run | wall s | min–max | × the floor | CPU s | × the floor |\n"
        "|---|---|---|---|---|---|\n"
        + row("(a) import torch + torchvision, build, open, preprocess, classify", "floor")
        + row("(b) `gradcam explain one.jpg -m torchvision:resnet18 --no-pretrained`", "explain")
        + row("(c) `gradcam --help`", "help")
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup-cpu.md").write_text(text)


if __name__ == "__main__":
    main()
