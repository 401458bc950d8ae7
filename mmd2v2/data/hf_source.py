"""Hugging Face `datasets` as a training source: an Image() column and a caption column (string or list)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmd2v2.data.karpathy import Dropped
from mmd2v2.data.pairs import PairSample, decode_pair
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.errors import MissingExtraError, UserError


def load_hf_dataset(name_or_path: str, split: str) -> Any:
    """A `load_from_disk` folder (Dataset, or DatasetDict + split), else a hub dataset's split."""
    try:
        import datasets
    except ImportError:
        raise MissingExtraError(
            f"hf source '{name_or_path}' needs the datasets package: pip install 'mmd2v2[data]'"
        ) from None
    if Path(name_or_path).exists():
        loaded = datasets.load_from_disk(name_or_path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(f"{name_or_path}: no split '{split}' (found: {', '.join(loaded)})")
            loaded = loaded[split]
        return loaded
    try:
        return datasets.load_dataset(name_or_path, split=split)
    except Exception as error:  # the hub client raises many kinds; all mean "cannot load this name"
        raise UserError(
            f"hf source '{name_or_path}': not a local folder and not loadable from the hub "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from None


class HFCaptionPairs(Dataset[PairSample]):
    """Every (image, caption) pair of a `datasets.Dataset`; images are decoded here, so bad ones are only counted."""

    def __init__(
        self,
        dataset: Any,
        image_column: str,
        caption_column: str,
        preprocess: ImagePreprocessor,
        name: str,
        dropped: Dropped,
    ) -> None:
        import datasets

        for column in (image_column, caption_column):
            if column not in dataset.column_names:
                raise UserError(f"{name}: no column '{column}' (found: {', '.join(dataset.column_names)})")
        if not isinstance(dataset.features[image_column], datasets.Image):
            raise UserError(
                f"{name}: column '{image_column}' is {dataset.features[image_column]}, expected an Image() feature"
            )
        self.images = dataset.cast_column(image_column, datasets.Image(decode=False)).select_columns([image_column])
        self.image_column = image_column
        self.preprocess = preprocess
        self.pairs: list[tuple[int, str]] = []
        for row, value in enumerate(dataset[caption_column]):
            texts = value if isinstance(value, list) else [value]
            for text in texts:
                if isinstance(text, str) and text.strip():
                    self.pairs.append((row, text.strip()))
                else:
                    dropped.add("empty or missing caption", f"{name} row {row}")
        if not self.pairs:
            raise UserError(f"{name}: no usable caption (dropped: {dropped.summary()})")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> PairSample:
        row, caption = self.pairs[index]
        image = self.images[row][self.image_column]
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path") or ""
        return decode_pair(self.preprocess, source, caption, row)
