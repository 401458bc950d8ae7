"""Image-caption tables (CSV, TSV, JSONL, Parquet) with a path-or-URL column and a caption column."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from mmd2v2.data.karpathy import Dropped, ImageRecord
from mmd2v2.errors import MissingExtraError, MissingFileError, UserError

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
Row = tuple[str, object, object]  # (location for messages, image value, caption value)


def _require_pyarrow(what: str) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"{what} needs pyarrow: pip install 'mmd2v2[data]'") from None


def _missing_column(path: Path, column: str, found: list[str]) -> UserError:
    return UserError(f"{path}: no column '{column}' (found: {', '.join(map(str, found)) or 'none'})")


def _csv_rows(path: Path, delimiter: str, columns: tuple[str, str]) -> Iterator[Row]:
    """Rows of a CSV/TSV file; bytes that are not UTF-8 survive as surrogates so the row can be refused alone."""
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as file:
        reader = csv.DictReader(file, delimiter=delimiter)
        for column in columns:
            if column not in (reader.fieldnames or []):
                raise _missing_column(path, column, list(reader.fieldnames or []))
        for row in reader:
            yield f"{path} line {reader.line_num}", row.get(columns[0]), row.get(columns[1])


def _jsonl_rows(path: Path, columns: tuple[str, str]) -> Iterator[Row]:
    """Rows of a JSON-lines file; an undecodable or malformed line yields a row of Nones."""
    checked = False
    with path.open("rb") as file:
        for number, line in enumerate(file, 1):
            where = f"{path} line {number}"
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                yield where, None, None
                continue
            if not isinstance(row, dict):
                yield where, None, None
                continue
            if not checked:
                for column in columns:
                    if column not in row:
                        raise _missing_column(path, column, list(row))
                checked = True
            yield where, row.get(columns[0]), row.get(columns[1])


def _parquet_rows(path: Path, columns: tuple[str, str]) -> Iterator[Row]:
    """Rows of a Parquet file (needs pyarrow)."""
    _require_pyarrow(f"{path}: reading Parquet")
    import pyarrow.parquet as pq

    names = pq.ParquetFile(path).schema_arrow.names
    for column in columns:
        if column not in names:
            raise _missing_column(path, column, names)
    table = pq.read_table(path, columns=list(dict.fromkeys(columns)))
    images, captions = table.column(columns[0]).to_pylist(), table.column(columns[1]).to_pylist()
    for number, (image, caption) in enumerate(zip(images, captions, strict=True)):
        yield f"{path} row {number}", image, caption


def table_rows(path: Path, image_column: str, caption_column: str) -> Iterator[Row]:
    """(location, image, caption) of every row of a table, by the file's suffix."""
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown table format '{path.suffix}' (expected one of {', '.join(TABLE_SUFFIXES)})")
    if not path.is_file():
        raise MissingFileError(f"table '{path}' does not exist")
    columns = (image_column, caption_column)
    if kind == "parquet":
        return _parquet_rows(path, columns)
    if kind == "jsonl":
        return _jsonl_rows(path, columns)
    return _csv_rows(path, "\t" if kind == "tsv" else ",", columns)


def img2dataset_paths(folder: Path) -> dict[str, Path]:
    """URL -> downloaded file of an img2dataset `files` output folder (per-shard NNNNN.parquet + NNNNN/KEY.ext)."""
    _require_pyarrow(f"img2dataset_dir '{folder}'")
    import pyarrow.parquet as pq

    if not folder.is_dir():
        raise MissingFileError(f"img2dataset_dir '{folder}' is not a folder")
    paths: dict[str, Path] = {}
    for meta in sorted(folder.glob("*.parquet")):
        shard = folder / meta.stem
        files = {Path(name).stem: name for name in os.listdir(shard)} if shard.is_dir() else {}
        names = pq.ParquetFile(meta).schema_arrow.names
        for column in ("url", "key", "status"):
            if column not in names:
                raise _missing_column(meta, column, names)
        table = pq.read_table(meta, columns=["url", "key", "status"]).to_pydict()
        for url, key, status in zip(table["url"], table["key"], table["status"], strict=True):
            if status == "success" and key in files:
                paths[url] = shard / files[key]
    return paths


def _is_text(value: object) -> bool:
    return isinstance(value, str) and not any("\udc80" <= ch <= "\udcff" for ch in value)


def load_table(
    path: str | Path,
    image_column: str,
    caption_column: str,
    image_root: str | Path | None = None,
    img2dataset_dir: str | Path | None = None,
    dropped: Dropped | None = None,
) -> list[ImageRecord]:
    """Records of a table: rows grouped by image; bad rows are dropped and counted by reason in `dropped`."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    downloads = img2dataset_paths(Path(img2dataset_dir)) if img2dataset_dir is not None else {}
    dropped = dropped if dropped is not None else Dropped()
    captions: dict[str, list[str]] = {}
    for where, image, caption in table_rows(path, image_column, caption_column):
        if not (_is_text(image) and _is_text(caption)):
            dropped.add("missing value, malformed row or text that is not UTF-8", where)
        elif not caption.strip():
            dropped.add("empty caption", where)
        elif "://" in image and image not in downloads:
            dropped.add("URL not downloaded", where)
        else:
            captions.setdefault(image, []).append(caption.strip())
    if not captions:
        raise UserError(f"{path}: no usable row (dropped: {dropped.summary()})")
    return [
        ImageRecord(index, downloads[image] if image in downloads else root / image, tuple(texts))
        for index, (image, texts) in enumerate(captions.items())
    ]
