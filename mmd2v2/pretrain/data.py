"""Unpaired pretraining data: every file under an image folder, or the lines of a caption file.

Nothing is checked up front (a folder may hold millions of files): a file that does not decode as an image (broken,
empty, not an image at all) is skipped when its batch is read and counted once; empty and non-UTF-8 caption lines
are dropped while reading and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmd2v2.config import ConfigError


def image_files(folder: str | Path) -> list[Path]:
    """Every non-hidden file under `folder` (recursive, sorted): the images, and whatever else is there to be skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"config key 'data.images': '{root}' is not a folder")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise ConfigError(f"config key 'data.images': '{root}' holds no files")
    return files


@dataclass
class CaptionCorpus:
    """The usable lines of a caption file and the count of lines dropped (empty or not UTF-8)."""

    texts: list[str]
    dropped: int = 0
    source: str = ""
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of the dropped lines (the first 20)


def read_captions(path: str | Path) -> CaptionCorpus:
    """Read a caption file, one caption per line, keeping the usable lines."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config key 'data.texts': '{path}' does not exist (expected a text file, one caption per line)"
        )
    corpus = CaptionCorpus([], source=str(path))
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = ""
        if text:
            corpus.texts.append(text)
            continue
        corpus.dropped += 1
        if len(corpus.bad_lines) < 20:
            corpus.bad_lines.append(number)
    if not corpus.texts:
        raise ConfigError(f"config key 'data.texts': '{path}' holds no usable caption line")
    return corpus
