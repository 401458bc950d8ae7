"""Exported checkpoints reload to identical embeddings without pickle, and refuse incomplete folders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT, TINY_VISION

from mmd2v2.config import Config, EncoderConfig, ModelConfig, SharedConfig
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.models.dual_encoder import DualEncoder
from mmd2v2.models.exported import load_export, save_export


def _export(tmp_path: Path, pretrained_image: bool) -> tuple[DualEncoder, Path]:
    image = EncoderConfig(family="beit", config={**TINY_VISION, "use_relative_position_bias": True}, num_blocks=2)
    if pretrained_image:  # the export must not depend on the original encoder folder
        from transformers import BeitConfig, BeitModel

        BeitModel(BeitConfig(**TINY_VISION, use_relative_position_bias=True), add_pooling_layer=False).save_pretrained(
            tmp_path / "beit"
        )
        image = EncoderConfig(family="beit", pretrained=str(tmp_path / "beit"), num_blocks=2)
    tokenizer = build_word_tokenizer(["a", "red", "circle"])
    config = Config(
        model=ModelConfig(
            image=image,
            text=EncoderConfig(family="bert", config={**TINY_TEXT, "vocab_size": len(tokenizer)}),
            shared=SharedConfig(depth=1, width=32, heads=2),
            embed_dim=8,
        )
    )
    torch.manual_seed(0)
    model = DualEncoder(config.model, teacher_dim=12).eval()
    folder = save_export(
        model, config, tokenizer, ImagePreprocessor(32, [0.5] * 3, [0.5] * 3), tmp_path / "export", {"step": 7}
    )
    if pretrained_image:
        for path in (tmp_path / "beit").iterdir():
            path.unlink()
        (tmp_path / "beit").rmdir()
    return model, folder


@pytest.mark.parametrize("pretrained_image", [False, True])
def test_export_reload_gives_identical_embeddings(tmp_path: Path, pretrained_image: bool) -> None:
    model, folder = _export(tmp_path, pretrained_image)
    bundle = load_export(folder)
    pixels = torch.randn(3, 3, 32, 32)
    tokens = bundle.tokenizer(["a red circle", "a circle"], padding=True, return_tensors="pt")
    assert torch.equal(bundle.model.encode_images(pixels), model.encode_images(pixels))
    assert torch.equal(
        bundle.model.encode_texts(tokens["input_ids"], tokens["attention_mask"]),
        model.encode_texts(tokens["input_ids"], tokens["attention_mask"]),
    )
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
        load_export(folder)


def test_distillation_only_export_retrieves_with_trained_parameters_only(tmp_path: Path) -> None:
    """The prototype's form (contrastive_weight 0, no projection, the CLS distilled itself): after two AdamW steps
    (no weight decay, so a change means a gradient) every exported tensor has moved from its initial value, the
    projection is the identity, and recall equals the recall of the normalised distilled outputs."""
    from mmd2v2.config import LossConfig
    from mmd2v2.losses.objective import MMD2V2Objective
    from mmd2v2.retrieval.recall import recall_at_k

    tokenizer = build_word_tokenizer(["a", "red", "blue", "green", "circle", "square", "big", "small"])
    model_cfg = ModelConfig(
        image=EncoderConfig(family="data2vec-vision", config=TINY_VISION, num_blocks=2),
        text=EncoderConfig(family="data2vec-text", config={**TINY_TEXT, "vocab_size": len(tokenizer)}, num_blocks=2),
        shared=SharedConfig(depth=1, width=32, heads=2),
        embed_dim=32,
        projection=False,
        distill_head=False,
        modality_embeddings=False,
    )
    config = Config(model=model_cfg, loss=LossConfig(contrastive_weight=0.0, kd_kind="mse", kd_weight=2.0))
    torch.manual_seed(0)
    model = DualEncoder(model_cfg, teacher_dim=32)
    objective = MMD2V2Objective(config.loss, model_cfg.embed_dim, teacher_dim=32)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    pixels, teacher_cls = torch.randn(6, 3, 32, 32), torch.randn(6, 32)
    tokens = tokenizer(
        [
            "a red circle",
            "a blue square",
            "a big green circle",
            "a small red square",
            "a blue circle",
            "a green square",
        ],
        padding=True,
        return_tensors="pt",
    )
    for _ in range(2):
        image = model.image_forward(pixels)
        text = model.text_forward(tokens["input_ids"], tokens["attention_mask"])
        terms = objective(image, text, teacher_cls, torch.arange(6))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    assert "contrastive" not in terms and isinstance(model.projection, torch.nn.Identity)
    folder = save_export(
        model.eval(), config, tokenizer, ImagePreprocessor(32, [0.5] * 3, [0.5] * 3), tmp_path / "export", {}
    )
    bundle = load_export(folder)
    exported = bundle.model.state_dict()
    assert set(exported) == set(initial) and not any(k.startswith("projection") for k in exported)
    unchanged = [k for k, v in exported.items() if v.is_floating_point() and torch.equal(v, initial[k])]
    assert unchanged == []
    with torch.no_grad():
        distilled_images = torch.nn.functional.normalize(model.image_forward(pixels).distill, dim=-1)
        distilled_texts = torch.nn.functional.normalize(
            model.text_forward(tokens["input_ids"], tokens["attention_mask"]).distill, dim=-1
        )
    images = bundle.model.encode_images(pixels)
    texts = bundle.model.encode_texts(tokens["input_ids"], tokens["attention_mask"])
    assert torch.allclose(images, distilled_images, atol=1e-6) and torch.allclose(texts, distilled_texts, atol=1e-6)
    owner = torch.arange(6)
    assert recall_at_k(images, texts, owner) == recall_at_k(distilled_images, distilled_texts, owner)


def test_heads_that_cannot_fit_are_refused_naming_the_key() -> None:
    from mmd2v2.config import ConfigError

    base = ModelConfig(
        image=EncoderConfig(family="beit", config=TINY_VISION, num_blocks=1),
        text=EncoderConfig(family="bert", config=TINY_TEXT, num_blocks=1),
        shared=SharedConfig(depth=1, width=32, heads=2),
        embed_dim=32,
    )
    with pytest.raises(ConfigError, match="model.embed_dim: got 8, but without model.projection"):
        DualEncoder(dataclasses.replace(base, projection=False, embed_dim=8))
    with pytest.raises(ConfigError, match=r"model.distill_head: false distils .* the teacher's CLS has 12 dims"):
        DualEncoder(dataclasses.replace(base, distill_head=False), teacher_dim=12)
    assert isinstance(
        DualEncoder(dataclasses.replace(base, distill_head=False), teacher_dim=32).distill_head, torch.nn.Identity
    )
