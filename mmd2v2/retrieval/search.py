"""Search an index folder by text or by image with the model that built it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmd2v2.data.images import open_rgb
from mmd2v2.errors import UserError
from mmd2v2.models.exported import ExportedModel, load_export, resolve_export
from mmd2v2.retrieval.collection import image_path
from mmd2v2.retrieval.encode import encode_texts
from mmd2v2.retrieval.index_store import IndexFolder, SearchHit, checkpoint_id


class Searcher:
    """An index folder plus the model whose embeddings it holds (checked to be the same model); `bundle`: that model
    already loaded from `ckpt`."""

    def __init__(
        self,
        index_dir: str | Path,
        ckpt: str | Path | None = None,
        device: str = "cpu",
        bundle: ExportedModel | None = None,
    ) -> None:
        self.index = IndexFolder(index_dir)
        what = "--ckpt" if ckpt is not None else "the index's checkpoint (pass --ckpt for another)"
        folder = resolve_export(ckpt if ckpt is not None else self.index.manifest.checkpoint, what)
        self.bundle: ExportedModel = bundle if bundle is not None else load_export(folder, device)
        self.index.check_queries(self.bundle.config.model.embed_dim, checkpoint_id(folder))

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """Query embeddings of captions."""
        if not texts or any(not t.strip() for t in texts):
            raise UserError("query text is empty")
        return encode_texts(self.bundle, texts).float().cpu().numpy()

    def image_vectors(self, images: list[Image.Image]) -> np.ndarray:
        """Query embeddings of decoded images."""
        pixels = torch.stack([self.bundle.preprocess(image) for image in images])
        device = next(self.bundle.model.parameters()).device
        with torch.inference_mode():
            return self.bundle.model.encode_images(pixels.to(device)).float().cpu().numpy()

    def by_text(self, text: str, k: int = 10, kind: str | None = None) -> list[SearchHit]:
        """Top-k items for a caption (only images or only captions with `kind` 'image' / 'text')."""
        return self.index.search(self.text_vectors([text]), k, kind)[0]

    def by_image(self, image: Image.Image, k: int = 10, kind: str | None = None) -> list[SearchHit]:
        """Top-k items for an image (only images or only captions with `kind`)."""
        return self.index.search(self.image_vectors([image]), k, kind)[0]

    def by_id(self, vector_id: int, k: int = 10, kind: str | None = None) -> list[SearchHit]:
        """Top-k neighbours of an item already in the index (itself first when of `kind`). Its stored vector is the
        query; where the index keeps none readable (fast-scan PQ), the item's caption or image file is encoded again."""
        row = self.index.row(vector_id)
        if self.index.stores_vectors:
            query = self.index.index.reconstruct(vector_id)[None]
        elif row.get("kind") == "text":
            query = self.text_vectors([row["text"]])
        else:
            path = image_path(row, self.index.manifest.sources)
            name = f"item {vector_id}: its image '{path}' (index type {self.index.manifest.index_type} keeps no vector)"
            query = self.image_vectors([open_rgb(path, name)])
        return self.index.search(query, k, kind)[0]


def format_hits(hits: list[SearchHit]) -> str:
    """Ranked hits as aligned text lines: rank, score, id, path or caption."""
    lines = [f"{'rank':>4} {'score':>7} {'id':>8}  item"]
    for rank, hit in enumerate(hits, start=1):
        what = hit.row.get("path") if hit.row.get("kind") == "image" else repr(hit.row.get("text", ""))
        lines.append(f"{rank:>4} {hit.score:>7.4f} {hit.id:>8}  {what}")
    return "\n".join(lines)
