"""File-system helpers shared by everything that writes files and folders: publish them atomically."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (same suffix, so writers that go by it keep working) to write; when the
    block succeeds it is renamed over `path`, when it fails it is removed. Readers never see a half-written file."""
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling of `path`, then rename it over `path` (never half-written)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_folder(folder: Path, tag: str = "tmp") -> Iterator[Path]:
    """Yield a fresh, empty temporary sibling of `folder` (`.NAME.TAG`) to fill; when the block succeeds it replaces
    `folder` (see replace_folder), when it fails it is removed."""
    tmp = folder.with_name(f".{folder.name}.{tag}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, folder)


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
