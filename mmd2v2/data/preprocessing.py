"""Image preprocessing without torchvision: decode, RGB, resize, normalise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


class ImagePreprocessor:
    """Turns an image file into a normalised (3, size, size) float tensor."""

    def __init__(self, size: int, mean: list[float], std: list[float]) -> None:
        self.size = size
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, image: Image.Image) -> Tensor:
        """Preprocess a decoded PIL image."""
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((array - self.mean) / self.std)

    def load(self, path: str | Path) -> Tensor:
        """Decode and preprocess an image file (raises OSError/ValueError when it cannot be decoded)."""
        with Image.open(path) as image:
            image.load()
            return self(image)

    def to_dict(self) -> dict[str, object]:
        """Settings for an exported checkpoint's preprocessing file."""
        return {"size": self.size, "mean": self.mean.ravel().tolist(), "std": self.std.ravel().tolist(), "resample": "bicubic"}
