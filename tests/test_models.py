"""Encoders truncate and freeze exactly; the student's embeddings are normalised; the teacher stays frozen."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TEXT, TINY_VISION
from transformers import AutoConfig, AutoModel

from mmd2v2.config import ConfigError, EncoderConfig, ModelConfig, SharedConfig, TeacherConfig, load_config
from mmd2v2.models.dual_encoder import IMAGE, DualEncoder
from mmd2v2.models.teacher import ImageTeacher
from mmd2v2.models.unimodal import FAMILIES, UnimodalEncoder, block_list
from mmd2v2.train.preflight import check_run_config

EXTRA = {
    "beit": {"use_relative_position_bias": True, "layer_scale_init_value": 0.1},
    "data2vec-vision": {"use_relative_position_bias": True, "layer_scale_init_value": 0.1},
    "dinov2": {"layerscale_value": 0.5},
    "dinov2_with_registers": {"layerscale_value": 0.5, "num_register_tokens": 2},
}
# (family, HF model type): every named family, and `auto` resolving model types that have no named family
CASES = [(name, spec.config_class.model_type) for name, spec in sorted(FAMILIES.items())] + [
    ("auto", "dinov2_with_registers"),
    ("auto", "dinov3_vit"),
    ("auto", "clip_vision_model"),
    ("auto", "electra"),
]


def _modality(model_type: str) -> str:
    return (
        "image"
        if model_type.startswith(("vit", "beit", "data2vec-vision", "data2vec2-vision", "dinov", "clip_vision"))
        else "text"
    )


def _full_model(model_type: str, folder: Path) -> torch.nn.Module:
    base = TINY_VISION if _modality(model_type) == "image" else TINY_TEXT
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **base, **EXTRA.get(model_type, {}))).eval()
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


@pytest.mark.parametrize(("family", "model_type"), CASES)
def test_truncation_equals_full_model_hidden_state(family: str, model_type: str, tmp_path: Path) -> None:
    full = _full_model(model_type, tmp_path)
    modality = _modality(model_type)
    inputs = _inputs(modality)
    with torch.no_grad():
        reference = full(**inputs, output_hidden_states=True).hidden_states[2]  # after block 2 of 3
        encoder = UnimodalEncoder(
            EncoderConfig(family=family, pretrained=str(tmp_path), num_blocks=2), modality, "m"
        ).eval()
        output = encoder(*inputs.values())
    assert len(block_list(encoder.model)) == 2 and encoder.width == 32
    torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["dinov2", "electra"])
def test_architecture_rebuilds_the_encoder_without_its_folder(model_type: str, tmp_path: Path) -> None:
    _full_model(model_type, tmp_path)
    modality = _modality(model_type)
    encoder = UnimodalEncoder(
        EncoderConfig(family="auto", pretrained=str(tmp_path), num_blocks=2), modality, "m"
    ).eval()
    rebuilt = UnimodalEncoder(encoder.architecture, modality, "m").eval()
    rebuilt.load_state_dict(encoder.state_dict())
    inputs = _inputs(modality)
    torch.testing.assert_close(rebuilt(*inputs.values()), encoder(*inputs.values()))
    assert encoder.architecture.pretrained is None and len(block_list(rebuilt.model)) == 2


def assert_one_step_changes_only_the_top_block(encoder: UnimodalEncoder) -> None:
    """After an AdamW step on 32x32 images, every top-block weight changed and nothing outside that block did."""
    top = {id(p) for p in block_list(encoder.model)[-1].parameters()}
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    encoder(torch.randn(2, 3, 32, 32)).square().mean().backward()
    optimizer.step()
    changed = {name for name, p in encoder.named_parameters() if not torch.equal(before[name], p)}
    top_weights = {name for name, p in encoder.named_parameters() if id(p) in top and name.endswith("weight")}
    assert top_weights and top_weights <= changed
    assert all(id(p) in top for name, p in encoder.named_parameters() if name in changed)


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_freeze_with_top_blocks_unfrozen_is_exact(family: str) -> None:
    cfg = EncoderConfig(family=family, config={**TINY_VISION, **EXTRA.get(family, {})}, freeze=True, unfreeze_top=1)
    assert_one_step_changes_only_the_top_block(UnimodalEncoder(cfg, "image", "m"))


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


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "model.image.config.model_type: missing"),
        ({"model_type": "no-such-type"}, "model.image.config.model_type: unknown HF model type 'no-such-type'"),
        ({"model_type": "bert"}, "model.image.family: model type 'bert' is not supported .expected an image encoder"),
        ({"model_type": "convnext"}, "model.image.family: ConvNextModel is not supported"),
    ],
)
def test_auto_family_refuses_what_it_cannot_encode(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        UnimodalEncoder(EncoderConfig(family="auto", config=config), "image", "model.image")
    assert "\n" not in str(error.value)


def test_preflight_accepts_auto_and_timm_and_a_timm_teacher_needs_the_extra() -> None:
    config = load_config(
        None, ["model.image.family=timm", "model.text.family=auto", "teacher.family=auto", "data.demo=true"]
    )
    check_run_config(config)
    if importlib.util.find_spec("timm") is None:  # the timm extra's own tests cover the timm teacher
        with pytest.raises(ImportError, match=r"family 'timm' needs the optional extra: pip install 'mmd2v2\[timm\]'"):
            ImageTeacher(TeacherConfig(family="timm", config={"name": "vit_tiny_patch16_224"}))


def test_auto_family_refuses_a_folder_without_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="model.text.pretrained: .* has no model type"):
        UnimodalEncoder(EncoderConfig(family="auto", pretrained=str(tmp_path)), "text", "model.text")


def test_family_refuses_a_folder_of_another_model_type(tmp_path: Path) -> None:
    _full_model("data2vec-vision", tmp_path)  # data2vec 1.0 weights would not fill a data2vec 2.0 model
    with pytest.raises(
        ConfigError,
        match="model.image.family: '.*' holds a 'data2vec-vision' model, family "
        "'data2vec2-vision' loads 'data2vec2-vision' .set family: auto",
    ):
        UnimodalEncoder(EncoderConfig(family="data2vec2-vision", pretrained=str(tmp_path)), "image", "model.image")


def _tiny_student(teacher_dim: int | None = 24) -> DualEncoder:
    torch.manual_seed(0)
    cfg = ModelConfig(
        image=EncoderConfig(family="data2vec-vision", config=TINY_VISION),
        text=EncoderConfig(family="roberta", config=TINY_TEXT),
        shared=SharedConfig(depth=2, width=48, heads=4, layer_scale_init=0.2),
        embed_dim=16,
    )
    return DualEncoder(cfg, teacher_dim=teacher_dim).eval()


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


@pytest.mark.parametrize(("center_tokens", "projection"), [(False, True), (True, True), (False, False)])
def test_token_outputs_are_what_the_embeddings_are_made_of(center_tokens: bool, projection: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
        image=EncoderConfig(family="vit", config=TINY_VISION),
        text=EncoderConfig(family="bert", config=TINY_TEXT),
        shared=SharedConfig(depth=2, width=48, heads=4, layer_scale_init=0.2),
        embed_dim=16 if projection else 48,
        projection=projection,
        center_tokens=center_tokens,
    )
    model = DualEncoder(cfg).eval()
    assert (model.width, model.embed_dim) == (48, cfg.embed_dim)
    pixels, text = _inputs("image")["pixel_values"], _inputs("text")
    with torch.no_grad():
        image_tokens = model.image_tokens(pixels)
        text_tokens, padding = model.text_tokens(text["input_ids"], text["attention_mask"])
    assert image_tokens.shape == (2, 1 + (32 // 8) ** 2, 48) and text_tokens.shape == (2, 7, 48)
    assert padding.tolist() == (text["attention_mask"] == 0).tolist()
    torch.testing.assert_close(model.embed(image_tokens[:, 0]), model.encode_images(pixels))
    torch.testing.assert_close(model.embed(text_tokens[:, 0]), model.encode_texts(**text))
    with torch.no_grad():  # in two steps: the inputs of the shared blocks, then their outputs
        inputs, same_padding = model.text_inputs(text["input_ids"], text["attention_mask"])
        torch.testing.assert_close(model.shared_outputs(inputs, same_padding), text_tokens)
        uncentred = model.add_modality(model.image_in(model.image_encoder(pixels)), IMAGE)
    assert torch.equal(uncentred, model.image_inputs(pixels)) != center_tokens


def test_teacher_is_frozen_and_always_in_eval_mode() -> None:
    teacher = ImageTeacher(
        TeacherConfig(family="beit", config={**TINY_VISION, "drop_path_rate": 0.5, "use_mean_pooling": False})
    )
    teacher.train()
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    pixels = torch.randn(2, 3, 48, 48, requires_grad=True)  # other resolution: resized to the teacher's
    first, second = teacher(pixels), teacher(pixels)
    assert first.shape == (2, 32) and not first.requires_grad
    torch.testing.assert_close(first, second)  # no stochastic depth / dropout
    pre = ImageTeacher(
        TeacherConfig(family="beit", target="pre_norm", config={**TINY_VISION, "use_mean_pooling": False})
    )
    pre.load_state_dict(teacher.state_dict())
    assert not torch.allclose(pre(pixels), first)  # before vs after the final LayerNorm
    pooled = ImageTeacher(
        TeacherConfig(family="beit", target="mean_patches", config={**TINY_VISION, "use_mean_pooling": False})
    )
    pooled.load_state_dict(teacher.state_dict())
    tokens = teacher.model(pixel_values=F.interpolate(pixels.detach(), size=(32, 32), mode="bicubic")).last_hidden_state
    torch.testing.assert_close(pooled(pixels), tokens[:, 1:].mean(1))  # the patch tokens' mean, CLS left out
    torch.testing.assert_close(teacher(pixels.bfloat16()), first, rtol=0.05, atol=0.05)  # a bf16 engine's input


def test_checkpoint_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    _full_model("vit", tmp_path / "vit")
    config = EncoderConfig(family="vit", pretrained=str(tmp_path / "vit"), config={"intermediate_size": 96})
    with pytest.raises(
        ConfigError, match=r"model.image.pretrained: tensor '.*fc1.*' has shape \(64,.*the config makes \(96,"
    ) as error:
        UnimodalEncoder(config, "image", "model.image")
    assert "\n" not in str(error.value)


def test_activation_checkpointing_recomputes_the_same_gradients() -> None:
    cfg = ModelConfig(
        image=EncoderConfig(family="vit", config=TINY_VISION),
        text=EncoderConfig(family="bert", config=TINY_TEXT),
        shared=SharedConfig(depth=2, width=48, heads=4, layer_scale_init=0.2),
        embed_dim=16,
    )
    torch.manual_seed(0)
    plain = DualEncoder(cfg, teacher_dim=24).train()
    recomputed = DualEncoder(cfg, teacher_dim=24).train()
    recomputed.load_state_dict(plain.state_dict())
    assert recomputed.enable_activation_checkpointing() == ["shared", "image_encoder", "text_encoder"]
    inputs = _inputs("image")["pixel_values"], *_inputs("text").values()
    grads = []
    for model in (plain, recomputed):
        image, text = model.image_forward(inputs[0]), model.text_forward(inputs[1], inputs[2])
        (image.embedding @ text.embedding.T).sum().add(image.distill.square().mean()).backward()  # type: ignore[union-attr]
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert recomputed.image_encoder.model.is_gradient_checkpointing and recomputed.shared.checkpointing
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_centred_tokens_subtract_the_mean_of_real_tokens_only() -> None:
    from mmd2v2.models.dual_encoder import centred

    tokens = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])
    padding = torch.tensor([[False, False, True]])
    out = centred(tokens, padding)
    assert torch.allclose(out[0, :2], torch.tensor([[-1.0, -2.0], [1.0, 2.0]]))  # mean of the two real tokens: (2, 4)
    assert torch.allclose(centred(tokens, None).mean(1), torch.zeros(1, 2), atol=1e-5)
