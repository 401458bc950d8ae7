"""Training augmentation on a batch of preprocessed images: random resized crop and horizontal flip.

It runs in the training process on the device, after collation, so the teacher and the student see the same
augmented image, and it draws from torch's global generator, whose state every checkpoint saves: a resumed run
augments exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmd2v2.config import DataConfig


def crop_flip_settings(data: DataConfig) -> dict[str, Any] | None:
    """The run's augmentation as {scale, ratio, flip_prob} (what the crop functions take), None without any."""
    if data.random_crop_scale is None and data.hflip_prob == 0:
        return None
    crop = data.random_crop_scale
    return {
        "scale": list(crop or (1.0, 1.0)),
        "ratio": [3 / 4, 4 / 3] if crop is not None else [1.0, 1.0],
        "flip_prob": data.hflip_prob,
    }


def _thetas(uniforms: Tensor, scale: tuple[float, float], ratio: tuple[float, float], flip_prob: float) -> Tensor:
    """Affine crop-and-flip matrices (B, 2, 3) from five uniform draws per image (area, aspect, x, y, flip)."""
    area = scale[0] + (scale[1] - scale[0]) * uniforms[:, 0]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * uniforms[:, 1])
    crop_w = torch.sqrt(area * aspect).clamp(max=1.0)  # as fractions of the width and height
    crop_h = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (uniforms[:, 2] * 2 - 1) * (1 - crop_w)  # in [-1, 1] grid units, crop kept inside
    centre_y = (uniforms[:, 3] * 2 - 1) * (1 - crop_h)
    flip = torch.where(uniforms[:, 4] < flip_prob, -1.0, 1.0)
    theta = torch.zeros(len(uniforms), 2, 3, dtype=torch.float32, device=uniforms.device)
    theta[:, 0, 0], theta[:, 0, 2] = crop_w * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = crop_h, centre_y
    return theta


def apply_crop_flip(pixels: Tensor, theta: Tensor) -> Tensor:
    """Resample each image of (B, C, H, W) through its crop-and-flip matrix (bilinear), keeping H x W."""
    b, _, h, w = pixels.shape
    grid = F.affine_grid(theta.to(pixels.device, torch.float32), [b, 1, h, w], align_corners=False)
    return F.grid_sample(pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(
        pixels.dtype
    )


def random_resized_crop_flip(
    pixels: Tensor, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_prob: float = 0.0
) -> Tensor:
    """Each image of (B, C, H, W): a random crop covering `scale` of its area at aspect `ratio`, resized back to
    H x W (bilinear), then mirrored left-right with probability `flip_prob`."""
    b = pixels.shape[0]
    options = {"device": pixels.device, "dtype": torch.float32}
    draws = [
        torch.empty(b, **options).uniform_(0, 1),
        torch.empty(b, **options).uniform_(0, 1),
        torch.rand(b, **options),
        torch.rand(b, **options),
        torch.rand(b, **options),
    ]
    return apply_crop_flip(pixels, _thetas(torch.stack(draws, dim=1), scale, ratio, flip_prob))


def view_crop_flip(
    seed: int, image_row: int, view: int, scale: tuple[float, float], ratio: tuple[float, float], flip_prob: float
) -> Tensor:
    """The crop-and-flip matrix (2, 3) of stored view `view` of image `image_row`: a fixed function of the three
    numbers, so the feature cache's teacher targets and the training step see the same augmented image."""
    uniforms = torch.from_numpy(np.random.default_rng([seed, image_row, view]).random(5)).float()[None]
    return _thetas(uniforms, scale, ratio, flip_prob)[0]
