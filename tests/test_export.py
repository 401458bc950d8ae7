"""Exported checkpoints reload to identical embeddings without pickle, and refuse incomplete folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT, TINY_VISION

from mmd2v2.config import Config, EncoderConfig, ModelConfig, SharedConfig
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.models.mmd2v2 import MMD2V2
from mmd2v2.models.pretrained import load_pretrained, save_pretrained


def _export(tmp_path: Path, pretrained_image: bool) -> tuple[MMD2V2, Path]:
    image = EncoderConfig(family="beit", config={**TINY_VISION, "use_relative_position_bias": True}, num_blocks=2)
    if pretrained_image:  # the export must not depend on the original encoder folder
        from transformers import BeitConfig, BeitModel

        BeitModel(BeitConfig(**TINY_VISION, use_relative_position_bias=True), add_pooling_layer=False).save_pretrained(tmp_path / "beit")
        image = EncoderConfig(family="beit", pretrained=str(tmp_path / "beit"), num_blocks=2)
    tokenizer = build_word_tokenizer(["a", "red", "circle"])
    config = Config(model=ModelConfig(image=image, text=EncoderConfig(family="bert", config={**TINY_TEXT, "vocab_size": len(tokenizer)}),
                                      shared=SharedConfig(depth=1, width=32, heads=2), embed_dim=8))
    torch.manual_seed(0)
    model = MMD2V2(config.model, teacher_dim=12).eval()
    folder = save_pretrained(model, config, tokenizer, ImagePreprocessor(32, [0.5] * 3, [0.5] * 3), tmp_path / "export", {"step": 7})
    if pretrained_image:
        for path in (tmp_path / "beit").iterdir():
            path.unlink()
        (tmp_path / "beit").rmdir()
    return model, folder


@pytest.mark.parametrize("pretrained_image", [False, True])
def test_export_reload_gives_identical_embeddings(tmp_path: Path, pretrained_image: bool) -> None:
    model, folder = _export(tmp_path, pretrained_image)
    bundle = load_pretrained(folder)
    pixels = torch.randn(3, 3, 32, 32)
    tokens = bundle.tokenizer(["a red circle", "a circle"], padding=True, return_tensors="pt")
    assert torch.equal(bundle.model.encode_images(pixels), model.encode_images(pixels))
    assert torch.equal(bundle.model.encode_texts(tokens["input_ids"], tokens["attention_mask"]),
                       model.encode_texts(tokens["input_ids"], tokens["attention_mask"]))
    assert bundle.metadata["step"] == 7 and "torch" in bundle.metadata["versions"]
    assert bundle.model.distill_head is None  # training-only head is not exported
    files = {p.name for p in folder.iterdir()}
    assert files == {"model.safetensors", "config.yaml", "metadata.json", "preprocessing.json", "tokenizer"}
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")) and not list(folder.rglob("*.pkl"))
    assert not list(tmp_path.glob(".export*"))  # no temporary folder left behind


def test_export_overwrites_atomically_and_refuses_incomplete(tmp_path: Path) -> None:
    _, folder = _export(tmp_path, False)
    _, again = _export(tmp_path, False)
    assert again == folder and json.loads((folder / "metadata.json").read_text())["step"] == 7
    (folder / "preprocessing.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing 'preprocessing.json'"):
        load_pretrained(folder)
