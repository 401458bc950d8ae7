"""Tokenisation that remembers which whitespace word each token came from, and pooling of tokens into words."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from mmd2v2.errors import UserError

WORD = re.compile(r"\S+")


@dataclass
class TokenizedTexts:
    """Token ids, attention mask and the word index of every token (-1: special token or padding)."""

    input_ids: Tensor  # (N, T)
    attention_mask: Tensor  # (N, T)
    word_index: Tensor  # (N, T)
    num_words: int  # words of the longest text (the width of pooled word tensors)
    truncated: int  # texts cut at max_length


def tokenize_with_words(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> TokenizedTexts:
    """Tokenise `texts` (padded, truncated) and map each token to its whitespace word through character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"token selection needs a fast tokenizer (with offsets); got {type(tokenizer).__name__}")
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt", return_offsets_mapping=True
    )
    lengths = tokenizer(texts, truncation=False, return_length=True, return_attention_mask=False)["length"]
    starts, ends = encoded["offset_mapping"][..., 0].numpy(), encoded["offset_mapping"][..., 1].numpy()
    tokens = (ends > starts) & encoded["attention_mask"].bool().numpy()  # special tokens and padding have no span
    word_index = np.full(starts.shape, -1, dtype=np.int64)
    num_words = 0
    for row, text in enumerate(texts):
        spans = np.array([m.span() for m in WORD.finditer(text)], dtype=np.int64).reshape(-1, 2)
        num_words = max(num_words, len(spans))
        word = np.searchsorted(spans[:, 1], starts[row], side="right")  # the only word that can hold the token
        inside = tokens[row] & (word < len(spans))
        inside[inside] &= spans[word[inside], 0] <= starts[row][inside]
        word_index[row, inside] = word[inside]
    truncated = sum(length > max_length for length in lengths)
    return TokenizedTexts(
        encoded["input_ids"], encoded["attention_mask"], torch.from_numpy(word_index), max(1, num_words), truncated
    )


def pool_words(token_features: Tensor, word_index: Tensor, num_words: int) -> tuple[Tensor, Tensor]:
    """Mean of each word's token features: (N, T, D) -> (N, num_words, D), plus (N, num_words) bool of words seen."""
    n, _, d = token_features.shape
    valid = (word_index >= 0) & (word_index < num_words)
    index = word_index.clamp(min=0, max=num_words - 1).to(token_features.device)
    one_hot = torch.zeros(n, word_index.shape[1], num_words, device=token_features.device, dtype=token_features.dtype)
    one_hot.scatter_(-1, index[..., None], 1.0)
    one_hot = one_hot * valid.to(one_hot)[..., None]
    counts = one_hot.sum(1)  # (N, num_words)
    pooled = torch.einsum("ntw,ntd->nwd", one_hot, token_features) / counts.clamp(min=1)[..., None]
    return pooled, counts > 0
