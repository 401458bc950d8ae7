"""Reader for Karpathy-split caption JSON (COCO, Flickr30K, and the demo set)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mmd2v2.errors import DamagedFileError, MissingFileError, UserError


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split with all of its captions."""

    image_id: int
    path: Path
    captions: tuple[str, ...]


@dataclass
class Dropped:
    """Rows or captions a reader left out, counted by reason, with where the first one was."""

    counts: Counter[str] = field(default_factory=Counter)
    first: str | None = None

    def add(self, reason: str, where: str, count: int = 1) -> None:
        """Count `count` items dropped for `reason` at `where`."""
        if count > 0:
            self.counts[reason] += count
            self.first = self.first or where

    def total(self) -> int:
        """All dropped items."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """'N (reason n, ...; first: where)' or '0'."""
        if not self.counts:
            return "0"
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.counts.items()))
        return f"{self.total()} ({reasons}; first: {self.first})"


SPLIT_ALIASES = {"train": ("train", "restval")}  # COCO's 'restval' images are training images


def load_karpathy_split(
    json_path: str | Path, split: str, image_root: str | Path | None = None, dropped: Dropped | None = None
) -> list[ImageRecord]:
    """Records of one split ('train' includes COCO's 'restval'); image path = root/filepath/filename.

    Empty captions, and images left with none, are dropped and counted in `dropped`.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise MissingFileError(f"caption file '{json_path}' does not exist (expected a Karpathy-split JSON)")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedFileError(f"{json_path}: not valid UTF-8 JSON ({error})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UserError(f"{json_path}: expected a top-level object with an 'images' list")
    root = Path(image_root) if image_root is not None else json_path.parent
    wanted = SPLIT_ALIASES.get(split, (split,))
    records = []
    for index, entry in enumerate(images):
        where = f"{json_path}: images[{index}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected an object")
        for key in ("filename", "split", "sentences"):
            if key not in entry:
                raise UserError(f"{where}: missing field '{key}'")
        if entry["split"] not in wanted:
            continue
        captions = []
        for s_index, sentence in enumerate(entry["sentences"]):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str):
                raise UserError(f"{where}.sentences[{s_index}]: expected an object with a string 'raw'")
            if raw.strip():
                captions.append(raw.strip())
        if dropped is not None:
            dropped.add("empty caption", where, len(entry["sentences"]) - len(captions))
        if not captions:
            continue
        image_id = entry.get("imgid", index)
        records.append(
            ImageRecord(int(image_id), root / entry.get("filepath", "") / entry["filename"], tuple(captions))
        )
    if not records:
        raise UserError(f"{json_path}: split '{split}' has no images")
    return records
