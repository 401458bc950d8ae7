"""Multimodal distillation (MD) and its confidence-weighted, token-selecting form (MAD), per instance.

MD:  L = L_task + w * (L_dv + L_dt), with L_dv = |V_teacher - V_student|_1 (teacher image token vs the student's
first visual token) and L_dt = |T_teacher - T_student|_1 (teacher text CLS/eos vs the student's text CLS).
MAD adds L'_dt over the selected words and multiplies each instance's distillation by 1[r > 1], where
r = max softmax(teacher logits) / max softmax(student logits). L1 distances are means over feature dimensions by
default (`distill.l1: mean`, so w does not depend on the teachers' widths: w on the mean is w / D on the paper's
sum over D dimensions) or the paper's literal sum ||.||_1 (`sum`); L'_dt is the mean over the selected words.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def l1_distance(student: Tensor, teacher: Tensor, reduction: str = "mean") -> Tensor:
    """Absolute difference over the last dimension, its mean or (the paper's ||.||_1) its sum: (..., D) -> (...).
    The teacher side gets no gradient."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"distillation shapes differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}"
        )
    difference = (student.float() - teacher.detach().float()).abs()
    return difference.sum(-1) if reduction == "sum" else difference.mean(-1)


def selected_words_l1(
    student_words: Tensor, teacher_words: Tensor, selected: Tensor, reduction: str = "mean"
) -> Tensor:
    """L'_dt per instance: mean over the selected words of their L1 distance; 0 where no word is selected.

    student_words, teacher_words: (N, W, D); selected: (N, W) bool.
    """
    distance = l1_distance(student_words, teacher_words, reduction) * selected
    count = selected.sum(-1)
    return distance.sum(-1) / count.clamp(min=1)


def confidence_ratio(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """r = max softmax(teacher logits) / max softmax(student logits), per instance: (B, C), (B, C') -> (B,)."""
    teacher = teacher_logits.detach().float().softmax(-1).amax(-1)
    student = student_logits.detach().float().softmax(-1).amax(-1)
    return teacher / student


def confidence_weights(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """1 where the teacher is more confident than the student (r > 1), else 0: (B,)."""
    return (confidence_ratio(teacher_logits, student_logits) > 1).float()


@dataclass
class DistillTerms:
    """Per-instance distillation terms (each (N,) or None when switched off) and the instance weights."""

    vision: Tensor | None = None
    text: Tensor | None = None
    words: Tensor | None = None
    instance_weight: Tensor | None = None  # (N,) in {0, 1} with confidence weighting; None = all 1


def combine_losses(task_loss: Tensor, terms: DistillTerms, weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """L = L_task + w * mean_i(c_i * (L_dv,i + L_dt,i + L'_dt,i)); returns the loss and its named terms."""
    parts = {
        name: value
        for name, value in (
            ("distill_vision", terms.vision),
            ("distill_text", terms.text),
            ("distill_words", terms.words),
        )
        if value is not None
    }
    logged: dict[str, Tensor] = {"task": task_loss.detach()}
    if not parts:
        return task_loss, {**logged, "loss": task_loss.detach()}
    per_instance = torch.stack(list(parts.values())).sum(0)
    if terms.instance_weight is not None:
        per_instance = per_instance * terms.instance_weight
        logged["distilled_fraction"] = terms.instance_weight.float().mean()
    distill = per_instance.mean()
    loss = task_loss + weight * distill
    logged.update({name: value.detach().mean() for name, value in parts.items()})
    logged.update({"distill": distill.detach(), "loss": loss.detach()})
    return loss, logged
