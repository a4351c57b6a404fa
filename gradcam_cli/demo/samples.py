"""The generated part of `sample_images/`: scenes for `make demo` and their true masks.

    python -m gradcam_cli.demo.samples [FOLDER]     (default: sample_images)

One single-object scene per class and two two-object scenes, taken from the sample seed range
(never trained on). Masks follow `--mask FOLDER`'s matching: `masks/KEY.png` for a scene with
one object, `masks/KEY.LABEL.png` per object for a scene with two.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from .scenes import CLASSES, SAMPLE_SEED_BASE, Scene, make_scene

__all__ = ["sample_scenes", "write_samples"]

PAIRS = (("circle", "star"), ("square", "triangle"))


def sample_scenes() -> Iterator[tuple[str, Scene]]:
    """(file stem, scene) for every sample: the first sample seed that gives each wanted set."""
    wanted = [(name,) for name in CLASSES] + list(PAIRS)
    for names in wanted:
        labels = {CLASSES.index(name) for name in names}
        seed = SAMPLE_SEED_BASE
        while set((scene := make_scene(seed, objects=len(names))).labels) != labels:
            seed += 1
        stem = names[0] if len(names) == 1 else "two_" + "_".join(names)
        yield stem, scene


def write_samples(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    (folder / "scenes").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    written = []
    for stem, scene in sample_scenes():
        path = folder / "scenes" / f"{stem}.png"
        scene.image.save(path)
        written.append(path)
        for label, mask in zip(scene.labels, scene.masks, strict=True):
            name = stem if len(scene.labels) == 1 else f"{stem}.{CLASSES[label]}"
            mask_path = folder / "masks" / f"{name}.png"
            Image.fromarray(np.uint8(mask) * 255).save(mask_path)
            written.append(mask_path)
    return written


if __name__ == "__main__":
    for path in write_samples(sys.argv[1] if len(sys.argv) > 1 else "sample_images"):
        print(path)
