"""Batched encoding of a split's images and captions with a trained model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmd2v2.data.karpathy import ImageRecord
from mmd2v2.data.preprocessing import image_batches, loader_workers
from mmd2v2.errors import DamagedFileError, MissingFileError, UserError
from mmd2v2.files import atomic_path
from mmd2v2.models.exported import ExportedModel


@dataclass
class SplitEmbeddings:
    """Image and caption embeddings of a split, with each caption's image row."""

    image_emb: np.ndarray  # (N, D) float32, L2-normalised
    text_emb: np.ndarray  # (M, D)
    text_image_index: np.ndarray  # (M,) row of each caption's image
    num_skipped: int  # images that could not be decoded (and their captions), left out


def encode_split(
    bundle: ExportedModel,
    records: list[ImageRecord],
    batch_size: int = 128,
    max_text_length: int = 64,
    progress: bool = True,
) -> SplitEmbeddings:
    """Encode every decodable image of `records` and all of its captions."""
    image_emb, positions = encode_image_files(bundle, [r.path for r in records], batch_size, progress)
    kept = [records[i] for i in positions]
    if not kept:
        raise UserError("no image of the split could be decoded")
    captions = [c for r in kept for c in r.captions]
    text_image_index = np.asarray([i for i, r in enumerate(kept) for _ in r.captions], dtype=np.int64)
    distinct = list(dict.fromkeys(captions))  # each distinct caption encoded once: identical captions, identical rows
    text_chunks = []
    for start in tqdm(range(0, len(distinct), batch_size), desc="encode texts", unit="batch", disable=not progress):
        emb = encode_texts(bundle, distinct[start : start + batch_size], max_text_length)
        text_chunks.append(emb.float().cpu().numpy())
    row = {caption: index for index, caption in enumerate(distinct)}
    text_emb = np.concatenate(text_chunks)[[row[c] for c in captions]]
    return SplitEmbeddings(image_emb, text_emb, text_image_index, len(records) - len(kept))


def encode_image_files(
    bundle: ExportedModel, paths: Sequence[str | Path], batch_size: int, progress: bool = False
) -> tuple[np.ndarray, list[int]]:
    """L2-normalised embeddings (N, D) of the decodable images of `paths` and their positions in it; images are
    decoded to uint8 by loader workers where they pay and normalised on the model's device."""
    model, device = bundle.model.eval(), next(bundle.model.parameters()).device
    chunks, kept = [np.zeros((0, bundle.config.model.embed_dim), np.float32)], []
    bar = tqdm(total=len(paths), desc="encode images", unit="img", disable=not progress)
    for pixels, positions in image_batches(paths, bundle.preprocess, batch_size, loader_workers("auto")):
        if pixels is not None:
            with torch.inference_mode():
                pixels = bundle.preprocess.normalize(pixels.to(device, non_blocking=True))
                chunks.append(model.encode_images(pixels).float().cpu().numpy())
            kept.extend(positions)
        bar.update(min(batch_size, len(paths) - bar.n))
    bar.close()
    return np.concatenate(chunks), kept


def encode_texts(bundle: ExportedModel, texts: list[str], max_length: int | None = None) -> torch.Tensor:
    """L2-normalised embeddings of `texts` (tokenised up to `max_length`, default the model's data.max_text_length)."""
    device = next(bundle.model.parameters()).device
    tokens = bundle.tokenizer(
        texts,
        padding=True,
        truncation=True,
        return_tensors="pt",
        max_length=max_length or bundle.config.data.max_text_length,
    )
    with torch.inference_mode():
        return bundle.model.encode_texts(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))


def save_embeddings(embeddings: SplitEmbeddings, path: str | Path, info: dict[str, str]) -> Path:
    """Write a split's embeddings to an .npz (no pickled objects) with `info` (checkpoint id, dataset, split)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("wb") as handle:  # a handle: np.savez adds no .npz suffix to it
        np.savez(
            handle,
            image_emb=embeddings.image_emb,
            text_emb=embeddings.text_emb,
            text_image_index=embeddings.text_image_index,
            num_skipped=np.asarray(embeddings.num_skipped),
            info=np.asarray(json.dumps(info)),
        )
    return path


def load_embeddings(path: str | Path) -> tuple[SplitEmbeddings, dict[str, str]]:
    """Read what `save_embeddings` wrote: the embeddings and their info."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--embeddings: '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            embeddings = SplitEmbeddings(
                data["image_emb"], data["text_emb"], data["text_image_index"], int(data["num_skipped"])
            )
            info = json.loads(str(data["info"]))
    except (KeyError, ValueError, OSError) as error:
        raise DamagedFileError(f"{path}: not an embeddings file written by --save-embeddings ({error})") from None
    return embeddings, info
