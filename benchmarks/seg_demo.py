"""A segmentation model we can train here, explained: the pointing game on held-out demo scenes.

    python benchmarks/seg_demo.py [--minutes 3] [--scenes 3000] [--out seg_demo_out]
                                  [--single 200] [--pairs 100]

1. ShapesSegNet (`seg_demo_model.py`: the demo classifier's convolutional stages, started from
   the embedded `demo:shapes` weights, and an FCN head) is trained on training-seed
   scenes with per-pixel targets from their masks (background + the 4 shapes). The length is
   a step count, `--minutes` × STEPS_PER_MINUTE (the rate measured on the 2-core machine this
   was written on), not a clock: the same arguments give the same weights. The state_dict is
   saved as OUT/shapes_seg.pt (torch.load(weights_only=True) reads it), with OUT/labels.txt
   and a held-out scene OUT/example.png with its masks in OUT/masks for trying the CLI (the
   demo's preprocessing must be given: your own model otherwise gets 224² and ImageNet's):

       gradcam explain OUT/example.png -m benchmarks/seg_demo_model.py:ShapesSegNet \\
           --weights OUT/shapes_seg.pt --labels OUT/labels.txt --task segmentation \\
           --input-size 128 --mean 0.5 0.5 0.5 --std 0.25 0.25 0.25 -t circle \\
           --mask OUT/masks --panel --out DIR

2. On held-out scenes (seeds never trained on): pixel accuracy and mIoU of the segmentation,
   then the pointing game per (scene, true class present) with the library's segmentation
   task (the target for class c: c's logits summed over the pixels predicted as c): a hit
   when the map's peak lies in the class's true mask, and the share of the map's energy in it
   (`gradcam_cli.localization`). Grad-CAM at the last backbone stage is compared with earlier
   stages, other methods and baselines that use no explanation: the centre of the image, a
   random map, and the model's own output (its probability map for the class, a reference
   for what the model knows, not an explanation).

The table is printed and written to OUT/seg_demo.md; the figures to OUT/seg_demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from gradcam_cli.demo.model import WEIGHTS_PATH
from gradcam_cli.demo.scenes import (
    TRAIN_SEED_BASE,
    Scene,
    make_scene,
    single_object_seeds,
    two_object_seeds,
)
from gradcam_cli.demo.train import TWO_OBJECT_EVERY
from gradcam_cli.localization import localize
from gradcam_cli.sources import read_state_dict

# The model is a file of its own, so that the CLI can load it as your model (file.py:Class).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import cpu_name  # noqa: E402
from seg_demo_model import LABELS, PREPROCESS, ShapesSegNet, backbone_state  # noqa: E402

__all__ = [
    "STEPS_PER_MINUTE",
    "Data",
    "draw_scenes",
    "train",
    "PixelFigures",
    "pixel_figures",
    "Pointing",
    "EXPLAINED",
    "explainer",
    "pointing_game",
    "main",
]

BATCH = 32
STEPS_PER_MINUTE = 150  # steps of BATCH scenes a minute here (2 shared cores: 120-280 measured)
LR = 3e-3
BACKBONE_LR = 3e-4  # the backbone starts trained: it moves ten times slower than the head
# backbone.0-10 (the convolutions at 128², 64² and the first at 32²) are not trained: their output
# is computed once per scene, and a step runs only what is trained
FROZEN = 11
SEED = 0
WEIGHTS_NAME = "shapes_seg.pt"
# (row name, layer, method): Grad-CAM at the last backbone stage first, what it is compared with
EXPLAINED = (
    ("Grad-CAM, last stage (backbone.21, 8×8)", "backbone.21", "gradcam"),
    ("Grad-CAM, stage 4 (backbone.17, 16×16)", "backbone.17", "gradcam"),
    ("Grad-CAM, stage 3 (backbone.13, 32×32)", "backbone.13", "gradcam"),
    ("HiResCAM, last stage (backbone.21)", "backbone.21", "hirescam"),
    ("Eigen-CAM, last stage (backbone.21; no class)", "backbone.21", "eigencam"),
)


# -- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    images: torch.Tensor  # uint8 [N, H, W, 3], the model's view of each scene
    labels: torch.Tensor  # uint8 [N, H, W]: 0 background, 1 + the class index of the object


def label_map(scene: Scene) -> np.ndarray:
    """Per-pixel class of a scene, in LABELS' order (0 background)."""
    target = np.zeros(scene.masks[0].shape, dtype=np.uint8)
    for label, mask in zip(scene.labels, scene.masks, strict=True):
        target[mask] = label + 1
    return target


def _draw(seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for seed in seeds:
        scene = make_scene(seed, objects=2 if seed % TWO_OBJECT_EVERY == 0 else 1)
        images.append(np.asarray(PREPROCESS.model_view(scene.image), dtype=np.uint8))
        labels.append(label_map(scene))
    return np.stack(images), np.stack(labels)


def draw_scenes(seeds: Iterable[int], workers: int | None = None) -> Data:
    """The training scenes `seeds` (one in TWO_OBJECT_EVERY with two objects, as the demo
    classifier was trained), drawn in `workers` processes; each depends on its seed alone."""
    seeds = list(seeds)
    workers = max(1, min(workers or os.cpu_count() or 1, len(seeds) // 64 or 1))
    step = -(-len(seeds) // workers)
    chunks = [seeds[i : i + step] for i in range(0, len(seeds), step)]
    if workers == 1:
        parts = [_draw(chunk) for chunk in chunks]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_draw, chunks))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Data(torch.from_numpy(images), torch.from_numpy(labels))


def model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] → the normalised float input [N, 3, H, W] (PREPROCESS.to_array's)."""
    mean = torch.tensor(PREPROCESS.mean).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS.std).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


# -- training ------------------------------------------------------------------------------------


def new_model() -> ShapesSegNet:
    """ShapesSegNet with the backbone of the embedded demo classifier (the head is seeded)."""
    torch.manual_seed(SEED)
    model = ShapesSegNet()
    missing, unexpected = model.load_state_dict(
        backbone_state(read_state_dict(WEIGHTS_PATH)), strict=False
    )
    if unexpected or any(key.startswith("backbone.") for key in missing):
        raise RuntimeError(f"the demo weights do not fit the backbone: {missing} {unexpected}")
    return model


@torch.no_grad()
def _frozen_output(model: ShapesSegNet, images: torch.Tensor) -> torch.Tensor:
    """backbone[:FROZEN] of every scene, computed once (the frozen stages never change)."""
    frozen = model.backbone[:FROZEN].eval()
    return torch.cat([frozen(model_input(images[i : i + 256])) for i in range(0, len(images), 256)])


def train(data: Data, steps: int, log: Callable[[str], None] = print) -> ShapesSegNet:
    """Train for `steps` batches of BATCH scenes (per-pixel cross-entropy, AdamW, one-cycle),
    deterministically: the head from scratch, the backbone from FROZEN on fine-tuned at a tenth
    of the rate, its first stages kept as the classifier's."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()
    model = new_model()
    model.backbone[:FROZEN].requires_grad_(False)
    features = _frozen_output(model, data.images)
    log(f"frozen stages on {len(features)} scenes: {time.perf_counter() - started:.0f} s")
    size = data.labels.shape[-2:]
    tuned = list(model.backbone[FROZEN:].parameters())
    head = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    optimiser = torch.optim.AdamW(
        [{"params": tuned, "lr": BACKBONE_LR}, {"params": head, "lr": LR}], weight_decay=1e-4
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=[BACKBONE_LR, LR], total_steps=max(1, steps), pct_start=0.15
    )
    generator = torch.Generator().manual_seed(SEED)
    count = len(features)
    order = torch.randperm(count, generator=generator)
    position, total, seen = 0, 0.0, 0
    model.train()
    model.backbone[:FROZEN].eval()  # not run here; its batch-norm statistics stay as they are
    for step in range(steps):
        if position + BATCH > count:
            order, position = torch.randperm(count, generator=generator), 0
        index = order[position : position + BATCH]
        position += BATCH
        logits = model.logits(model.backbone[FROZEN:](features[index]), size)
        loss = F.cross_entropy(logits, data.labels[index].long())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        total, seen = total + float(loss.detach()), seen + 1
        if (step + 1) % max(1, steps // 8) == 0 or step + 1 == steps:
            log(
                f"step {step + 1}/{steps}: loss {total / seen:.3f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
            total, seen = 0.0, 0
    return model.eval()


# -- held-out scenes: segmentation -------------------------------------------------------------


def held_out(single: int, pairs: int) -> list[Scene]:
    return [make_scene(seed, objects=1) for seed in single_object_seeds(single)] + [
        make_scene(seed, objects=2) for seed in two_object_seeds(pairs)
    ]


@torch.no_grad()
def probabilities(model: nn.Module, scenes: Sequence[Scene]) -> np.ndarray:
    """Softmax over the classes [N, 5, H, W] for the scenes (the model-input frame)."""
    out = []
    for start in range(0, len(scenes), BATCH):
        images = [s.image for s in scenes[start : start + BATCH]]
        x = torch.from_numpy(np.stack([PREPROCESS.to_array(image) for image in images]))
        out.append(torch.softmax(model(x)["out"], dim=1).numpy())
    return np.concatenate(out)


@dataclass(frozen=True)
class PixelFigures:
    pixel_accuracy: float
    mean_iou: float  # over the 5 classes, background included
    iou: dict[str, float]


def pixel_figures(predicted: np.ndarray, truth: np.ndarray) -> PixelFigures:
    """Pixel accuracy and IoU per class over all pixels of all scenes (intersections and unions
    summed over the set, as segmentation benchmarks count them)."""
    iou = {}
    for index, name in enumerate(LABELS):
        p, t = predicted == index, truth == index
        union = int((p | t).sum())
        iou[name] = int((p & t).sum()) / union if union else float("nan")
    return PixelFigures(
        pixel_accuracy=float((predicted == truth).mean()),
        mean_iou=float(np.nanmean(list(iou.values()))),
        iou=iou,
    )


# -- held-out scenes: the pointing game --------------------------------------------------------


@dataclass(frozen=True)
class Pointing:
    name: str
    cases: int  # (scene, true class) pairs
    hit_single: float
    hit_pairs: float
    hit: float
    energy: float
    seconds: float | None = None  # explaining time, for the explained rows


def _summary(name: str, found: list[tuple[bool, bool, float]], seconds=None) -> Pointing:
    """found: (two objects?, hit, energy) per case."""
    single = [hit for pair, hit, _ in found if not pair]
    pairs = [hit for pair, hit, _ in found if pair]
    return Pointing(
        name,
        len(found),
        float(np.mean(single)) if single else float("nan"),
        float(np.mean(pairs)) if pairs else float("nan"),
        float(np.mean([hit for _, hit, _ in found])),
        float(np.mean([energy for _, _, energy in found])),
        seconds,
    )


def _cases(scenes: Sequence[Scene]) -> Iterable[tuple[int, Scene, int, np.ndarray]]:
    """(scene number, scene, class in LABELS, true mask) per true class of every scene."""
    for number, scene in enumerate(scenes):
        for label, mask in zip(scene.labels, scene.masks, strict=True):
            yield number, scene, label + 1, mask


def _groups(scenes: Sequence[Scene]) -> dict[tuple[int, ...], list[int]]:
    """Scene numbers by their set of classes (LABELS indices): one explain call per group
    and batch, for exactly the classes the scenes hold."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for number, scene in enumerate(scenes):
        groups.setdefault(tuple(sorted(c + 1 for c in scene.labels)), []).append(number)
    return groups


def explainer(model: nn.Module, layer: str | None = None, method: str = "gradcam"):
    """The library's explainer of the model's segmentation (layer None: its automatic choice)."""
    from gradcam_cli import Explainer

    return Explainer(
        model,
        layers=layer,
        method=method,
        task="segmentation",
        labels=LABELS,
        preprocess=PREPROCESS,
    )


def pointing_game(
    model: nn.Module, scenes: Sequence[Scene], name: str, layer: str, method: str
) -> Pointing:
    """The pointing game of one layer and method, with the library's segmentation task."""
    explain = explainer(model, layer, method).explain
    started = time.perf_counter()
    results = {}
    for classes, numbers in _groups(scenes).items():
        for start in range(0, len(numbers), BATCH):
            chunk = numbers[start : start + BATCH]
            explained = explain([scenes[n].image for n in chunk], targets=list(classes))
            results.update(zip(chunk, explained, strict=True))
    seconds = time.perf_counter() - started
    found = []
    for number, scene, label, mask in _cases(scenes):
        place = results[number].localize(label, mask)
        found.append((len(scene.labels) > 1, place.hit, place.energy))
    return _summary(name, found, seconds)


def centre_bump(height: int, width: int) -> np.ndarray:
    """A centred Gaussian, σ a quarter of the shorter side: the centre's pointing game."""
    yy, xx = np.mgrid[0:height, 0:width]
    sigma = 0.25 * min(height, width)
    return np.exp(-((yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2) / (2 * sigma**2))


def baselines(
    scenes: Sequence[Scene], probs: np.ndarray, grid: tuple[int, int] = (8, 8)
) -> list[Pointing]:
    """Maps that explain nothing, placed and scored as the explanations are: a centred
    Gaussian (σ a quarter of the side: the centre's pointing game), a seeded random map on the
    last stage's grid, and the model's own probability map for the class."""
    height, width = probs.shape[-2:]
    centre = centre_bump(height, width)
    rng = np.random.default_rng(SEED)
    rows: dict[str, list[tuple[bool, bool, float]]] = {
        "baseline: model's own p(class) map": [],
        "baseline: centre (Gaussian bump)": [],
        "baseline: random 8×8 map (seeded)": [],
    }
    for number, scene, label, mask in _cases(scenes):
        box = PREPROCESS.crop_box(*scene.image.size)
        maps = (probs[number, label], centre, rng.random(grid))
        for row, raw in zip(rows.values(), maps, strict=True):
            place = localize(raw, mask, box)
            row.append((len(scene.labels) > 1, place.hit, place.energy))
    return [_summary(name, found) for name, found in rows.items()]


def write_example(scene: Scene, out: Path) -> None:
    """OUT/example.png, a held-out scene, and its true masks OUT/masks/example.LABEL.png (the
    names `--mask OUT/masks` matches per class) for trying the CLI."""
    scene.image.save(out / "example.png")
    (out / "masks").mkdir(exist_ok=True)
    for label, mask in zip(scene.labels, scene.masks, strict=True):
        Image.fromarray(np.uint8(mask) * 255).save(
            out / "masks" / f"example.{LABELS[label + 1]}.png"
        )


# -- the report ----------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return "–" if value != value else f"{100 * value:.1f} %"


def table(run: dict[str, Any], pixels: PixelFigures, rows: Sequence[Pointing]) -> str:
    lines = [
        "# Segmentation on the demo scenes: the pointing game",
        "",
        f"ShapesSegNet (demo classifier's stages + FCN head), {run['steps']} steps of "
        f"{BATCH} scenes from {run['scenes']} training scenes in {run['train_seconds']:.0f} s "
        f"({run['machine']}, {run['threads']} threads); held out: {run['single']} single-object "
        f"+ {run['pairs']} two-object scenes.",
        "",
        f"Segmentation: pixel accuracy {_pct(pixels.pixel_accuracy)}, mIoU "
        f"{_pct(pixels.mean_iou)} ("
        + ", ".join(f"{name} {_pct(v)}" for name, v in pixels.iou.items())
        + ").",
        "",
        f"Pointing game per (scene, true class): {run['cases']} cases, "
        f"{run['cases_without_predicted_pixels']} of them a class the model predicts on no pixel "
        "(its target is 0, a gradient map is empty: a miss); energy's chance level (the mean "
        f"mask share) {_pct(run['mask_share'])}. The automatic layer: {run['automatic_layer']}.",
        "",
        "| map | hit, 1 object | hit, 2 objects | hit, all | energy in mask | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    return "\n".join(lines + pointing_rows(rows)) + "\n"


def pointing_rows(rows: Sequence[Pointing]) -> list[str]:
    """The pointing-game table's rows (map, hits, energy, time), as seg_demo and vit_demo
    print them."""
    lines = []
    for row in rows:
        seconds = "" if row.seconds is None else f"{row.seconds:.1f} s"
        lines.append(
            f"| {row.name} | {_pct(row.hit_single)} | {_pct(row.hit_pairs)} | {_pct(row.hit)} "
            f"| {_pct(row.energy)} | {seconds} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes",
        type=float,
        default=3.0,
        help=f"training length in minutes of the 2-core reference machine "
        f"({STEPS_PER_MINUTE} steps a minute; a step count, so runs are reproducible)",
    )
    parser.add_argument("--scenes", type=int, default=3000, help="training scenes drawn")
    parser.add_argument("--single", type=int, default=200, help="held-out single-object scenes")
    parser.add_argument("--pairs", type=int, default=100, help="held-out two-object scenes")
    parser.add_argument("--out", type=Path, default=Path("seg_demo_out"))
    parser.add_argument(
        "--no-explain", action="store_true", help="train and measure the segmentation only"
    )
    args = parser.parse_args(argv)
    steps = max(1, round(args.minutes * STEPS_PER_MINUTE))
    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    started = time.perf_counter()
    data = draw_scenes(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.scenes))
    draw_seconds = time.perf_counter() - started
    log(f"drew {args.scenes} training scenes in {draw_seconds:.0f} s")
    started = time.perf_counter()
    model = train(data, steps, log=log)
    train_seconds = time.perf_counter() - started
    weights = args.out / WEIGHTS_NAME
    torch.save(model.state_dict(), weights)
    (args.out / "labels.txt").write_text("\n".join(LABELS) + "\n")

    scenes = held_out(args.single, args.pairs)
    write_example(next(s for s in scenes if len(s.labels) > 1 and 0 in s.labels), args.out)
    probs = probabilities(model, scenes)
    truth = np.stack([label_map(s) for s in scenes])
    pixels = pixel_figures(probs.argmax(1), truth)
    log(f"held out: pixel accuracy {pixels.pixel_accuracy:.4f}, mIoU {pixels.mean_iou:.4f}")

    rows: list[Pointing] = []
    automatic = None
    if not args.no_explain:
        automatic = str(explainer(model).layers[0])
        for name, layer, method in EXPLAINED:
            row = pointing_game(model, scenes, name, layer, method)
            log(f"{name}: hit {row.hit:.4f}, energy {row.energy:.4f} ({row.seconds:.0f} s)")
            rows.append(row)
    rows += baselines(scenes, probs)
    cases = list(_cases(scenes))
    mask_share = float(np.mean([mask.mean() for *_, mask in cases]))
    predicted = probs.argmax(1)
    unpredicted = sum(not (predicted[n] == label).any() for n, _, label, _ in cases)

    run = {
        "steps": steps,
        "batch": BATCH,
        "scenes": args.scenes,
        "draw_seconds": round(draw_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "machine": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "single": args.single,
        "pairs": args.pairs,
        "weights": str(weights),
        "automatic_layer": automatic,
        "cases": len(cases),
        "cases_without_predicted_pixels": unpredicted,
        "mask_share": mask_share,
    }
    text = table(run, pixels, rows)
    (args.out / "seg_demo.md").write_text(text)
    figures = {
        "run": run,
        "segmentation": asdict(pixels),
        "pointing": [asdict(row) for row in rows],
    }
    (args.out / "seg_demo.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(text, end="")


if __name__ == "__main__":
    main()
