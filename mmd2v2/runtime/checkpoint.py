"""Resumable training checkpoints: DeepSpeed state per step, marked complete only after it is fully written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

COMPLETE_MARKER = "complete.json"


def checkpoint_dir(output_dir: str | Path) -> Path:
    """Folder that holds a run's resumable checkpoints."""
    return Path(output_dir) / "checkpoints"


def complete_tags(output_dir: str | Path) -> list[str]:
    """Tags of fully written checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.is_dir() and (p / COMPLETE_MARKER).is_file()]
    return sorted(tags, key=lambda tag: int(tag.rsplit("_", 1)[-1]))


def latest_complete_tag(output_dir: str | Path) -> str | None:
    """Tag of the newest fully written checkpoint, or None."""
    tags = complete_tags(output_dir)
    return tags[-1] if tags else None


def save_checkpoint(engine: Any, output_dir: str | Path, step: int, client_state: dict[str, Any], keep: int) -> str:
    """Save DeepSpeed state under step_N, mark it complete, then prune older and unfinished ones."""
    root = checkpoint_dir(output_dir)
    tag = f"step_{step:08d}"
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    if dist.get_rank() == 0:
        (root / tag / COMPLETE_MARKER).write_text(json.dumps({"step": step, "skipped": client_state.get("skipped", 0)}))
        complete = complete_tags(output_dir)
        for path in root.iterdir():
            stale = path.is_dir() and (
                path.name not in complete or path.name in complete[: max(0, len(complete) - keep)]
            )
            if stale and path.name != tag:
                shutil.rmtree(path, ignore_errors=True)
    dist.barrier()
    return tag


def load_checkpoint(engine: Any, output_dir: str | Path, tag: str) -> dict[str, Any]:
    """Restore engine, optimizer and scheduler state from `tag`; returns the saved client state."""
    _, client_state = engine.load_checkpoint(str(checkpoint_dir(output_dir)), tag=tag)
    if client_state is None:
        raise RuntimeError(f"checkpoint '{checkpoint_dir(output_dir) / tag}' could not be loaded")
    return client_state
