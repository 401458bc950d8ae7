"""Token selection for MAD: which words of a text to distil, from a visual-relevance and a keyword score.

Per word l: S = S_vr / |S_vr|_1 + S_kw / |S_kw|_1, with S_vr = cos(teacher image feature, student word feature)
and S_kw the word's YAKE keyword score (reciprocal rank of the best extracted n-gram containing it, 0 for words in
none). The top m words by S are distilled. Selection works on whitespace words, so a teacher with its own
tokenizer and the student agree on what a word is.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

WORD_CHARS = re.compile(r"[^\w]+")


def text_words(text: str) -> list[str]:
    """The whitespace words of `text`, the units token selection scores."""
    return text.split()


def _clean(word: str) -> str:
    return WORD_CHARS.sub("", word.lower())


def keyword_word_scores(words: list[str], keywords: list[str]) -> list[float]:
    """Score each word by 1/rank of the best keyword (ranked best first) whose n-gram occurs over it; 0 if none."""
    cleaned = [_clean(w) for w in words]
    scores = [0.0] * len(words)
    for rank, keyword in enumerate(keywords, start=1):
        parts = [_clean(p) for p in keyword.split() if _clean(p)]
        for start in range(len(cleaned) - len(parts) + 1 if parts else 0):
            if cleaned[start : start + len(parts)] == parts:
                for position in range(start, start + len(parts)):
                    scores[position] = max(scores[position], 1.0 / rank)
    return scores


@lru_cache(maxsize=4)
def _extractor(max_ngram: int) -> Any:
    """A YAKE extractor (English) for n-grams up to `max_ngram` words."""
    import yake

    return yake.KeywordExtractor(lan="en", n=max_ngram, top=20, dedupLim=0.9)


@lru_cache(maxsize=200_000)
def keyword_scores(text: str, max_ngram: int = 3) -> tuple[float, ...]:
    """YAKE keyword score of every whitespace word of `text` (YAKE ranks n-grams; lower YAKE score = better)."""
    extracted = _extractor(max_ngram).extract_keywords(text)
    ranked = [phrase for phrase, _ in sorted(extracted, key=lambda item: item[1])]
    return tuple(keyword_word_scores(text_words(text), ranked))


def keyword_matrix(texts: list[str], num_words: int, max_ngram: int = 3) -> Tensor:
    """(N, num_words) keyword scores, zero-padded (words past `num_words` are dropped)."""
    rows = torch.zeros(len(texts), num_words)
    for row, text in enumerate(texts):
        scores = keyword_scores(text, max_ngram)[:num_words]
        rows[row, : len(scores)] = torch.tensor(scores)
    return rows


def visual_relevance(image_feature: Tensor, word_features: Tensor) -> Tensor:
    """Cosine between each instance's image feature (N, D) and each of its word features (N, W, D): (N, W)."""
    return F.cosine_similarity(word_features.float(), image_feature.float()[:, None, :], dim=-1)


def l1_normalised(scores: Tensor, mask: Tensor) -> Tensor:
    """Scores over valid words divided by their L1 norm (all-zero rows stay zero)."""
    scores = scores * mask
    return scores / scores.abs().sum(-1, keepdim=True).clamp(min=1e-12)


def selection_scores(relevance: Tensor, keywords: Tensor, mask: Tensor) -> Tensor:
    """S = S_vr / |S_vr|_1 + S_kw / |S_kw|_1 over the valid words (mask (N, W) bool)."""
    return l1_normalised(relevance, mask) + l1_normalised(keywords, mask)


def top_words(scores: Tensor, mask: Tensor, m: int) -> Tensor:
    """(N, W) bool: the m highest-scoring valid words of each row (all valid words when fewer than m)."""
    masked = scores.masked_fill(~mask, float("-inf"))
    k = min(m, scores.shape[-1])
    index = masked.topk(k, dim=-1).indices
    chosen = torch.zeros_like(mask).scatter(-1, index, True)
    return chosen & mask


def random_words(mask: Tensor, m: int, generator: torch.Generator | None = None) -> Tensor:
    """(N, W) bool: m valid words per row drawn uniformly (the 'random selection' ablation)."""
    noise = torch.rand(mask.shape, generator=generator)
    return top_words(noise.to(mask.device), mask, m)
