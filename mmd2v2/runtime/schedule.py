"""Learning-rate schedule: linear warm-up then cosine decay."""

from __future__ import annotations

import math


class WarmupCosine:
    """LR multiplier for LambdaLR: 0→1 linearly over `warmup_steps`, then cosine down to `min_ratio`."""

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup_steps = max(0, min(warmup_steps, self.total_steps))
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        """Multiplier of the base LR after `step` optimizer steps."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
