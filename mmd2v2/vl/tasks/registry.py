"""The interface every VL task implements, the registry of tasks by name, and a loaded task's data.

A task is one class (mmd2v2/vl/tasks/vqa.py, snli_ve.py, vcr.py) registered with `@register_task`; the rest of
mmd2v2.vl asks `get_task(name)` (or a TaskData's `definition`) and never compares task names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mmd2v2.errors import UserError
from mmd2v2.vl.config import ProtocolConfig, SplitFiles, TaskConfig
from mmd2v2.vl.tasks.base import IGNORE_LABEL, LoadedSplit, VLExample

if TYPE_CHECKING:  # the batch and zero-shot modules import the tasks
    from mmd2v2.vl.batches import VLBatch
    from mmd2v2.vl.zero_shot import ZeroShotScorer


class VLTask(ABC):
    """One VL task: its splits and classes, loss, metrics, zero-shot logits and low-shot subsets."""

    name: ClassVar[str]
    main_metric: ClassVar[str]  # the metric protocol tables report
    unit: ClassVar[str]  # what the protocol counts training examples in: "questions", "pairs", ...
    texts_per_example: ClassVar[int] = 1  # candidate texts scored per example (VCR: 4 choices)
    zero_shot_protocol: ClassVar[bool] = True  # whether `vl protocol` runs its zero-shot setting
    fits_zero_shot_anchors: ClassVar[bool] = False  # zero-shot logits need anchors fitted on the split's similarities

    @abstractmethod
    def classes(self, cfg: TaskConfig, vocabulary: list[str] | None) -> list[str]:
        """The task's classes; `vocabulary` is a trained model's own (used where classes come from the data)."""

    @abstractmethod
    def load_split(self, cfg: TaskConfig, files: SplitFiles, classes: list[str]) -> LoadedSplit:
        """The examples of one split."""

    def num_outputs(self, classes: list[str]) -> int:
        """Head outputs per text: one per class, unless the task scores each candidate text."""
        return len(classes)

    def load(self, cfg: TaskConfig, with_train: bool = True, vocabulary: list[str] | None = None) -> TaskData:
        """The training (unless `with_train` is false) and validation splits of the task configured by `cfg`."""
        classes = self.classes(cfg, vocabulary)
        train = self.load_split(cfg, cfg.train, classes) if with_train else LoadedSplit([], {})
        val = self.load_split(cfg, cfg.val, classes)
        return TaskData(self.name, train, val, classes, self.num_outputs(classes), self.texts_per_example)

    def loss(self, logits: Tensor, examples: list[VLExample]) -> Tensor:
        """The task loss of per-example logits; ignored labels add nothing (zero when every label is ignored)."""
        labels = torch.tensor([e.label for e in examples], device=logits.device)
        keep = labels != IGNORE_LABEL
        if not bool(keep.any()):
            return logits.sum() * 0.0
        return self.labelled_loss(logits, labels, keep, examples)

    def labelled_loss(self, logits: Tensor, labels: Tensor, keep: Tensor, examples: list[VLExample]) -> Tensor:
        """The loss of a batch with at least one label to learn: cross-entropy."""
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL)

    @abstractmethod
    def metrics(self, examples: list[VLExample], logits: Tensor, classes: list[str]) -> dict[str, float]:
        """Percent metrics (and counts) of per-example logits."""

    def low_shot(self, examples: list[VLExample], shots: int, seed: int, protocol: ProtocolConfig) -> list[VLExample]:
        """The seeded low-shot subset of `examples` with `shots` per low-shot group (category, class, type)."""
        if shots < 1:
            raise UserError(f"protocol.shots: got {shots}, expected >= 1")
        return self.sample(examples, shots, seed, protocol)

    @abstractmethod
    def sample(self, examples: list[VLExample], shots: int, seed: int, protocol: ProtocolConfig) -> list[VLExample]:
        """Draw the low-shot subset (`shots` >= 1)."""

    def zero_shot_texts(self, batch: VLBatch, prompt: str) -> list[str]:
        """The texts a dual encoder matches against the images (`prompt`: teachers.zero_shot_prompt)."""
        return batch.texts

    def zero_shot_method(self, prompt: str) -> str:
        """What the protocol table adds to the zero-shot row's name for `prompt`."""
        return ""

    def zero_shot_anchors(self, similarities: Tensor) -> Tensor:
        """Anchors fitted on image-text similarities (tasks with `fits_zero_shot_anchors`)."""
        raise NotImplementedError(f"{self.name}: zero-shot logits need no anchors")

    @abstractmethod
    def zero_shot_logits(self, scorer: ZeroShotScorer, batch: VLBatch) -> Tensor:
        """A dual encoder's zero-shot logits of the batch's examples, shaped like the trained head's."""


@dataclass
class TaskData:
    """A task's splits and output layout; `definition` is the registered task of `name`."""

    name: str
    train: LoadedSplit
    val: LoadedSplit
    classes: list[str]  # VQA: the answer vocabulary; SNLI-VE: the labels; VCR: choice numbers
    num_outputs: int  # head outputs per text: answers (VQA), 3 (SNLI-VE), 1 score (VCR)
    texts_per_example: int  # 1, or 4 choices (VCR)
    definition: VLTask = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.definition = get_task(self.name)


TASKS: dict[str, VLTask] = {}
T = TypeVar("T", bound=type[VLTask])


def register_task(cls: T) -> T:
    """Class decorator: register a task under its `name`."""
    if cls.name in TASKS:
        raise ValueError(f"VL task '{cls.name}' is registered twice")
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str) -> VLTask:
    """The registered task called `name`."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown VL task '{name}' (known: {', '.join(sorted(TASKS))})") from None
