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
    located: dict[str, tuple[str, int | None]] = {}  # encoder parameter -> (its encoder's prefix, block index)
    for name in names:
        scope = next((name[: name.index(s) + len(s)] for s in ENCODER_SCOPES if s in name), None)
        if scope is not None:
            found = BLOCK_INDEX.search(name[len(scope) - 1 :])
            located[name] = (scope, int(found.group(1)) if found else None)
    blocks: dict[str, int] = {}
    for scope, index in located.values():
        if index is not None:
            blocks[scope] = max(blocks.get(scope, 0), index + 1)
    scales = {}
    for name in names:
        if name not in located:
            scales[name] = 1.0
            continue
        scope, index = located[name]
        n = blocks.get(scope, 0)
        depth = index + 1 if index is not None else (0 if "embed" in name[len(scope) :] else n + 1)
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
