"""Running means of loss terms between log points."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


class MetricWindow:
    """Running means of the loss terms between two log points (kept as tensors until read)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, Tensor]) -> None:
        """Accumulate one micro-batch's terms."""
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0) + value.detach().float()
        self.count += 1

    def means(self) -> dict[str, float]:
        """Means since the last call over all ranks (the only point where the loop waits for the device), then reset."""
        if self.sums and dist.is_initialized() and dist.get_world_size() > 1:
            stacked = torch.stack(list(self.sums.values())) / dist.get_world_size()
            dist.all_reduce(stacked)
            self.sums = dict(zip(self.sums, stacked))
        means = {k: float(v) / max(1, self.count) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return means
