"""BEiT / BEiT-2 checkpoints in timm's (and the original unilm code's) layout → a Hugging Face `BeitModel` folder.

The teacher then loads with transformers alone (`teacher: {family: beit, pretrained: FOLDER}`), no timm or
torchvision needed. Per-block relative position bias, LayerScale (gamma → lambda), q/v biases without a k bias,
and the CLS token are carried over; pretraining-only tensors (masked-image-modelling head, its extra layers, the
mask token) and classification heads are dropped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from mmd2v2.errors import UserError
from mmd2v2.models.hf_folder import write_hf_folder

DROPPED_PREFIXES = ("lm_head.", "cls_pt_layers.", "head.", "fc_norm.")  # pretraining extras and heads
DROPPED_NAMES = ("mask_token",)
DROPPED_SUFFIXES = ("relative_position_index",)  # rebuilt by transformers from the image size
BLOCK_RENAMES = {
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "attn.proj.weight": "attention.output.dense.weight",
    "attn.proj.bias": "attention.output.dense.bias",
    "attn.q_bias": "attention.attention.query.bias",
    "attn.v_bias": "attention.attention.value.bias",
    "attn.relative_position_bias_table": "attention.attention.relative_position_bias.relative_position_bias_table",
    "gamma_1": "lambda_1",
    "gamma_2": "lambda_2",
    "mlp.fc1.weight": "intermediate.dense.weight",
    "mlp.fc1.bias": "intermediate.dense.bias",
    "mlp.fc2.weight": "output.dense.weight",
    "mlp.fc2.bias": "output.dense.bias",
}
TOP_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    "rel_pos_bias.relative_position_bias_table": "encoder.relative_position_bias.relative_position_bias_table",
}


def _unwrap(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The state dict inside a checkpoint ('model' / 'module' / 'state_dict' wrappers, 'encoder.' / 'beit.' prefixes)."""
    state: Any = checkpoint
    for key in ("model", "module", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError("checkpoint: expected a state dict of tensors (possibly under 'model' or 'state_dict')")
    for prefix in ("encoder.", "beit.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def convert_beit_state(checkpoint: dict[str, Any], image_size: int = 224) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(HF BeitConfig kwargs, HF state dict) from a timm/unilm BEiT(-2) state dict; one-line errors name the key."""
    state = dict(_unwrap(checkpoint))
    if "norm.weight" not in state and "fc_norm.weight" in state:  # timm's finetuned BEiTs pool with fc_norm instead
        state["norm.weight"], state["norm.bias"] = state.pop("fc_norm.weight"), state.pop("fc_norm.bias")
    for required in ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        if required not in state:
            raise UserError(f"checkpoint: missing '{required}' (expected a BEiT state dict in timm's layout)")
    width = state["cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    patch = state["patch_embed.proj.weight"].shape[-1]
    tables = [k for k in state if k.endswith("relative_position_bias_table")]
    heads = state[tables[0]].shape[1] if tables else None
    if heads is None:
        raise UserError("checkpoint: no relative_position_bias_table (BEiT-2 needs relative position bias)")
    grid = image_size // patch
    expected_rows = (2 * grid - 1) ** 2 + 3
    if state[tables[0]].shape[0] != expected_rows:
        raise UserError(
            f"checkpoint: '{tables[0]}' has {state[tables[0]].shape[0]} rows, image size {image_size} with "
            f"patch {patch} needs {expected_rows}: pass the image size the checkpoint was trained at"
        )
    config = {
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "intermediate_size": state["blocks.0.mlp.fc1.weight"].shape[0],
        "image_size": image_size,
        "patch_size": patch,
        "layer_norm_eps": 1e-6,
        "use_mean_pooling": False,
        "use_absolute_position_embeddings": "pos_embed" in state,
        "use_relative_position_bias": "blocks.0.attn.relative_position_bias_table" in state,
        "use_shared_relative_position_bias": "rel_pos_bias.relative_position_bias_table" in state,
        "layer_scale_init_value": 0.1 if "blocks.0.gamma_1" in state else 0.0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
    }
    converted: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name.startswith(DROPPED_PREFIXES) or name in DROPPED_NAMES or name.endswith(DROPPED_SUFFIXES):
            continue
        block = re.match(r"blocks\.(\d+)\.(.+)", name)
        if block is None:
            if name not in TOP_RENAMES:
                raise UserError(f"checkpoint: unexpected tensor '{name}' (not part of a BEiT encoder)")
            converted[TOP_RENAMES[name]] = tensor
            continue
        index, rest = block.groups()
        prefix = f"encoder.layer.{index}."
        if rest == "attn.qkv.weight":
            if tensor.shape != (3 * width, width):
                raise UserError(f"checkpoint: '{name}' has shape {tuple(tensor.shape)}, expected {(3 * width, width)}")
            for part, weight in zip(("query", "key", "value"), tensor.chunk(3)):
                converted[f"{prefix}attention.attention.{part}.weight"] = weight
        elif rest in BLOCK_RENAMES:
            converted[prefix + BLOCK_RENAMES[rest]] = tensor
        else:
            raise UserError(f"checkpoint: unexpected tensor '{name}' in block {index}")
    if "blocks.0.attn.q_bias" not in state:
        raise UserError("checkpoint: missing 'blocks.0.attn.q_bias' (BEiT's attention has q and v biases)")
    return config, {k: v.contiguous().clone() for k, v in converted.items()}


def write_beit_folder(config_kwargs: dict[str, Any], state: dict[str, Tensor], out: Path) -> Path:
    """Write the converted BEiT as an HF folder, checked to load into BeitModel exactly (see write_hf_folder)."""
    from transformers import BeitConfig, BeitModel

    return write_hf_folder(BeitConfig(**config_kwargs), BeitModel, state, out, {"add_pooling_layer": False})
