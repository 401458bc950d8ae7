"""Image preprocessing without torchvision: decode, RGB, resize, normalise; settings from the image encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers import PretrainedConfig
from transformers.image_processing_base import ImageProcessingMixin

from mmd2v2.config import Config, EncoderConfig

DEFAULTS: dict[str, Any] = {"size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resample": "bicubic"}


class ImagePreprocessor:
    """Turns an image file into a normalised (3, size, size) float tensor."""

    def __init__(self, size: int, mean: list[float], std: list[float], resample: str = "bicubic") -> None:
        if resample.upper() not in Image.Resampling.__members__:
            raise ValueError(f"resample: got '{resample}', expected one of {[m.lower() for m in Image.Resampling.__members__]}")
        self.size = size
        self.resample = resample.lower()
        self.mean_values, self.std_values = [float(v) for v in mean], [float(v) for v in std]
        self.mean = np.asarray(self.mean_values, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(self.std_values, dtype=np.float32).reshape(3, 1, 1)

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> ImagePreprocessor:
        """Rebuild from `to_dict`'s output (files without `resample` are bicubic)."""
        return cls(settings["size"], settings["mean"], settings["std"], settings.get("resample", "bicubic"))

    def __call__(self, image: Image.Image) -> Tensor:
        """Preprocess a decoded PIL image."""
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling[self.resample.upper()])
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((array - self.mean) / self.std)

    def load(self, path: str | Path) -> Tensor:
        """Decode and preprocess an image file (raises OSError/ValueError when it cannot be decoded)."""
        with Image.open(path) as image:
            image.load()
            return self(image)

    def to_dict(self) -> dict[str, object]:
        """Settings for an exported checkpoint's preprocessing file."""
        return {"size": self.size, "mean": self.mean_values, "std": self.std_values, "resample": self.resample}


def _processor_size(processor: dict[str, Any]) -> int | None:
    """The square input size an HF image processor produces (its crop when it center-crops)."""
    size = processor.get("crop_size") if processor.get("do_center_crop") else processor.get("size")
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    return size if isinstance(size, int) else None


def _hf_settings(source: str, loader: Any) -> dict[str, Any]:
    """A settings dict read by an HF `get_*_dict` loader, or {} when the folder/hub id has none."""
    try:
        return loader(source)[0]
    except (OSError, ValueError):  # no such file, or not a folder/hub id: the encoder's loader reports it
        return {}


def hf_preprocessing(encoder: EncoderConfig) -> dict[str, Any]:
    """Size, mean, std and resample of an HF image encoder: its preprocessor_config.json, then its config.json."""
    if encoder.pretrained is None:
        return {"size": encoder.config.get("image_size")}
    processor = _hf_settings(encoder.pretrained, ImageProcessingMixin.get_image_processor_dict)
    model_config = _hf_settings(encoder.pretrained, PretrainedConfig.get_config_dict)
    resample = processor.get("resample")
    return {"size": encoder.config.get("image_size") or _processor_size(processor) or model_config.get("image_size"),
            "mean": processor.get("image_mean"), "std": processor.get("image_std"),
            "resample": Image.Resampling(resample).name.lower() if isinstance(resample, int) else None}


def resolve_image_preprocessing(config: Config) -> ImagePreprocessor:
    """The run's preprocessing: explicit `data.image_*` values, else the image encoder's own, else 224/ImageNet."""
    encoder = config.model.image
    if encoder.family == "timm":
        from mmd2v2.models.timm_encoder import timm_preprocessing  # timm is an optional extra

        found = timm_preprocessing(encoder, "model.image")
    else:
        found = hf_preprocessing(encoder)
    explicit = {"size": config.data.image_size, "mean": config.data.image_mean, "std": config.data.image_std}
    settings = dict(DEFAULTS)
    for source in (found, explicit):
        settings.update({k: v for k, v in source.items() if v is not None})
    return ImagePreprocessor(**settings)
