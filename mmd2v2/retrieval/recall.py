"""Retrieval recall@k by the standard COCO/Flickr30K protocol (CLIP_benchmark's definition), with FAISS.

image→text: an image is a hit at k if ANY of its captions is among its top-k texts, averaged over images.
text→image: a caption is a hit at k if its image is among its top-k images, averaged over captions.
Search is exact inner product (cosine for L2-normalised vectors), queried in blocks so that memory
stays bounded (never an N×M similarity matrix).

Ties: exactly tied scores keep FAISS's order. With faiss 1.15's exact CPU search, the lowest indices make
the top-k cut but come back highest index first, so a tie between a correct and a wrong item can go
either way; continuous embeddings practically never tie.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Embeddings = np.ndarray | torch.Tensor
ImageIndex = np.ndarray | torch.Tensor | Sequence[int]


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


def _search(database: np.ndarray, queries: np.ndarray, k: int, query_block: int) -> np.ndarray:
    """Indices (len(queries), k) of the top-k database rows by inner product, searched in query blocks."""
    import faiss  # imported here so that the rest of the package works without the optional faiss extra

    index = faiss.IndexFlatIP(database.shape[1])
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(database)
    return np.concatenate([index.search(queries[s : s + query_block], k)[1] for s in range(0, len(queries), query_block)])


def _first_hit(hits: np.ndarray, miss: int) -> np.ndarray:
    return np.where(hits.any(axis=1), hits.argmax(axis=1), miss)


def first_hit_ranks(image_emb: Embeddings, text_emb: Embeddings, text_image_index: ImageIndex, max_k: int = 50,
                    query_block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of the first correct result per image (i2t) and per caption (t2i); max_k if not in the top max_k."""
    if max_k < 1 or query_block < 1:
        raise ValueError(f"max_k and query_block must be >= 1, got {max_k} and {query_block}")
    images, texts = _as_matrix(image_emb, "image_emb"), _as_matrix(text_emb, "text_emb")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"embedding dims differ: images {images.shape[1]} vs texts {texts.shape[1]}")
    owner = _as_owner(text_image_index, len(images), len(texts))
    top_texts = _search(texts, images, min(max_k, len(texts)), query_block)
    top_images = _search(images, texts, min(max_k, len(images)), query_block)
    i2t = _first_hit(owner[top_texts] == np.arange(len(images))[:, None], max_k)
    t2i = _first_hit(top_images == owner[:, None], max_k)
    return i2t, t2i


def _percent_within(ranks: np.ndarray, ks: Sequence[int]) -> list[float]:
    return [float(100 * np.count_nonzero(ranks < k) / len(ranks)) for k in ks]


def recall_at_k(image_emb: Embeddings, text_emb: Embeddings, text_image_index: ImageIndex,
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """{"image_to_text": {"R@k": %, ...}, "text_to_image": {"R@k": %, ...}} for each k of ks, in order."""
    if len(ks) == 0 or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of values >= 1, got {list(ks)}")
    i2t, t2i = first_hit_ranks(image_emb, text_emb, text_image_index, max_k=max(ks))
    return {"image_to_text": dict(zip((f"R@{k}" for k in ks), _percent_within(i2t, ks))),
            "text_to_image": dict(zip((f"R@{k}" for k in ks), _percent_within(t2i, ks)))}


def recall_curve(image_emb: Embeddings, text_emb: Embeddings, text_image_index: ImageIndex,
                 max_k: int = 50) -> dict[str, np.ndarray]:
    """Recall (%) for every k in 1..max_k in both directions, for plotting: {"k", "image_to_text", "text_to_image"}."""
    i2t, t2i = first_hit_ranks(image_emb, text_emb, text_image_index, max_k=max_k)
    ks = np.arange(1, max_k + 1)
    return {"k": ks, "image_to_text": np.array(_percent_within(i2t, ks)),
            "text_to_image": np.array(_percent_within(t2i, ks))}


def rsum(recalls: dict[str, dict[str, float]]) -> float:
    """Sum of all recall values of both directions (the usual 'rsum')."""
    return float(sum(v for direction in ("image_to_text", "text_to_image") for v in recalls[direction].values()))


def format_recall_table(recalls: dict[str, dict[str, float]]) -> str:
    """Aligned text table of recall@k in both directions, with the rsum and the mean recall on a last line."""
    keys = list(recalls["image_to_text"])
    lines = [f"{'':<12}" + "".join(f"{k:>8}" for k in keys)]
    for name, direction in (("image→text", "image_to_text"), ("text→image", "text_to_image")):
        lines.append(f"{name:<12}" + "".join(f"{recalls[direction][k]:>8.2f}" for k in keys))
    total = rsum(recalls)
    lines.append(f"{'rsum':<12}{total:>8.2f}   mean {total / (2 * len(keys)):.2f}")
    return "\n".join(lines)
