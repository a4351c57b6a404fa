"""Is the map faithful to the model? Metrics that need no mask, baselines, and the gate on them.

Every metric perturbs the model's input in the order the map gives and watches the model's score
for the target: the softmax probability by default (`score="probability"`, as in the papers), or
the raw logit (`score="logit"`, torchcam's default when no `logits_fn` is given).

- deletion_auc / insertion_auc (Petsiuk et al. 2018, "RISE"), with the protocol of torchcam 0.5's
  `torchcam.metrics.DeletionInsertionMetric`: pixels ranked by the map from high to low (ties
  keep raster order: a stable sort), removed (deletion) or revealed (insertion) in `steps`
  intervals of ceil(H·W / steps) pixels, the same mask for every channel; a removed pixel takes
  the substrate's value (zeros of the model's normalised input by default: the dataset's mean
  colour); the area under the score curve by the trapezoid rule over the fraction of pixels
  actually changed (0 … 1). Lower deletion and higher insertion mean a more faithful map.
- average_drop / increase_in_confidence (Chattopadhay et al. 2018, "Grad-CAM++"), as torchcam's
  `ClassificationMetric`: the normalised input multiplied by the map scaled to [0, 1];
  drop = max(0, y − o) / (y + 1e-7), increase = 1 if y < o else 0, for the score y of the image
  and o of the masked image. Both are shares (0 … 1), not the paper's percentages.
- road_morf / road_lerf (Rong et al. 2022, "ROAD"), as pytorch-grad-cam 1.5.7's
  `ROADMostRelevantFirstAverage` / `ROADLeastRelevantFirstAverage`: for each percentile p,
  replace the pixels at or above the map's p-th percentile (MoRF; for LeRF, at or above that of
  1 − map, i.e. the least relevant ones) by noisy linear imputation, and report the change of
  the score (o − y), averaged over the percentiles. More negative MoRF and higher LeRF mean a
  more faithful map. Noisy linear imputation: each removed pixel is the weighted mean of its
  eight neighbours (1/6 for the four sides, 1/12 for the corners, only neighbours inside the
  image), solved jointly for all removed pixels, plus N(0, 0.01²) noise.

The map is min-max scaled first, as both peers' extractors do ((m − min) / (max − min + 1e-8)),
so a map from any method, a baseline, or a raw CAM can be given as it is.

Where a peer's default differs from its paper, the peer's is the default here and the paper's is
an option (see `MetricSettings`). One exception, the score: torchcam's classes score raw logits
unless given a `logits_fn`, but every paper here and torchcam's own examples use the softmax
probability, so the probability is the default and the logit the option.

Torch and numpy are imported inside the functions that need them, so the CLI can check metric
names and gate expressions without paying for torch.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import UsageError, did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "METRIC_NAMES",
    "METRIC_GROUPS",
    "LOCALIZATION_NAMES",
    "GATE_NAMES",
    "BASELINE_NAMES",
    "SUBSTRATES",
    "MetricSettings",
    "Curve",
    "Faithfulness",
    "GateRule",
    "check_metrics",
    "parse_percentiles",
    "check_baselines",
    "parse_gate",
    "check_gates",
    "measure",
    "random_map",
    "center_map",
    "edge_map",
    "baseline_map",
    "linear_imputation",
]

METRIC_NAMES = (
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "increase_in_confidence",
    "road_morf",
    "road_lerf",
)
# Short names for --metrics; a metric measured from the same forward passes comes with its pair.
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "deletion": ("deletion_auc",),
    "insertion": ("insertion_auc",),
    "drop": ("average_drop", "increase_in_confidence"),
    "road": ("road_morf", "road_lerf"),
    "all": METRIC_NAMES,
}
# The JSON `localization` names a gate can also test (localization.py); `hit` counts as 0 or 1.
LOCALIZATION_NAMES = ("hit", "energy", "iou")
GATE_NAMES = METRIC_NAMES + LOCALIZATION_NAMES
BASELINE_NAMES = ("random", "center", "edges")
SUBSTRATES = ("zeros", "blur")
SCORES = ("probability", "logit")
ROAD_SELECTIONS = ("threshold", "rank")

NORMALIZE_EPS = 1e-8  # torchcam's _CAM._normalize
DROP_EPS = 1e-7  # torchcam's ClassificationMetric: drop = relu(y - o) / (y + 1e-7)
BLUR_SIZE, BLUR_SIGMA = 11, 5.0  # RISE's evaluation notebook: klen = 11, nsig = 5
# Noisy linear imputation: weights of the eight neighbours (ROAD; pytorch-grad-cam road.py).
IMPUTATION_NEIGHBOURS = (
    (-1, -1, 1 / 12),
    (-1, 0, 1 / 6),
    (-1, 1, 1 / 12),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (1, 1, 1 / 12),
)
# The imputation's linear system is solved by conjugate gradients to this relative residual:
# imputed values then agree with a direct sparse solve (scipy's spsolve) to about 3e-5.
SOLVER_TOLERANCE = 1e-6


# -- settings and names ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSettings:
    """Every protocol parameter, with the peers' defaults.

    steps: deletion/insertion intervals; torchcam's default 20 (RISE used 224 pixels a step at
        224², i.e. 224 steps).
    deletion_substrate / insertion_substrate: what a removed pixel becomes. "zeros" (torchcam's
        default for both: zeros of the normalised input) or "blur" (the image blurred by an
        11×11 Gaussian, σ = 5, zero padding: RISE's substrate for insertion).
    score: "probability" (softmax of the output, as RISE, Grad-CAM++ and ROAD report) or "logit"
        (the raw output for the target: torchcam's metrics without `logits_fn`, pytorch-grad-cam's
        `ClassifierOutputTarget`).
    road_percentiles: ROAD's thresholds, as pytorch-grad-cam's averaged metrics take them
        (10, 20, …, 90). At percentile p both orders replace (100 − p)% of the pixels: MoRF the
        most relevant, LeRF the least. One value, e.g. (80,), gives pytorch-grad-cam's
        `ROADMostRelevantFirst(percentile=80)`.
    road_noise: the imputation noise's standard deviation, in the normalised input's units
        (pytorch-grad-cam's `NoisyLinearImputer(noise=0.01)`).
    road_seed: seeds the imputation noise, so a run is reproducible; MoRF and LeRF each draw from
        a generator seeded with it, in percentile order (pytorch-grad-cam draws from torch's
        global generator: `torch.manual_seed(seed)` before each of its averaged metrics
        reproduces ours).
    road_selection: "threshold" (pytorch-grad-cam: pixels with a value equal to the percentile
        are all replaced, so on a map with large ties, e.g. zeros after the ReLU, more than
        (100 − p)% are) or "rank" (ROAD's own code: exactly (100 − p)% of the pixels, ties in
        raster order).
    """

    steps: int = 20
    deletion_substrate: str = "zeros"
    insertion_substrate: str = "zeros"
    score: str = "probability"
    road_percentiles: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    road_noise: float = 0.01
    road_seed: int = 0
    road_selection: str = "threshold"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"steps={self.steps!r} must be a whole number of at least 1")
        for name in ("deletion_substrate", "insertion_substrate"):
            _check_choice(name, getattr(self, name), SUBSTRATES)
        _check_choice("score", self.score, SCORES)
        _check_choice("road_selection", self.road_selection, ROAD_SELECTIONS)
        object.__setattr__(self, "road_percentiles", tuple(self.road_percentiles))
        if not self.road_percentiles or not all(
            isinstance(p, int | float) and 0 < p < 100 for p in self.road_percentiles
        ):
            raise UsageError(
                f"road_percentiles={list(self.road_percentiles)} must be numbers strictly "
                "between 0 and 100, e.g. 10,20,30,40,50,60,70,80,90"
            )
        if not (math.isfinite(self.road_noise) and self.road_noise >= 0):
            raise UsageError(f"road_noise={self.road_noise} must be 0 or more")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(
            f"{name}='{value}' is not one of {', '.join(choices)}."
            + did_you_mean(str(value), choices, n=1)
        )


def parse_percentiles(text: str) -> tuple[float, ...]:
    """'10,20,30' → (10.0, 20.0, 30.0); MetricSettings checks the range."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(
            f"road_percentiles='{text}' must be comma-separated numbers between 0 and 100, "
            "e.g. 10,20,30,40,50,60,70,80,90"
        ) from None


def check_metrics(names: Iterable[str]) -> tuple[str, ...]:
    """Metric names or group names (deletion, insertion, drop, road, all) → the metric names, in
    METRIC_NAMES order, without duplicates. An unknown name is a UsageError with a did-you-mean."""
    wanted: set[str] = set()
    known = [*METRIC_GROUPS, *METRIC_NAMES]
    for raw in names:
        name = raw.strip()
        if name in METRIC_GROUPS:
            wanted.update(METRIC_GROUPS[name])
        elif name in METRIC_NAMES:
            wanted.add(name)
        else:
            raise UsageError(
                f"unknown metric '{name}' in metrics=; choose from {', '.join(known)}."
                + did_you_mean(name, known)
            )
    if not wanted:
        raise UsageError(f"metrics= is empty; choose from {', '.join(known)}")
    return tuple(name for name in METRIC_NAMES if name in wanted)


def check_baselines(names: Iterable[str]) -> tuple[str, ...]:
    """Baseline names (random, center, edges) in that order, without duplicates."""
    wanted = set()
    for raw in names:
        name = raw.strip()
        if name not in BASELINE_NAMES:
            raise UsageError(
                f"unknown baseline '{name}' in baselines=; choose from "
                f"{', '.join(BASELINE_NAMES)}." + did_you_mean(name, BASELINE_NAMES)
            )
        wanted.add(name)
    return tuple(name for name in BASELINE_NAMES if name in wanted)


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """A metric's raw measurements, for --save-raw: the score (or score change, for ROAD) `y` at
    each `x`: the fraction of pixels removed (deletion), revealed (insertion), or replaced
    (ROAD: 1 − p/100 for percentile p)."""

    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True)
class Faithfulness:
    """The metrics of one map (image × target × layer), their curves, and what they cost."""

    values: dict[str, float]
    curves: dict[str, Curve] = field(default_factory=dict)
    reference_score: float = 0.0  # the unperturbed image's score for the target
    forward_passes: int = 0  # images run through `predict`, the reference included


# -- the measurement ------------------------------------------------------------------------------


def measure(
    predict: Callable[[Tensor], Tensor],
    image: Tensor,
    saliency: Tensor,
    target: int,
    metrics: Iterable[str] = METRIC_NAMES,
    settings: MetricSettings | None = None,
    batch_size: int = 32,
) -> Faithfulness:
    """The faithfulness metrics of one map.

    predict: the model on a batch [N, 3, H, W] → its raw outputs [N, classes] (logits; the
        softmax is taken here when settings.score is "probability"). It is called under
        torch.inference_mode with at most `batch_size` images at a time; every perturbed copy of
        every requested metric shares the same stream of batches, and the reference image (the
        unperturbed input) is one of them.
    image: the model's normalised input [3, H, W], on the device `predict` expects.
    saliency: the map at the input's resolution [H, W], already placed; any scale (it is
        min-max scaled here).
    metrics: names or groups, as `check_metrics` takes them.
    """
    names = check_metrics(metrics)
    settings = settings or MetricSettings()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size={batch_size!r} must be a whole number of at least 1")
    _check_shapes(image, saliency)
    scaled = _scaled(saliency.detach().to(image.device))
    image = image.detach()

    jobs: dict[tuple, Callable[[], Tensor]] = {("reference",): lambda: image}
    finish: list[Callable[[dict[tuple, float]], dict[str, tuple[float, Curve | None]]]] = []
    if "deletion_auc" in names or "insertion_auc" in names:
        finish.append(_plan_deletion_insertion(jobs, image, scaled, names, settings))
    if "average_drop" in names or "increase_in_confidence" in names:
        finish.append(_plan_drop(jobs, image, scaled, names))
    for name, most_relevant in (("road_morf", True), ("road_lerf", False)):
        if name in names:
            finish.append(_plan_road(jobs, image, scaled, name, most_relevant, settings))

    scores = _run(predict, jobs, int(target), batch_size, settings.score)
    values: dict[str, float] = {}
    curves: dict[str, Curve] = {}
    for step in finish:
        for name, (value, curve) in step(scores).items():
            values[name] = value
            if curve is not None:
                curves[name] = curve
    ordered = {name: values[name] for name in names}
    return Faithfulness(ordered, curves, scores[("reference",)], len(jobs))


def _check_shapes(image: Tensor, saliency: Tensor) -> None:
    if image.ndim != 3:
        raise ValueError(f"image must be [C, H, W], got shape {tuple(image.shape)}")
    if tuple(saliency.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"saliency must be [H, W] = {tuple(image.shape[1:])} (placed at the input's "
            f"resolution), got {tuple(saliency.shape)}"
        )
    if not bool(saliency.isfinite().all()):
        raise ValueError("saliency has NaN or infinite values")


def _scaled(saliency: Tensor) -> Tensor:
    """Min-max scaled to [0, 1), float32: torchcam's normalisation, eps included."""
    values = saliency.float()
    values = values - values.min()
    return values / (values.max() + NORMALIZE_EPS)


def _run(
    predict: Callable[[Tensor], Tensor],
    jobs: dict[tuple, Callable[[], Tensor]],
    target: int,
    batch_size: int,
    score: str,
) -> dict[tuple, float]:
    """Each job's image through `predict`, batch_size at a time, built only when its batch is."""
    import torch

    keys = list(jobs)
    found: list[float] = []
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        batch = torch.stack([jobs[key]() for key in chunk])
        with torch.inference_mode():
            outputs = predict(batch)
        found.extend(_target_scores(outputs, target, score, len(chunk)))
    return dict(zip(keys, found, strict=True))


def _target_scores(outputs: Tensor, target: int, score: str, expected: int) -> list[float]:
    import torch

    if outputs.ndim != 2 or outputs.shape[0] != expected:
        raise ValueError(
            f"predict must return [N, classes] for N = {expected} images, "
            f"got shape {tuple(outputs.shape)}"
        )
    if not 0 <= target < outputs.shape[1]:
        raise ValueError(f"target {target} is not a class of a {outputs.shape[1]}-class output")
    outputs = outputs.float()
    if score == "probability":
        outputs = torch.softmax(outputs, dim=-1)
    return outputs[:, target].double().cpu().tolist()


# -- deletion and insertion -----------------------------------------------------------------------


def _plan_deletion_insertion(jobs, image, scaled, names, settings):
    """Queue the perturbed copies; return how to turn their scores into the two AUCs.

    Counts of changed pixels: 0, s, 2s, … and finally H·W, with s = ceil(H·W / steps). Deletion's
    first point and insertion's last are the reference image; the all-substrate image is shared
    by deletion's last and insertion's first when both use the same substrate.
    """
    import torch

    pixels = scaled.numel()
    step = -(-pixels // settings.steps)
    counts = [*range(0, pixels, step), pixels]
    order = torch.argsort(scaled.flatten(), descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(pixels, device=order.device)
    ranks = ranks.view(scaled.shape)

    def queue(name: str, substrate_name: str, reveal: bool) -> list[tuple]:
        substrate = _Lazy(lambda: _substrate(image, substrate_name))
        keys = []
        for count in counts:
            shown = count if reveal else pixels - count  # pixels that keep the image's value
            if shown == pixels:
                key: tuple = ("reference",)
            elif shown == 0:
                key = ("substrate", substrate_name)
                jobs.setdefault(key, substrate.get)
            else:
                key = (name, count)
                first = ranks < count  # the `count` most relevant pixels
                kept = first if reveal else ~first
                jobs[key] = lambda kept=kept: torch.where(kept, image, substrate.get())
            keys.append(key)
        return keys

    wanted = {}
    if "deletion_auc" in names:
        wanted["deletion_auc"] = queue("deletion", settings.deletion_substrate, reveal=False)
    if "insertion_auc" in names:
        wanted["insertion_auc"] = queue("insertion", settings.insertion_substrate, reveal=True)
    fractions = [count / pixels for count in counts]

    def finish(scores):
        done = {}
        for name, keys in wanted.items():
            curve = Curve(tuple(fractions), tuple(scores[key] for key in keys))
            done[name] = (_trapezoid(curve.x, curve.y), curve)
        return done

    return finish


class _Lazy:
    """A value built on first use (the blurred substrate is only built if a batch needs it)."""

    def __init__(self, build):
        self._build, self._value = build, None

    def get(self):
        if self._value is None:
            self._value = self._build()
        return self._value


def _trapezoid(x: Iterable[float], y: Iterable[float]) -> float:
    xs, ys = list(x), list(y)
    return float(sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1)))


def _substrate(image: Tensor, name: str) -> Tensor:
    """What deleted pixels become: zeros of the normalised input, or the image blurred."""
    import torch

    if name == "zeros":
        return torch.zeros_like(image)
    radius = BLUR_SIZE // 2
    offsets = torch.arange(BLUR_SIZE, dtype=torch.float32, device=image.device) - radius
    line = torch.exp(-(offsets**2) / (2 * BLUR_SIGMA**2))
    kernel = torch.outer(line, line)
    kernel = (kernel / kernel.sum()).to(image.dtype)
    channels = image.shape[0]
    weight = kernel.expand(channels, 1, BLUR_SIZE, BLUR_SIZE)
    blurred = torch.nn.functional.conv2d(image[None], weight, padding=radius, groups=channels)
    return blurred[0]


# -- average drop and increase in confidence ------------------------------------------------------


def _plan_drop(jobs, image, scaled, names):
    jobs[("masked",)] = lambda: image * scaled.to(image.dtype)

    def finish(scores):
        before, after = scores[("reference",)], scores[("masked",)]
        done = {}
        if "average_drop" in names:
            done["average_drop"] = (max(0.0, before - after) / (before + DROP_EPS), None)
        if "increase_in_confidence" in names:
            done["increase_in_confidence"] = (float(before < after), None)
        return done

    return finish


# -- ROAD -----------------------------------------------------------------------------------------


def _plan_road(jobs, image, scaled, name, most_relevant, settings):
    """Queue one imputed copy per percentile; the value is the mean score change.

    The masks and the noise are made now, in percentile order, so the numbers do not depend on
    when a batch builds its images; the (costly) imputation waits for its batch.
    """
    import torch

    generator = torch.Generator().manual_seed(settings.road_seed)
    channels = image.shape[0]
    keys = []
    for index, percentile in enumerate(settings.road_percentiles):
        known = _road_kept(scaled, percentile, most_relevant, settings.road_selection)
        missing = int((~known).sum())
        noise = torch.randn((channels, missing), generator=generator, dtype=torch.float32)
        key = (name, index)
        jobs[key] = lambda known=known, noise=noise: _noisy_imputation(
            image, known, noise, settings.road_noise
        )
        keys.append(key)
    removed = tuple(1 - p / 100 for p in settings.road_percentiles)

    def finish(scores):
        reference = scores[("reference",)]
        changes = tuple(scores[key] - reference for key in keys)
        return {name: (sum(changes) / len(changes), Curve(removed, changes))}

    return finish


def _road_kept(scaled: Tensor, percentile: float, most_relevant: bool, selection: str) -> Tensor:
    """The pixels ROAD keeps at this percentile (bool [H, W], on the CPU)."""
    import numpy as np
    import torch

    values = scaled.detach().float().cpu()
    if selection == "threshold":
        # pytorch-grad-cam: threshold at np.percentile of the map (of 1 − map for LeRF), keep
        # what lies strictly below it.
        ranked = values if most_relevant else 1 - values
        threshold = np.percentile(ranked.numpy(), percentile)
        return ranked < threshold
    pixels = values.numel()
    kept_count = int(pixels * percentile / 100)
    order = torch.argsort(values.flatten(), descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(pixels)
    removed = pixels - kept_count
    kept = ranks >= removed if most_relevant else ranks < kept_count
    return kept.view(values.shape)


def _noisy_imputation(image: Tensor, known: Tensor, noise: Tensor, scale: float) -> Tensor:
    imputed = linear_imputation(image.detach().cpu(), known)
    missing = ~known.flatten()
    flat = imputed.flatten(1)
    flat[:, missing] = flat[:, missing] + scale * noise.to(flat.dtype)
    return flat.view(image.shape).to(image.device)


def linear_imputation(image: Tensor, known: Tensor) -> Tensor:
    """ROAD's linear imputation (noise-free) of the pixels where `known` is False.

    Each missing pixel equals the weighted mean of its in-image neighbours (weights in
    IMPUTATION_NEIGHBOURS), known neighbours entering with their values: one sparse symmetric
    positive definite system for all missing pixels and channels, solved here by Jacobi-
    preconditioned conjugate gradients in float64 (pytorch-grad-cam solves the same system
    with scipy's direct spsolve). With no known pixel at all (a constant map, or one whose
    plateau straddles the threshold) the system is singular; the missing pixels are then 0, as
    pytorch-grad-cam's spsolve returns them.

    It runs on one CPU thread (see `_one_thread`).
    """
    with _one_thread():
        return _linear_imputation(image, known)


def _linear_imputation(image: Tensor, known: Tensor) -> Tensor:
    import torch

    channels, height, width = image.shape
    missing = ~known.flatten().cpu()
    count = int(missing.sum())
    result = image.detach().cpu().to(torch.float64).reshape(channels, -1).clone()
    if count == 0:
        return result.view(image.shape).to(image.dtype)
    ids = torch.full((height * width,), -1, dtype=torch.long)
    ids[missing] = torch.arange(count)
    grid = torch.arange(height * width).view(height, width)
    diagonal = torch.zeros(count, dtype=torch.float64)
    rhs = torch.zeros(count, channels, dtype=torch.float64)
    rows, cols, weights = [], [], []
    for dy, dx, weight in IMPUTATION_NEIGHBOURS:
        # Every pixel whose neighbour at (dy, dx) lies inside the image.
        source = grid[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
        source = source.flatten()
        source = source[missing[source]]
        neighbour = source + dy * width + dx
        diagonal.index_add_(0, ids[source], torch.full((len(source),), weight, dtype=torch.float64))
        free = missing[neighbour]
        rows.append(ids[source[free]])
        cols.append(ids[neighbour[free]])
        weights.append(torch.full((int(free.sum()),), -weight, dtype=torch.float64))
        fixed = ~free
        rhs.index_add_(0, ids[source[fixed]], weight * result[:, neighbour[fixed]].T)
    rows.append(torch.arange(count))
    cols.append(torch.arange(count))
    weights.append(diagonal)
    matrix = _csr(torch.cat(rows), torch.cat(cols), torch.cat(weights), count)
    solution = _conjugate_gradients(matrix, rhs, diagonal, 10 * (height + width) + 100)
    result[:, missing] = solution.T
    return result.view(image.shape).to(image.dtype)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch's CPU ops on one thread for a while. The imputation's hundreds of small steps
    gain little from more threads and lose badly when a core is busy elsewhere: ROAD's 9
    imputations at 224² took 2.5–3.5 s on one thread, and 2.5 s on two threads when the machine
    was quiet but 15–70 s when other processes held the second core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _csr(rows: Tensor, cols: Tensor, values: Tensor, size: int) -> Tensor:
    import torch

    coo = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, (size, size), check_invariants=False
    ).coalesce()
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()


def _conjugate_gradients(
    matrix: Tensor, rhs: Tensor, diagonal: Tensor, max_iterations: int
) -> Tensor:
    """Solve matrix @ x = rhs, one column per channel, to SOLVER_TOLERANCE relative residual.

    The iterations a system of this kind needs grow with the width of the largest hole, about
    2·(H + W) at 224² for a 90% hole; `max_iterations` only bounds the time if that ever fails
    (the best estimate so far is returned).
    """
    import torch

    def safe_div(a: Tensor, b: Tensor) -> Tensor:  # a converged column stops moving
        return torch.where(b != 0, a / torch.where(b != 0, b, 1.0), 0.0)

    inverse = (1.0 / diagonal)[:, None]
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    z = residual * inverse
    direction = z.clone()
    rz = (residual * z).sum(0)
    limit = SOLVER_TOLERANCE * rhs.norm(dim=0)
    for _ in range(max_iterations):
        if bool((residual.norm(dim=0) <= limit).all()):
            break
        product = matrix @ direction
        alpha = safe_div(rz, (direction * product).sum(0))
        x += alpha * direction
        residual -= alpha * product
        z = residual * inverse
        rz_next = (residual * z).sum(0)
        direction = z + safe_div(rz_next, rz) * direction
        rz = rz_next
    return x


# -- baselines ------------------------------------------------------------------------------------


def random_map(shape: tuple[int, int], seed: int = 0) -> Tensor:
    """Uniform noise in [0, 1), one value a pixel, from a generator seeded with `seed`. To compare
    with a CAM at its own resolution, make it at the CAM's size and place it like one."""
    from .methods import seeded_uniform

    return seeded_uniform(tuple(shape), seed)


def center_map(shape: tuple[int, int], sigma: float | None = None) -> Tensor:
    """A Gaussian centred on the image (peak 1 at the centre); σ defaults to a quarter of the
    shorter side, so ±2σ spans that side: the centre bias of photos, as a map."""
    import torch

    height, width = shape
    sigma = min(height, width) / 4 if sigma is None else sigma
    ys = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    squared = ys[:, None] ** 2 + xs[None, :] ** 2
    return torch.exp(-squared / (2 * sigma**2))


def edge_map(image: Tensor) -> Tensor:
    """The Sobel gradient magnitude √(gx² + gy²) of the grey image (0.299 R + 0.587 G + 0.114 B;
    3×3 kernels, borders mirrored as OpenCV's default), [H, W] on the CPU.

    pytorch-grad-cam's tutorial baseline (`sobel_cam`) is the same edge detector on an 8-bit
    image, with (|gx| + |gy|) / 2 saturated at 255 instead of the magnitude.
    """
    import torch

    values = image.detach().float().cpu()
    grey = (0.299 * values[0] + 0.587 * values[1] + 0.114 * values[2])[None, None]
    padded = torch.nn.functional.pad(grey, (1, 1, 1, 1), mode="reflect")
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel_x, sobel_x.T])[:, None]
    gradients = torch.nn.functional.conv2d(padded, kernels)[0]
    return gradients.pow(2).sum(0).sqrt()


def baseline_map(name: str, image: Tensor, seed: int = 0) -> Tensor:
    """The baseline `name` (random, center, edges) for this input [3, H, W], as an [H, W] map."""
    check_baselines([name])
    shape = (int(image.shape[1]), int(image.shape[2]))
    if name == "random":
        return random_map(shape, seed)
    if name == "center":
        return center_map(shape)
    return edge_map(image)


# -- the gate -------------------------------------------------------------------------------------


# The first comparison in the text; two-character operators first, so '>=' is not read as '>'.
_COMPARISON = re.compile(r"^(?P<name>.*?)(?P<op>>=|<=|==|!=|=>|=<|>|<|=)(?P<value>.*)$")


@dataclass(frozen=True)
class GateRule:
    """One `--gate` expression: the explanation passes when `name op value` holds."""

    name: str
    op: str  # ">=" or "<="
    value: float

    def passes(self, measured: float | bool | None) -> bool:
        """False when the value was not measured or is NaN."""
        if measured is None:
            return False
        number = float(measured)
        if math.isnan(number):
            return False
        return number >= self.value if self.op == ">=" else number <= self.value

    def shortfall(self, measured: float | bool | None) -> str | None:
        """Why the value fails this rule ('insertion_auc 0.312 < 0.4'), or None if it passes."""
        if self.passes(measured):
            return None
        if measured is None:
            return f"{self.name} was not measured"
        fails = "<" if self.op == ">=" else ">"
        return f"{self.name} {float(measured):.4g} {fails} {self.value:g}"

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"


def parse_gate(text: str) -> GateRule:
    """'insertion_auc>=0.4' → GateRule('insertion_auc', '>=', 0.4). Names: GATE_NAMES."""
    example = "e.g. 'insertion_auc>=0.4' or 'deletion_auc<=0.2'"
    found = _COMPARISON.match(text)
    if not found:
        raise UsageError(
            f"gates='{text}' compares nothing; write name>=value or name<=value, {example}"
        )
    name, op, raw = (part.strip() for part in found.group("name", "op", "value"))
    if op not in (">=", "<="):
        raise UsageError(
            f"gates='{text}': the comparison '{op}' is not supported; use >= or <=, {example}"
        )
    if name not in GATE_NAMES:
        raise UsageError(
            f"gates='{text}': unknown name '{name}'; choose from {', '.join(GATE_NAMES)}."
            + did_you_mean(name, GATE_NAMES)
        )
    if not raw:
        raise UsageError(f"gates='{text}' has no value after '{op}', {example}")
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"gates='{text}': '{raw}' is not a number, {example}") from None
    if not math.isfinite(value):
        raise UsageError(f"gates='{text}': the value must be a finite number, {example}")
    return GateRule(name, op, value)


def check_gates(rules: Iterable[GateRule], metrics: Iterable[str], has_mask: bool) -> None:
    """Refuse a gate on something the run will not measure: a metric not in `metrics` (names,
    as check_metrics returns them), or a localization name without a mask."""
    measured = set(metrics)
    for rule in rules:
        if rule.name in LOCALIZATION_NAMES:
            if not has_mask:
                raise UsageError(
                    f"gates='{rule}' needs a mask to measure {rule.name}; give mask=PATH"
                )
        elif rule.name not in measured:
            group = next(g for g, members in METRIC_GROUPS.items() if rule.name in members)
            raise UsageError(
                f"gates='{rule}' tests {rule.name}, which is not measured; add it: metrics={group}"
            )
