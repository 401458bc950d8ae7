"""Seeding and the random-number state a resumed run restores."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Random-number state of this process (stochastic depth and dropout draw from it)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [*np.random.get_state()[1].tolist(), np.random.get_state()[2]],
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved, so a resumed run draws the same numbers as an uninterrupted one."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.asarray(state["numpy"][:-1], dtype=np.uint32), int(state["numpy"][-1]), 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
