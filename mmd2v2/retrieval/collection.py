"""Collections to index: the images of a folder or a dataset split, the lines of a caption file, in a stable order.

Every item has a metadata row: `{"kind": "image", "source": S, "path": "relative/path.jpg"}` for an image under
source S's root, or `{"kind": "text", "text": "...", ...extra fields}` for a caption. The order is sorted and
deterministic, so a rerun of an interrupted build cuts the same shards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmd2v2.errors import DamagedFileError, MissingFileError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class Collection:
    """Items to encode, as metadata rows, plus the sources they came from (roots of image folders, files)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"} of lines dropped while reading


def add_image_folder(collection: Collection, folder: str | Path) -> None:
    """Append every image file under `folder` (recursive, sorted by relative path)."""
    root = Path(folder)
    if not root.is_dir():
        raise MissingFileError(f"--images: '{root}' is not a folder")
    paths = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not paths:
        raise UserError(f"--images: no image files ({', '.join(IMAGE_SUFFIXES)}) under '{root}'")
    source = len(collection.sources)
    collection.sources.append({"kind": "images", "root": str(root.resolve())})
    collection.rows.extend({"kind": "image", "source": source, "path": path} for path in paths)


def add_text_file(collection: Collection, path: str | Path) -> None:
    """Append the captions of a text file: one per line (.txt), or JSON lines with a "text" field (.jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--texts: '{path}' does not exist (expected a .txt or .jsonl caption file)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DamagedFileError(f"{path}: not UTF-8 text (byte {error.start})") from None
    collection.sources.append({"kind": "texts", "path": str(path.resolve())})
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            collection.skipped.append({"path": f"{path}:{number}", "reason": "empty caption"})
            continue
        if path.suffix.lower() != ".jsonl":
            collection.rows.append({"kind": "text", "text": line.strip()})
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise UserError(f"{path}:{number}: expected an object with a string field 'text'")
        if not text.strip():
            collection.skipped.append({"path": f"{path}:{number}", "reason": "empty caption"})
            continue
        collection.rows.append(
            {"kind": "text", **{k: v for k, v in record.items() if k not in ("kind", "text")}, "text": text.strip()}
        )


def add_karpathy_split(collection: Collection, json_path: Path, split: str, image_root: Path | None) -> None:
    """Append the images of a Karpathy-split file's `split`, each with its image_id and captions as fields."""
    from mmd2v2.data.karpathy import load_karpathy_split

    records = load_karpathy_split(json_path, split, image_root)
    root = Path(image_root) if image_root is not None else json_path.parent
    source = len(collection.sources)
    collection.sources.append(
        {"kind": "images", "root": str(root.resolve()), "dataset": str(json_path.resolve()), "split": split}
    )
    for record in records:
        collection.rows.append(
            {
                "kind": "image",
                "source": source,
                "path": record.path.relative_to(root).as_posix(),
                "image_id": record.image_id,
                "captions": list(record.captions),
            }
        )


def read_collection(
    images: list[Path] | None = None,
    texts: list[Path] | None = None,
    datasets: list[tuple[Path, str, Path | None]] | None = None,
) -> Collection:
    """A collection from image folders, caption files and Karpathy splits (json, split, image root)."""
    collection = Collection()
    for folder in images or []:
        add_image_folder(collection, folder)
    for path in texts or []:
        add_text_file(collection, path)
    for json_path, split, image_root in datasets or []:
        add_karpathy_split(collection, json_path, split, image_root)
    if not collection.rows:
        raise UserError("nothing to index: give --images FOLDER, --texts FILE and/or --dataset SPEC")
    return collection


def image_path(row: dict[str, Any], sources: list[dict[str, str]]) -> Path:
    """Absolute path of an image row, resolved against its source folder."""
    return Path(sources[row["source"]]["root"]) / row["path"]
