"""Symmetric InfoNCE between image and text embeddings with a learnable, clamped temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmd2v2.losses.memory_bank import FeatureQueue


class LearnableLogitScale(nn.Module):
    """1/T as exp(log_scale), initialised to 1/init_temperature and clamped at `max_scale`."""

    def __init__(self, init_temperature: float, max_scale: float, learnable: bool = True) -> None:
        super().__init__()
        # shape (1,), not a scalar: DeepSpeed cannot broadcast 0-dim parameters
        self.log_scale = nn.Parameter(torch.tensor([math.log(1.0 / init_temperature)]), requires_grad=learnable)
        self.max_log_scale = math.log(max_scale)

    def forward(self) -> Tensor:
        """The current logit scale (gradient flows while below the clamp)."""
        return self.log_scale.clamp(max=self.max_log_scale).exp()[0]


def same_id_mask(row_ids: Tensor, column_ids: Tensor, keep_diagonal: bool) -> Tensor:
    """True where column j has the row's id (another view of the same image), except the diagonal if kept."""
    mask = row_ids[:, None] == column_ids[None, :]
    if keep_diagonal:
        mask.fill_diagonal_(False)
    return mask


def masked_cross_entropy(logits: Tensor, exclude: Tensor) -> Tensor:
    """Mean CE with target column i for row i, ignoring the excluded columns in the softmax."""
    logits = logits.masked_fill(exclude, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class ContrastiveLoss(nn.Module):
    """CLIP-style loss in which other captions of the same image are never negatives."""

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0, learnable_temperature: bool = True,
                 memory_bank_size: int = 0, embed_dim: int | None = None) -> None:
        super().__init__()
        self.logit_scale = LearnableLogitScale(init_temperature, max_logit_scale, learnable_temperature)
        self.image_bank: FeatureQueue | None = None
        self.text_bank: FeatureQueue | None = None
        if memory_bank_size > 0:
            if embed_dim is None:
                raise ValueError("contrastive memory bank needs embed_dim")
            self.image_bank = FeatureQueue(memory_bank_size, embed_dim)
            self.text_bank = FeatureQueue(memory_bank_size, embed_dim)

    def forward(self, image_emb: Tensor, text_emb: Tensor, image_ids: Tensor) -> dict[str, Tensor]:
        """Loss terms for pairs (image_emb[i], text_emb[i]) of L2-normalised embeddings."""
        scale = self.logit_scale()
        in_batch = same_id_mask(image_ids, image_ids, keep_diagonal=True)
        texts, images, exclude_t, exclude_i = text_emb, image_emb, in_batch, in_batch
        if self.image_bank is not None and self.text_bank is not None:
            bank_texts, bank_text_ids = self.text_bank.contents()
            bank_images, bank_image_ids = self.image_bank.contents()
            texts = torch.cat([text_emb, bank_texts.to(text_emb.dtype)])
            images = torch.cat([image_emb, bank_images.to(image_emb.dtype)])
            exclude_t = torch.cat([in_batch, same_id_mask(image_ids, bank_text_ids, False)], dim=1)
            exclude_i = torch.cat([in_batch, same_id_mask(image_ids, bank_image_ids, False)], dim=1)
        i2t = masked_cross_entropy(scale * image_emb @ texts.T, exclude_t)
        t2i = masked_cross_entropy(scale * text_emb @ images.T, exclude_i)
        if self.image_bank is not None and self.text_bank is not None:
            self.image_bank.enqueue(image_emb, image_ids)
            self.text_bank.enqueue(text_emb, image_ids)
        return {"contrastive": (i2t + t2i) / 2, "contrastive_i2t": i2t, "contrastive_t2i": t2i,
                "logit_scale": scale.detach()}
