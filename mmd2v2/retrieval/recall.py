"""Retrieval recall@k by the standard COCO/Flickr30K protocol (CLIP_benchmark's definition), with a tie rule.

image→text: an image is a hit at k if ANY of its captions is among its top-k texts, averaged over images.
text→image: a caption is a hit at k if its image is among its top-k images, averaged over captions.
Scores are exact inner products (cosine for L2-normalised vectors), computed in query blocks so that memory
stays bounded (never an N×M similarity matrix).

Ties: identical captions of different images (COCO has some; 741 of the demo test split's 2,500 share their text
with another image's caption) score exactly alike, and a ranking must then order them somehow. The rule here: recall@k is the EXPECTED recall when tied
items are put in a uniformly random order, so it does not depend on how a search library happens to order
them. For a query whose best correct item has score s, with `a` wrong items scoring above s, `m` wrong and `p`
correct items scoring exactly s, the first correct item lands at rank a + X, where P(X >= x) =
C(m, x) / C(m + p, x); the query's hit probability at k is P(a + X < k). Without ties this is 0 or 1: the usual
recall, equal to CLIP_benchmark's. Ties are defined on the float32 scores after one computation: candidates
with bit-identical embeddings are scored once (so duplicates always tie exactly, whatever the matrix product's
blocking does to the last bits), and each query scores all its candidates in one matrix product.
`mmd2v2.retrieval.encode` embeds each distinct caption once, so identical captions have identical embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

Embeddings = np.ndarray | torch.Tensor
ImageIndex = np.ndarray | torch.Tensor | Sequence[int]
TIE_RULE = "expected recall under a uniformly random order of exactly tied items"
BLOCK_ELEMENTS = 1 << 24  # scores held at once per query block (64 MiB of float32)


class RankStats(NamedTuple):
    """Per query: wrong items scoring above the best correct one, and wrong and correct items tied with it."""

    above: np.ndarray  # (Q,) int64
    tied_wrong: np.ndarray  # (Q,) int64
    tied_right: np.ndarray  # (Q,) int64, >= 1
    index_rank: np.ndarray  # (Q,) 0-based rank of the first correct item, ties broken by lower index first


def _as_matrix(values: Embeddings, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    array = np.ascontiguousarray(values, dtype=np.float32)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty (count, dim) matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _as_owner(text_image_index: ImageIndex, num_images: int, num_texts: int) -> np.ndarray:
    if isinstance(text_image_index, torch.Tensor):
        text_image_index = text_image_index.cpu().numpy()
    owner = np.asarray(text_image_index)
    if owner.ndim != 1 or (owner.size and not np.issubdtype(owner.dtype, np.integer)):
        raise ValueError(f"text_image_index: expected a 1-D integer array, got {owner.dtype} of shape {owner.shape}")
    if len(owner) != num_texts:
        raise ValueError(f"text_image_index has {len(owner)} entries for {num_texts} texts")
    if owner.min() < 0 or owner.max() >= num_images:
        raise ValueError(f"text_image_index values must lie in [0, {num_images - 1}]")
    if len(np.unique(owner)) != num_images:
        raise ValueError("every image needs at least one caption in text_image_index")
    return owner.astype(np.int64)


def _inputs(
    image_emb: Embeddings, text_emb: Embeddings, text_image_index: ImageIndex
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, texts = _as_matrix(image_emb, "image_emb"), _as_matrix(text_emb, "text_emb")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"embedding dims differ: images {images.shape[1]} vs texts {texts.shape[1]}")
    return images, texts, _as_owner(text_image_index, len(images), len(texts))


def _check_positive(max_k: int, query_block: int) -> None:
    if max_k < 1 or query_block < 1:
        raise ValueError(f"max_k and query_block must be >= 1, got {max_k} and {query_block}")


def _padded_positives(query_label: np.ndarray, candidate_label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the ascending indices of its correct candidates, padded (Q, P), and which entries are real."""
    order = np.argsort(candidate_label, kind="stable")
    labels, starts, counts = np.unique(candidate_label[order], return_index=True, return_counts=True)
    slot = np.searchsorted(labels, query_label)
    width = np.arange(int(counts.max()))[None, :]
    valid = width < counts[slot][:, None]
    index = order[np.minimum(starts[slot][:, None] + width, len(order) - 1)]
    return np.where(valid, index, index[:, :1]), valid


def _rank_stats(
    queries: np.ndarray, query_label: np.ndarray, candidates: np.ndarray, candidate_label: np.ndarray, query_block: int
) -> RankStats:
    """RankStats of every query against all candidates; a candidate is correct when its label equals the query's."""
    unique, inverse = np.unique(candidates, axis=0, return_inverse=True)
    duplicates = len(unique) < len(candidates)
    database = unique if duplicates else candidates
    positives, valid = _padded_positives(query_label, candidate_label)
    rows = max(1, min(query_block, BLOCK_ELEMENTS // len(candidates)))
    above, tied_wrong, tied_right, index_rank = (np.empty(len(queries), np.int64) for _ in range(4))
    for start in range(0, len(queries), rows):
        block = slice(start, start + rows)
        scores = queries[block] @ database.T  # all of a query's candidates in one product
        if duplicates:
            scores = scores[:, inverse.reshape(-1)]  # each distinct embedding scored once: duplicates tie bit-exactly
        right_scores = np.where(valid[block], np.take_along_axis(scores, positives[block], axis=1), -np.inf)
        best = right_scores.max(axis=1, keepdims=True)
        right_tied = valid[block] & (right_scores == best)
        tied = scores == best
        above[block] = np.count_nonzero(scores > best, axis=1)
        tied_right[block] = np.count_nonzero(right_tied, axis=1)
        tied_wrong[block] = np.count_nonzero(tied, axis=1) - tied_right[block]
        first_right = positives[block][np.arange(len(best)), np.argmax(right_tied, axis=1)]
        before = np.zeros(len(best), np.int64)
        for row in np.flatnonzero(tied_wrong[block]):  # rare: count the tied wrong items listed first
            before[row] = np.count_nonzero(tied[row, : first_right[row]])
        index_rank[block] = above[block] + before
    return RankStats(above, tied_wrong, tied_right, index_rank)


def rank_statistics(
    image_emb: Embeddings, text_emb: Embeddings, text_image_index: ImageIndex, query_block: int = 4096
) -> tuple[RankStats, RankStats]:
    """RankStats of every image query (image→text) and every caption query (text→image)."""
    _check_positive(1, query_block)
    images, texts, owner = _inputs(image_emb, text_emb, text_image_index)
    image_ids = np.arange(len(images))
    return (
        _rank_stats(images, image_ids, texts, owner, query_block),
        _rank_stats(texts, owner, images, image_ids, query_block),
    )


def hit_probabilities(stats: RankStats, ks: Sequence[int]) -> np.ndarray:
    """(Q, len(ks)) probability that the first correct item is in the top k under a random order of tied items."""
    ks_array = np.asarray(ks, dtype=np.int64)
    m, p = stats.tied_wrong[:, None].astype(np.float64), stats.tied_right[:, None].astype(np.float64)
    t = np.arange(int(ks_array.max()), dtype=np.float64)[None, :]
    # survival[:, x] = P(X >= x) = prod_{t < x} (m - t) / (m + p - t): the first x tied items are all wrong
    factors = np.maximum(m - t, 0) / np.maximum(m + p - t, 1)
    survival = np.concatenate([np.ones_like(m), np.cumprod(factors, axis=1)], axis=1)
    room = ks_array[None, :] - stats.above[:, None]  # tied wrong items that may precede the correct one, plus one
    missed = np.take_along_axis(survival, np.clip(room, 0, len(t[0])), axis=1)
    return np.where(room > 0, 1.0 - missed, 0.0)


def _percent(stats: RankStats, ks: Sequence[int]) -> list[float]:
    return [float(100 * total / len(stats.above)) for total in hit_probabilities(stats, ks).sum(axis=0)]


def first_hit_ranks(
    image_emb: Embeddings, text_emb: Embeddings, text_image_index: ImageIndex, max_k: int = 50, query_block: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of the first correct result per image (i2t) and per caption (t2i), exact ties broken by lower
    index first; max_k if not in the top max_k. (Recall uses the expected rule instead; equal without ties.)"""
    _check_positive(max_k, query_block)
    i2t, t2i = rank_statistics(image_emb, text_emb, text_image_index, query_block)
    return np.minimum(i2t.index_rank, max_k), np.minimum(t2i.index_rank, max_k)


def recall_at_k(
    image_emb: Embeddings, text_emb: Embeddings, text_image_index: ImageIndex, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """{"image_to_text": {"R@k": %, ...}, "text_to_image": {"R@k": %, ...}} for each k of ks, in order (ties: TIE_RULE)."""
    if len(ks) == 0 or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of values >= 1, got {list(ks)}")
    i2t, t2i = rank_statistics(image_emb, text_emb, text_image_index)
    return {
        "image_to_text": dict(zip((f"R@{k}" for k in ks), _percent(i2t, ks))),
        "text_to_image": dict(zip((f"R@{k}" for k in ks), _percent(t2i, ks))),
    }


def recall_curve(
    image_emb: Embeddings, text_emb: Embeddings, text_image_index: ImageIndex, max_k: int = 50
) -> dict[str, np.ndarray]:
    """Recall (%) for every k in 1..max_k in both directions, for plotting: {"k", "image_to_text", "text_to_image"}."""
    _check_positive(max_k, 1)
    i2t, t2i = rank_statistics(image_emb, text_emb, text_image_index)
    ks = np.arange(1, max_k + 1)
    return {"k": ks, "image_to_text": np.array(_percent(i2t, ks)), "text_to_image": np.array(_percent(t2i, ks))}


def tied_counts(image_emb: Embeddings, text_emb: Embeddings, text_image_index: ImageIndex) -> dict[str, int]:
    """Captions whose embedding is bit-identical to a caption of another image, and images identical to another."""
    images, texts, owner = _inputs(image_emb, text_emb, text_image_index)
    _, text_group = np.unique(texts, axis=0, return_inverse=True)
    text_group = text_group.reshape(-1)
    pairs = np.unique(np.stack([text_group, owner], axis=1), axis=0)
    owners_per_group = np.bincount(pairs[:, 0], minlength=int(text_group.max()) + 1)
    _, image_group, image_counts = np.unique(images, axis=0, return_inverse=True, return_counts=True)
    return {
        "tied_captions": int(np.count_nonzero(owners_per_group[text_group] > 1)),
        "tied_images": int(np.count_nonzero(image_counts[image_group.reshape(-1)] > 1)),
    }


def rsum(recalls: Mapping[str, Any]) -> float:
    """Sum of all recall values of both directions (the usual 'rsum')."""
    return float(sum(v for direction in ("image_to_text", "text_to_image") for v in recalls[direction].values()))


def format_recall_table(recalls: Mapping[str, Any]) -> str:
    """Aligned text table of recall@k in both directions, the rsum and mean recall, and the tied captions if counted."""
    keys = list(recalls["image_to_text"])
    lines = [f"{'':<12}" + "".join(f"{k:>8}" for k in keys)]
    for name, direction in (("image→text", "image_to_text"), ("text→image", "text_to_image")):
        lines.append(f"{name:<12}" + "".join(f"{recalls[direction][k]:>8.2f}" for k in keys))
    total = rsum(recalls)
    lines.append(f"{'rsum':<12}{total:>8.2f}   mean {total / (2 * len(keys)):.2f}")
    if "tied_captions" in recalls:
        lines.append(
            f"ties: {recalls['tied_captions']} of {recalls['num_texts']} captions identical to another "
            f"image's caption ({TIE_RULE})"
        )
    return "\n".join(lines)
