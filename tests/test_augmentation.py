"""Batch augmentation: identity and mirror at the limits, crops of the right size and place, config checks."""

from __future__ import annotations

import pytest
import torch

from mmd2v2.config import ConfigError, load_config
from mmd2v2.data.augmentation import random_resized_crop_flip


def _images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 3, 16, 16)


def test_full_crop_is_the_identity_and_flip_mirrors() -> None:
    images = _images()
    same = random_resized_crop_flip(images, (1.0, 1.0), (1.0, 1.0), flip_prob=0.0)
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    mirrored = random_resized_crop_flip(images, (1.0, 1.0), (1.0, 1.0), flip_prob=1.0)
    torch.testing.assert_close(mirrored, images.flip(-1), atol=1e-5, rtol=0)


def test_a_quarter_area_crop_halves_a_ramp_slope_and_stays_inside() -> None:
    # image value = column index: a crop half as wide, resized back, rises 0.5 per output column
    ramp = torch.arange(16.0).expand(32, 1, 16, 16).clone()
    torch.manual_seed(1)
    crops = random_resized_crop_flip(ramp, (0.25, 0.25), (1.0, 1.0), flip_prob=0.5)
    steps = crops[..., 1:] - crops[..., :-1]
    mirrored = steps[:, 0, 0, 0] < 0
    assert 0 < int(mirrored.sum()) < 32  # about half flipped
    torch.testing.assert_close(steps.abs(), torch.full_like(steps, 0.5), atol=1e-4, rtol=0)
    assert crops.min() >= 0 and crops.max() <= 15  # the crop never leaves the image
    assert len({round(float(c[0, 0, 0]), 3) for c in crops}) > 8  # each image draws its own crop


def test_draws_follow_torch_global_generator() -> None:
    images = _images()
    torch.manual_seed(5)
    first = random_resized_crop_flip(images, (0.5, 1.0), flip_prob=0.5)
    torch.manual_seed(5)
    torch.testing.assert_close(random_resized_crop_flip(images, (0.5, 1.0), flip_prob=0.5), first)  # resumable


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.random_crop_scale=[0.9]", "random_crop_scale"),
        ("data.random_crop_scale=[0.9, 1.2]", "random_crop_scale"),
        ("data.hflip_prob=2", "hflip_prob"),
    ],
)
def test_bad_augmentation_settings_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("configs/demo.yaml", [override])
