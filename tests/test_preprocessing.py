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
from mmd2v2.data.preprocessing import DEFAULTS, ImagePreprocessor, resolve_image_preprocessing
from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.train.loop import prepare_tokenizer

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
    for resample in ("bilinear", "bicubic"):
        pixels = ImagePreprocessor(12, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2], resample)(image)
        resized = np.asarray(image.resize((12, 12), Image.Resampling[resample.upper()]), dtype=np.float32) / 255.0
        expected = (resized.transpose(2, 0, 1) - np.array([0.5, 0.4, 0.3]).reshape(3, 1, 1)) / 0.2
        torch.testing.assert_close(pixels, torch.from_numpy(expected.astype(np.float32)))
    with pytest.raises(ValueError, match="resample: got 'cubic'"):
        ImagePreprocessor(12, [0.5] * 3, [0.5] * 3, "cubic")


def test_settings_come_from_the_encoders_processor_config(tmp_path: Path) -> None:
    processor = BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 36, "width": 36}, do_center_crop=True,
                                     resample=Image.Resampling.BILINEAR, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    folder = _image_encoder_folder(tmp_path, processor)
    for family in ("vit", "auto"):
        preprocess = resolve_image_preprocessing(_config(EncoderConfig(family=family, pretrained=folder)))
        assert preprocess.to_dict() == {"size": 36, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "resample": "bilinear"}
    explicit = resolve_image_preprocessing(_config(EncoderConfig(pretrained=folder), image_size=24, image_mean=[0.5] * 3))
    assert explicit.to_dict() == {"size": 24, "mean": [0.5] * 3, "std": [0.4, 0.5, 0.6], "resample": "bilinear"}


def test_without_a_processor_config_the_encoders_image_size_and_imagenet_statistics(tmp_path: Path) -> None:
    folder = _image_encoder_folder(tmp_path, None)
    expected = {**DEFAULTS, "size": TINY_VISION["image_size"]}
    assert resolve_image_preprocessing(_config(EncoderConfig(pretrained=folder))).to_dict() == expected
    assert resolve_image_preprocessing(_config(EncoderConfig(config=TINY_VISION))).to_dict() == expected
    assert resolve_image_preprocessing(_config(EncoderConfig())).to_dict() == DEFAULTS


def test_demo_config_keeps_its_explicit_preprocessing() -> None:
    preprocess = resolve_image_preprocessing(load_config(ROOT / "configs" / "demo.yaml"))
    assert preprocess.to_dict() == {"size": 64, "mean": [0.5] * 3, "std": [0.25] * 3, "resample": "bicubic"}


def test_exported_settings_round_trip_and_old_files_are_bicubic() -> None:
    preprocess = ImagePreprocessor(36, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6], "bilinear")
    assert ImagePreprocessor.from_dict(json.loads(json.dumps(preprocess.to_dict()))).to_dict() == preprocess.to_dict()
    assert ImagePreprocessor.from_dict({"size": 36, "mean": [0.5] * 3, "std": [0.5] * 3}).resample == "bicubic"


def test_tokenizer_comes_from_the_text_encoder_folder_and_honours_max_text_length(tmp_path: Path) -> None:
    words = "a red circle left of the blue square".split()
    tokenizer = build_word_tokenizer(words)
    BertModel(BertConfig(**{**TINY_TEXT, "vocab_size": len(tokenizer)}), add_pooling_layer=False).save_pretrained(tmp_path)
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
