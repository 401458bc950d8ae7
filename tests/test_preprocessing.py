"""Image preprocessing follows the image encoder's own processor config unless the data section sets values;
the tokenizer comes from the text encoder's folder and truncates at max_text_length."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT, TINY_VISION
from PIL import Image
from transformers import BertConfig, BertModel, BitImageProcessorPil, ViTConfig, ViTModel

from mmd2v2.config import Config, DataConfig, EncoderConfig, ModelConfig, load_config
from mmd2v2.data.pairs import PairCollator, PairSample
from mmd2v2.data.preprocessing import (
    DEFAULTS,
    ImagePreprocessor,
    image_batches,
    loader_workers,
    resolve_image_preprocessing,
)
from mmd2v2.data.tokenization import build_word_tokenizer, prepare_tokenizer
from mmd2v2.train.loop import _to_device

ROOT = Path(__file__).resolve().parent.parent


def _image_encoder_folder(folder: Path, processor: BitImageProcessorPil | None) -> str:
    ViTModel(ViTConfig(**TINY_VISION), add_pooling_layer=False).save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return str(folder)


def _config(image: EncoderConfig, **data: object) -> Config:
    return Config(model=ModelConfig(image=image), data=DataConfig(**data))


def test_preprocessor_resizes_with_its_resample_and_normalises() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    for resample in ("bilinear", "bicubic", "lanczos"):
        resized = np.asarray(image.resize((12, 12), Image.Resampling[resample.upper()]), dtype=np.float32) / 255.0
        expected = torch.from_numpy(
            ((resized.transpose(2, 0, 1) - np.array([0.5, 0.4, 0.3]).reshape(3, 1, 1)) / 0.2).astype(np.float32)
        )
        old = ImagePreprocessor(12, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2], resample, fast=False)(image)
        torch.testing.assert_close(old, expected)  # the old path: PIL's pixels
        fast = ImagePreprocessor(12, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2], resample)(image)
        torch.testing.assert_close(fast, expected, rtol=0, atol=1.01 / 255 / 0.2)  # torch's kernels: one grey level
    with pytest.raises(ValueError, match="resample: got 'cubic'"):
        ImagePreprocessor(12, [0.5] * 3, [0.5] * 3, "cubic")


def test_settings_come_from_the_encoders_processor_config(tmp_path: Path) -> None:
    processor = BitImageProcessorPil(
        size={"shortest_edge": 40},
        crop_size={"height": 36, "width": 36},
        do_center_crop=True,
        resample=Image.Resampling.BILINEAR,
        image_mean=[0.1, 0.2, 0.3],
        image_std=[0.4, 0.5, 0.6],
    )
    folder = _image_encoder_folder(tmp_path, processor)
    for family in ("vit", "auto"):
        preprocess = resolve_image_preprocessing(_config(EncoderConfig(family=family, pretrained=folder)))
        assert preprocess.to_dict() == {
            "size": 36,
            "mean": [0.1, 0.2, 0.3],
            "std": [0.4, 0.5, 0.6],
            "resample": "bilinear",
            "fast": True,
        }
    explicit = resolve_image_preprocessing(
        _config(EncoderConfig(pretrained=folder), image_size=24, image_mean=[0.5] * 3)
    )
    assert explicit.to_dict() == {
        "size": 24,
        "mean": [0.5] * 3,
        "std": [0.4, 0.5, 0.6],
        "resample": "bilinear",
        "fast": True,
    }


def test_without_a_processor_config_the_encoders_image_size_and_imagenet_statistics(tmp_path: Path) -> None:
    folder = _image_encoder_folder(tmp_path, None)
    expected = {**DEFAULTS, "size": TINY_VISION["image_size"]}
    assert resolve_image_preprocessing(_config(EncoderConfig(pretrained=folder))).to_dict() == expected
    assert resolve_image_preprocessing(_config(EncoderConfig(config=TINY_VISION))).to_dict() == expected
    assert resolve_image_preprocessing(_config(EncoderConfig())).to_dict() == DEFAULTS


def test_demo_config_keeps_its_explicit_preprocessing() -> None:
    preprocess = resolve_image_preprocessing(load_config(ROOT / "configs" / "demo.yaml"))
    assert preprocess.to_dict() == {
        "size": 64,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "resample": "bicubic",
        "fast": True,
    }
    assert not resolve_image_preprocessing(load_config(ROOT / "configs" / "demo.yaml", ["data.fast_decode=false"])).fast


def test_exported_settings_round_trip_and_old_files_are_bicubic_on_the_old_path() -> None:
    for fast in (True, False):
        preprocess = ImagePreprocessor(36, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6], "bilinear", fast)
        assert (
            ImagePreprocessor.from_dict(json.loads(json.dumps(preprocess.to_dict()))).to_dict() == preprocess.to_dict()
        )
    old = ImagePreprocessor.from_dict({"size": 36, "mean": [0.5] * 3, "std": [0.5] * 3})
    assert old.resample == "bicubic" and not old.fast


def test_tokenizer_comes_from_the_text_encoder_folder_and_honours_max_text_length(tmp_path: Path) -> None:
    words = ["a", "red", "circle", "left", "of", "the", "blue", "square"]
    tokenizer = build_word_tokenizer(words)
    BertModel(BertConfig(**{**TINY_TEXT, "vocab_size": len(tokenizer)}), add_pooling_layer=False).save_pretrained(
        tmp_path
    )
    tokenizer.save_pretrained(tmp_path)
    text = EncoderConfig(family="bert", pretrained=str(tmp_path))
    config = Config(model=ModelConfig(text=text), data=DataConfig(max_text_length=5))
    loaded, resolved = prepare_tokenizer(config, ["captions that are not in the vocabulary"])
    assert loaded.get_vocab() == tokenizer.get_vocab() and resolved.model.text == config.model.text
    samples = [PairSample(torch.zeros(3, 2, 2), caption, 0) for caption in (" ".join(words), "a circle")]
    batch = PairCollator(loaded, config.data.max_text_length)(samples)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["input_ids"][0].tolist() == tokenizer(" ".join(words[:3]))["input_ids"]  # [CLS] a red circle [SEP]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0]


def _photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A smooth colour image with some texture, saved as JPEG (quality 90) or PNG by the suffix."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    channels = [np.sin(6 * x + 2 * c) * np.cos(5 * y - c) for c in range(3)]
    array = (np.stack(channels, -1) * 90 + 128 + rng.normal(0, 12, (size[1], size[0], 3))).clip(0, 255)
    Image.fromarray(array.astype(np.uint8)).save(path, quality=90)
    return path


def test_host_keeps_uint8_and_the_step_normalises_exactly_as_the_float_path(tmp_path: Path) -> None:
    preprocess = ImagePreprocessor(16, [0.5, 0.4, 0.3], [0.2, 0.3, 0.25], fast=False)
    paths = [_photo(tmp_path / f"{i}.png", (30, 20), i) for i in range(3)]
    samples = [PairSample(preprocess.decode(path), "a circle", i) for i, path in enumerate(paths)]
    assert samples[0].pixel_values is not None and samples[0].pixel_values.dtype == torch.uint8
    batch = PairCollator(build_word_tokenizer(["a", "circle"]), 8)(samples)
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (3, 16, 16, 3)  # channels last
    on_device = _to_device(batch, torch.device("cpu"), torch.float32, preprocess)
    old = []  # the float32 host path this replaces: decode every pixel, resize, normalise with NumPy
    for path in paths:
        array = np.asarray(Image.open(path).convert("RGB").resize((16, 16), Image.Resampling.BICUBIC), np.float32)
        old.append(
            (array.transpose(2, 0, 1) / 255.0 - np.array([0.5, 0.4, 0.3], np.float32).reshape(3, 1, 1))
            / np.array([0.2, 0.3, 0.25], np.float32).reshape(3, 1, 1)
        )
    assert torch.equal(on_device["pixel_values"], torch.from_numpy(np.stack(old)))  # bit for bit
    assert torch.equal(on_device["pixel_values"][0], preprocess.load(paths[0]))
    fast = ImagePreprocessor(30, [0.5, 0.4, 0.3], [0.2, 0.3, 0.25])
    square = _photo(tmp_path / "square.png", (30, 30))  # a PNG at the model's size, like the demo's: nothing to resize
    assert torch.equal(
        fast.decode(square), ImagePreprocessor.from_dict({**fast.to_dict(), "fast": False}).decode(square)
    )


def test_fast_path_decodes_jpegs_at_reduced_scale_close_to_every_pixel(tmp_path: Path) -> None:
    jpeg, png = _photo(tmp_path / "photo.jpg", (640, 480)), _photo(tmp_path / "photo.png", (640, 480))
    fast, full = ImagePreprocessor(64, [0.5] * 3, [0.5] * 3), ImagePreprocessor(64, [0.5] * 3, [0.5] * 3, fast=False)
    with Image.open(jpeg) as image:
        image.draft("RGB", (64, 64))
        assert image.size == (160, 120)  # 1/4 scale: the smallest DCT scale that still covers 64 x 64
    difference = (fast.decode(jpeg).float() - full.decode(jpeg).float()).abs()
    assert 0 < difference.mean() < 3 and difference.max() < 40  # grey levels of 255
    assert (fast.decode(png).float() - full.decode(png).float()).abs().max() <= 1  # PNG: only the resize kernel


def test_image_batches_keep_order_and_skip_bad_files(tmp_path: Path) -> None:
    paths = [_photo(tmp_path / f"{i}.jpg", (40, 30), i) for i in range(5)]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "cut.jpg").write_bytes(paths[0].read_bytes()[:-200])  # truncated: opens, fails while decoding
    paths[2:2] = [tmp_path / "bad.jpg"]
    paths.append(tmp_path / "cut.jpg")
    preprocess = ImagePreprocessor(16, [0.5] * 3, [0.5] * 3)
    batches = list(image_batches(paths, preprocess, 4, 0))
    assert [positions for _, positions in batches] == [[0, 1, 3], [4, 5]]  # positions in `paths`
    first = batches[0][0]
    assert first is not None and first.dtype == torch.uint8 and torch.equal(first[2], preprocess.decode(paths[3]))
    assert loader_workers(3) == 3 and (torch.cuda.is_available() or loader_workers("auto") == 0)
