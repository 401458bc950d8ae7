"""AdamW parameter groups shared by every program that trains."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from mmd2v2.config import OptimConfig

NO_DECAY_KEYWORDS = ("embedding", "logit_scale", "gamma")
ENCODER_SCOPES = ("image_encoder.", "text_encoder.")  # the dual encoder's unimodal encoders, wherever it is nested
BLOCK_INDEX = re.compile(r"\.(?:layer|layers|blocks)\.(\d+)\.")  # HF `encoder.layer.N.`, timm `blocks.N.`


def encoder_lr_scales(names: list[str], encoder_lr_scale: float, layer_decay: float) -> dict[str, float]:
    """Learning-rate multiplier of every parameter name: 1 outside the unimodal encoders; inside one with n blocks,
    `encoder_lr_scale * layer_decay ** (n + 1 - depth)`, depth 0 for its embeddings, i + 1 for block i and n + 1 for
    what follows the blocks (a final norm), as layer-wise decay in BEiT / data2vec fine-tuning."""
    scopes: dict[str, str] = {}
    for name in names:
        for scope in ENCODER_SCOPES:
            if scope in name:
                scopes[name] = name[: name.index(scope) + len(scope)]
                break
    blocks: dict[str, int] = {}
    for name, scope in scopes.items():
        found = BLOCK_INDEX.search(name[len(scope) - 1 :])
        if found:
            blocks[scope] = max(blocks.get(scope, 0), int(found.group(1)) + 1)
    scales = {}
    for name in names:
        scope = scopes.get(name)
        if scope is None:
            scales[name] = 1.0
            continue
        n = blocks.get(scope, 0)
        found = BLOCK_INDEX.search(name[len(scope) - 1 :])
        depth = int(found.group(1)) + 1 if found else (0 if "embed" in name[len(scope) :] else n + 1)
        scales[name] = encoder_lr_scale * layer_decay ** (n + 1 - depth)
    return scales


def parameter_groups(module: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters, each with its own `lr`: no weight decay on biases, norms,
    embeddings, temperatures and LayerScale; the unimodal encoders' learning rate scaled by
    `optim.encoder_lr_scale` and `optim.layer_decay` (see `encoder_lr_scales`)."""
    named = [(name, param) for name, param in module.named_parameters() if param.requires_grad]
    scales = encoder_lr_scales([name for name, _ in named], optim.encoder_lr_scale, optim.layer_decay)
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, param in named:
        decay = not (param.ndim < 2 or any(k in name for k in NO_DECAY_KEYWORDS))
        key = (decay, scales[name])
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": optim.weight_decay if decay else 0.0,
                "lr": optim.lr * scales[name],
            }
        groups[key]["params"].append(param)
    return list(groups.values())
