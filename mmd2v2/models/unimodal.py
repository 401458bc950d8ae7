"""Unimodal encoders from Hugging Face (or, with the `timm` extra, timm) models, truncated to their first N blocks
and (partly) frozen."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    BeitConfig,
    BeitModel,
    BertConfig,
    BertModel,
    Data2VecTextConfig,
    Data2VecTextModel,
    Data2VecVisionConfig,
    Data2VecVisionModel,
    Dinov2Config,
    Dinov2Model,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
)
from transformers import logging as hf_logging
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from mmd2v2.config import ConfigError, EncoderConfig
from mmd2v2.models.data2vec2_vision import Data2Vec2VisionConfig, Data2Vec2VisionModel


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
    "data2vec2-vision": Family(Data2Vec2VisionConfig, Data2Vec2VisionModel, "image"),  # fairseq d2v2, converted
    "dinov2": Family(Dinov2Config, Dinov2Model, "image"),
    "bert": Family(BertConfig, BertModel, "text"),
    "roberta": Family(RobertaConfig, RobertaModel, "text"),
    "data2vec-text": Family(Data2VecTextConfig, Data2VecTextModel, "text"),
}
AUTO = "auto"  # the model class follows the HF config's model_type
TIMM = "timm"  # a timm image model (optional extra), see mmd2v2.models.timm_encoder
CONFIG_FAMILIES = {"image": (AUTO, TIMM), "text": (AUTO,)}  # families whose model class comes from the section's config
INPUT_NAMES = {"image": "pixel_values", "text": "input_ids"}
FINAL_NORMS = (
    "layernorm",
    "norm",
)  # HF encoders' norm after the last block (ViT, BEiT, DINOv2: layernorm; DINOv3: norm)


def family_for(name: str, modality: str, key: str) -> Family | None:
    """Look up a model family by name, checking that it encodes `modality` (None for auto/timm: see the config)."""
    allowed = [*sorted(n for n, f in FAMILIES.items() if f.modality == modality), *CONFIG_FAMILIES[modality]]
    if name in CONFIG_FAMILIES[modality]:
        return None
    family = FAMILIES.get(name)
    if family is None or family.modality != modality:
        raise ConfigError(f"{key}: unknown {modality} model family '{name}' (expected one of: {', '.join(allowed)})")
    return family


def auto_family(config: PretrainedConfig, modality: str, key: str) -> Family:
    """The family of an HF config's model_type, checking that its base model encodes `modality`."""
    model_class = MODEL_MAPPING.get(type(config), None)
    expected = f"an {modality} encoder model type, whose base model takes {INPUT_NAMES[modality]}"
    if getattr(model_class, "main_input_name", None) != INPUT_NAMES[modality]:
        raise ConfigError(f"{key}: model type '{config.model_type}' is not supported (expected {expected})")
    return Family(type(config), model_class, modality)


def _auto_config(cfg: EncoderConfig, key: str) -> PretrainedConfig:
    """AutoConfig of a pretrained folder/hub id, or of `config.model_type` for random init."""
    overrides = dict(cfg.config)
    if cfg.pretrained is not None:
        try:
            return AutoConfig.from_pretrained(cfg.pretrained, **overrides)
        except ValueError:
            raise ConfigError(
                f"{key}.pretrained: '{cfg.pretrained}' has no model type transformers knows "
                "(expected a config.json with a model_type)"
            ) from None
    model_type = overrides.pop("model_type", None)
    if model_type is None:
        raise ConfigError(f"{key}.config.model_type: missing (family 'auto' without pretrained needs an HF model type)")
    try:
        return AutoConfig.for_model(model_type, **overrides)
    except ValueError:
        raise ConfigError(f"{key}.config.model_type: unknown HF model type '{model_type}'") from None


def load_hf_config(cfg: EncoderConfig, modality: str, key: str) -> tuple[Family, PretrainedConfig]:
    """The encoder's family and full-depth HF config (from `cfg.pretrained`, or `cfg.config` for random init)."""
    family = family_for(cfg.family, modality, f"{key}.family")
    try:
        if cfg.family == AUTO:
            config = _auto_config(cfg, key)
            return auto_family(config, modality, f"{key}.family"), config
        if family is None:
            raise ConfigError(
                f"{key}.family: '{cfg.family}' is not supported here (expected a Hugging Face family or auto)"
            )
        if cfg.pretrained is None:
            return family, family.config_class(**cfg.config)
        stored = PretrainedConfig.get_config_dict(cfg.pretrained)[0].get("model_type")
        if stored != family.config_class.model_type:  # other layouts' weight names would silently not load
            raise ConfigError(
                f"{key}.family: '{cfg.pretrained}' holds a '{stored}' model, family '{cfg.family}' "
                f"loads '{family.config_class.model_type}' (set family: auto to follow the checkpoint)"
            )
        return family, family.config_class.from_pretrained(cfg.pretrained, **cfg.config)
    except OSError as error:
        raise ConfigError(f"{key}.pretrained: cannot load '{cfg.pretrained}': {str(error).splitlines()[0]}") from None


DERIVED_CONFIG_KEYS = ("out_features", "out_indices", "stage_names", "transformers_version", "architectures")


def portable_config_dict(config: PretrainedConfig) -> dict[str, Any]:
    """An HF config as kwargs that rebuild it, without fields derived from the original depth."""
    return {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in DERIVED_CONFIG_KEYS}


def load_hf_model(cfg: EncoderConfig, modality: str, key: str) -> PreTrainedModel:
    """Build the encoder's HF model: random init from `cfg.config`, or `from_pretrained(cfg.pretrained)`.

    Truncation happens here: the model is built with `num_hidden_layers = cfg.num_blocks`, so only the
    first N blocks exist (pretrained weights of deeper blocks are not loaded).
    """
    family, config = load_hf_config(cfg, modality, key)
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int):
        raise ConfigError(
            f"{key}.family: model type '{config.model_type}' has no num_hidden_layers (expected a transformer encoder)"
        )
    if cfg.num_blocks is not None:
        if not 1 <= cfg.num_blocks <= depth:
            raise ConfigError(f"{key}.num_blocks: got {cfg.num_blocks}, the model has {depth} blocks")
        config = type(config)(**{**portable_config_dict(config), "num_hidden_layers": cfg.num_blocks})
    init_args = inspect.signature(family.model_class.__init__).parameters
    kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in init_args else {}
    if cfg.pretrained is None:
        model = family.model_class(config, **kwargs)
    else:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the weights of the dropped blocks are "unexpected" by design
        try:
            model = family.model_class.from_pretrained(cfg.pretrained, config=config, **kwargs)
        except RuntimeError:  # HF's size-mismatch report is many lines; name the first tensor instead
            raise ConfigError(shape_mismatch(family.model_class, cfg.pretrained, config, kwargs, key)) from None
        finally:
            hf_logging.set_verbosity(verbosity)
    try:
        blocks = block_list(model)
    except TypeError:
        blocks = None
    if blocks is None or len(blocks) != model.config.num_hidden_layers:
        raise ConfigError(
            f"{key}.family: {type(model).__name__} is not supported (expected embeddings and one "
            "ModuleList of num_hidden_layers blocks: encoder.layer, layers or model.layer)"
        )
    return model


def shape_mismatch(
    model_class: type[PreTrainedModel], pretrained: str, config: PretrainedConfig, kwargs: dict[str, Any], key: str
) -> str:
    """One line naming the first checkpoint tensor whose shape differs from what `config` builds."""
    _, info = model_class.from_pretrained(
        pretrained, config=config, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
    )
    if not info.get("mismatched_keys"):
        return f"{key}.pretrained: the weights in '{pretrained}' do not match the config"
    name, stored, wanted = sorted(info["mismatched_keys"])[0]
    return f"{key}.pretrained: tensor '{name}' has shape {tuple(stored)} in '{pretrained}', the config makes {tuple(wanted)}"


def block_list(model: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The list of transformer blocks inside an HF or timm encoder."""
    for path in ("layers", "encoder.layer", "encoder.layers", "model.layer", "blocks"):
        module: nn.Module | None = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
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
        self.model: nn.Module
        self.architecture: EncoderConfig  # rebuilds this encoder's layout without pretrained weights (for exports)
        if cfg.family == TIMM:
            from mmd2v2.models.timm_encoder import load_timm_model  # timm is an optional extra

            self.model, self.architecture = load_timm_model(cfg, modality, key)
            self.width = int(self.model.num_features)
            self.interpolates = False
        else:
            self.model = load_hf_model(cfg, modality, key)
            for final_norm in FINAL_NORMS:
                if isinstance(getattr(self.model, final_norm, None), nn.LayerNorm):
                    setattr(self.model, final_norm, nn.Identity())  # output = raw hidden state after block N
            self.architecture = dataclasses.replace(
                cfg, pretrained=None, config=portable_config_dict(self.model.config), num_blocks=None
            )
            self.width = int(self.model.config.hidden_size)
            self.interpolates = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        apply_freezing(self.model, cfg.freeze, cfg.unfreeze_top)
        self.fully_frozen = not any(p.requires_grad for p in self.model.parameters())
        if self.fully_frozen:
            self.model.eval()

    def resize_vocabulary(self, size: int) -> None:
        """Give a text encoder `size` token embeddings (new rows initialised by transformers), keeping the stored
        architecture in step so exports rebuild it."""
        self.model.resize_token_embeddings(size)
        self.architecture = dataclasses.replace(self.architecture, config=portable_config_dict(self.model.config))

    def train(self, mode: bool = True) -> UnimodalEncoder:
        """Switch train/eval mode; a fully frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.fully_frozen:
            self.model.eval()
        return self

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Encode pixel values (B, 3, H, W) or token ids (B, L) into (B, T, width) hidden states. A fully frozen
        encoder runs under inference mode (no autograd bookkeeping); its output is then copied into an ordinary tensor."""
        if not self.fully_frozen:
            return self._encode(inputs, attention_mask)
        with torch.inference_mode():
            hidden = self._encode(inputs, attention_mask)
        return hidden.clone()

    def _encode(self, inputs: Tensor, attention_mask: Tensor | None) -> Tensor:
        if self.modality == "text":
            return self.model(input_ids=inputs, attention_mask=attention_mask).last_hidden_state
        if not isinstance(self.model, PreTrainedModel):
            return self.model.forward_features(inputs)  # timm: tokens after the last kept block
        kwargs = (
            {"interpolate_pos_encoding": inputs.shape[-1] != self.model.config.image_size} if self.interpolates else {}
        )
        return self.model(pixel_values=inputs, **kwargs).last_hidden_state
