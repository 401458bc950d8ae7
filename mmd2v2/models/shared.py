"""The shared transformer: pre-LN blocks with scaled-dot-product attention, applied to one modality at a time."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmd2v2.config import SharedConfig
from mmd2v2.errors import UserError


class LayerScale(nn.Module):
    """Per-channel learnable scale (CaiT), initialised to a small constant."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        """Scale `x` channel-wise."""
        return x * self.gamma


class SharedBlock(nn.Module):
    """One pre-LayerNorm transformer block with an optional key-padding mask."""

    def __init__(self, cfg: SharedConfig) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise UserError(f"model.shared.width {cfg.width} is not divisible by model.shared.heads {cfg.heads}")
        self.heads = cfg.heads
        self.dropout = cfg.dropout
        self.norm1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)
        self.norm2 = nn.LayerNorm(cfg.width)
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, cfg.width)
        )
        scale = cfg.layer_scale_init
        self.scale1 = LayerScale(cfg.width, scale) if scale is not None else nn.Identity()
        self.scale2 = LayerScale(cfg.width, scale) if scale is not None else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, key_padding: Tensor | None) -> Tensor:
        """x: (B, T, W); key_padding: (B, T) bool, True where the token is padding."""
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_padding is None else ~key_padding[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.scale1(self.out(attended.transpose(1, 2).reshape(b, t, w))))
        return x + self.drop(self.scale2(self.mlp(self.norm2(x))))


class SharedTransformer(nn.Module):
    """A stack of shared blocks followed by a final LayerNorm."""

    def __init__(self, cfg: SharedConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SharedBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.checkpointing = False  # recompute each block's activations during backward (set by the trainer)

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        """Run all blocks and return the normalised token sequence."""
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, key_padding, use_reentrant=False) if recompute else block(x, key_padding)
        return self.norm(x)
