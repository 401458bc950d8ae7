"""Training augmentation on a batch of preprocessed images: random resized crop and horizontal flip.

It runs in the training process on the device, after collation, so the teacher and the student see the same
augmented image, and it draws from torch's global generator, whose state every checkpoint saves: a resumed run
augments exactly as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_resized_crop_flip(pixels: Tensor, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3),
                             flip_prob: float = 0.0) -> Tensor:
    """Each image of (B, C, H, W): a random crop covering `scale` of its area at aspect `ratio`, resized back to
    H x W (bilinear), then mirrored left-right with probability `flip_prob`."""
    b, _, h, w = pixels.shape
    options = {"device": pixels.device, "dtype": torch.float32}
    area = torch.empty(b, **options).uniform_(scale[0], scale[1])
    aspect = torch.exp(torch.empty(b, **options).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    crop_w = torch.sqrt(area * aspect).clamp(max=1.0)  # as fractions of the width and height
    crop_h = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (torch.rand(b, **options) * 2 - 1) * (1 - crop_w)  # in [-1, 1] grid units, crop kept inside
    centre_y = (torch.rand(b, **options) * 2 - 1) * (1 - crop_h)
    flip = torch.where(torch.rand(b, **options) < flip_prob, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, **options)
    theta[:, 0, 0], theta[:, 0, 2] = crop_w * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = crop_h, centre_y
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    return F.grid_sample(pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(pixels.dtype)
