"""The Python API: load a trained model, embed images and captions, search an index folder.

import mmd2v2
model = mmd2v2.load("runs/demo")                 # a run folder (its export/) or an export folder
vectors = model.encode_texts(["a red circle"])   # (1, D) float32, L2-normalised
hits = mmd2v2.open_index("runs/demo-index", model=model).search("a red circle", k=5)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.errors import MissingFileError, UserError
from mmd2v2.models.exported import ExportedModel, load_export, resolve_export
from mmd2v2.retrieval.encode import encode_texts
from mmd2v2.retrieval.index_store import SearchHit
from mmd2v2.retrieval.search import Searcher

ImageInput = str | Path | Image.Image


class Model:
    """A trained model for inference: `encode_images` and `encode_texts` give L2-normalised float32 arrays (N, D)
    whose dot products are the cosine similarities retrieval ranks by."""

    def __init__(self, bundle: ExportedModel, folder: Path) -> None:
        self.bundle = bundle
        self.folder = folder  # the export folder it was loaded from

    @property
    def preprocess(self) -> ImagePreprocessor:
        """The image preprocessing the model was trained with (PIL image -> normalised (3, S, S) tensor)."""
        return self.bundle.preprocess

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer."""
        return self.bundle.tokenizer

    @property
    def embed_dim(self) -> int:
        """D, the size of every embedding."""
        return self.bundle.config.model.embed_dim

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return next(self.bundle.model.parameters()).device

    def encode_images(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> np.ndarray:
        """Embeddings (N, D) of image files or PIL images (one image or a sequence), in batches, without gradients."""
        items = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        chunks = [np.zeros((0, self.embed_dim), np.float32)]
        for start in range(0, len(items), batch_size):
            pixels = torch.stack([self._pixels(item) for item in items[start : start + batch_size]])
            with torch.inference_mode():
                pixels = self.preprocess.normalize(pixels.to(self.device))
                chunks.append(self.bundle.model.encode_images(pixels).float().cpu().numpy())
        return np.concatenate(chunks)

    def encode_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Embeddings (N, D) of captions (one string or a sequence), tokenised as in training, without gradients."""
        items = [texts] if isinstance(texts, str) else list(texts)
        chunks = [np.zeros((0, self.embed_dim), np.float32)]
        for start in range(0, len(items), batch_size):
            chunks.append(encode_texts(self.bundle, items[start : start + batch_size]).float().cpu().numpy())
        return np.concatenate(chunks)

    def _pixels(self, image: ImageInput) -> torch.Tensor:
        """One image as (S, S, 3) uint8, decoded as `mmd2v2 eval` and `index build` decode files."""
        if isinstance(image, Image.Image):
            return self.preprocess.to_uint8(image)
        return self.preprocess.decode(Path(image))  # ImageDecodeError (a FileNotFoundError if missing) names it


def load(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """The model of a run folder (its export/) or of an export folder, in eval mode on `device`."""
    folder = resolve_export(path, "model")
    return Model(load_export(folder, device), folder)


class Index:
    """An index folder opened with the model whose embeddings it holds."""

    def __init__(self, searcher: Searcher, model: Model) -> None:
        self.searcher = searcher
        self.model = model

    def __len__(self) -> int:
        return self.searcher.index.index.ntotal

    def search(
        self, query: str | Image.Image | Path | np.ndarray | Sequence[float], k: int = 10, kind: str | None = None
    ) -> list[SearchHit]:
        """The k best items for a caption (str), an image (PIL image or a Path to a file) or an embedding (D,),
        best first; each hit has `score`, `id` and the stored `row`. `kind` 'image' or 'text' keeps one kind."""
        if isinstance(query, str):
            return self.searcher.by_text(query, k, kind)
        if isinstance(query, Path | Image.Image):
            return self.searcher.index.search(self.model.encode_images([query]), k, kind)[0]
        vector = np.asarray(query, dtype=np.float32)
        if vector.shape not in ((self.model.embed_dim,), (1, self.model.embed_dim)):
            raise UserError(f"query vector has shape {vector.shape}, this index holds ({self.model.embed_dim},) ones")
        return self.searcher.index.search(vector.reshape(1, -1), k, kind)[0]


def open_index(
    folder: str | Path, model: Model | str | Path | None = None, device: str | torch.device = "cpu"
) -> Index:
    """An index folder built by `mmd2v2 index build`, with `model` (a loaded Model, or a run or export folder;
    default: the checkpoint the index was built with), which must be the model that built it."""
    if not Path(folder).is_dir():
        raise MissingFileError(f"index folder '{folder}' does not exist")
    if model is None:
        searcher = Searcher(folder, device=str(device))
        return Index(searcher, Model(searcher.bundle, resolve_export(searcher.index.manifest.checkpoint)))
    if not isinstance(model, Model):
        model = load(model, device)
    return Index(Searcher(folder, model.folder, bundle=model.bundle), model)
