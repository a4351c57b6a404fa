"""Faithfulness in a run: the metrics of each explanation the model has just made, and of the
baselines beside it, measured on the batch's own inputs (`--metrics`, `--baselines`).

The metrics themselves are `faithfulness.py`; this module turns an explained batch into calls of
`faithfulness.measure`: the model's input as the model saw it, each raw map placed at the input's
resolution as the pictures place it (bilinear, half-pixel centres), the model's scores as the
run reports them (the softmax of the logits; a single logit's sigmoid; a sigmoid/softmax model's
outputs as they are). A baseline's metrics depend on the image and the target, not the layer,
so they are measured once per image × target and shared by its layers' records.

It runs on the loop that runs the model (the metrics need it), after the batch is explained.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .faithfulness import Faithfulness, MetricSettings, baseline_map, measure, random_map

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .explanation import ImageExplanation

__all__ = ["MetricOptions", "Measured", "measure_batch", "saliency_at_input", "metric_record"]


@dataclass(frozen=True)
class MetricOptions:
    """What to measure: metric names (checked), baseline names (checked), the protocol."""

    metrics: tuple[str, ...]
    baselines: tuple[str, ...] = ()
    settings: MetricSettings = field(default_factory=MetricSettings)

    def describe(self) -> dict[str, object]:
        """As predictions.json's options record it (a resumed run must measure the same)."""
        settings = {name: getattr(self.settings, name) for name in _SETTINGS}
        settings["road_percentiles"] = list(self.settings.road_percentiles)
        return {"metrics": list(self.metrics), "baselines": list(self.baselines), **settings}


_SETTINGS = (
    "steps",
    "deletion_substrate",
    "insertion_substrate",
    "score",
    "road_percentiles",
    "road_noise",
    "road_seed",
    "road_selection",
)


@dataclass(frozen=True)
class Measured:
    """One explanation's metrics, and its image × target's baselines' (shared by its layers)."""

    map: Faithfulness
    baselines: dict[str, Faithfulness]


def saliency_at_input(raw: np.ndarray, size: tuple[int, int], device=None) -> torch.Tensor:
    """A raw [h, w] map at the model's input size (H, W): bilinear with half-pixel centres,
    the upsampling the pictures use, non-finite values as 0 (as drawn)."""
    import torch
    import torch.nn.functional as F

    values = torch.as_tensor(np.nan_to_num(np.asarray(raw, dtype=np.float32), posinf=0, neginf=0))
    placed = F.interpolate(values[None, None], size=size, mode="bilinear", align_corners=False)
    return placed[0, 0].to(device) if device is not None else placed[0, 0]


def model_predict(
    model: nn.Module,
    outputs_probabilities: bool,
    score: str,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model on a batch → the scores `measure` expects: with score='probability', the log of
    the run's own class probabilities (so measure's softmax gives them back exactly: a single
    logit's sigmoid, a probability model's outputs); with 'logit', the run's class scores.
    `outputs_probabilities` and `autocast` are the Explainer's (`Probe`, `Explainer.autocast`)."""
    import torch

    from .logits import class_probabilities, class_scores, extract_logits
    from .modelstate import frozen_eval

    def predict(batch: torch.Tensor) -> torch.Tensor:
        with frozen_eval(model), autocast():
            logits = extract_logits(model(batch)).float()
        if score == "logit":
            return class_scores(logits, outputs_probabilities)
        probabilities = class_probabilities(logits, outputs_probabilities)
        return probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()

    return predict


def measure_batch(
    predict: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    inputs: Sequence[Any],
    explanations: Sequence[ImageExplanation],
    keys: Sequence[str],
    options: MetricOptions,
    batch_size: int,
) -> list[dict[tuple[int, str], Measured]]:
    """Each explanation's metrics: (class index, layer) → Measured, in the batch's order.

    `predict`: the model's scores for options.settings.score (`model_predict`), on `device`;
    `inputs`: each image's normalised model input [3, H, W] (a NumPy array, or a tensor on the
    model's device); `keys`: each input's output key, which seeds its random baseline (the same
    image gets the same random map in every run, whatever the batch).
    """
    import torch

    measured = []
    for array, explanation, key in zip(inputs, explanations, keys, strict=True):
        image = torch.as_tensor(array).to(device, torch.float32)
        measured.append(_measure_image(predict, image, explanation, key, options, batch_size))
    return measured


def _measure_image(predict, image, explanation, key, options, batch_size):
    size = (int(image.shape[1]), int(image.shape[2]))
    seed = options.settings.road_seed + zlib.crc32(key.encode("utf-8"))
    results: dict[tuple[int, str], Measured] = {}
    baselines: dict[int, dict[str, Faithfulness]] = {}
    for (index, layer), raw in explanation.maps.items():
        saliency = saliency_at_input(raw, size, image.device)
        if index not in baselines:  # the same for every layer of this target
            baselines[index] = {
                name: _run(
                    predict,
                    image,
                    _baseline(name, image, raw.shape, seed),
                    index,
                    options,
                    batch_size,
                )
                for name in options.baselines
            }
        results[index, layer] = Measured(
            _run(predict, image, saliency, index, options, batch_size), baselines[index]
        )
    return results


def _baseline(name: str, image, cam_shape: tuple[int, ...], seed: int):
    """The baseline map at input resolution; the random one drawn at the CAM's resolution and
    placed like a CAM (per-pixel noise would be no CAM's rival)."""
    if name == "random":
        cam = random_map((int(cam_shape[0]), int(cam_shape[1])), seed).numpy()
        return saliency_at_input(cam, (int(image.shape[1]), int(image.shape[2])), image.device)
    return baseline_map(name, image).to(image.device)


def _run(predict, image, saliency, index, options, batch_size) -> Faithfulness:
    return measure(
        predict, image, saliency, index, options.metrics, options.settings, batch_size=batch_size
    )


def metric_record(measured: Measured | None, curves: str | None = None) -> dict | None:
    """The `faithfulness` object of an explanation's JSON: its metrics, `baselines` (name →
    metrics), `curves` (the --save-raw file, else null); None when nothing was measured."""
    if measured is None:
        return None
    return {
        **_values(measured.map),
        "baselines": {name: _values(found) for name, found in measured.baselines.items()},
        "curves": curves,
    }


def _values(found: Faithfulness) -> dict[str, float | None]:
    return {name: _finite(value) for name, value in found.values.items()}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def curves_document(measured: Measured) -> dict[str, object]:
    """The --save-raw curves file: each metric's (x, y), the map's and each baseline's."""

    def curves(found: Faithfulness) -> dict[str, dict[str, list[float]]]:
        return {name: {"x": list(c.x), "y": list(c.y)} for name, c in found.curves.items()}

    return {
        "map": curves(measured.map),
        "baselines": {name: curves(found) for name, found in measured.baselines.items()},
    }
