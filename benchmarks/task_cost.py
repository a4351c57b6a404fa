"""Grad-CAM's cost on a segmentation and a detection model: inference, the split, a full backward.

    .venv/bin/python benchmarks/task_cost.py [--repeats 3] [--warmups 1]
                                             [--photo sample_images/photos/coffee.jpg]
                                             [--allocator tuned|untuned]

Two torchvision models with seeded random weights (nothing is downloaded), on the CPU with as
many torch threads as this process has cores, each given one 640×480 photo (PHOTO cropped to 4:3
and resized, `ImageOps.fit`):

- `deeplabv3_resnet50`, preprocessed as torchvision's segmentation weights do (shorter side
  resized to 520: the model sees 693×520); layer `backbone.layer4`; the target is the class
  predicted on the most pixels, its score the sum of its logits over those pixels (pytorch-grad-
  cam's SemanticSegmentationTarget);
- `fasterrcnn_resnet50_fpn` (weights=None, weights_backbone=None, box_score_thresh=0.0, so random
  weights still give detections), given the photo as a [0, 1] tensor, which the model's own
  transform resizes to 800 on the shorter side; layer `backbone.body.layer4`; the target is the
  best detection, its score that detection's score.

Three ways to get there, each timed from the PIL photo to its result:

- `inference`: a `torch.no_grad()` forward (and the predicted mask's argmax): the floor;
- `split Grad-CAM`: `gradcam_cli.Explainer(model, layers=..., task=..., preprocess=...)
  .explain([photo], topk=1)` (min_score=0.0 for the detector), with the library's own
  preprocessing for that torchvision model;
- `full-backward Grad-CAM`: the textbook recipe written here, what pytorch-grad-cam does: a
  forward hook keeps the layer's output and a tensor hook its gradient, the parameters require
  grad as loaded, `score.backward()` on the same target scalar; map = ReLU(Σ_k mean(dA_k) A_k).

Memory: every (model, approach) runs in its own fresh subprocess, so peaks do not mix. Each
child builds the model and takes what is resident then as its baseline. It measures the peak RSS
above it of the set-up (hooks; for the split, the Explainer, whose layer probe runs a forward
and a backward through the whole model), hands the memory the set-up freed back to the kernel
(allocator.release_memory), then measures the peak RSS above the same baseline of ONE cold call
(`compare.cpu_peak_mib`). The split's and the full backward's children save their map; the two
are compared (max |split − full| / max |full|): the split is exact, so they must agree to float
tolerance.

Time: one more process per model sets up all three approaches and interleaves their calls:
WARMUPS calls of each, then REPEATS rounds, each in another order; the median per approach.
Other processes' load (this machine's 2 cores are shared) then falls on the three alike, so
the ratios hold where the absolute times do not; the header gives the load average.

The library tunes glibc's allocator at its first call (gradcam_cli/allocator.py: freed buffers
stay in the heap, so later forwards do not fault their pages in again); every child applies
the same setting before it builds the model (`--allocator untuned`: none does), so the
approaches differ in nothing but what they compute.

Prints a markdown table and writes benchmarks/results/task_cost.md. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import cpu_peak_mib, machine, rss_mib  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "task_cost.md"
PHOTO = Path(__file__).resolve().parent.parent / "sample_images" / "photos" / "coffee.jpg"
PHOTO_SIZE = (640, 480)
PREPROCESSING = {
    "segmentation": "torchvision's segmentation preprocessing: shorter side to 520",
    "detection": "the model's own transform: shorter side to 800, padded to a multiple of 32",
}
APPROACHES = ("inference", "split Grad-CAM", "full-backward Grad-CAM")
MAPPED = APPROACHES[1:]  # the children that save their map for the agreement check


@dataclass(frozen=True)
class Spec:
    task: str
    layer: str
    weights: str  # torchvision's weights enum, for its preprocessing only (nothing is loaded)
    kwargs: dict = field(default_factory=dict)


MODELS = {
    "deeplabv3_resnet50": Spec(
        "segmentation", "backbone.layer4", "DeepLabV3_ResNet50_Weights", {"aux_loss": False}
    ),
    "fasterrcnn_resnet50_fpn": Spec(
        "detection",
        "backbone.body.layer4",
        "FasterRCNN_ResNet50_FPN_Weights",
        {"box_score_thresh": 0.0},
    ),
}


# -- the child: one approach on one model -------------------------------------------------------


def photo(path: Path):
    from PIL import Image, ImageOps

    return ImageOps.fit(Image.open(path).convert("RGB"), PHOTO_SIZE)


def build(name: str):
    import torch
    import torchvision

    spec = MODELS[name]
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, **spec.kwargs
    ).eval()
    # torchvision's own preprocessing for this model: its weights' transforms (a transform
    # object; building it downloads nothing)
    preprocess = torchvision.models.get_weight(f"{spec.weights}.DEFAULT").transforms()
    return model, preprocess


def segmentation_target(logits):
    """The class predicted on the most pixels, and the sum of its logits over those pixels."""
    import torch

    predicted = logits.argmax(1)
    c = int(torch.bincount(predicted.flatten(), minlength=logits.shape[1]).argmax())
    mask = predicted[0] == c
    share = float(mask.float().mean())
    return (logits[0, c] * mask).sum(), {"class": c, "pixel share": round(share, 4)}


def detection_target(detections):
    """The best detection (torchvision returns them by decreasing score) and its score."""
    best = detections[0]
    score = best["scores"][0]
    return score, {
        "class": int(best["labels"][0]),
        "score": round(float(score), 4),
        "box": [round(float(v), 1) for v in best["boxes"][0]],
    }


def inference_call(model, preprocess, task: str, image):
    import torch

    if task == "segmentation":

        def call():
            with torch.no_grad():
                return model(preprocess(image)[None])["out"].argmax(1), None

    else:

        def call():
            with torch.no_grad():
                return model([preprocess(image)]), None

    return call


def photo_part(cam, padded: tuple[int, int], size: tuple[int, int]):
    """A detector's map [h, w] over its padded input (`padded`, H × W) → over the part that is
    the resized photo (`size`), resampled to the cells that part spans (RoIAlign, half-pixel
    aligned, one bilinear sample per cell): the frame the library gives a detection's map in
    (tasks/detection.py, `frame`), so the two compare. Geometry, not Grad-CAM: a change to the
    library's framing shows here as a disagreement (2 samples per cell against its 1: 0.36)."""
    import torch
    from torchvision.ops import roi_align

    (height, width), (rh, rw), (h, w) = padded, size, cam.shape
    x1, y1 = w * rw / width, h * rh / height
    box = torch.tensor([[0.0, 0.0, 0.0, x1, y1]], dtype=cam.dtype)
    out = (max(1, round(y1)), max(1, round(x1)))
    if (rh, rw) == (height, width):  # nothing padded: the library leaves the map as it is
        return cam
    return roi_align(cam[None, None], box, out, 1.0, 1, aligned=True)[0, 0]


def full_backward_call(model, preprocess, spec: Spec, image):
    """The textbook Grad-CAM: hooks on the layer, a backward through the whole model."""
    import torch.nn.functional as F

    kept: dict = {}

    def keep(module, inputs, output):
        if output.requires_grad:  # not in the other approaches' calls (timing_child)
            kept["A"] = output
            output.register_hook(lambda grad: kept.__setitem__("dA", grad))

    def resized(module, inputs, output):  # a detector's own transform: what the backbone saw
        images = output[0]
        kept["frame"] = (tuple(images.tensors.shape[-2:]), tuple(images.image_sizes[0]))

    model.get_submodule(spec.layer).register_forward_hook(keep)
    if spec.task == "detection":
        model.transform.register_forward_hook(resized)

    def call():
        model.zero_grad(set_to_none=True)  # as pytorch-grad-cam does before each backward
        if spec.task == "segmentation":
            score, target = segmentation_target(model(preprocess(image)[None])["out"])
        else:
            score, target = detection_target(model([preprocess(image)]))
        score.backward()
        a, g = kept.pop("A").detach(), kept.pop("dA")
        cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))[0]
        if spec.task == "detection":
            cam = photo_part(cam, *kept.pop("frame"))
        return cam.numpy(), target

    return call


def library_preprocess(name: str):
    """The library's own preprocessing for a torchvision model (what `--model torchvision:NAME`
    uses: shorter side to 520 for deeplabv3, the photo as it is for the detector). Passed to
    the Explainer explicitly: an nn.Module given as it is gets the defaults for a user's own
    classifier (a 224² centre crop) whatever its task."""
    from gradcam_cli import load_model

    return load_model(f"torchvision:{name}", pretrained=False).preprocess  # a random-init copy


def split_call(model, preprocess, spec: Spec, image):
    """The library's split: the backward runs through what follows the layer only."""
    from gradcam_cli import Explainer

    explainer = Explainer(model, layers=spec.layer, task=spec.task, preprocess=preprocess)
    options = {"min_score": 0.0} if spec.task == "detection" else {}

    def call():
        [result] = explainer.explain([image], topk=1, **options)
        t = result.targets[0]
        if spec.task == "segmentation":
            target = {"class": t.index, "pixel share": round(t.pixel_share, 4)}
        else:
            box = [round(v, 1) for v in t.box]
            target = {"class": t.class_index, "score": round(t.score, 4), "box": box}
        return result.raw(), target

    return call


def prepare(args) -> None:
    """What every child does first: the allocator as asked, warnings off, torch threads."""
    import warnings

    import torch

    from gradcam_cli.allocator import OPT_OUT_VARIABLE, tune_allocator

    if args.allocator == "untuned":
        os.environ[OPT_OUT_VARIABLE] = "0"  # the library leaves glibc's allocator alone
    else:
        tune_allocator()  # what the library does at its first call, done for every approach
    warnings.filterwarnings("ignore")
    torch.set_num_threads(len(os.sched_getaffinity(0)))


def make_call(approach: str, name: str, model, preprocess, image, split_preprocess=None):
    spec = MODELS[name]
    if approach == "inference":
        return inference_call(model, preprocess, spec.task, image)
    if approach == "split Grad-CAM":
        return split_call(model, split_preprocess or library_preprocess(name), spec, image)
    return full_backward_call(model, preprocess, spec, image)


def memory_child(name: str, approach: str, args) -> None:
    """One approach's set-up and one cold call in this fresh process: their peaks; the map."""
    import gc

    import numpy as np

    from gradcam_cli.allocator import release_memory

    prepare(args)
    model, preprocess = build(name)
    image = photo(args.photo)
    split_preprocess = library_preprocess(name) if approach == "split Grad-CAM" else None
    made: dict = {}

    def set_up():  # hooks; the Explainer, whose layer probe runs a forward and a backward
        made["call"] = make_call(approach, name, model, preprocess, image, split_preprocess)

    # The baseline: the model loaded (what loading freed, such as the copy the split's
    # preprocessing was read from, handed back to the kernel first).
    gc.collect()
    release_memory()
    loaded = rss_mib()
    setup_peak = cpu_peak_mib(set_up, loaded)
    release_memory()  # the set-up's freed heap back to the kernel: the call's peak is its own
    seen: list = []  # the backbone's input size (h, w): the model's view of the photo
    hook = model.backbone.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].shape))
    made["out"] = None

    def cold():
        made["out"] = made["call"]()

    peak = cpu_peak_mib(cold, loaded)
    hook.remove()
    cam, target = made["out"]
    if args.map:
        np.save(args.map, np.asarray(cam, dtype=np.float32))
    found = {"peak_mib": peak, "setup_peak_mib": setup_peak, "target": target}
    print(json.dumps(found | {"backbone_input": list(seen[-1][-2:])}))


def timing_child(name: str, args) -> None:
    """Every approach in this one process, their calls interleaved: WARMUPS of each, then
    REPEATS rounds, each in another order; the median per approach. Load from other
    processes then falls on all three alike, and the ratios hold even on a busy machine."""
    prepare(args)
    model, preprocess = build(name)
    image = photo(args.photo)
    calls, failed = {}, {}
    for approach in APPROACHES:
        try:
            calls[approach] = make_call(approach, name, model, preprocess, image)
        except Exception as exc:  # reported in its cell; the others are still timed
            failed[approach] = f"{type(exc).__name__}: {exc}"
    for _ in range(args.warmups):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {approach: [] for approach in calls}
    for round_ in range(args.repeats):
        order = list(calls)[round_ % len(calls) :] + list(calls)[: round_ % len(calls)]
        for approach in order:
            start = time.perf_counter()
            calls[approach]()
            times[approach].append(time.perf_counter() - start)
    seconds = {approach: statistics.median(t) for approach, t in times.items()}
    print(json.dumps({"seconds": seconds, "failed": failed}))


# -- the parent: every child, then the table ----------------------------------------------------


def run_child(name: str, approach: str, args, map_path: Path | None = None) -> dict:
    command = [sys.executable, __file__, "--child", name, "--approach", approach]
    command += ["--repeats", str(args.repeats), "--warmups", str(args.warmups)]
    command += ["--photo", str(args.photo), "--allocator", args.allocator]
    if map_path is not None:
        command += ["--map", str(map_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def agreement(maps: dict[str, Path]) -> str:
    """max |split − full| / max |full| of the two saved maps, or why there is none."""
    import numpy as np

    missing = [a for a in MAPPED if not maps[a].exists()]
    if missing:
        return "not compared: no map from " + ", ".join(missing)
    split, full = (np.load(maps[a]) for a in MAPPED)
    if split.shape != full.shape:
        return f"not compared: split map {split.shape}, full-backward map {full.shape}"
    scale = float(np.abs(full).max())
    if scale == 0:
        return "not compared: the full-backward map is all zero"
    return f"{float(np.abs(split - full).max()) / scale:.1e}"


def _ratio(value: float | None, floor: float | None) -> str:
    return "" if value is None or not floor else f" ({value / floor:.2f}×)"


def cell(result: dict, floor: dict) -> str:
    """'time (× inference) · memory (× inference)', or why a part is missing."""
    seconds, peak = result.get("seconds"), result.get("peak_mib")
    first = result is floor
    time_text = (
        f"time failed: {result.get('time_error')}"
        if seconds is None
        else f"{seconds:.2f} s" + ("" if first else _ratio(seconds, floor.get("seconds")))
    )
    memory_text = (
        f"memory failed: {result.get('error')}"
        if peak is None
        else f"{peak:.0f} MiB" + ("" if first else _ratio(peak, floor.get("peak_mib")))
    )
    return f"{time_text} · {memory_text}"


def table(results: dict, agreements: dict) -> str:
    lines = [
        "| model | inference | split Grad-CAM | full-backward Grad-CAM | split vs full map |",
        "|---|---|---|---|---|",
    ]
    for name in MODELS:
        floor = results[(name, "inference")]
        cells = " | ".join(cell(results[(name, a)], floor) for a in APPROACHES)
        lines.append(f"| {name} | {cells} | {agreements[name]} |")
    return "\n".join(lines)


def views(results: dict) -> str:
    """The backbone's input (w × h) per model, as the inference child saw it."""
    seen = []
    for name, spec in MODELS.items():
        size = results[(name, "inference")].get("backbone_input")
        if size:
            seen.append(f"{size[1]}×{size[0]} ({name}, {PREPROCESSING[spec.task]})")
    return "; ".join(seen) or "(not measured)"


def setup_table(results: dict) -> str:
    """The set-up's peak above the loaded model: hooks, and the Explainer's layer probe."""
    lines = [
        "| set-up before the first image (peak above the model) | " + " | ".join(APPROACHES) + " |",
        "|---|---|---|---|",
    ]
    for name in MODELS:
        cells = [results[(name, a)].get("setup_peak_mib") for a in APPROACHES]
        shown = ("" if peak is None else f"{peak:.0f} MiB" for peak in cells)
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def targets(results: dict) -> str:
    lines = []
    for name in MODELS:
        for approach in MAPPED:
            target = results[(name, approach)].get("target")
            if target is not None:
                lines.append(f"- {name}, {approach}: target {json.dumps(target)}")
    return "\n".join(lines)


def measure(name: str, args, work: Path) -> tuple[dict, str]:
    """One model: a memory child per approach, then the timing child; the maps compared."""
    maps = {a: work / f"{name}-{a.split()[0]}.npy" for a in MAPPED}
    results = {}
    for approach in APPROACHES:
        results[approach] = run_child(name, approach, args, maps.get(approach))
        print(f"{name:<24} {approach:<23} memory {results[approach]}", flush=True)
    timing = run_child(name, "timing", args)
    print(f"{name:<24} {'all, interleaved':<23} time {timing}", flush=True)
    for approach, result in results.items():
        seconds = timing.get("seconds", {}).get(approach)
        if seconds is None:
            result["time_error"] = timing.get("error") or timing["failed"].get(approach)
        result["seconds"] = seconds
    return results, agreement(maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmups", type=int, default=1)
    parser.add_argument("--photo", type=Path, default=PHOTO)
    parser.add_argument(
        "--allocator",
        choices=("tuned", "untuned"),
        default="tuned",
        help="glibc's allocator as the library tunes it at its first call (allocator.py), "
        "in every approach's process; untuned: as glibc comes, in every process",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--approach", help=argparse.SUPPRESS)
    parser.add_argument("--map", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.approach == "timing":
            timing_child(args.child, args)
        else:
            memory_child(args.child, args.approach, args)
        return
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    started, load = time.perf_counter(), os.getloadavg()[0]
    results: dict[tuple[str, str], dict] = {}
    agreements: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gradcam-task-cost-") as work:
        for name in MODELS:
            found, agreements[name] = measure(name, args, Path(work))
            results |= {(name, approach): result for approach, result in found.items()}
    w, h = PHOTO_SIZE
    text = (
        f"# Grad-CAM cost on a segmentation and a detection model (random init, CPU)\n\n"
        f"{machine('cpu')}. One {w}×{h} photo ({args.photo.name} fitted to {w}×{h}); "
        f"the backbones see {views(results)}. Time: the median wall time per image of "
        f"{args.repeats} calls after {args.warmups} warm-up(s), from the PIL photo to the "
        "result, the three approaches' calls interleaved in one process per model. Memory: "
        "the peak RSS of one cold call above what was resident after loading the model, each "
        "approach in a fresh process (what its set-up — hooks; the Explainer and its layer "
        "probe — freed handed back first; the set-up's own peak is the second table). glibc's "
        f"allocator {args.allocator} in every process. Ratios are against inference. The last "
        "column is max |split − full| / max |full| of the two raw maps.\n"
        f"`python benchmarks/task_cost.py {' '.join(sys.argv[1:])}` "
        f"({time.perf_counter() - started:.0f} s in all; 1-minute load average "
        f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)\n\n"
        + table(results, agreements)
        + "\n\n"
        + setup_table(results)
        + "\n\n"
        + targets(results)
        + "\n"
    )
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
