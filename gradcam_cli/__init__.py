"""gradcam-cli: explain what a PyTorch image classifier looked at.

The public surface, loaded lazily so that `import gradcam_cli` (and `gradcam --help`) does not
import torch:

    from gradcam_cli import Explainer, load_model
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "sources",
    "LoadedModel": "sources",
    "Explainer": "explainer",
    "run_job": "job",
    "prepare_job": "job",
    "JobOptions": "job",
    "Job": "job",
    "Report": "report",
    "ImageExplanation": "explanation",
    "RenderOptions": "explanation",
    "explain_batch": "engine",
    "BatchExplanation": "engine",
    "Preprocess": "preprocess",
    "GradcamError": "errors",
    "METHODS": "methods",
    "localize": "localization",
    "read_mask": "localization",
    "Localization": "localization",
    "RunStatus": "timing",
    "MetricSettings": "faithfulness",
    "sanity_check": "sanity",
    "compare_runs": "compare",
    "find_concepts": "concepts",
}


__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from .compare import compare_runs as compare_runs
    from .concepts import find_concepts as find_concepts
    from .engine import BatchExplanation as BatchExplanation
    from .engine import explain_batch as explain_batch
    from .errors import GradcamError as GradcamError
    from .explainer import Explainer as Explainer
    from .explanation import ImageExplanation as ImageExplanation
    from .explanation import RenderOptions as RenderOptions
    from .faithfulness import MetricSettings as MetricSettings
    from .job import Job as Job
    from .job import JobOptions as JobOptions
    from .job import prepare_job as prepare_job
    from .job import run_job as run_job
    from .localization import Localization as Localization
    from .localization import localize as localize
    from .localization import read_mask as read_mask
    from .methods import METHODS as METHODS
    from .preprocess import Preprocess as Preprocess
    from .report import Report as Report
    from .sanity import sanity_check as sanity_check
    from .sources import LoadedModel as LoadedModel
    from .sources import load_model as load_model
    from .timing import RunStatus as RunStatus


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'gradcam_cli' has no attribute '{name}'")
