"""A FIFO queue of recent feature vectors (with an optional label per entry), saved with the module state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    """The `size` most recent vectors; only filled entries are ever returned (no random initial rows)."""

    features: Tensor
    labels: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"memory bank needs a positive size and dim, got size={size} dim={dim}")
        self.size = size
        self.register_buffer("features", torch.zeros(size, dim, dtype=torch.float32))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.filled: int | None = 0  # host copy of `count`, so reading the bank never waits for the device

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        """Load like any module; the host copy of the count is re-read on next use."""
        super()._load_from_state_dict(*args, **kwargs)
        self.filled = None

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> FeatureQueue:
        """Apply `fn` like any module, but keep the features in float32 (e.g. under a bf16 engine)."""
        super()._apply(fn, recurse)
        self.features = self.features.float()
        return self

    @torch.no_grad()
    def enqueue(self, features: Tensor, labels: Tensor | None = None) -> None:
        """Append a batch (B, dim), overwriting the oldest entries; a batch over `size` keeps its last rows."""
        features = features.detach()[-self.size :].to(self.features.device, torch.float32)
        if labels is None:
            labels = torch.full((len(features),), -1, dtype=torch.long)
        positions = (self.ptr + torch.arange(len(features), device=self.ptr.device)) % self.size
        self.features[positions] = features
        self.labels[positions] = labels[-self.size :].to(self.labels.device, torch.long)
        self.ptr.copy_((self.ptr + len(features)) % self.size)
        self.count.copy_(torch.clamp(self.count + len(features), max=self.size))
        if self.filled is not None:
            self.filled = min(self.filled + len(features), self.size)

    def contents(self) -> tuple[Tensor, Tensor]:
        """The filled entries (features (n, dim), labels (n,)), in slot order."""
        if self.filled is None:
            self.filled = int(self.count)
        n = self.filled
        return self.features[:n], self.labels[:n]
