"""Words for the figures of one explanation, shared by the panel's caption and the HTML page.

Everything here reads the JSON report's plain values (dicts, lists, numbers), so the page can be
rebuilt from `predictions.json` alone, and the two places always say the same thing.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence

__all__ = [
    "without_accents",
    "NORMALIZATION_MEANINGS",
    "probability_text",
    "prediction_text",
    "target_text",
    "localization_text",
    "gate_text",
    "faithfulness_text",
    "baselines_text",
    "rules_text",
]

# The metrics' short names in captions, in the order they are listed.
METRIC_WORDS = {
    "deletion_auc": "deletion",
    "insertion_auc": "insertion",
    "average_drop": "drop",
    "increase_in_confidence": "increase",
    "road_morf": "ROAD MoRF",
    "road_lerf": "ROAD LeRF",
}

# What 0 and 1 on the colour bar mean for each --normalize mode (render.normalize_map).
NORMALIZATION_MEANINGS = {
    "minmax": "0 = this map's minimum, 1 = its maximum",
    "max": "0 = zero, 1 = this map's maximum",
    "none": "raw map values, clipped to [0, 1]",
}


def probability_text(probability: float | None) -> str:
    return "n/a" if probability is None else f"{probability:.3f}"


def prediction_text(predictions: Sequence[Mapping]) -> str:
    """The top prediction: `tabby 0.873`, or `none` when there is none."""
    if not predictions:
        return "none"
    top = predictions[0]
    return f"{top.get('label')} {probability_text(top.get('probability'))}"


def target_text(target: Mapping, predictions: Sequence[Mapping]) -> str:
    """`281 tabby (0.873)`: the target's own probability, or, in a report written before
    targets carried one, the probability among the predictions listed (none when absent)."""
    text = f"{target.get('index')} {target.get('label')}"
    if target.get("box") is not None:  # a detection: numbered, then its class
        box = ", ".join(f"{v:.0f}" for v in target["box"])
        text = (
            f"detection {target.get('index')}: {target.get('class_index')} {target.get('label')} "
            f"({probability_text(target.get('probability'))}) at [{box}]"
        )
        return text
    if target.get("pixel_share") is not None:  # a segmentation class
        share = _number(target["pixel_share"])
        return f"{text} ({probability_text(target.get('probability'))}, pixel share {share})"
    if "probability" in target:
        return f"{text} ({probability_text(target.get('probability'))})"
    for prediction in predictions:
        if prediction.get("index") == target.get("index"):
            return f"{text} ({probability_text(prediction.get('probability'))})"
    return text


def localization_text(localization: Mapping | None) -> str | None:
    """`hit, energy 0.412 (mask share 0.081), IoU 0.530`; the reason when nothing was
    measured; None without --mask."""
    if localization is None:
        return None
    if localization.get("error"):
        return str(localization["error"])
    hit = "hit" if localization.get("hit") else "miss"
    return (
        f"{hit}, energy {_number(localization.get('energy'))} "
        f"(mask share {_number(localization.get('mask_share'))}), "
        f"IoU {_number(localization.get('iou'))}"
    )


def gate_text(localization: Mapping | None) -> str | None:
    """`passed`, `failed: …the shortfalls…`, or None when no gate was set."""
    if localization is None or localization.get("passed") is None:
        return None
    if localization["passed"]:
        return "passed"
    return "failed: " + "; ".join(str(s) for s in localization.get("shortfalls") or [])


def faithfulness_text(faithfulness: Mapping | None) -> str | None:
    """`deletion 0.112, insertion 0.604, drop 0.231, …` (--metrics), with the baselines'
    insertion or deletion beside it when there are baselines; None without --metrics."""
    if faithfulness is None:
        return None
    parts = [
        f"{word} {_number(faithfulness[name])}"
        for name, word in METRIC_WORDS.items()
        if name in faithfulness
    ]
    return ", ".join(parts)


def baselines_text(faithfulness: Mapping | None) -> str | None:
    """`random: deletion 0.301, insertion 0.288; center: …`, None without --baselines."""
    baselines = (faithfulness or {}).get("baselines") or {}
    if not baselines:
        return None
    return "; ".join(f"{name}: {faithfulness_text(values)}" for name, values in baselines.items())


def rules_text(gate: Mapping | None) -> str | None:
    """The --gate rules' verdict: `passed`, `failed: insertion_auc 0.31 < 0.4`, or None."""
    if gate is None:
        return None
    if gate.get("passed"):
        return "passed"
    return "failed: " + "; ".join(str(s) for s in gate.get("shortfalls") or [])


def _number(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


def without_accents(text: str) -> str:
    """Pillow's built-in font covers ASCII: accents dropped rather than drawn as boxes (the
    sanity and concepts figures; the panel keeps other scripts, panel._drawable)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))
