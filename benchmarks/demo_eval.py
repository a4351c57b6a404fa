"""How well `demo:shapes` classifies, and how well its Grad-CAM maps land on the objects.

    .venv/bin/python benchmarks/demo_eval.py [--single 200] [--pairs 100] [--method gradcam]

On held-out scenes (seeds the model never trained on):

- accuracy: single-object scenes whose top class is the object's; two-object scenes whose top
  two classes are the two objects';
- localization of the true class's map on single-object scenes: pointing-game hit rate, mean
  energy in the mask next to the mask's mean share of the image (energy's chance level), IoU;
- class discrimination on two-object scenes with classes A and B: the share of scenes where A's
  map puts more energy on A's mask than on B's *and* B's map more on B's than on A's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from gradcam_cli.demo.scenes import CLASSES, make_scene, single_object_seeds, two_object_seeds
from gradcam_cli.explainer import Explainer
from gradcam_cli.sources import load_model

__all__ = ["Figures", "evaluate", "main"]

BATCH = 32


@dataclass(frozen=True)
class Figures:
    layer: str
    method: str
    single: int
    pairs: int
    accuracy_single: float
    accuracy_pairs: float
    hit_rate: float
    mean_energy: float
    mean_mask_share: float
    mean_iou: float
    discriminative_rate: float  # both maps of a pair on their own object
    discriminative_maps: float  # the same, counted per map


def _chunks(seeds: Iterable[int], size: int) -> Iterable[list[int]]:
    seeds = list(seeds)
    for start in range(0, len(seeds), size):
        yield seeds[start : start + size]


def evaluate(explainer: Explainer | None = None, single: int = 200, pairs: int = 100) -> Figures:
    """Measure the figures above on `single` + `pairs` held-out scenes."""
    explainer = explainer or Explainer(load_model("demo:shapes"))
    every_class = list(range(len(CLASSES)))
    layer = str(explainer.layers[0])
    correct, hits, energies, shares, ious = 0, [], [], [], []
    for seeds in _chunks(single_object_seeds(single), BATCH):
        scenes = [make_scene(seed, objects=1) for seed in seeds]
        explained = explainer.explain([s.image for s in scenes], classes=every_class)
        for scene, explanation in zip(scenes, explained, strict=True):
            (label,), (mask,) = scene.labels, scene.masks
            correct += explanation.predictions[0].index == label
            found = explanation.localize(label, mask, layer)
            hits.append(found.hit)
            energies.append(found.energy)
            shares.append(found.mask_share)
            ious.append(found.iou)
    pair_correct, both_right, maps_right = 0, 0, 0
    for seeds in _chunks(two_object_seeds(pairs), BATCH):
        scenes = [make_scene(seed, objects=2) for seed in seeds]
        explained = explainer.explain([s.image for s in scenes], classes=every_class)
        for scene, explanation in zip(scenes, explained, strict=True):
            top_two = {p.index for p in explanation.predictions[:2]}
            pair_correct += top_two == set(scene.labels)
            right = [_prefers_own_mask(explanation, scene, label, layer) for label in scene.labels]
            both_right += all(right)
            maps_right += sum(right)
    return Figures(
        layer=layer,
        method=explainer.method.name,
        single=single,
        pairs=pairs,
        accuracy_single=correct / max(1, single),
        accuracy_pairs=pair_correct / max(1, pairs),
        hit_rate=float(np.mean(hits)) if hits else 0.0,
        mean_energy=float(np.mean(energies)) if energies else 0.0,
        mean_mask_share=float(np.mean(shares)) if shares else 0.0,
        mean_iou=float(np.mean(ious)) if ious else 0.0,
        discriminative_rate=both_right / max(1, pairs),
        discriminative_maps=maps_right / max(1, 2 * pairs),
    )


def _prefers_own_mask(explanation, scene, label: int, layer: str) -> bool:
    other = next(o for o in scene.labels if o != label)
    own = explanation.localize(label, scene.mask_of(label), layer).energy
    return own > explanation.localize(label, scene.mask_of(other), layer).energy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=200, help="single-object scenes")
    parser.add_argument("--pairs", type=int, default=100, help="two-object scenes")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--layer", default=None, help="default: the model's default layer")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    explainer = Explainer(
        load_model("demo:shapes"), [args.layer] if args.layer else None, method=args.method
    )
    figures = evaluate(explainer, single=args.single, pairs=args.pairs)
    for name, value in asdict(figures).items():
        print(f"{name:<22} {value:.4f}" if isinstance(value, float) else f"{name:<22} {value}")
    print(f"{'seconds':<22} {time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
