"""Folder mode end to end against the floor: a minimal decode + preprocess + inference loop.

    .venv/bin/python benchmarks/throughput.py [--images 256] [--device cpu] [--batch-size 16]
                                              [--workers auto] [--rounds 2]

Writes IMAGES generated 640×480 JPEGs (smooth gradients and shapes, like photos in size and
compressibility), then alternates, ROUNDS times each, in this one process:

- the floor: for each batch, decode (Pillow), preprocess (the model's own resize, crop and
  normalisation), stack, and run the model under `torch.inference_mode()` — nothing written;
- `gradcam explain DIR` through `run_explain`, exactly what the CLI runs: Grad-CAM at `layer4`
  and the JSON written, with the default pictures (overlay and heatmap PNGs), and with
  `--format jpg --no-heatmap` (JPEG overlays only: the large-run setting), both decoding with
  Pillow on the CPU (`--decode cpu`);
- with `--decode-device`, the same on the device (issue 16): a floor that decodes each batch
  with `devicedecode.DeviceDecoder` (nvjpeg on CUDA; torchvision's CPU decoder elsewhere) and
  preprocesses there, and `gradcam explain --decode device --format jpg --no-heatmap`, whose
  ratio is taken against that floor.

Model: torchvision resnet50 with seeded random weights, loaded once (its load is not timed for
either). The process's allocator is tuned first (gradcam_cli.allocator, what `gradcam` does at
its first explanation), so the floor runs under the same settings from its first round.
Reports images per second of each (best round) and their ratio, and writes
benchmarks/results/throughput-<device>.md. Not a test.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import machine  # noqa: E402

from gradcam_cli.allocator import tune_allocator  # noqa: E402
from gradcam_cli.devicedecode import DeviceDecoder  # noqa: E402
from gradcam_cli.explainer import Explainer  # noqa: E402
from gradcam_cli.explanation import RenderOptions  # noqa: E402
from gradcam_cli.inputs import InputItem, collect_inputs, load_image  # noqa: E402
from gradcam_cli.outputs import RunOptions  # noqa: E402
from gradcam_cli.pipeline import default_write_threads, parse_workers  # noqa: E402
from gradcam_cli.runner import run_explain  # noqa: E402
from gradcam_cli.sources import load_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def write_photos(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640] / 640
    for i in range(count):
        a, b = rng.uniform(0, 255, size=(2, 3))
        angle = rng.uniform(0, 2 * math.pi)
        t = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
        pixels = a + (b - a) * (t - t.min()) / (t.max() - t.min())
        pixels += rng.normal(0, 4, size=pixels.shape)
        image = Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.uniform(0, 560), rng.uniform(0, 400)
            size = rng.uniform(20, 120)
            draw.ellipse((x0, y0, x0 + size, y0 + size), fill=tuple(rng.integers(0, 255, 3)))
        image.save(folder / f"photo_{i:05d}.jpg", quality=90)


def floor(loaded, paths: list[Path], batch_size: int, device: torch.device) -> float:
    """Seconds for decode + preprocess + inference over every path, batch by batch."""
    model = loaded.model.to(device).eval()
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        arrays = [loaded.preprocess.to_array(load_image(p)) for p in paths[i : i + batch_size]]
        with torch.inference_mode():
            model(torch.from_numpy(np.stack(arrays)).to(device)).argmax(1).cpu()
    return time.perf_counter() - start


def device_floor(loaded, paths: list[Path], batch_size: int, device: torch.device) -> float:
    """Seconds for the same loop with the JPEGs decoded and preprocessed on `device`."""
    model = loaded.model.to(device).eval()
    decoder = DeviceDecoder(device)
    items = [InputItem(str(p), p, p.stem) for p in paths]
    start = time.perf_counter()
    for i in range(0, len(items), batch_size):
        decoded = decoder(items[i : i + batch_size], loaded.preprocess)
        with torch.inference_mode():
            model(torch.stack([torch.as_tensor(d.array).to(device) for d in decoded])).argmax(
                1
            ).cpu()
    return time.perf_counter() - start


VARIANTS = {
    "overlay + heatmap PNGs (default)": {"decode": "cpu"},
    "JPEG overlays only (`--format jpg --no-heatmap`)": {
        "overlay_format": "jpg",
        "heatmap": False,
        "decode": "cpu",
    },
}
DEVICE_VARIANT = (
    "JPEG overlays, decoded on the device (`--decode device --format jpg --no-heatmap`)"
)


def ours(explainer, folder: Path, out: Path, batch_size: int, workers: int, **pictures) -> float:
    items = collect_inputs([str(folder)])
    options = RunOptions(
        out_dir=out,
        batch_size=batch_size,
        workers=workers,
        write_threads=default_write_threads(),
        render=RenderOptions(),
        **pictures,
    )
    report = run_explain(explainer, items, options)
    assert report.errors == 0, report.results[0]
    return report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--decode-device", action="store_true", help="also the device-decode floor and run"
    )
    args = parser.parse_args()
    workers = parse_workers(args.workers)
    device = torch.device(args.device)
    tune_allocator()
    work = Path(tempfile.mkdtemp(prefix="gradcam-throughput-"))
    try:
        photos = work / "photos"
        photos.mkdir()
        write_photos(photos, args.images)
        paths = sorted(photos.iterdir())
        loaded = load_model("torchvision:resnet50", pretrained=False)
        explainer = Explainer(loaded, ["layer4"], device=device)
        floor(loaded, paths[: args.batch_size], args.batch_size, device)  # warm-up
        floors: list[float] = []
        device_floors: list[float] = []
        variants = dict(VARIANTS)
        if args.decode_device:
            variants[DEVICE_VARIANT] = {
                "overlay_format": "jpg",
                "heatmap": False,
                "decode": "device",
            }
            device_floor(loaded, paths[: args.batch_size], args.batch_size, device)  # warm-up
        runs: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            floors.append(floor(loaded, paths, args.batch_size, device))
            if args.decode_device:
                device_floors.append(device_floor(loaded, paths, args.batch_size, device))
            for name, pictures in variants.items():
                out = work / "out"
                runs[name].append(
                    ours(explainer, photos, out, args.batch_size, workers, **pictures)
                )
                shutil.rmtree(out)
            print(f"round {round_ + 1}: floor {floors[-1]:.2f} s, ours {runs}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor_rate = args.images / min(floors)
    rows = "".join(
        f"| `gradcam explain`, {name} | {args.images / min(times):.1f} | {min(times):.2f} "
        f"| **{args.images / min(times) / floor_rate:.2f}×** |\n"
        for name, times in runs.items()
        if name != DEVICE_VARIANT
    )
    if args.decode_device:
        device_rate = args.images / min(device_floors)
        ours_rate = args.images / min(runs[DEVICE_VARIANT])
        rows += (
            f"| decode + preprocess on the device + inference (nothing written) | "
            f"{device_rate:.1f} | {min(device_floors):.2f} | {device_rate / floor_rate:.2f}× |\n"
            f"| `gradcam explain`, {DEVICE_VARIANT} | {ours_rate:.1f} | "
            f"{min(runs[DEVICE_VARIANT]):.2f} | {ours_rate / floor_rate:.2f}× "
            f"(**{ours_rate / device_rate:.2f}×** the device floor) |\n"
        )
    text = (
        f"# Folder throughput: torchvision resnet50 (random init), {args.images} JPEGs 640×480, "
        f"{args.device}\n\n{machine(device.type)}. Batch {args.batch_size}, decode workers "
        f"{workers}; best of {args.rounds} alternating rounds. "
        f"`python benchmarks/throughput.py {' '.join(sys.argv[1:])}`\n\n"
        "| run | images/s | seconds | × the floor's throughput |\n|---|---|---|---|\n"
        f"| decode + preprocess + inference (nothing written) | {floor_rate:.1f} "
        f"| {min(floors):.2f} | 1.00× |\n" + rows
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"throughput-{device.type}.md").write_text(text)


if __name__ == "__main__":
    main()
