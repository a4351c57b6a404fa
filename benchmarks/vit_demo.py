"""A small ViT trained on the demo scenes, explained: the attention methods' pointing game.

    python benchmarks/vit_demo.py [--steps 600] [--threads N] [--scenes 4000] [--out vit_demo_out]
                                  [--single 200] [--pairs 100]

1. ShapesViT (`vit_demo_model.py`: a timm VisionTransformer, 4 blocks of 3 heads, 8×8 tokens
   and a class token, its stem the demo CNN's first stages, frozen) is trained on
   training-seed scenes (one in three with two objects, half the target on each, as the demo
   CNN), AdamW and one-cycle; the frozen stem's output is computed once per scene, and a step
   runs only what is trained (the tokens' projection, the blocks, the head). The length is a
   step count, not a clock: the same arguments give the same weights (torch seeded,
   deterministic algorithms). The state_dict is saved as OUT/shapes_vit.pt with
   OUT/labels.txt; nothing is committed (the script retrains).
2. On held-out scenes (seeds never trained on): accuracy (single-object scenes: the top class
   is the object's; two-object scenes: the top two are the two objects), then the pointing
   game per (scene, true class), the map explaining that class: a hit when the map's peak lies
   in the class's true mask, and the share of the map's energy inside it
   (`gradcam_cli.localization`, as `seg_demo.py` and `demo_eval.py` count them). Rows:
   rollout, transformer attribution, LeGrad and Grad-CAM at the last block's `norm1` (the
   automatic layer), and maps that explain nothing: the centre of the image and a seeded
   random map on the 8×8 grid. Rollout has no class: on a two-object scene both classes get
   the same map, so at most one of them can be hit.

The table is printed and written to OUT/vit_demo.md; the figures to OUT/vit_demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradcam_cli.demo.scenes import TRAIN_SEED_BASE, Scene
from gradcam_cli.demo.train import scene_batch
from gradcam_cli.localization import localize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import cpu_name  # noqa: E402
from seg_demo import Pointing, _pct, _summary, centre_bump, held_out, pointing_rows  # noqa: E402
from vit_demo_model import (  # noqa: E402
    LABELS,
    PREPROCESS,
    ShapesViT,
    from_stem_features,
    frozen_stem,
)

__all__ = ["train", "accuracy", "pointing_game", "baselines", "EXPLAINED", "main"]

BATCH = 64
LR = 2e-3
STEPS = 600
SEED = 0
LAYER = "blocks.3.norm1"  # the last block's norm1: the automatic layer
GRID = (8, 8)
WEIGHTS_NAME = "shapes_vit.pt"
EXPLAINED = (
    ("rollout (every block, mean of heads; no class)", "rollout"),
    ("transformer attribution (Chefer et al. 2021)", "transformer-attribution"),
    ("LeGrad (torchcam's definition)", "legrad"),
    (f"Grad-CAM at {LAYER} (tokens)", "gradcam"),
)


# -- training ----------------------------------------------------------------------------------


@torch.no_grad()
def stem_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen stem's output for every scene, computed once (it never changes)."""
    stem = frozen_stem(model).eval()
    return torch.cat([stem(x[i : i + 256]) for i in range(0, len(x), 256)])


def train(
    data: tuple[torch.Tensor, torch.Tensor], steps: int, log: Callable[[str], None] = print
) -> nn.Module:
    """`steps` batches of BATCH scenes (soft-target cross-entropy, AdamW, one-cycle) of what is
    trained: the tokens' projection, the blocks and the head. Deterministic."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()
    model = ShapesViT()
    features, y = stem_features(model, data[0]), data[1]
    log(f"frozen stem on {len(features)} scenes: {time.perf_counter() - started:.0f} s")
    trained = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trained, lr=LR, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=LR, total_steps=max(1, steps), pct_start=0.1
    )
    generator = torch.Generator().manual_seed(SEED)
    total, right, seen = 0.0, 0, 0
    model.train()
    for step in range(steps):
        index = torch.randint(len(features), (BATCH,), generator=generator)
        targets = y[index]
        logits = from_stem_features(model, features[index])
        loss = torch.sum(-targets * torch.log_softmax(logits, dim=1), dim=1).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        total, seen = total + float(loss.detach()), seen + 1
        right += int((targets.gather(1, logits.detach().argmax(1, keepdim=True)) > 0).sum())
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            log(
                f"step {step + 1}/{steps}: loss {total / seen:.3f}, top-1 on a true class "
                f"{right / (seen * BATCH):.3f} ({time.perf_counter() - started:.0f} s)"
            )
            total, right, seen = 0.0, 0, 0
    model.eval()
    with torch.no_grad():  # the shortcut is the model: its own forward gives the same logits
        x = data[0][:8]
        if not torch.allclose(
            model(x), from_stem_features(model, frozen_stem(model)(x)), 1e-4, 1e-4
        ):
            raise RuntimeError("training's forward from the stem's features is not the model's")
    return model


# -- held-out scenes ----------------------------------------------------------------------------


@torch.no_grad()
def accuracy(model: nn.Module, scenes: Sequence[Scene]) -> tuple[float, float]:
    """(single-object scenes whose top class is right, two-object ones whose top two are)."""
    single, pairs = [], []
    for start in range(0, len(scenes), BATCH):
        chunk = scenes[start : start + BATCH]
        x = torch.from_numpy(np.stack([PREPROCESS.to_array(s.image) for s in chunk]))
        ranked = model(x).argsort(dim=1, descending=True)
        for scene, order in zip(chunk, ranked.tolist(), strict=True):
            wanted = set(scene.labels)
            (single if len(wanted) == 1 else pairs).append(set(order[: len(wanted)]) == wanted)
    return float(np.mean(single)), float(np.mean(pairs))


def pointing_game(model: nn.Module, scenes: Sequence[Scene], name: str, method: str) -> Pointing:
    """Every true class of every scene explained with `method` at LAYER, and scored: one
    explain call per group of scenes with the same classes, for exactly those classes."""
    from gradcam_cli import Explainer

    explainer = Explainer(model, LAYER, method=method, preprocess=PREPROCESS, labels=LABELS)
    groups: dict[tuple[int, ...], list[int]] = {}
    for number, scene in enumerate(scenes):
        groups.setdefault(tuple(sorted(scene.labels)), []).append(number)
    started = time.perf_counter()
    found = []
    for classes, numbers in groups.items():
        for start in range(0, len(numbers), BATCH // 2):
            chunk = [scenes[n] for n in numbers[start : start + BATCH // 2]]
            explained = explainer.explain([s.image for s in chunk], classes=list(classes))
            for scene, explanation in zip(chunk, explained, strict=True):
                for label, mask in zip(scene.labels, scene.masks, strict=True):
                    place = explanation.localize(label, mask, LAYER)
                    found.append((len(scene.labels) > 1, place.hit, place.energy))
    return _summary(name, found, time.perf_counter() - started)


def baselines(scenes: Sequence[Scene]) -> list[Pointing]:
    """Maps that explain nothing, scored as the explanations are: a centred Gaussian (σ a
    quarter of the side) and a seeded random map on the token grid."""
    height, width = scenes[0].masks[0].shape
    centre = centre_bump(height, width)
    rng = np.random.default_rng(SEED)
    rows: dict[str, list[tuple[bool, bool, float]]] = {
        "baseline: centre (Gaussian bump)": [],
        "baseline: random 8×8 map (seeded)": [],
    }
    for scene in scenes:
        box = PREPROCESS.crop_box(*scene.image.size)
        for mask in scene.masks:
            for row, raw in zip(rows.values(), (centre, rng.random(GRID)), strict=True):
                place = localize(raw, mask, box)
                row.append((len(scene.labels) > 1, place.hit, place.energy))
    return [_summary(name, found) for name, found in rows.items()]


# -- the report ----------------------------------------------------------------------------------


def table(run: dict[str, Any], rows: Sequence[Pointing]) -> str:
    lines = [
        "# A small ViT on the demo scenes: the pointing game of the attention methods",
        "",
        f"`{run['command']}`",
        "",
        f"ShapesViT (`benchmarks/vit_demo_model.py`: timm VisionTransformer, "
        f"{run['blocks']} blocks × {run['heads']} heads, width {run['width']}, 8×8 tokens + a "
        f"class token; its stem the demo CNN's first stages, frozen; {run['trained'] / 1e6:.2f} M "
        "parameters trained), "
        f"{run['steps']} steps of {BATCH} scenes from {run['scenes']} training scenes in "
        f"{run['train_seconds']:.0f} s ({run['machine']}, torch on {run['threads']} of "
        f"{run['cores']} cores, shared with other jobs); "
        f"held out: {run['single']} single-object + {run['pairs']} two-object scenes.",
        "",
        f"Accuracy: {_pct(run['accuracy_single'])} of single-object scenes (top class), "
        f"{_pct(run['accuracy_pairs'])} of two-object scenes (top two classes).",
        "",
        f"Pointing game per (scene, true class): {run['cases']} cases; energy's chance level "
        f"(the mean mask share) {_pct(run['mask_share'])}. Maps explain the true class at "
        f"`{LAYER}` (its grid for the attention methods).",
        "",
        "| map | hit, 1 object | hit, 2 objects | hit, all | energy in mask | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    return "\n".join(lines + pointing_rows(rows)) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps (batches of 64)")
    parser.add_argument("--scenes", type=int, default=4000, help="training scenes drawn")
    parser.add_argument("--single", type=int, default=200, help="held-out single-object scenes")
    parser.add_argument("--pairs", type=int, default=100, help="held-out two-object scenes")
    parser.add_argument("--out", type=Path, default=Path("vit_demo_out"))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch's CPU threads (default: torch's own)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    started = time.perf_counter()
    data = scene_batch(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.scenes))
    draw_seconds = time.perf_counter() - started
    log(f"drew {args.scenes} training scenes in {draw_seconds:.0f} s")
    started = time.perf_counter()
    model = train(data, args.steps, log=log)
    train_seconds = time.perf_counter() - started
    torch.save(model.state_dict(), args.out / WEIGHTS_NAME)
    (args.out / "labels.txt").write_text("\n".join(LABELS) + "\n")

    scenes = held_out(args.single, args.pairs)
    accuracy_single, accuracy_pairs = accuracy(model, scenes)
    log(f"held out: accuracy {accuracy_single:.4f} (1 object), {accuracy_pairs:.4f} (2 objects)")
    rows = []
    for name, method in EXPLAINED:
        rows.append(pointing_game(model, scenes, name, method))
        log(f"{name}: hit {rows[-1].hit:.4f}, energy {rows[-1].energy:.4f}")
    rows += baselines(scenes)
    masks = [mask for scene in scenes for mask in scene.masks]
    run = {
        "command": " ".join(["python benchmarks/vit_demo.py", *(argv or sys.argv[1:])]),
        "steps": args.steps,
        "batch": BATCH,
        "scenes": args.scenes,
        "draw_seconds": round(draw_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "machine": cpu_name(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "blocks": len(model.blocks),
        "heads": model.blocks[0].attn.num_heads,
        "width": model.embed_dim,
        "trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "single": args.single,
        "pairs": args.pairs,
        "accuracy_single": accuracy_single,
        "accuracy_pairs": accuracy_pairs,
        "cases": len(masks),
        "mask_share": float(np.mean([mask.mean() for mask in masks])),
    }
    text = table(run, rows)
    (args.out / "vit_demo.md").write_text(text)
    figures = {"run": run, "pointing": [asdict(row) for row in rows]}
    (args.out / "vit_demo.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(text, end="")


if __name__ == "__main__":
    main()
