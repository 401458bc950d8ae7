"""The MM-D2V2 training objective: contrastive image-text loss plus distillation towards the teacher CLS.

loss = contrastive_weight · ½ (image→text + text→image) + kd_weight · kd, with kd = ½ (image term + text term)
for every kd_kind (mse, l1, cosine and contrastive alike): the mean over the two modalities, so kd_weight means the
same for each kind. The thesis's prototype minimised MSE(image) + MSE(text), i.e. kd_weight 2 here; its final
model ½ CE(image→teacher) + ½ CE(text→teacher), i.e. kd = that term.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmd2v2.config import LossConfig
from mmd2v2.errors import UserError
from mmd2v2.losses.contrastive import ContrastiveLoss
from mmd2v2.losses.distillation import ContrastiveDistillation, regression_distillation
from mmd2v2.models.dual_encoder import ModalityOutput


class MMD2V2Objective(nn.Module):
    """Weighted sum of the configured loss terms; returns {"loss": total, term: value, ...}."""

    def __init__(self, cfg: LossConfig, embed_dim: int, teacher_dim: int | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.contrastive = (
            ContrastiveLoss(
                init_temperature=cfg.init_temperature,
                max_logit_scale=cfg.max_logit_scale,
                learnable_temperature=cfg.learnable_temperature,
                memory_bank_size=cfg.contrastive_memory_bank,
                embed_dim=embed_dim,
            )
            if cfg.contrastive_weight > 0
            else None
        )
        if cfg.kd_weight > 0 and teacher_dim is None:
            raise UserError(f"loss.kd_weight is {cfg.kd_weight} but there is no teacher (teacher.enabled: false)")
        self.uses_teacher = cfg.kd_weight > 0
        self.contrastive_kd = (
            ContrastiveDistillation(
                teacher_dim,
                bank_size=cfg.kd_bank_size,
                init_temperature=cfg.kd_init_temperature,
                max_logit_scale=cfg.max_logit_scale,
            )
            if self.uses_teacher and cfg.kd_kind == "contrastive" and teacher_dim
            else None
        )
        if self.contrastive is None and not self.uses_teacher:
            raise UserError("loss: both loss.contrastive_weight and loss.kd_weight are 0: nothing to train")

    def forward(
        self,
        image: ModalityOutput,
        text: ModalityOutput,
        teacher_cls: Tensor | None,
        image_ids: Tensor,
        batch_size: int | None = None,
    ) -> dict[str, Tensor]:
        """All loss terms of one batch, and their weighted total under "loss" (`batch_size`: the configured
        micro-batch, to which ranks pad their rows when they gather the global batch)."""
        terms: dict[str, Tensor] = {}
        total = image.embedding.new_zeros(())
        if self.contrastive is not None:
            terms.update(self.contrastive(image.embedding, text.embedding, image_ids, batch_size))
            total = total + self.cfg.contrastive_weight * terms["contrastive"]
        if self.uses_teacher:
            if teacher_cls is None or image.distill is None or text.distill is None:
                raise ValueError("distillation needs teacher targets and the student's distillation head")
            if self.contrastive_kd is not None:
                terms.update(self.contrastive_kd(image.distill, text.distill, teacher_cls, image_ids, batch_size))
            else:
                terms["kd_image"] = regression_distillation(image.distill, teacher_cls, self.cfg.kd_kind)
                terms["kd_text"] = regression_distillation(text.distill, teacher_cls, self.cfg.kd_kind)
                terms["kd"] = 0.5 * terms["kd_image"] + 0.5 * terms["kd_text"]
            total = total + self.cfg.kd_weight * terms["kd"]
        terms["loss"] = total
        return terms
