"""Unimodal encoders from Hugging Face model families, truncated to their first N blocks and (partly) frozen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import logging as hf_logging
from transformers import (
    BeitConfig,
    BeitModel,
    BertConfig,
    BertModel,
    Data2VecTextConfig,
    Data2VecTextModel,
    Data2VecVisionConfig,
    Data2VecVisionModel,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
)

from mmd2v2.config import ConfigError, EncoderConfig


@dataclass(frozen=True)
class Family:
    """A Hugging Face model family usable as an encoder."""

    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    modality: str  # "image" or "text"


FAMILIES: dict[str, Family] = {
    "vit": Family(ViTConfig, ViTModel, "image"),
    "beit": Family(BeitConfig, BeitModel, "image"),
    "data2vec-vision": Family(Data2VecVisionConfig, Data2VecVisionModel, "image"),
    "bert": Family(BertConfig, BertModel, "text"),
    "roberta": Family(RobertaConfig, RobertaModel, "text"),
    "data2vec-text": Family(Data2VecTextConfig, Data2VecTextModel, "text"),
}


def family_for(name: str, modality: str, key: str) -> Family:
    """Look up a model family by name, checking that it encodes `modality`."""
    allowed = sorted(n for n, f in FAMILIES.items() if f.modality == modality)
    family = FAMILIES.get(name)
    if family is None or family.modality != modality:
        raise ConfigError(f"{key}: unknown {modality} model family '{name}' (expected one of: {', '.join(allowed)})")
    return family


DERIVED_CONFIG_KEYS = ("out_features", "out_indices", "stage_names", "transformers_version", "architectures")


def portable_config_dict(config: PretrainedConfig) -> dict[str, Any]:
    """An HF config as kwargs that rebuild it, without fields derived from the original depth."""
    return {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in DERIVED_CONFIG_KEYS}


def load_hf_model(cfg: EncoderConfig, modality: str, key: str) -> PreTrainedModel:
    """Build the encoder's HF model: random init from `cfg.config`, or `from_pretrained(cfg.pretrained)`.

    Truncation happens here: the model is built with `num_hidden_layers = cfg.num_blocks`, so only the
    first N blocks exist (pretrained weights of deeper blocks are not loaded).
    """
    family = family_for(cfg.family, modality, f"{key}.family")
    overrides = dict(cfg.config)
    if cfg.pretrained is None:
        config = family.config_class(**overrides)
    else:
        try:
            config = family.config_class.from_pretrained(cfg.pretrained, **overrides)
        except OSError as error:
            raise ConfigError(f"{key}.pretrained: cannot load '{cfg.pretrained}': {str(error).splitlines()[0]}") from None
    depth = config.num_hidden_layers
    if cfg.num_blocks is not None:
        if not 1 <= cfg.num_blocks <= depth:
            raise ConfigError(f"{key}.num_blocks: got {cfg.num_blocks}, the model has {depth} blocks")
        config = family.config_class(**{**portable_config_dict(config), "num_hidden_layers": cfg.num_blocks})
    if cfg.pretrained is None:
        return family.model_class(config, add_pooling_layer=False)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the weights of the dropped blocks are "unexpected" by design
    try:
        return family.model_class.from_pretrained(cfg.pretrained, config=config, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)


def block_list(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks inside an HF encoder."""
    for path in ("layers", "encoder.layer", "encoder.layers"):
        module: nn.Module | None = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise TypeError(f"cannot find the transformer blocks of {type(model).__name__}")


def apply_freezing(model: nn.Module, freeze: bool, unfreeze_top: int) -> None:
    """Freeze every parameter of `model` except the top `unfreeze_top` blocks (no-op unless `freeze`)."""
    if not freeze:
        return
    blocks = block_list(model)
    if not 0 <= unfreeze_top <= len(blocks):
        raise ConfigError(f"unfreeze_top: got {unfreeze_top}, the encoder has {len(blocks)} blocks")
    model.requires_grad_(False)
    for block in list(blocks)[len(blocks) - unfreeze_top :]:
        block.requires_grad_(True)


class UnimodalEncoder(nn.Module):
    """First N blocks of a pretrained unimodal transformer; returns the hidden states after block N."""

    def __init__(self, cfg: EncoderConfig, modality: str, key: str) -> None:
        super().__init__()
        self.modality = modality
        self.model = load_hf_model(cfg, modality, key)
        if isinstance(getattr(self.model, "layernorm", None), nn.LayerNorm):
            self.model.layernorm = nn.Identity()  # output = raw hidden state after block N
        apply_freezing(self.model, cfg.freeze, cfg.unfreeze_top)
        self.fully_frozen = not any(p.requires_grad for p in self.model.parameters())
        if self.fully_frozen:
            self.model.eval()

    @property
    def width(self) -> int:
        """Hidden size of the encoder's output tokens."""
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> UnimodalEncoder:
        """Switch train/eval mode; a fully frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.fully_frozen:
            self.model.eval()
        return self

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Encode pixel values (B, 3, H, W) or token ids (B, L) into (B, T, width) hidden states."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.fully_frozen):
            if self.modality == "image":
                interpolate = inputs.shape[-1] != self.model.config.image_size
                output = self.model(pixel_values=inputs, interpolate_pos_encoding=interpolate)
            else:
                output = self.model(input_ids=inputs, attention_mask=attention_mask)
        return output.last_hidden_state
