"""What `gradcam concepts` found (`concepts.find_concepts`): the concepts with their votes, each
image's maps and shares, and the concepts.json document. The pictures (`concept_outputs`) read
these types too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .report.names import CONCEPTS_NAME

if TYPE_CHECKING:
    from .explainer import ImageInput

__all__ = ["SCHEMA_VERSION", "CONCEPTS_NAME", "Vote", "Concept", "ImageConcepts", "ConceptResult"]

SCHEMA_VERSION = 1  # of concepts.json


@dataclass(frozen=True)
class Vote:
    index: int
    label: str
    probability: float

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "label": self.label, "probability": self.probability}


@dataclass(frozen=True)
class Concept:
    number: int  # 1 = the strongest over the run
    votes: tuple[Vote, ...]  # the head's top classes for the concept's vector
    # [C]: the layer's activation where the concept is strongest in the run (W's column times
    # its map's peak, plus the offset): what the votes are the head's outputs for.
    vector: np.ndarray = field(repr=False)
    strongest: tuple[int, ...] = ()  # positions in `images`, by share, at most SHEET_IMAGES


@dataclass(frozen=True)
class ImageConcepts:
    """One image: its concept maps (the rows of H) and each concept's strength."""

    input: str
    maps: np.ndarray = field(repr=False)  # [k, h, w] float32 ≥ 0, in the model input's frame
    strengths: np.ndarray = field(repr=False)  # [k]
    crop_box: tuple[float, float, float, float]  # what the map covers on the photo
    # What to read the photo from again when drawing (a path, or the image given).
    image: ImageInput | None = field(default=None, repr=False, compare=False)

    @property
    def shares(self) -> np.ndarray:
        total = float(self.strengths.sum())
        return self.strengths / total if total > 0 else np.zeros_like(self.strengths)


@dataclass(frozen=True)
class ConceptResult:
    model: dict[str, Any]
    layer: str
    k: int
    seed: int
    concepts: tuple[Concept, ...]
    images: tuple[ImageConcepts, ...]
    reconstruction_error: float  # ‖A − WH‖ / ‖A‖ over the positions fitted
    iterations: int
    converged: bool
    channels: int
    fitted_positions: int  # positions the factorization was fitted on
    subsampled: bool  # fewer than all positions (max_fit_bytes): the maps from a second pass
    preprocess: dict[str, Any]
    device: str
    offset: np.ndarray = field(repr=False)  # [C]: each channel's minimum, subtracted first
    seconds: float
    skipped: tuple[tuple[str, str], ...] = ()

    def to_dict(self, files: dict[str, Any] | None = None) -> dict[str, Any]:
        """concepts.json; `files` (write_outputs): the relative paths of the pictures."""
        from .report import library_versions

        files = files or {}
        overlays, raws, figures = (files.get(kind, {}) for kind in ("overlay", "raw", "figure"))
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "layer": self.layer,
            "k": self.k,
            "seed": self.seed,
            "preprocess": self.preprocess,
            "factorization": {
                "reconstruction_error": _rounded(self.reconstruction_error),
                "iterations": self.iterations,
                "converged": self.converged,
                "channels": self.channels,
                "positions": self.fitted_positions,
                "subsampled": self.subsampled,
            },
            "concepts": [
                {
                    "concept": concept.number,
                    "votes": [vote.to_dict() for vote in concept.votes],
                    "images": [
                        {
                            "input": self.images[i].input,
                            "share": _rounded(self.images[i].shares[concept.number - 1]),
                        }
                        for i in concept.strongest
                    ],
                    "figure": figures.get(concept.number),
                }
                for concept in self.concepts
            ],
            "images": [
                {
                    "input": image.input,
                    "shares": [_rounded(share) for share in image.shares],
                    "strongest": int(np.argmax(image.shares)) + 1,
                    "overlay": overlays.get(i),
                    "raw": raws.get(i),
                }
                for i, image in enumerate(self.images)
            ],
            "skipped": [{"input": source, "error": why} for source, why in self.skipped],
            "summary": {
                "images": len(self.images),
                "skipped": len(self.skipped),
                "seconds": round(self.seconds, 3),
            },
            "device": self.device,
            "versions": library_versions(),
        }


def _rounded(value: float) -> float:
    return round(float(value), 6)
