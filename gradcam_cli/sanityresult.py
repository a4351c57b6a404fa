"""What `gradcam sanity` measured (`sanity.sanity_check`): the model's stages, each image's
measures, the figures per stage, the verdict, and the sanity.json document.

The page and the figure (`pages.sanity`) read these types too; they import neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .mapstats import Spread, rounded

__all__ = ["SCHEMA_VERSION", "Stage", "StageSummary", "ImageSanity", "SanityResult", "ordinal"]

SCHEMA_VERSION = 1  # of sanity.json


@dataclass(frozen=True)
class Stage:
    """What one randomisation step re-initialises: modules of the model, by dotted path."""

    name: str  # the modules' paths joined by '+' ("conv1+bn1", "layer4", "fc")
    modules: tuple[str, ...]
    parameters: int  # how many numbers it re-initialises

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "modules": list(self.modules), "parameters": self.parameters}


@dataclass(frozen=True)
class StageSummary:
    stage: Stage
    from_logits: int  # 1 = the head
    spearman: Spread
    ssim: Spread
    measured: int  # images with both measures

    def to_dict(self) -> dict[str, object]:
        return {
            "stage": self.stage.name,
            "from_logits": self.from_logits,
            "spearman": self.spearman.to_dict(),
            "ssim": self.ssim.to_dict(),
            "images": self.measured,
        }


@dataclass(frozen=True)
class ImageSanity:
    """One image: its measures per stage, from the logits down (None: its trained map is
    constant), and small pictures of its maps for the page."""

    input: str
    target: int
    label: str
    spearman: tuple[float | None, ...]
    ssim: tuple[float | None, ...]
    # uint8 [sanity.THUMBNAIL_SIDE a side] min-max scaled maps: the trained model's first, then
    # one per stage from the logits down; the photo as the model saw it, uint8 [side, side, 3].
    # Kept for the first sanity.THUMBNAILS_KEPT images only.
    thumbnails: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)
    picture: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self, stages: Sequence[Stage]) -> dict[str, object]:
        return {
            "input": self.input,
            "target": {"index": self.target, "label": self.label},
            "stages": [
                {"stage": stage.name, "spearman": rounded(rho), "ssim": rounded(s)}
                for stage, rho, s in zip(stages, self.spearman, self.ssim, strict=True)
            ],
        }


@dataclass(frozen=True)
class SanityResult:
    """What `sanity_check` measured; `sanity.write_outputs` saves it."""

    model: dict[str, object]  # LoadedModel.describe()
    method: str
    layer: str
    mode: str
    seed: int
    input_size: tuple[int, int]
    stages: tuple[Stage, ...]  # from the logits down: the cascade's order
    images: tuple[ImageSanity, ...]
    threshold: float
    by_stage: int  # 0-based index into `stages`
    skipped: tuple[tuple[str, str], ...] = ()  # (input, why) of images that could not be read
    seconds: float = 0.0
    device: str = "cpu"

    @cached_property
    def summary(self) -> tuple[StageSummary, ...]:
        """Per stage, from the logits down: the median and spread of each measure."""
        rows = []
        for i, stage in enumerate(self.stages):
            rhos = [image.spearman[i] for image in self.images]
            ssims = [image.ssim[i] for image in self.images]
            measured = sum(r is not None for r in rhos)
            rows.append(StageSummary(stage, i + 1, Spread.of(rhos), Spread.of(ssims), measured))
        return tuple(rows)

    @property
    def first_below(self) -> int | None:
        """The first stage (0-based from the logits) whose median Spearman is below the
        threshold; None if none is."""
        for i, row in enumerate(self.summary):
            if row.spearman.median is not None and row.spearman.median < self.threshold:
                return i
        return None

    @property
    def passed(self) -> bool:
        """The median Spearman at `by_stage` is below the threshold: the map changed."""
        median = self.summary[self.by_stage].spearman.median
        return median is not None and median < self.threshold

    def verdict(self) -> str:
        """One line: passes or fails, and where the correlation falls below the threshold."""
        by = self.stages[self.by_stage].name
        where = f"the {ordinal(self.by_stage + 1)} from the logits"
        first = self.first_below
        if self.passed:
            assert first is not None
            return (
                f"{self.method} passes: Spearman median below {self.threshold:g} from stage "
                f"'{self.stages[first].name}' (the {ordinal(first + 1)} from the logits)"
            )
        median = self.summary[self.by_stage].spearman.median
        measured = "no image measured" if median is None else f"Spearman median {median:.2f}"
        later = (
            f"its median is first below at '{self.stages[first].name}' (the {ordinal(first + 1)})"
            if first is not None
            else "its median is never below, down to the stem"
        )
        return (
            f"{self.method} fails: {measured} at stage '{by}' ({where}), not below "
            f"{self.threshold:g}: the map survives the randomisation; {later}"
        )

    def to_dict(self) -> dict[str, object]:
        from .report import library_versions

        first = self.first_below
        stages = [{**s.to_dict(), "from_logits": i + 1} for i, s in enumerate(self.stages)]
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "method": self.method,
            "layer": self.layer,
            "mode": self.mode,
            "seed": self.seed,
            "compared_at": list(self.input_size),
            "stages": stages,
            "threshold": self.threshold,
            "by_stage": self._stage_ref(self.by_stage),
            "first_below": None if first is None else self._stage_ref(first),
            "passed": self.passed,
            "summary": {
                "images": len(self.images),
                "skipped": len(self.skipped),
                "seconds": round(self.seconds, 3),
                "stages": [row.to_dict() for row in self.summary],
            },
            "images": [image.to_dict(self.stages) for image in self.images],
            "skipped": [{"input": source, "error": why} for source, why in self.skipped],
            "device": self.device,
            "versions": library_versions(),
        }

    def _stage_ref(self, index: int) -> dict[str, object]:
        return {"stage": self.stages[index].name, "from_logits": index + 1}


def ordinal(number: int) -> str:
    """1 → '1st', 2 → '2nd', 11 → '11th', 23 → '23rd'."""
    if 10 <= number % 100 <= 20:
        return f"{number}th"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"
