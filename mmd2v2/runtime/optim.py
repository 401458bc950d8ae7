"""AdamW parameter groups shared by every program that trains."""

from __future__ import annotations

from typing import Any

from torch import nn

NO_DECAY_KEYWORDS = ("embedding", "logit_scale", "gamma")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, embeddings, temperatures and LayerScale."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or any(k in name for k in NO_DECAY_KEYWORDS)
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
