"""Symmetric InfoNCE between image and text embeddings with a learnable, clamped temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmd2v2.losses.distributed import INVALID, gather_ids, gather_rows
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


def excluded_columns(query_ids: Tensor, key_ids: Tensor, offset: int | None) -> Tensor:
    """True where a key must not be a negative for the query: another view of the query's image, or a padding row.
    `offset` places query i's own key at column offset + i (None: the keys hold no positives, e.g. a bank)."""
    mask = (query_ids[:, None] == key_ids[None, :]) | (key_ids[None, :] == INVALID)
    if offset is not None:
        rows = torch.arange(len(query_ids), device=mask.device)
        mask[rows, offset + rows] = False
    return mask


def masked_cross_entropy(logits: Tensor, exclude: Tensor, offset: int = 0) -> Tensor:
    """Mean CE with target column offset + i for row i, ignoring the excluded columns in the softmax."""
    logits = logits.masked_fill(exclude, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, offset + torch.arange(len(logits), device=logits.device))


def keys_with_bank(
    keys: Tensor, key_ids: Tensor, query_ids: Tensor, offset: int, bank: FeatureQueue | None
) -> tuple[Tensor, Tensor]:
    """Candidate columns [global batch keys; bank entries] and, per query, the columns excluded from its softmax."""
    exclude = excluded_columns(query_ids, key_ids, offset)
    if bank is None:
        return keys, exclude
    bank_keys, bank_ids = bank.contents()
    return (
        torch.cat([keys, bank_keys.to(keys.dtype)]),
        torch.cat([exclude, excluded_columns(query_ids, bank_ids, None)], dim=1),
    )


class ContrastiveLoss(LearnableLogitScale):
    """CLIP-style loss in which other captions of the same image are never negatives."""

    def __init__(
        self,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learnable_temperature: bool = True,
        memory_bank_size: int = 0,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__(init_temperature, max_logit_scale, learnable_temperature)
        self.image_bank: FeatureQueue | None = None
        self.text_bank: FeatureQueue | None = None
        if memory_bank_size > 0:
            if embed_dim is None:
                raise ValueError("contrastive memory bank needs embed_dim")
            self.image_bank = FeatureQueue(memory_bank_size, embed_dim)
            self.text_bank = FeatureQueue(memory_bank_size, embed_dim)

    def forward(
        self, image_emb: Tensor, text_emb: Tensor, image_ids: Tensor, batch_size: int | None = None
    ) -> dict[str, Tensor]:
        """Loss terms for pairs (image_emb[i], text_emb[i]) of L2-normalised embeddings; banks are updated after.

        With several data-parallel ranks this rank's rows are queries against every rank's rows (each rank padded
        to `batch_size`, default: this batch's size); the banks receive the whole global batch.
        """
        size = batch_size or len(image_ids)
        scale = self.logit_scale()
        all_images, all_texts = gather_rows(image_emb, size), gather_rows(text_emb, size)
        all_ids, offset = gather_ids(image_ids, size)
        texts, exclude_texts = keys_with_bank(all_texts, all_ids, image_ids, offset, self.text_bank)
        images, exclude_images = keys_with_bank(all_images, all_ids, image_ids, offset, self.image_bank)
        i2t = masked_cross_entropy(scale * image_emb @ texts.T, exclude_texts, offset)
        t2i = masked_cross_entropy(scale * text_emb @ images.T, exclude_images, offset)
        for bank, emb in ((self.image_bank, all_images), (self.text_bank, all_texts)):
            if bank is not None:
                bank.enqueue(emb, all_ids)
        return {
            "contrastive": (i2t + t2i) / 2,
            "contrastive_i2t": i2t,
            "contrastive_t2i": t2i,
            "logit_scale": scale.detach(),
        }
