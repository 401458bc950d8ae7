"""Which floating-point precision a run uses."""

from __future__ import annotations

import torch


def resolved_precision(precision: str) -> str:
    """'auto' → bf16 where a GPU supports it, else fp32; explicit values stay."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
