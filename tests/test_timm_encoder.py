"""timm encoders (optional extra): exact truncation and freezing, local weights, preprocessing, export, lazy import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision_ops import register_missing_torchvision_ops

register_missing_torchvision_ops()  # before anything imports torchvision (timm, transformers)
timm = pytest.importorskip("timm")

from conftest import TINY_TEXT  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_models import assert_one_step_changes_only_the_top_block  # noqa: E402
from timm.data import resolve_data_config  # noqa: E402

from mmd2v2.config import Config, ConfigError, DataConfig, EncoderConfig, ModelConfig, SharedConfig  # noqa: E402
from mmd2v2.data.preprocessing import resolve_image_preprocessing  # noqa: E402
from mmd2v2.data.tokenization import build_word_tokenizer  # noqa: E402
from mmd2v2.models.dual_encoder import DualEncoder  # noqa: E402
from mmd2v2.models.exported import load_export, save_export  # noqa: E402
from mmd2v2.models.unimodal import UnimodalEncoder, block_list  # noqa: E402

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
NAMES = ["vit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2", "eva02_tiny_patch14_224", "beitv2_base_patch16_224"]


def _weights_file(name: str, tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A full tiny timm model and its weights written as safetensors."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0, **TINY).eval()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def _encoder(name: str, weights: Path | None = None, **fields: object) -> UnimodalEncoder:
    cfg = EncoderConfig(
        family="timm", pretrained=str(weights) if weights else None, config={"name": name, **TINY}, **fields
    )
    return UnimodalEncoder(cfg, "image", "model.image")


@pytest.mark.parametrize("name", NAMES)
def test_truncation_equals_the_full_models_block_output(name: str, tmp_path: Path) -> None:
    full, weights = _weights_file(name, tmp_path)
    captured: list[torch.Tensor] = []
    full.blocks[1].register_forward_hook(lambda module, args, output: captured.append(output))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full.forward_features(pixels)
        output = _encoder(name, weights, num_blocks=2).eval()(pixels)
    torch.testing.assert_close(output, captured[0], rtol=1e-5, atol=1e-5)  # all tokens, prefix ones included


def test_truncation_equals_running_the_vit_by_hand(tmp_path: Path) -> None:
    full, weights = _weights_file("vit_tiny_patch16_224", tmp_path)
    encoder = _encoder("vit_tiny_patch16_224", weights, num_blocks=2).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = full.blocks[:2](full.norm_pre(full._pos_embed(full.patch_embed(pixels))))
        output = encoder(pixels)
    assert output.shape == (2, 17, 32) and encoder.width == 32 and len(block_list(encoder.model)) == 2
    torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-5)


def test_freeze_with_top_blocks_unfrozen_is_exact() -> None:
    assert_one_step_changes_only_the_top_block(_encoder("vit_small_patch14_reg4_dinov2", freeze=True, unfreeze_top=1))


def test_preprocessing_comes_from_timms_pretrained_config() -> None:
    name = "vit_small_patch14_dinov2.lvd142m"
    reference = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    config = Config(model=ModelConfig(image=EncoderConfig(family="timm", config={"name": name})))
    preprocess = resolve_image_preprocessing(config)
    assert preprocess.size == reference["input_size"][-1] == 518 and preprocess.resample == reference["interpolation"]
    assert preprocess.to_dict()["mean"] == list(reference["mean"])
    assert preprocess.to_dict()["std"] == list(reference["std"])
    config.model.image.config["img_size"] = 224  # the model is built at 224: so are the images
    config.data = DataConfig(image_mean=[0.5, 0.5, 0.5])  # explicit data values win
    preprocess = resolve_image_preprocessing(config)
    assert preprocess.size == 224 and preprocess.to_dict()["mean"] == [0.5] * 3
    assert preprocess.to_dict()["std"] == list(reference["std"])


def test_export_rebuilds_the_timm_encoder_without_its_weights_file(tmp_path: Path) -> None:
    _, weights = _weights_file("eva02_tiny_patch14_224", tmp_path)
    tokenizer = build_word_tokenizer(["a", "red", "circle"])
    image = EncoderConfig(
        family="timm", pretrained=str(weights), config={"name": "eva02_tiny_patch14_224", **TINY}, num_blocks=2
    )
    text = EncoderConfig(family="bert", config={**TINY_TEXT, "vocab_size": len(tokenizer)})
    config = Config(
        model=ModelConfig(image=image, text=text, shared=SharedConfig(depth=1, width=32, heads=2), embed_dim=8)
    )
    torch.manual_seed(0)
    model = DualEncoder(config.model).eval()
    folder = save_export(model, config, tokenizer, resolve_image_preprocessing(config), tmp_path / "export", {})
    weights.unlink()
    bundle = load_export(folder)
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(bundle.model.encode_images(pixels), model.encode_images(pixels))
    assert bundle.config.model.image.pretrained is None and bundle.preprocess.resample == "bicubic"


@pytest.mark.parametrize(
    ("cfg", "modality", "message"),
    [
        (
            EncoderConfig(family="timm", config={"name": "no_such_model"}),
            "image",
            "model.image.config.name: unknown timm model",
        ),
        (EncoderConfig(family="timm"), "image", "model.image.config.name: missing"),
        (
            EncoderConfig(family="timm", pretrained="vit_no_such_model"),
            "image",
            "model.image.pretrained: unknown timm model",
        ),
        (
            EncoderConfig(family="timm", pretrained="/no/such.safetensors", config={"name": "vit_tiny_patch16_224"}),
            "image",
            "model.image.pretrained: '/no/such.safetensors' is not a file",
        ),
        (
            EncoderConfig(family="timm", config={"name": "resnet18"}),
            "image",
            "model.image.config.name: timm model 'resnet18' is not supported",
        ),
        (
            EncoderConfig(family="timm", config={"name": "vit_tiny_patch16_224", **TINY}, num_blocks=4),
            "image",
            "model.image.num_blocks: got 4, the model has 3 blocks",
        ),
        (
            EncoderConfig(family="timm", config={"name": "vit_tiny_patch16_224"}),
            "text",
            "model.image.family: 'timm' provides image encoders only",
        ),
    ],
)
def test_bad_timm_sections_name_the_key(cfg: EncoderConfig, modality: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UnimodalEncoder(cfg, modality, "model.image")


def test_weights_file_must_match_the_architecture(tmp_path: Path) -> None:
    _, weights = _weights_file("vit_tiny_patch16_224", tmp_path)
    cfg = EncoderConfig(
        family="timm", pretrained=str(weights), config={"name": "vit_tiny_patch16_224", **TINY, "embed_dim": 64}
    )
    with pytest.raises(ConfigError, match="model.image.pretrained: cannot load"):
        UnimodalEncoder(cfg, "image", "model.image")


def test_core_modules_do_not_import_timm() -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests'); from torchvision_ops import register_missing_torchvision_ops as r; r(); "
        "import mmd2v2.models.exported, mmd2v2.data.preprocessing; assert 'timm' not in sys.modules, 'timm imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-500:]


def test_beitv2_converted_from_timm_matches_timm(tmp_path: Path) -> None:
    from mmd2v2.config import TeacherConfig
    from mmd2v2.models.convert_beit import convert_beit_state, write_beit_folder
    from mmd2v2.models.teacher import ImageTeacher

    torch.manual_seed(0)
    model = timm.create_model("beitv2_base_patch16_224", num_classes=0, global_pool="token", **TINY).eval()
    for name, param in model.named_parameters():  # timm starts LayerScale and biases at constants: make them count
        if "gamma" in name or "bias" in name:
            param.data.normal_()
    config, state = convert_beit_state(model.state_dict(), image_size=TINY["img_size"])
    folder = write_beit_folder(config, state, tmp_path / "beitv2")
    teacher = ImageTeacher(TeacherConfig(family="beit", pretrained=str(folder), target="post_norm"))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.forward_features(pixels)[:, 0]  # timm: blocks, then the final norm; CLS token
    torch.testing.assert_close(teacher(pixels), expected, atol=1e-4, rtol=1e-4)


def test_timm_teacher_gives_the_cls_after_or_before_the_final_norm_or_the_mean_patch(tmp_path: Path) -> None:
    from mmd2v2.config import TeacherConfig
    from mmd2v2.models.teacher import ImageTeacher

    full, weights = _weights_file("beitv2_base_patch16_224", tmp_path)
    last_block: list[torch.Tensor] = []
    full.blocks[-1].register_forward_hook(lambda module, args, output: last_block.append(output))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = full.forward_features(pixels)
    post_norm, mean_patches = features[:, 0], features[:, 1:].mean(1)
    config = {"name": "beitv2_base_patch16_224", **TINY}
    teachers = {
        target: ImageTeacher(TeacherConfig(family="timm", pretrained=str(weights), config=config, target=target))
        for target in ("post_norm", "pre_norm", "mean_patches")
    }
    assert teachers["post_norm"].dim == 32 and teachers["post_norm"].image_size == 32
    torch.testing.assert_close(teachers["post_norm"](pixels), post_norm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(teachers["pre_norm"](pixels), last_block[0][:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(teachers["mean_patches"](pixels), mean_patches, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in teachers["pre_norm"].parameters())
