"""Every registered method's time per image on the CPU, against Grad-CAM's: the README's table.

    .venv/bin/python benchmarks/method_cost.py [--methods gradcam,scorecam] [--budget-s 6]
                                               [--max-calls 7] [--setting sscam:samples=4]

torchvision `resnet50` with seeded random weights (nothing is downloaded), layer `layer4` (7×7),
one 224×224 image (the sample photo, resized and normalised as ImageNet models expect), batch 1,
`Explainer(model, "layer4", method=NAME, method_settings=...)(x)` — the raw maps, from the
preprocessed tensor — timed call by call: one warm-up call (when the first call takes over
20 s, it is the one measure: warming up would double a long run for a few per cent), then
calls until BUDGET_S seconds have passed or MAX_CALLS were made; the median. Plain inference
(`model(x)` under `torch.no_grad()`) is timed the same way, as the floor, after Grad-CAM (whose
first call tunes the allocator for the process). Torch uses as many threads as the process has
cores.

RefineCAM, which multiplies several layers' maps, gets `layer2,layer3,layer4`. A method that
refuses resnet50 (the transformer methods read attention maps) is timed on timm's
`vit_base_patch16_224` (random weights, 224², 14×14 tokens) at `blocks.11.norm1`, with Grad-CAM
and inference timed again on that model for its ratio.

A method's own options keep their defaults unless `--setting METHOD:NAME=VALUE` is given; the
settings used are recorded with the figures. Writes benchmarks/results/method_cost.json (read
by `gradcam_cli.methods.readme_table`, which renders README's table; tests/test_docs.py keeps
the two equal) and prints the table. Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradcam_cli import Explainer  # noqa: E402
from gradcam_cli.errors import GradcamError  # noqa: E402
from gradcam_cli.methods import METHODS, readme_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "method_cost.json"
PHOTO = ROOT / "sample_images" / "photos" / "coffee.jpg"
MODELS = {
    "resnet50": "layer4",
    "vit_base_patch16_224": "blocks.11.norm1",
}
NO_WARMUP_AFTER_S = 20.0
# Methods that combine several layers get these (pytorch-grad-cam's RefineCAM example's).
LAYERS = {"refinecam": {"resnet50": "layer2,layer3,layer4"}}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(weights=None).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def image() -> torch.Tensor:
    from PIL import Image

    photo = Image.open(PHOTO).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return ((x - mean) / std).permute(2, 0, 1)[None].contiguous()


def timed(call, budget_s: float, max_calls: int) -> tuple[float, int]:
    """Median seconds per call, and how many calls it is the median of."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    if first >= NO_WARMUP_AFTER_S:  # long enough to be its own measure: one call
        return first, 1
    times: list[float] = []
    begun = time.perf_counter()
    while len(times) < max_calls and (not times or time.perf_counter() - begun < budget_s):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def parse_settings(items: list[str]) -> dict[str, dict[str, object]]:
    settings: dict[str, dict[str, object]] = {}
    for item in items:
        method, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        settings.setdefault(method, {})[key] = value
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budget-s", type=float, default=6.0)
    parser.add_argument("--max-calls", type=int, default=7)
    parser.add_argument("--setting", action="append", default=[], metavar="METHOD:NAME=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    settings = parse_settings(args.setting)
    x = image()
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"methods": {}}
    rows: dict[str, dict] = dict(previous.get("methods", {}))
    floors: dict[str, dict] = dict(previous.get("models", {}))
    built: dict[str, torch.nn.Module] = {}

    def model(name: str) -> torch.nn.Module:
        if name not in built:
            built[name] = build(name)
            # Grad-CAM first: the library's first call tunes the process's allocator
            # (allocator.py), which makes later forwards faster; inference then gets it too.
            grad_cam = Explainer(built[name], MODELS[name], method="gradcam")
            cam_seconds, cam_calls = timed(lambda: grad_cam(x), args.budget_s, args.max_calls)
            with torch.no_grad():
                seconds, calls = timed(lambda: built[name](x), args.budget_s, args.max_calls)
            floors[name] = {
                "layer": MODELS[name],
                "inference_ms": round(seconds * 1000, 1),
                "gradcam_ms": round(cam_seconds * 1000, 1),
                "calls": min(calls, cam_calls),
            }
            print(f"{name}: inference {seconds * 1000:.1f} ms, gradcam {cam_seconds * 1000:.1f} ms")
        return built[name]

    for method in args.methods.split(","):
        given = settings.get(method, {})
        for name, layer in MODELS.items():
            try:
                layers = LAYERS.get(method, {}).get(name, layer)
                explainer = Explainer(model(name), layers, method=method, method_settings=given)
                if method == "gradcam" and not given:  # timed already: the ratios' reference
                    seconds, calls = floors[name]["gradcam_ms"] / 1000, floors[name]["calls"]
                else:
                    seconds, calls = timed(lambda e=explainer: e(x), args.budget_s, args.max_calls)
            except GradcamError as exc:
                print(f"{method} on {name}: {exc}")
                continue
            ms = seconds * 1000
            ratio = ms / floors[name]["gradcam_ms"]
            rows[method] = {"model": name, "ms": round(ms, 1), "calls": calls, "settings": given}
            if layers != layer:
                rows[method]["layers"] = layers
            print(f"{method:24s} {name:22s} {ms:10.1f} ms  {ratio:6.2f}× Grad-CAM  ({calls} calls)")
            break
        else:
            raise SystemExit(f"{method}: no model here can run it")
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, "
                f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__}",
                "load_average": os.getloadavg()[0],
                "models": floors,
                "methods": {m: rows[m] for m in METHODS if m in rows},
            },
            indent=1,
        )
        + "\n"
    )
    missing = [m for m in METHODS if m not in rows]
    if missing:
        print(f"not measured yet: {', '.join(missing)} (README's table needs every method)")
    else:
        print(readme_table(json.loads(RESULTS.read_text())))


if __name__ == "__main__":
    main()
