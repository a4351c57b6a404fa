"""Scenes of coloured shapes on cluttered, textured backgrounds, with their true masks.

Everything is drawn from one seed, so a scene is reproducible from its number alone. Shapes are
drawn at twice the size and reduced, so edges are antialiased like a photo's; masks are the
same drawing thresholded at half coverage. Clutter is thin lines, dots and arcs: nothing that
looks like one of the classes, so a map can only be right by finding the object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CLASSES",
    "Scene",
    "make_scene",
    "SUPERSAMPLE",
    "TRAIN_SEED_BASE",
    "HELDOUT_SEED_BASE",
    "SAMPLE_SEED_BASE",
    "single_object_seeds",
    "two_object_seeds",
]

CLASSES = ("circle", "square", "triangle", "star")
SUPERSAMPLE = 2
# Disjoint seed ranges: the model never trains on a scene it is evaluated or shown on.
TRAIN_SEED_BASE = 0
HELDOUT_SEED_BASE = 1_000_000
SAMPLE_SEED_BASE = 2_000_000


def single_object_seeds(count: int) -> range:
    """The first `count` held-out single-object scenes (`make_scene(seed, objects=1)`)."""
    return range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + count)


def two_object_seeds(count: int) -> range:
    """The first `count` held-out two-object scenes, a range apart from the single ones."""
    start = HELDOUT_SEED_BASE + 500_000
    return range(start, start + count)


@dataclass(frozen=True)
class Scene:
    image: Image.Image  # RGB, size × size
    labels: tuple[int, ...]  # class index of each object
    masks: tuple[np.ndarray, ...]  # bool [size, size] per object, same order as labels

    def mask_of(self, label: int) -> np.ndarray:
        return self.masks[self.labels.index(label)]


def make_scene(seed: int, size: int = 128, objects: int = 1) -> Scene:
    """Scene number `seed`: `objects` shapes (1 or 2, of different classes) that do not touch."""
    rng = np.random.default_rng(seed)
    big = size * SUPERSAMPLE
    canvas = _background(rng, big)
    _clutter(rng, canvas, big)
    labels = tuple(int(c) for c in rng.choice(len(CLASSES), size=objects, replace=False))
    placed: list[_Shape] = []
    draw = ImageDraw.Draw(canvas)
    for label in labels:
        shape = _place_without_overlap(rng, label, big, placed, crowded=objects > 1)
        placed.append(shape)
        draw.polygon(shape.points, fill=_object_colour(rng, canvas, shape.mask))
    image = canvas.resize((size, size), Image.Resampling.BOX)
    masks = tuple(_reduce_mask(shape.mask, size) for shape in placed)
    return Scene(image, labels, masks)


# -- shapes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    points: list[tuple[float, float]]
    mask: Image.Image  # "L" image at the supersampled size, 255 inside
    centre: tuple[float, float]
    reach: float  # radius of a circle around the centre that holds the whole shape


def _polygon(label: int, cx: float, cy: float, radius: float, angle: float) -> list:
    name = CLASSES[label]
    if name == "circle":
        corners, radii = 64, [radius]
    elif name == "square":
        corners, radii = 4, [radius]
    elif name == "triangle":
        corners, radii = 3, [radius * 1.15]  # equal area feel: a triangle looks smaller
    else:  # star: five points, inner radius 45% of the outer
        corners, radii = 10, [radius * 1.1, radius * 0.5]
    points = []
    for i in range(corners):
        r = radii[i % len(radii)]
        theta = angle + 2 * math.pi * i / corners
        points.append((cx + r * math.cos(theta), cy + r * math.sin(theta)))
    return points


def _random_shape(rng: np.random.Generator, label: int, big: int, crowded: bool) -> _Shape:
    # Two objects must fit side by side, so they are drawn smaller.
    radius = rng.uniform(0.10, 0.18) * big if crowded else rng.uniform(0.13, 0.25) * big
    margin = radius * 1.15
    cx, cy = rng.uniform(margin, big - margin, size=2)
    points = _polygon(label, cx, cy, radius, rng.uniform(0, 2 * math.pi))
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    return _Shape(points, mask, (cx, cy), radius * 1.15)


def _place_without_overlap(
    rng, label: int, big: int, others: list[_Shape], crowded: bool
) -> _Shape:
    """A shape whose enclosing circle keeps a gap of 3% of the scene from the others'."""
    for _ in range(200):
        shape = _random_shape(rng, label, big, crowded=bool(others) or crowded)
        if all(
            math.dist(shape.centre, o.centre) > shape.reach + o.reach + 0.03 * big for o in others
        ):
            return shape
    raise RuntimeError("could not place the objects without overlap")  # pragma: no cover


def _reduce_mask(mask: Image.Image, size: int) -> np.ndarray:
    return np.asarray(mask.resize((size, size), Image.Resampling.BOX)) >= 128


# -- colours and clutter -----------------------------------------------------------------------


def _background(rng: np.random.Generator, big: int) -> Image.Image:
    """A smooth two-colour gradient with low-frequency blotches and fine noise."""
    y, x = np.mgrid[0:big, 0:big] / big
    a, b = rng.uniform(40, 215, size=(2, 3))
    direction = rng.uniform(0, 2 * math.pi)
    t = (np.cos(direction) * x + np.sin(direction) * y + 1) / 2
    base = a + (b - a) * t[..., None]
    coarse = rng.normal(0, 18, size=(8, 8, 3))
    blotches = np.asarray(
        Image.fromarray(np.uint8(np.clip(coarse + 128, 0, 255))).resize(
            (big, big), Image.Resampling.BICUBIC
        ),
        dtype=np.float64,
    )
    noise = rng.normal(0, 10, size=(big, big, 3))
    return Image.fromarray(np.uint8(np.clip(base + (blotches - 128) + noise, 0, 255)))


def _clutter(rng: np.random.Generator, canvas: Image.Image, big: int) -> None:
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(4, 10)):  # thin lines
        x0, y0, x1, y1 = rng.uniform(0, big, size=4)
        draw.line((x0, y0, x1, y1), fill=_random_colour(rng), width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(5, 15)):  # small dots
        cx, cy = rng.uniform(0, big, size=2)
        r = rng.uniform(1.5, 0.025 * big)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_random_colour(rng))
    for _ in range(rng.integers(1, 4)):  # open arcs
        cx, cy = rng.uniform(0, big, size=2)
        r = rng.uniform(0.05, 0.2) * big
        start = rng.uniform(0, 360)
        draw.arc(
            (cx - r, cy - r, cx + r, cy + r),
            start,
            start + rng.uniform(40, 160),
            fill=_random_colour(rng),
            width=int(rng.integers(1, 4)),
        )


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in rng.integers(0, 256, size=3))
    return red, green, blue


def _object_colour(rng, canvas: Image.Image, mask: Image.Image) -> tuple[int, int, int]:
    """A random colour that stands out from the background under the object."""
    under = np.asarray(canvas, dtype=np.float64)[np.asarray(mask) > 0].mean(axis=0)
    for _ in range(50):
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - under).sum() > 150:
            break
    red, green, blue = (int(v) for v in colour)
    return red, green, blue
