"""The VL tasks (VQA, SNLI-VE, VCR), each a registered VLTask: `get_task(name)`, or `load_task(cfg)` for its data."""

from __future__ import annotations

from mmd2v2.vl.config import TaskConfig
from mmd2v2.vl.tasks import snli_ve, vcr, vqa  # noqa: F401 (each registers its task)
from mmd2v2.vl.tasks.registry import TASKS, TaskData, VLTask, get_task, register_task

__all__ = ["TASKS", "TaskData", "VLTask", "get_task", "load_task", "register_task"]


def load_task(cfg: TaskConfig, with_train: bool = True, vocabulary: list[str] | None = None) -> TaskData:
    """Read the configured task's training (unless `with_train` is false) and validation splits.

    `vocabulary`: a trained model's classes (VQA's answers; otherwise the training annotations'); tasks with fixed
    classes ignore it.
    """
    return get_task(cfg.name).load(cfg, with_train, vocabulary)
