"""What training optimises and how one step runs, built from a Config once for the training loop and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmd2v2.config import Config
from mmd2v2.losses.objective import MMD2V2Objective
from mmd2v2.models.dual_encoder import DualEncoder
from mmd2v2.models.teacher import ImageTeacher
from mmd2v2.runtime.engine import create_engine
from mmd2v2.runtime.precision import resolved_precision


class TrainingModule(nn.Module):
    """What DeepSpeed optimises: the student plus the loss's learnable state (temperatures, memory banks)."""

    def __init__(self, student: DualEncoder, objective: MMD2V2Objective, micro_batch_size: int) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.micro_batch_size = micro_batch_size

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_ids: Tensor,
        teacher_cls: Tensor | None,
        image_tokens: Tensor | None = None,
        text_tokens: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms of one batch (contrastive terms against every rank's rows); `image_tokens`/`text_tokens`:
        cached frozen-encoder outputs used instead of running the encoders."""
        image = self.student.image_forward(pixel_values, encoded=image_tokens)
        text = self.student.text_forward(input_ids, attention_mask, encoded=text_tokens)
        return self.objective(image, text, teacher_cls, image_ids, self.micro_batch_size)


@dataclass
class TrainingParts:
    """The networks and the loss of a run: the frozen teacher (None without distillation), student, objective."""

    teacher: ImageTeacher | None
    student: DualEncoder
    objective: MMD2V2Objective


def build_parts(config: Config) -> TrainingParts:
    """Teacher (only when distillation is on), student with its distillation head, and objective, in this order
    (the random initialisation of a seeded run depends on it)."""
    teacher = ImageTeacher(config.teacher) if config.teacher.enabled and config.loss.kd_weight > 0 else None
    teacher_dim = teacher.dim if teacher else None
    student = DualEncoder(config.model, teacher_dim=teacher_dim)
    return TrainingParts(teacher, student, MMD2V2Objective(config.loss, config.model.embed_dim, teacher_dim))


def build_engine(
    config: Config, student: DualEncoder, objective: MMD2V2Objective, teacher: ImageTeacher | None, total_steps: int
) -> Any:
    """The DeepSpeed engine over student and objective (activation checkpointing and torch.compile as configured);
    the teacher, when there is one, moved to the engine's device and run in bf16 when the run is."""
    if config.trainer.activation_checkpointing:
        student.enable_activation_checkpointing()
    if config.trainer.compile:
        student.compile_parts()
    engine = create_engine(TrainingModule(student, objective, config.trainer.micro_batch_size), config, total_steps)
    if teacher is not None:
        teacher.to(engine.device)
        teacher.autocast_dtype = torch.bfloat16 if resolved_precision(config.deepspeed.precision) == "bf16" else None
    return engine


def train_step(engine: Any, teacher: ImageTeacher | None, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Forward (with the batch's cached teacher CLS, else the teacher's), backward and optimizer step of one
    micro-batch on the device; returns the loss terms."""
    teacher_cls = batch.pop("teacher_cls", None)
    if teacher_cls is None and teacher is not None:
        teacher_cls = teacher(batch["pixel_values"])
    terms = engine(**batch, teacher_cls=teacher_cls)
    engine.backward(terms["loss"])
    engine.step()
    return terms
