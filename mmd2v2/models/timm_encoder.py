"""Image encoders from timm (optional extra `mmd2v2[timm]`): ViT-style models truncated to their first N blocks.

An encoder section with `family: timm` names the model in `config.name` (timm name, optionally with a
pretrained tag, e.g. `vit_small_patch14_dinov2.lvd142m`); the other `config` keys go to `timm.create_model`.
`pretrained` is either a local weights file (safetensors or a PyTorch state dict) or, with `config.name`
unset, the timm model name whose pretrained weights timm fetches.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from mmd2v2.config import ConfigError, EncoderConfig
from mmd2v2.errors import MissingExtraError

try:
    import timm
    from timm.data import resolve_data_config
except ImportError as error:
    raise MissingExtraError(f"family 'timm' needs the optional extra: pip install 'mmd2v2[timm]' ({error})") from error

HEAD_NORMS = ("norm", "fc_norm", "attn_pool")  # applied after the blocks: dropped, the output is block N's


def timm_source(cfg: EncoderConfig, key: str) -> tuple[str, Path | None, dict[str, Any]]:
    """The timm model name, local weights file (None if none) and extra create_model kwargs of a section."""
    kwargs = dict(cfg.config)
    name, name_key = kwargs.pop("name", None), f"{key}.config.name"
    weights = Path(cfg.pretrained) if cfg.pretrained is not None and Path(cfg.pretrained).is_file() else None
    if cfg.pretrained is not None and weights is None:
        if name is not None:
            raise ConfigError(
                f"{key}.pretrained: '{cfg.pretrained}' is not a file "
                "(expected a weights file, or the timm model name with config.name unset)"
            )
        name, name_key = cfg.pretrained, f"{key}.pretrained"
    if name is None:
        raise ConfigError(f"{name_key}: missing (expected a timm model name such as vit_base_patch16_224)")
    if ":" not in name and not timm.is_model(name):  # hf-hub:/local-dir: sources are resolved by timm itself
        raise ConfigError(f"{name_key}: unknown timm model '{name}'")
    return name, weights, kwargs


def load_timm_model(
    cfg: EncoderConfig, modality: str, key: str, keep_head_norms: bool = False
) -> tuple[nn.Module, EncoderConfig]:
    """The timm model truncated to `cfg.num_blocks` blocks (its norms after the blocks dropped unless
    `keep_head_norms`), and the section that rebuilds it without weights."""
    if modality != "image":
        raise ConfigError(f"{key}.family: 'timm' provides image encoders only")
    name, weights, kwargs = timm_source(cfg, key)
    overlay = {"pretrained_cfg_overlay": {"file": str(weights), "custom_load": False}} if weights else {}
    try:
        model = timm.create_model(name, pretrained=cfg.pretrained is not None, num_classes=0, **overlay, **kwargs)
    except TypeError as error:
        raise ConfigError(f"{key}.config: {error}") from None
    except (OSError, RuntimeError) as error:
        raise ConfigError(f"{key}.pretrained: cannot load '{cfg.pretrained}': {str(error).splitlines()[0]}") from None
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not hasattr(model, "forward_features"):
        raise ConfigError(
            f"{key}.config.name: timm model '{name}' is not supported (expected a ViT-style model with blocks)"
        )
    if cfg.num_blocks is not None:
        if not 1 <= cfg.num_blocks <= len(blocks):
            raise ConfigError(f"{key}.num_blocks: got {cfg.num_blocks}, the model has {len(blocks)} blocks")
        model.blocks = blocks[: cfg.num_blocks]
    for head_norm in () if keep_head_norms else HEAD_NORMS:
        if isinstance(getattr(model, head_norm, None), nn.Module):
            setattr(model, head_norm, nn.Identity())
    return model, dataclasses.replace(cfg, pretrained=None, config={"name": name, **kwargs})


def timm_preprocessing(cfg: EncoderConfig, key: str) -> dict[str, Any]:
    """Input size, mean, std and resample of a timm model's pretrained config (`img_size` in config wins)."""
    name, _, kwargs = timm_source(cfg, key)
    pretrained_cfg = timm.models.get_pretrained_cfg(name) if ":" not in name else None
    args = {"img_size": kwargs["img_size"]} if isinstance(kwargs.get("img_size"), int) else {}
    if pretrained_cfg is None and not args:
        return {}
    data = resolve_data_config(args=args, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else None)
    return {
        "size": int(data["input_size"][-1]),
        "mean": list(data["mean"]),
        "std": list(data["std"]),
        "resample": data["interpolation"],
    }
