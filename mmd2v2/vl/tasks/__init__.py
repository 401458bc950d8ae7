"""The three VL tasks behind one interface: load both splits, the task loss, and the task's metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmd2v2.vl.config import TaskConfig
from mmd2v2.vl.tasks.base import IGNORE_LABEL, LoadedSplit, VLExample
from mmd2v2.vl.tasks.snli_ve import LABELS as VE_LABELS
from mmd2v2.vl.tasks.snli_ve import load_snli_ve_split
from mmd2v2.vl.tasks.vcr import NUM_CHOICES, load_vcr_split
from mmd2v2.vl.tasks.vqa import build_answer_vocabulary, load_vqa_split, vqa_accuracy


@dataclass
class TaskData:
    """A task's splits and output layout."""

    name: str
    train: LoadedSplit
    val: LoadedSplit
    classes: list[str]  # VQA: the answer vocabulary; SNLI-VE: the labels; VCR: choice numbers
    num_outputs: int  # head outputs per text: answers (VQA), 3 (SNLI-VE), 1 score (VCR)
    texts_per_example: int  # 1, or 4 choices (VCR)


def load_task(cfg: TaskConfig, with_train: bool = True, vocabulary: list[str] | None = None) -> TaskData:
    """Read the configured task's training (unless `with_train` is false) and validation splits.

    VQA's answer vocabulary comes from the training annotations unless given (a trained model's own).
    """
    empty = LoadedSplit([], {})
    if cfg.name == "vqa":
        vocabulary = vocabulary or build_answer_vocabulary(cfg.train, cfg.min_answer_count, cfg.max_answers)
        train = load_vqa_split(cfg, cfg.train, vocabulary) if with_train else empty
        return TaskData("vqa", train, load_vqa_split(cfg, cfg.val, vocabulary), vocabulary, len(vocabulary), 1)
    if cfg.name == "snli_ve":
        train = load_snli_ve_split(cfg, cfg.train) if with_train else empty
        return TaskData("snli_ve", train, load_snli_ve_split(cfg, cfg.val), list(VE_LABELS), len(VE_LABELS), 1)
    train = load_vcr_split(cfg, cfg.train) if with_train else empty
    return TaskData("vcr", train, load_vcr_split(cfg, cfg.val), [str(i) for i in range(NUM_CHOICES)], 1, NUM_CHOICES)


def soft_targets(examples: list[VLExample], num_answers: int) -> Tensor:
    """VQA soft-score matrix (B, num_answers)."""
    targets = torch.zeros(len(examples), num_answers)
    for row, example in enumerate(examples):
        for index, score in example.targets:
            targets[row, index] = score
    return targets


def task_loss(task: str, logits: Tensor, examples: list[VLExample]) -> Tensor:
    """VQA: BCE on soft scores (summed over answers); SNLI-VE and VCR: cross-entropy. Ignored labels add nothing."""
    labels = torch.tensor([e.label for e in examples], device=logits.device)
    keep = labels != IGNORE_LABEL
    if not bool(keep.any()):
        return logits.sum() * 0.0
    if task == "vqa":
        targets = soft_targets(examples, logits.shape[-1]).to(logits.device)
        per_answer = F.binary_cross_entropy_with_logits(logits[keep].float(), targets[keep], reduction="none")
        return per_answer.sum(-1).mean()
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL)


def task_metrics(task: str, examples: list[VLExample], logits: Tensor, classes: list[str]) -> dict[str, float]:
    """Percent metrics: VQA accuracy; SNLI-VE accuracy; VCR Q->A, QA->R and Q->AR."""
    predicted = logits.argmax(-1).tolist()
    if task == "vqa":
        scored = [vqa_accuracy(classes[p], e.answers) for e, p in zip(examples, predicted, strict=True) if e.answers]
        return {"vqa_accuracy": 100.0 * sum(scored) / max(1, len(scored)), "num_questions": float(len(scored))}
    if task == "snli_ve":
        right = [p == e.label for e, p in zip(examples, predicted, strict=True)]
        return {"accuracy": 100.0 * sum(right) / max(1, len(right)), "num_pairs": float(len(right))}
    correct: dict[str, dict[str, bool]] = {}
    for example, p in zip(examples, predicted, strict=True):
        correct.setdefault(example.record_id, {})[example.mode] = p == example.label
    q2a = [c["q2a"] for c in correct.values() if "q2a" in c]
    qa2r = [c["qa2r"] for c in correct.values() if "qa2r" in c]
    both = [c["q2a"] and c["qa2r"] for c in correct.values() if len(c) == 2]
    return {
        "q2a": 100.0 * sum(q2a) / max(1, len(q2a)),
        "qa2r": 100.0 * sum(qa2r) / max(1, len(qa2r)),
        "q2ar": 100.0 * sum(both) / max(1, len(both)),
        "num_questions": float(len(correct)),
    }


MAIN_METRIC = {"vqa": "vqa_accuracy", "snli_ve": "accuracy", "vcr": "q2a"}
