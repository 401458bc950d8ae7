"""Image preprocessing without torchvision: decode (JPEGs at reduced scale), RGB, resize to uint8 on the host;
normalise on the device; settings from the image encoder. The loader of image files for every image-reading job."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate
from transformers import PretrainedConfig
from transformers.image_processing_base import ImageProcessingMixin

from mmd2v2.config import Config, EncoderConfig
from mmd2v2.data.images import open_rgb
from mmd2v2.errors import ImageDecodeError, UserError

DEFAULTS: dict[str, Any] = {
    "size": 224,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "resample": "bicubic",
    "fast": True,
}
TORCH_RESAMPLE = ("bilinear", "bicubic")  # the resamplings torch has antialiased uint8 kernels for


class ImagePreprocessor:
    """Turns an image file into a (size, size, 3) uint8 tensor (`decode`, channels last as decoded: batches of them
    stack with plain copies) and batches of those into normalised (..., 3, size, size) floats (`normalize`, on any
    device); `load` does both for one image.

    `fast`: decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) that still covers `size`, and resize bilinear and
    bicubic with torch's antialiased uint8 kernels (within one grey level of PIL's, 3x faster); False decodes every
    pixel and resizes with PIL (the pixels of exports made before this setting existed)."""

    def __init__(
        self, size: int, mean: list[float], std: list[float], resample: str = "bicubic", fast: bool = True
    ) -> None:
        if resample.upper() not in Image.Resampling.__members__:
            raise UserError(
                f"resample: got '{resample}', expected one of {[m.lower() for m in Image.Resampling.__members__]}"
            )
        self.size = size
        self.resample = resample.lower()
        self.fast = fast
        self.mean_values, self.std_values = [float(v) for v in mean], [float(v) for v in std]

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> ImagePreprocessor:
        """Rebuild from `to_dict`'s output (files without `resample` are bicubic, without `fast` the old path)."""
        return cls(
            settings["size"],
            settings["mean"],
            settings["std"],
            settings.get("resample", "bicubic"),
            settings.get("fast", False),
        )

    def to_uint8(self, image: Image.Image) -> Tensor:
        """A decoded PIL image as RGB, resized to (size, size, 3) uint8."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size == (self.size, self.size):
            return torch.from_numpy(np.array(image))
        if self.fast and self.resample in TORCH_RESAMPLE:
            pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]  # a view: channels last in memory
            resized = F.interpolate(pixels, size=(self.size, self.size), mode=self.resample, antialias=True)
            return resized[0].permute(1, 2, 0).contiguous()
        return torch.from_numpy(np.array(image.resize((self.size, self.size), Image.Resampling[self.resample.upper()])))

    def decode(self, source: str | Path | BinaryIO) -> Tensor:
        """An image file as (size, size, 3) uint8 (ImageDecodeError, naming the file, when it cannot be decoded)."""
        # fast: JPEG only, DCT scaling, the result stays >= size
        return self.to_uint8(open_rgb(source, draft_size=self.size if self.fast else None))

    def normalize(self, pixels: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """uint8 (..., H, W, 3) pixels on any device as contiguous (..., 3, H, W) `dtype`: scaled to [0, 1], minus
        mean, over std (per channel)."""
        mean = torch.tensor(self.mean_values, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std_values, device=pixels.device).view(3, 1, 1)
        return ((pixels.movedim(-1, -3).float() / 255.0 - mean) / std).to(dtype, memory_format=torch.contiguous_format)

    def __call__(self, image: Image.Image) -> Tensor:
        """Preprocess a decoded PIL image into a normalised (3, size, size) float tensor."""
        return self.normalize(self.to_uint8(image))

    def load(self, path: str | Path | BinaryIO) -> Tensor:
        """Decode and normalise one image file (ImageDecodeError when it cannot be decoded)."""
        return self.normalize(self.decode(path))

    def to_dict(self) -> dict[str, object]:
        """Settings for an exported checkpoint's preprocessing file."""
        return {
            "size": self.size,
            "mean": self.mean_values,
            "std": self.std_values,
            "resample": self.resample,
            "fast": self.fast,
        }


class ImageFiles(Dataset[tuple[Tensor | None, int]]):
    """Image files decoded to uint8 (None when undecodable), each with its position in `paths`."""

    def __init__(self, paths: Sequence[str | Path], preprocess: ImagePreprocessor) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int]:
        try:
            return self.preprocess.decode(self.paths[index]), index
        except ImageDecodeError:
            return None, index


def collate_images(items: list[tuple[Tensor | None, int]]) -> tuple[Tensor | None, list[int]]:
    """The decodable images of a batch stacked (uint8 (B, S, S, 3), None when there is none) and their positions."""
    good = [(pixels, index) for pixels, index in items if pixels is not None]
    return (default_collate([p for p, _ in good]) if good else None), [i for _, i in good]


def loader_workers(setting: int | str) -> int:
    """Loader processes per rank for `data.num_workers`: a number as given; 'auto' = none without a GPU (the step
    computes on every core, so decoding in parallel only competes with it), else this rank's share of the cores
    less one for the training process, at most 16."""
    if setting != "auto":
        return int(setting)
    if not torch.cuda.is_available():
        return 0
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", torch.cuda.device_count())))
    return max(1, min(16, len(os.sched_getaffinity(0)) // ranks - 1))


def image_batches(
    paths: Sequence[str | Path], preprocess: ImagePreprocessor, batch_size: int, num_workers: int
) -> DataLoader:
    """Batches of `paths` in order, as `collate_images` gives them, decoded by `num_workers` processes (pinned
    for a fast copy when there is a GPU)."""
    return DataLoader(
        ImageFiles(paths, preprocess),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(0),
    )  # keeps the global RNG untouched


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
    return {
        "size": encoder.config.get("image_size") or _processor_size(processor) or model_config.get("image_size"),
        "mean": processor.get("image_mean"),
        "std": processor.get("image_std"),
        "resample": Image.Resampling(resample).name.lower() if isinstance(resample, int) else None,
    }


def resolve_image_preprocessing(config: Config) -> ImagePreprocessor:
    """The run's preprocessing: explicit `data.image_*` values, else the image encoder's own, else 224/ImageNet."""
    encoder = config.model.image
    if encoder.family == "timm":
        from mmd2v2.models.timm_encoder import timm_preprocessing  # timm is an optional extra

        found = timm_preprocessing(encoder, "model.image")
    else:
        found = hf_preprocessing(encoder)
    explicit = {
        "size": config.data.image_size,
        "mean": config.data.image_mean,
        "std": config.data.image_std,
        "fast": config.data.fast_decode,
    }
    settings = dict(DEFAULTS)
    for source in (found, explicit):
        settings.update({k: v for k, v in source.items() if v is not None})
    return ImagePreprocessor(**settings)
