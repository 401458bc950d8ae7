"""Retrieval recall@k by the standard COCO/Flickr30K protocol (CLIP_benchmark's definition), with FAISS.

image→text: an image is a hit at k if ANY of its captions is among its top-k texts, averaged over images.
text→image: a caption is a hit at k if its image is among its top-k images, averaged over captions.
Search is exact inner product over L2-normalised vectors, queried in blocks so that memory stays
bounded (no N×M similarity matrix). Exactly tied scores are ordered as FAISS returns them.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import torch


def _as_matrix(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    array = np.ascontiguousarray(values, dtype=np.float32)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"{name}: expected a non-empty (count, dim) matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _validate(image_emb: np.ndarray, text_emb: np.ndarray, text_image_index: np.ndarray) -> np.ndarray:
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"embedding dims differ: images {image_emb.shape[1]} vs texts {text_emb.shape[1]}")
    index = np.asarray(text_image_index, dtype=np.int64).reshape(-1)
    if len(index) != len(text_emb):
        raise ValueError(f"text_image_index has {len(index)} entries for {len(text_emb)} texts")
    if index.min() < 0 or index.max() >= len(image_emb):
        raise ValueError(f"text_image_index values must lie in [0, {len(image_emb) - 1}]")
    if len(np.unique(index)) != len(image_emb):
        raise ValueError("every image needs at least one caption in text_image_index")
    return index


def _search(database: np.ndarray, queries: np.ndarray, k: int, query_block: int) -> np.ndarray:
    """Indices (len(queries), k) of the top-k database rows by inner product, computed in query blocks."""
    index = faiss.IndexFlatIP(database.shape[1])
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(database)
    return np.concatenate([index.search(queries[s : s + query_block], k)[1] for s in range(0, len(queries), query_block)])


def first_hit_ranks(image_emb: np.ndarray | torch.Tensor, text_emb: np.ndarray | torch.Tensor,
                    text_image_index: np.ndarray | Sequence[int], max_k: int = 50,
                    query_block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of the first correct result per image (i2t) and per caption (t2i); max_k if none in the top max_k."""
    images, texts = _as_matrix(image_emb, "image_emb"), _as_matrix(text_emb, "text_emb")
    owner = _validate(images, texts, np.asarray(text_image_index))
    k_texts, k_images = min(max_k, len(texts)), min(max_k, len(images))
    i2t_hits = owner[_search(texts, images, k_texts, query_block)] == np.arange(len(images))[:, None]
    t2i_hits = _search(images, texts, k_images, query_block) == owner[:, None]

    def first(hits: np.ndarray) -> np.ndarray:
        return np.where(hits.any(axis=1), hits.argmax(axis=1), max_k)

    return first(i2t_hits), first(t2i_hits)


def recall_at_k(image_emb: np.ndarray | torch.Tensor, text_emb: np.ndarray | torch.Tensor,
                text_image_index: np.ndarray | Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """{"image_to_text": {"R@k": %}, "text_to_image": {"R@k": %}} for each k."""
    i2t, t2i = first_hit_ranks(image_emb, text_emb, text_image_index, max_k=max(ks))
    return {"image_to_text": {f"R@{k}": float(100 * np.mean(i2t < k)) for k in ks},
            "text_to_image": {f"R@{k}": float(100 * np.mean(t2i < k)) for k in ks}}


def recall_curve(image_emb: np.ndarray | torch.Tensor, text_emb: np.ndarray | torch.Tensor,
                 text_image_index: np.ndarray | Sequence[int], max_k: int = 50) -> dict[str, np.ndarray]:
    """Recall (%) for every k in 1..max_k in both directions, for plotting."""
    i2t, t2i = first_hit_ranks(image_emb, text_emb, text_image_index, max_k=max_k)
    ks = np.arange(1, max_k + 1)
    return {"k": ks, "image_to_text": 100 * (i2t[None, :] < ks[:, None]).mean(axis=1),
            "text_to_image": 100 * (t2i[None, :] < ks[:, None]).mean(axis=1)}


def rsum(recalls: dict[str, dict[str, float]]) -> float:
    """Sum of all recall values of both directions (the usual 'rsum')."""
    return float(sum(v for direction in ("image_to_text", "text_to_image") for v in recalls[direction].values()))


def format_recall_table(recalls: dict[str, dict[str, float]]) -> str:
    """Aligned text table of recall@k in both directions, with the rsum."""
    keys = list(recalls["image_to_text"])
    lines = [f"{'':<12}" + "".join(f"{k:>8}" for k in keys)]
    for name, direction in (("image→text", "image_to_text"), ("text→image", "text_to_image")):
        lines.append(f"{name:<12}" + "".join(f"{recalls[direction][k]:>8.2f}" for k in keys))
    lines.append(f"rsum {rsum(recalls):.2f}")
    return "\n".join(lines)
