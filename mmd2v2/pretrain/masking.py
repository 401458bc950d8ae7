"""Masks of data2vec 2.0: inverse block masks over an image's patch grid, random span masks over text tokens.

Every sample of a batch gets the same number of masked positions, so the student can drop the masked patches and
still batch (as fairseq does). Masks are drawn from a NumPy generator the caller seeds, so a resumed run draws the
same masks as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def inverse_block_mask(
    count: int, height: int, width: int, mask_prob: float, block: int, rng: np.random.Generator
) -> Tensor:
    """(count, height·width) bool, True = masked: visible patches are the union of random block×block squares,
    grown until round((1 - mask_prob)·H·W) patches are visible, then trimmed at random to exactly that many."""
    cells = height * width
    keep = min(cells - 1, max(1, round((1 - mask_prob) * cells)))
    masks = np.ones((count, height, width), dtype=bool)
    for visible in masks:
        while (~visible).sum() < keep:
            row, col = rng.integers(height), rng.integers(width)
            top, left = max(0, row - block // 2), max(0, col - block // 2)
            visible[top : top + block, left : left + block] = False
        shown = np.flatnonzero(~visible.reshape(-1))
        extra = len(shown) - keep
        if extra > 0:
            visible.reshape(-1)[rng.choice(shown, size=extra, replace=False)] = True
    return torch.from_numpy(masks.reshape(count, cells))


def span_mask(valid: Tensor, mask_prob: float, span: int, rng: np.random.Generator) -> Tensor:
    """(B, L) bool, True = masked, over the positions where `valid` is True: spans of `span` tokens starting at random
    valid positions until round(mask_prob · valid count) are masked (at least one per sample)."""
    valid_np = valid.cpu().numpy()
    masks = np.zeros_like(valid_np, dtype=bool)
    for row, allowed in zip(masks, valid_np, strict=True):
        positions = np.flatnonzero(allowed)
        if len(positions) == 0:
            continue
        target = max(1, round(mask_prob * len(positions)))
        while row.sum() < target:
            start = rng.integers(len(positions))
            row[positions[start : start + span]] = True
        chosen = np.flatnonzero(row)
        extra = len(chosen) - target
        if extra > 0:
            row[rng.choice(chosen, size=extra, replace=False)] = False
    return torch.from_numpy(masks)
