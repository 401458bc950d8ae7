"""fairseq Data2Vec 2.0 checkpoints (`data2vec_multi` models) → Hugging Face folders the encoders load.

A data2vec 2.0 model is a modality encoder (`modality_encoders.IMAGE` / `.TEXT`: patch or token embeddings, an
optional CLS token, a LayerNorm and optional "prenet" blocks) followed by shared `blocks`. The base models are
post-LayerNorm (`layer_norm_first: false`): each block computes x = LN(x + attn(x)); x = LN(x + mlp(x)).

- image → `data2vec2-vision` (mmd2v2.models.data2vec2_vision): positions are added to the patches, the CLS token
  (no position) is prepended, then the LayerNorm, the prenet blocks and the main blocks.
- text → HF `Data2VecTextModel` (RoBERTa's post-LN layout): token + learned position embeddings, LayerNorm, blocks.
  The token ids are fairseq dictionary indices, which for data2vec 2.0 text are RoBERTa's, so a RoBERTa
  tokenizer (given to the converter) indexes the embedding rows directly.

The EMA teacher (`_ema`), the decoders and other pretraining-only tensors are dropped; an unsupported variant
(pre-LN, ALiBi, several extra tokens, text prenet blocks) is refused with one line naming what differs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmd2v2.errors import UserError
from mmd2v2.models.data2vec2_vision import Data2Vec2VisionConfig, Data2Vec2VisionModel
from mmd2v2.models.hf_folder import write_hf_folder

MODALITIES = {"image": "IMAGE", "text": "TEXT"}
DROPPED = re.compile(r"^(_ema|shared_decoder\.|recon_proj\.|ema\.|modality_encoders\.\w+\.decoder\.)")
BLOCK_RENAMES = {  # fairseq AltBlock → BERT-style names (Data2VecText and data2vec2-vision share them)
    "attn.proj.weight": "attention.output.dense.weight",
    "attn.proj.bias": "attention.output.dense.bias",
    "norm1.weight": "attention.output.LayerNorm.weight",
    "norm1.bias": "attention.output.LayerNorm.bias",
    "mlp.fc1.weight": "intermediate.dense.weight",
    "mlp.fc1.bias": "intermediate.dense.bias",
    "mlp.fc2.weight": "output.dense.weight",
    "mlp.fc2.bias": "output.dense.bias",
    "norm2.weight": "output.LayerNorm.weight",
    "norm2.bias": "output.LayerNorm.bias",
}
TEXT_RENAMES = {
    "local_encoder.embed_tokens.weight": "embeddings.word_embeddings.weight",
    "local_encoder.embed_positions.weight": "embeddings.position_embeddings.weight",
    "local_encoder.layernorm_embedding.weight": "embeddings.LayerNorm.weight",
    "local_encoder.layernorm_embedding.bias": "embeddings.LayerNorm.bias",
}
IMAGE_RENAMES = {
    "local_encoder.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "local_encoder.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "fixed_positional_encoder.positions": "embeddings.position_embeddings",
    "extra_tokens": "embeddings.cls_token",
    "context_encoder.norm.weight": "embeddings.LayerNorm.weight",
    "context_encoder.norm.bias": "embeddings.LayerNorm.bias",
}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def model_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The `model` section of a fairseq checkpoint's config ({} for a bare state dict)."""
    for key in ("cfg", "args"):
        section = checkpoint.get(key)
        if isinstance(section, dict) and isinstance(section.get("model"), dict):
            return section["model"]
    return {}


def model_state(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The model's tensors: a fairseq checkpoint's 'model', or the dict itself when it is a bare state dict."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict) or not any(k.startswith("modality_encoders.") for k in state):
        raise UserError(
            "checkpoint: no 'modality_encoders.*' tensors (expected a fairseq data2vec 2.0 'data2vec_multi' checkpoint)"
        )
    return {k: v for k, v in state.items() if isinstance(v, Tensor) and not DROPPED.match(k)}


def available_modalities(state: dict[str, Tensor]) -> list[str]:
    """The modalities whose encoder the state dict holds ('image', 'text')."""
    return [name for name, key in MODALITIES.items() if any(k.startswith(f"modality_encoders.{key}.") for k in state)]


def _block_tensors(source: dict[str, Tensor], width: int, index: int, where: str) -> dict[str, Tensor]:
    """One fairseq AltBlock's tensors under HF names (fused qkv split into query/key/value)."""
    out: dict[str, Tensor] = {}
    for name, tensor in source.items():
        if name in ("attn.qkv.weight", "attn.qkv.bias"):
            if tensor.shape[0] != 3 * width:
                raise UserError(
                    f"checkpoint: '{where}.{index}.{name}' has shape {tuple(tensor.shape)}, "
                    f"expected {3 * width} rows (q, k, v of width {width})"
                )
            kind = name.rsplit(".", 1)[1]
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3)):
                out[f"attention.self.{part}.{kind}"] = chunk
        elif name in BLOCK_RENAMES:
            out[BLOCK_RENAMES[name]] = tensor
        else:
            raise UserError(
                f"checkpoint: unexpected tensor '{where}.{index}.{name}' (cosine attention and other "
                "block variants are not supported)"
            )
    if "attn.qkv.bias" not in source:
        raise UserError(f"checkpoint: '{where}.{index}' has no attn.qkv.bias (data2vec 2.0 blocks have q, k, v biases)")
    return out


def _group_blocks(state: dict[str, Tensor], prefix: str) -> dict[int, dict[str, Tensor]]:
    """{block index: {name inside the block: tensor}} for keys `prefix.N.name`."""
    blocks: dict[int, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        match = re.match(rf"{re.escape(prefix)}\.(\d+)\.(.+)", key)
        if match:
            blocks.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    return blocks


def _stack_blocks(state: dict[str, Tensor], encoder: str, width: int) -> dict[str, Tensor]:
    """The prenet blocks then the main blocks as HF `encoder.layer.N.*` tensors."""
    out: dict[str, Tensor] = {}
    layer = 0
    for prefix in (f"{encoder}.context_encoder.blocks", "blocks"):
        blocks = _group_blocks(state, prefix)
        for index in sorted(blocks):
            out.update(
                {
                    f"encoder.layer.{layer}.{k}": v
                    for k, v in _block_tensors(blocks[index], width, index, prefix).items()
                }
            )
            layer += 1
    if layer == 0:
        raise UserError("checkpoint: no 'blocks.N.*' tensors (expected the data2vec 2.0 transformer blocks)")
    return out


def _check_variant(settings: dict[str, Any], state: dict[str, Tensor], encoder: str) -> None:
    """Refuse the data2vec 2.0 variants the HF layouts cannot compute."""
    if settings.get("layer_norm_first") or "norm.weight" in state:
        raise UserError(
            "checkpoint: pre-LayerNorm model (layer_norm_first: true); only the post-LN data2vec 2.0 "
            "base layout is supported"
        )
    if any(k.startswith(f"{encoder}.alibi") for k in state):
        raise UserError(f"checkpoint: '{encoder}' uses ALiBi attention biases, which the HF layouts cannot apply")


def _heads(settings: dict[str, Any], num_heads: int | None, width: int) -> int:
    """Attention heads: the explicit value, else the checkpoint's config; they cannot be read off the weights."""
    heads = num_heads if num_heads is not None else settings.get("num_heads")
    if not isinstance(heads, int):
        raise UserError("checkpoint: no model.num_heads in its config (a bare state dict): pass --num-heads")
    if width % heads:
        raise UserError(f"--num-heads: {heads} does not divide the width {width}")
    return heads


def _take(
    state: dict[str, Tensor], encoder: str, renames: dict[str, str], required: tuple[str, ...]
) -> dict[str, Tensor]:
    """The modality encoder's own tensors under HF names; any other tensor of it is an error."""
    out: dict[str, Tensor] = {}
    prefix = f"{encoder}."
    for key, tensor in state.items():
        if not key.startswith(prefix) or key.startswith(f"{prefix}context_encoder.blocks."):
            continue
        name = key[len(prefix) :]
        if name not in renames:
            raise UserError(f"checkpoint: unexpected tensor '{key}' (not part of a data2vec 2.0 encoder)")
        out[renames[name]] = tensor
    for name in required:
        if renames[name] not in out:
            raise UserError(f"checkpoint: missing '{prefix}{name}'")
    return out


def convert_image(
    checkpoint: dict[str, Any], num_heads: int | None = None
) -> tuple[Data2Vec2VisionConfig, dict[str, Tensor]]:
    """(config, state dict) of a `data2vec2-vision` model from a data2vec 2.0 image checkpoint."""
    settings, state = model_settings(checkpoint), model_state(checkpoint)
    encoder = "modality_encoders.IMAGE"
    _check_variant(settings, state, encoder)
    converted = _take(state, encoder, IMAGE_RENAMES, tuple(IMAGE_RENAMES))
    patch = converted["embeddings.patch_embeddings.projection.weight"]
    width, channels, size = patch.shape[0], patch.shape[1], patch.shape[-1]
    cls, positions = converted["embeddings.cls_token"], converted["embeddings.position_embeddings"]
    if cls.shape != (1, 1, width):
        raise UserError(
            f"checkpoint: '{encoder}.extra_tokens' has shape {tuple(cls.shape)}, expected (1, 1, {width}) "
            "(exactly one extra token, the CLS)"
        )
    grid = round(positions.shape[1] ** 0.5)
    if positions.dim() != 3 or grid * grid != positions.shape[1]:
        raise UserError(
            f"checkpoint: '{encoder}.fixed_positional_encoder.positions' has shape {tuple(positions.shape)}, "
            "expected (1, side², width) for a square patch grid"
        )
    converted.update(_stack_blocks(state, encoder, width))
    config = Data2Vec2VisionConfig(
        hidden_size=width,
        num_hidden_layers=1 + max(int(k.split(".")[2]) for k in converted if k.startswith("encoder.layer.")),
        num_attention_heads=_heads(settings, num_heads, width),
        intermediate_size=converted["encoder.layer.0.intermediate.dense.weight"].shape[0],
        image_size=grid * size,
        patch_size=size,
        num_channels=channels,
        layer_norm_eps=float(settings.get("norm_eps", 1e-6)),
    )
    return config, {k: v.contiguous().clone() for k, v in converted.items()}


def convert_text(
    checkpoint: dict[str, Any], num_heads: int | None = None, pad_token_id: int = 1
) -> tuple[Any, dict[str, Tensor]]:
    """(Data2VecTextConfig, state dict) from a data2vec 2.0 text checkpoint (RoBERTa dictionary: pad = 1)."""
    from transformers import Data2VecTextConfig

    settings, state = model_settings(checkpoint), model_state(checkpoint)
    encoder = "modality_encoders.TEXT"
    _check_variant(settings, state, encoder)
    if any(k.startswith(f"{encoder}.context_encoder.") for k in state):
        raise UserError(
            f"checkpoint: '{encoder}' has prenet blocks (prenet_depth > 0), which RoBERTa's layout cannot "
            "hold; the data2vec 2.0 text base has none"
        )
    converted = _take(state, encoder, TEXT_RENAMES, tuple(TEXT_RENAMES))
    vocab, width = converted["embeddings.word_embeddings.weight"].shape
    positions = converted["embeddings.position_embeddings.weight"].shape[0]
    converted.update(_stack_blocks(state, encoder, width))
    converted["embeddings.token_type_embeddings.weight"] = torch.zeros(1, width)  # fairseq has no segment embedding
    eps = float(settings.get("norm_eps", 1e-5))
    config = Data2VecTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=1 + max(int(k.split(".")[2]) for k in converted if k.startswith("encoder.layer.")),
        num_attention_heads=_heads(settings, num_heads, width),
        intermediate_size=converted["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=positions,
        type_vocab_size=1,
        layer_norm_eps=eps,
        pad_token_id=pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
    )
    return config, {k: v.contiguous().clone() for k, v in converted.items()}


def write_image_folder(config: Data2Vec2VisionConfig, state: dict[str, Tensor], out: Path) -> Path:
    """The converted image encoder as an HF folder with an ImageNet-normalised, bicubic preprocessor config."""

    def preprocessor(folder: Path) -> None:
        from transformers import BeitImageProcessor

        BeitImageProcessor(
            size={"height": config.image_size, "width": config.image_size},
            resample=3,
            do_center_crop=False,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
        ).save_pretrained(folder)

    return write_hf_folder(config, Data2Vec2VisionModel, state, out, extra=preprocessor)


def write_text_folder(config: Any, state: dict[str, Tensor], out: Path, tokenizer: str) -> Path:
    """The converted text encoder as an HF folder, with `tokenizer` (a RoBERTa tokenizer folder or hub id) beside it."""
    from transformers import AutoTokenizer, Data2VecTextModel

    loaded = AutoTokenizer.from_pretrained(tokenizer)
    if len(loaded) > config.vocab_size or loaded.pad_token_id != config.pad_token_id:
        raise UserError(
            f"--tokenizer: '{tokenizer}' has {len(loaded)} tokens and pad id {loaded.pad_token_id}, the "
            f"checkpoint embeds {config.vocab_size} with pad id {config.pad_token_id} (expected RoBERTa's)"
        )
    return write_hf_folder(
        config, Data2VecTextModel, state, out, {"add_pooling_layer": False}, extra=loaded.save_pretrained
    )
