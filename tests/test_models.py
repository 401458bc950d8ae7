"""Encoders truncate and freeze exactly; the student's embeddings are normalised; the teacher stays frozen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT, TINY_VISION

from mmd2v2.config import ConfigError, EncoderConfig, ModelConfig, SharedConfig, TeacherConfig
from mmd2v2.models.mmd2v2 import MMD2V2
from mmd2v2.models.teacher import ImageTeacher
from mmd2v2.models.unimodal import FAMILIES, UnimodalEncoder, block_list

EXTRA = {"beit": {"use_relative_position_bias": True, "layer_scale_init_value": 0.1},
         "data2vec-vision": {"use_relative_position_bias": True, "layer_scale_init_value": 0.1}}


def _full_model(family: str, folder: Path) -> torch.nn.Module:
    spec = FAMILIES[family]
    base = TINY_VISION if spec.modality == "image" else TINY_TEXT
    torch.manual_seed(0)
    model = spec.model_class(spec.config_class(**base, **EXTRA.get(family, {})), add_pooling_layer=False).eval()
    model.save_pretrained(folder)
    return model


def _inputs(modality: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    if modality == "image":
        return {"pixel_values": torch.randn(2, 3, 32, 32)}
    ids = torch.randint(3, 99, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_truncation_equals_full_model_hidden_state(family: str, tmp_path: Path) -> None:
    full = _full_model(family, tmp_path)
    modality = FAMILIES[family].modality
    inputs = _inputs(modality)
    with torch.no_grad():
        reference = full(**inputs, output_hidden_states=True).hidden_states[2]  # after block 2 of 3
        encoder = UnimodalEncoder(EncoderConfig(family=family, pretrained=str(tmp_path), num_blocks=2), modality, "m").eval()
        output = encoder(*inputs.values())
    assert len(block_list(encoder.model)) == 2
    torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-5)


def test_freeze_with_top_blocks_unfrozen_is_exact() -> None:
    cfg = EncoderConfig(family="vit", config=TINY_VISION, freeze=True, unfreeze_top=1)
    encoder = UnimodalEncoder(cfg, "image", "m")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    encoder(torch.randn(2, 3, 32, 32)).square().mean().backward()
    optimizer.step()
    after = encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.2.") for k in changed)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("model.layers.2.") and "weight" in k)


def test_fully_frozen_encoder_stays_in_eval_mode() -> None:
    encoder = UnimodalEncoder(EncoderConfig(family="bert", config=TINY_TEXT, freeze=True), "text", "m")
    encoder.train()
    assert encoder.fully_frozen and not encoder.model.training


def test_bad_family_and_block_count_name_the_key() -> None:
    with pytest.raises(ConfigError, match="model.image.family: unknown image model family 'bert'"):
        UnimodalEncoder(EncoderConfig(family="bert"), "image", "model.image")
    with pytest.raises(ConfigError, match="model.text.num_blocks: got 5, the model has 3 blocks"):
        UnimodalEncoder(EncoderConfig(family="bert", config=TINY_TEXT, num_blocks=5), "text", "model.text")
    with pytest.raises(ConfigError, match="model.image.pretrained: cannot load"):
        UnimodalEncoder(EncoderConfig(family="vit", pretrained="/no/such/folder"), "image", "model.image")


def _tiny_student(teacher_dim: int | None = 24) -> MMD2V2:
    torch.manual_seed(0)
    cfg = ModelConfig(image=EncoderConfig(family="data2vec-vision", config=TINY_VISION),
                      text=EncoderConfig(family="roberta", config=TINY_TEXT),
                      shared=SharedConfig(depth=2, width=48, heads=4, layer_scale_init=0.2), embed_dim=16)
    return MMD2V2(cfg, teacher_dim=teacher_dim).eval()


def test_student_embeddings_are_normalised_and_padding_invariant() -> None:
    model = _tiny_student()
    image = model.encode_images(torch.randn(3, 3, 32, 32))
    ids = torch.randint(3, 99, (2, 6))
    text = model.encode_texts(ids, torch.ones_like(ids))
    assert image.shape == (3, 16) and text.shape == (2, 16)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))
    padded = torch.cat([ids, torch.ones(2, 4, dtype=torch.long)], dim=1)  # RoBERTa pad id is 1
    mask = torch.cat([torch.ones(2, 6, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model.encode_texts(padded, mask), text, rtol=1e-5, atol=1e-5)
    output = model.image_forward(torch.randn(3, 3, 32, 32))
    assert output.distill is not None and output.distill.shape == (3, 24)


def test_teacher_is_frozen_and_always_in_eval_mode() -> None:
    teacher = ImageTeacher(TeacherConfig(family="beit", config={**TINY_VISION, "drop_path_rate": 0.5,
                                                               "use_mean_pooling": False}))
    teacher.train()
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    pixels = torch.randn(2, 3, 48, 48, requires_grad=True)  # other resolution: resized to the teacher's
    first, second = teacher(pixels), teacher(pixels)
    assert first.shape == (2, 32) and not first.requires_grad
    torch.testing.assert_close(first, second)  # no stochastic depth / dropout
    pre = ImageTeacher(TeacherConfig(family="beit", target="pre_norm", config={**TINY_VISION, "use_mean_pooling": False}))
    pre.load_state_dict(teacher.state_dict())
    assert not torch.allclose(pre(pixels), first)  # before vs after the final LayerNorm
    torch.testing.assert_close(teacher(pixels.bfloat16()), first, rtol=0.05, atol=0.05)  # a bf16 engine's input
