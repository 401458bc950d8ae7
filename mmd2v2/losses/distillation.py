"""Distillation of the student's CLS towards the frozen teacher's CLS: regression or contrastive with a bank."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mmd2v2.losses.contrastive import LearnableLogitScale, keys_with_bank, masked_cross_entropy
from mmd2v2.losses.distributed import gather_ids, gather_rows
from mmd2v2.losses.memory_bank import FeatureQueue

REGRESSION_KINDS = ("mse", "l1", "cosine")


def regression_distillation(student: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """Mean MSE, L1 or (1 - cosine) between student outputs and the (detached) teacher targets."""
    if kind not in REGRESSION_KINDS:
        raise ValueError(f"distillation kind '{kind}' is unknown (expected one of: {', '.join(REGRESSION_KINDS)})")
    if student.shape != target.shape:
        raise ValueError(f"distillation shapes differ: student {tuple(student.shape)} vs teacher {tuple(target.shape)}")
    target = target.detach().to(student.dtype)
    if kind == "mse":
        return F.mse_loss(student, target)
    if kind == "l1":
        return F.l1_loss(student, target)
    return (1 - F.cosine_similarity(student, target, dim=-1)).mean()


class ContrastiveDistillation(LearnableLogitScale):
    """InfoNCE of student outputs against [teacher CLS of the batch; a FIFO bank of past teacher CLS]."""

    def __init__(
        self, teacher_dim: int, bank_size: int = 65536, init_temperature: float = 0.07, max_logit_scale: float = 100.0
    ) -> None:
        super().__init__(init_temperature, max_logit_scale)
        self.bank = FeatureQueue(bank_size, teacher_dim)

    def forward(
        self,
        student_image: Tensor,
        student_text: Tensor,
        teacher_cls: Tensor,
        image_ids: Tensor,
        batch_size: int | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms; this rank's students against every rank's teacher vectors, which then join the bank."""
        size = batch_size or len(image_ids)
        scale = self.logit_scale()
        teacher = gather_rows(F.normalize(teacher_cls.detach().float(), dim=-1), size)
        all_ids, offset = gather_ids(image_ids, size)
        keys, exclude = keys_with_bank(teacher, all_ids, image_ids, offset, self.bank)
        kd_image = masked_cross_entropy(scale * F.normalize(student_image.float(), dim=-1) @ keys.T, exclude, offset)
        kd_text = masked_cross_entropy(scale * F.normalize(student_text.float(), dim=-1) @ keys.T, exclude, offset)
        self.bank.enqueue(teacher, all_ids)
        return {
            "kd": 0.5 * kd_image + 0.5 * kd_text,
            "kd_image": kd_image,
            "kd_text": kd_text,
            "kd_logit_scale": scale.detach(),
        }
