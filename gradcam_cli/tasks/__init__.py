"""Tasks: what a model's output means, and what a target is — a class of a classifier, a
class's region of a segmentation model, a detection of a detector (`base` says how)."""

from __future__ import annotations

from ..errors import UsageError, did_you_mean
from .base import Scoring, TargetDetails, TargetRequest, Task, no_details
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = [
    "Task",
    "Scoring",
    "TargetRequest",
    "TargetDetails",
    "no_details",
    "TASKS",
    "get_task",
    "ClassificationTask",
    "SegmentationTask",
    "DetectionTask",
]

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (ClassificationTask, SegmentationTask, DetectionTask)
}


def get_task(task: str | Task | None) -> Task:
    """A Task by name (classification, segmentation, detection); None: classification."""
    if isinstance(task, Task):
        return task
    name = (task or "classification").strip().lower()
    if name not in TASKS:
        raise UsageError(
            f"unknown task '{task}'; use {', '.join(TASKS)}" + did_you_mean(name, list(TASKS))
        )
    return TASKS[name]()
