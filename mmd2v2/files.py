"""File-system helpers shared by everything that writes folders: publish a finished folder atomically."""

from __future__ import annotations

import shutil
from pathlib import Path


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished folder `tmp` to `folder`, replacing an existing one without ever leaving it half-written."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
