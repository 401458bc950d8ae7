"""Symmetric InfoNCE between image and text embeddings with a learnable, clamped temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmd2v2.losses.memory_bank import FeatureQueue


class LearnableLogitScale(nn.Module):
    """Base for losses with a learnable 1/T = exp(log_logit_scale), clamped at `max_logit_scale`."""

    def __init__(self, init_temperature: float, max_logit_scale: float, learnable: bool = True) -> None:
        super().__init__()
        # shape (1,) rather than 0-dim, the conservative choice for DeepSpeed's parameter flattening
        self.log_logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / init_temperature)]), requires_grad=learnable)
        self.max_log_logit_scale = math.log(max_logit_scale)

    def logit_scale(self) -> Tensor:
        """The current logit scale as a 0-dim tensor (gradient flows while below the clamp)."""
        return self.log_logit_scale.clamp(max=self.max_log_logit_scale).exp()[0]


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


def keys_with_bank(keys: Tensor, ids: Tensor, bank: FeatureQueue | None) -> tuple[Tensor, Tensor]:
    """Candidate columns [batch keys; bank entries] and, per row, the columns that show the row's own image."""
    exclude = same_id_mask(ids, ids, keep_diagonal=True)
    if bank is None:
        return keys, exclude
    bank_keys, bank_ids = bank.contents()
    return (torch.cat([keys, bank_keys.to(keys.dtype)]),
            torch.cat([exclude, same_id_mask(ids, bank_ids, keep_diagonal=False)], dim=1))


class ContrastiveLoss(LearnableLogitScale):
    """CLIP-style loss in which other captions of the same image are never negatives."""

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0, learnable_temperature: bool = True,
                 memory_bank_size: int = 0, embed_dim: int | None = None) -> None:
        super().__init__(init_temperature, max_logit_scale, learnable_temperature)
        self.image_bank: FeatureQueue | None = None
        self.text_bank: FeatureQueue | None = None
        if memory_bank_size > 0:
            if embed_dim is None:
                raise ValueError("contrastive memory bank needs embed_dim")
            self.image_bank = FeatureQueue(memory_bank_size, embed_dim)
            self.text_bank = FeatureQueue(memory_bank_size, embed_dim)

    def forward(self, image_emb: Tensor, text_emb: Tensor, image_ids: Tensor) -> dict[str, Tensor]:
        """Loss terms for pairs (image_emb[i], text_emb[i]) of L2-normalised embeddings; banks are updated after."""
        scale = self.logit_scale()
        texts, exclude_texts = keys_with_bank(text_emb, image_ids, self.text_bank)
        images, exclude_images = keys_with_bank(image_emb, image_ids, self.image_bank)
        i2t = masked_cross_entropy(scale * image_emb @ texts.T, exclude_texts)
        t2i = masked_cross_entropy(scale * text_emb @ images.T, exclude_images)
        for bank, emb in ((self.image_bank, image_emb), (self.text_bank, text_emb)):
            if bank is not None:
                bank.enqueue(emb, image_ids)
        return {"contrastive": (i2t + t2i) / 2, "contrastive_i2t": i2t, "contrastive_t2i": t2i,
                "logit_scale": scale.detach()}
