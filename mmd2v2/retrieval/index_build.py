"""Encode a collection in shards and assemble an index folder; resumable, and split across ranks.

The collection (sorted, so every run cuts the same shards) is encoded shard by shard into `.OUT.partial/`:
each finished shard is an `.npy` of embeddings and a `.jsonl` of its metadata rows, both renamed into place
when complete. A killed build rerun with the same arguments skips the finished shards. Under a launcher
(`torchrun`/`deepspeed`, which set RANK and WORLD_SIZE) rank r encodes shards r, r + world, ...; rank 0 then
waits for all shards and writes the index folder under a temporary name before renaming it to OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mmd2v2.data.images import undecodable_reason
from mmd2v2.errors import BusyError, DamagedFileError, ExistingFileError, UserError
from mmd2v2.files import atomic_path, write_text_atomic
from mmd2v2.models.exported import ExportedModel
from mmd2v2.retrieval.collection import Collection, image_path
from mmd2v2.retrieval.encode import encode_image_files, encode_texts
from mmd2v2.retrieval.index_store import (
    IndexFolder,
    IndexManifest,
    build_faiss_index,
    checkpoint_id,
    choose_index_type,
    default_search_params,
    write_index_folder,
)

PLAN_FILE = "plan.json"


@dataclass
class BuildOptions:
    """How to encode and index a collection."""

    index_type: str = "auto"  # "auto" or a FAISS factory string ("Flat", "HNSW32,Flat", "IVF1024,PQ32", ...)
    memory_budget_gb: float = 4.0  # for "auto": the index must fit in this much memory
    shard_size: int = 10_000
    batch_size: int = 128
    overwrite: bool = False
    wait_timeout_s: float = 24 * 3600.0  # rank 0 waits this long for the other ranks' shards
    progress: bool = True


def encode_rows(
    bundle: ExportedModel, rows: list[dict[str, Any]], sources: list[dict[str, str]], batch_size: int
) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, str]]]:
    """Embeddings of the rows that could be read (images decoded, texts tokenised), those rows, and the skipped
    images with the reason each failed."""
    images = [r for r in rows if r["kind"] == "image"]
    texts = [r for r in rows if r["kind"] == "text"]
    paths = [image_path(r, sources) for r in images]
    image_emb, positions = encode_image_files(bundle, paths, batch_size)
    vectors, kept = [image_emb], [images[i] for i in positions]
    decoded = set(positions)
    skipped = [
        {"path": str(path), "reason": undecodable_reason(path)} for i, path in enumerate(paths) if i not in decoded
    ]
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        vectors.append(encode_texts(bundle, [r["text"] for r in chunk]).float().cpu().numpy())
        kept.extend(chunk)
    return np.concatenate(vectors), kept, skipped


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _shard_paths(work: Path, shard: int) -> tuple[Path, Path]:
    return work / f"shard_{shard:05d}.npy", work / f"shard_{shard:05d}.jsonl"


def _encode_shard(bundle: ExportedModel, collection: Collection, work: Path, shard: int, options: BuildOptions) -> None:
    """Encode one shard and publish it atomically (metadata first, embeddings last as the completion mark)."""
    rows = collection.rows[shard * options.shard_size : (shard + 1) * options.shard_size]
    vectors, kept, skipped = encode_rows(bundle, rows, collection.sources, options.batch_size)
    npy, jsonl = _shard_paths(work, shard)
    with atomic_path(jsonl) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write(json.dumps({"skipped": skipped}) + "\n")
        for row in kept:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    with atomic_path(npy) as tmp, tmp.open("wb") as handle:
        np.save(handle, vectors)


def _plan(bundle_dir: Path, model_id: str, collection: Collection, options: BuildOptions) -> dict[str, Any]:
    return {
        "checkpoint_id": model_id,
        "checkpoint": str(bundle_dir.resolve()),
        "count": len(collection.rows),
        "shard_size": options.shard_size,
        "sources": collection.sources,
    }


def _prepare_work_dir(out: Path, plan: dict[str, Any]) -> Path:
    """The partial-build folder shared by all ranks; a leftover from another model or collection is refused."""
    work = out.with_name(f".{out.name}.partial")
    work.mkdir(parents=True, exist_ok=True)
    plan_path = work / PLAN_FILE
    if not plan_path.exists():  # every rank writes the same plan; whichever rename lands last is identical
        write_text_atomic(plan_path, json.dumps(plan, indent=2))
    if json.loads(plan_path.read_text()) != plan:
        raise UserError(
            f"'{work}' holds an unfinished build of another model or collection; delete it or use a new --out"
        )
    return work


def _wait_for(paths: list[Path], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = [p.name for p in paths if not p.exists()]
            raise BusyError(
                f"waited {timeout_s:.0f} s for {len(missing)} shard(s) of other ranks (first: {missing[0]})"
            )
        time.sleep(1.0)


def build_index(
    bundle: ExportedModel, bundle_dir: Path, collection: Collection, out: Path, options: BuildOptions
) -> IndexManifest | None:
    """Encode `collection` (this rank's shards) and, on rank 0, write the index folder `out`; returns its manifest."""
    rank, world = _rank_world()
    if out.exists() and not options.overwrite:
        raise ExistingFileError(
            f"--out: '{out}' already exists (use --overwrite to replace it, or `index add` to extend it)"
        )
    start = time.perf_counter()
    model_id = checkpoint_id(bundle_dir)
    work = _prepare_work_dir(out, _plan(bundle_dir, model_id, collection, options))
    num_shards = -(-len(collection.rows) // options.shard_size)
    mine = [s for s in range(num_shards) if s % world == rank and not _shard_paths(work, s)[0].exists()]
    for shard in tqdm(mine, desc=f"encode shards (rank {rank})", unit="shard", disable=not options.progress):
        _encode_shard(bundle, collection, work, shard, options)
    if rank != 0:
        return None
    _wait_for([_shard_paths(work, s)[0] for s in range(num_shards)], options.wait_timeout_s)
    vectors, rows, skipped = _read_shards(work, num_shards)
    if not rows:
        raise UserError("no item of the collection could be read (all images undecodable?)")
    index_type = (
        choose_index_type(len(rows), vectors.shape[1], options.memory_budget_gb * 2**30)
        if options.index_type == "auto"
        else options.index_type
    )
    index = build_faiss_index(vectors, index_type)
    manifest = IndexManifest(
        checkpoint=str(bundle_dir.resolve()),
        checkpoint_id=model_id,
        dim=int(vectors.shape[1]),
        count=len(rows),
        index_type=index_type,
        search_params=default_search_params(index_type),
        sources=collection.sources,
        skipped=len(skipped) + len(collection.skipped),
        skipped_items=skipped + collection.skipped,
        build_seconds=round(time.perf_counter() - start, 2),
    )
    write_index_folder(out, index, rows, manifest)
    shutil.rmtree(work)
    return manifest


def _read_shards(work: Path, num_shards: int) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, str]]]:
    vectors, rows, skipped = [], [], []
    for shard in range(num_shards):
        npy, jsonl = _shard_paths(work, shard)
        lines = jsonl.read_text(encoding="utf-8").splitlines()
        skipped.extend(json.loads(lines[0])["skipped"])
        shard_rows = [json.loads(line) for line in lines[1:]]
        shard_vectors = np.load(npy, allow_pickle=False)
        if len(shard_vectors) != len(shard_rows):
            raise DamagedFileError(
                f"{npy}: {len(shard_vectors)} vectors but {len(shard_rows)} metadata rows; delete the shard and rerun"
            )
        vectors.append(shard_vectors)
        rows.extend(shard_rows)
    for number, row in enumerate(rows):
        row["id"] = number
    return np.concatenate(vectors).astype(np.float32), rows, skipped


def add_to_index(
    bundle: ExportedModel, bundle_dir: Path, folder: Path, collection: Collection, batch_size: int = 128
) -> IndexManifest:
    """Encode `collection` and append it to an existing index folder (rewritten atomically)."""
    opened = IndexFolder(folder)
    opened.check_queries(bundle.config.model.embed_dim, checkpoint_id(bundle_dir))
    start = time.perf_counter()
    offset = len(opened.manifest.sources)
    for row in collection.rows:
        if row["kind"] == "image":
            row["source"] += offset
    sources = opened.manifest.sources + collection.sources
    vectors, kept, skipped = encode_rows(bundle, collection.rows, sources, batch_size)
    if not kept:
        raise UserError("nothing to add: no item could be read")
    rows = [json.loads(line) for line in opened.lines]
    for number, row in enumerate(kept, start=len(rows)):
        row["id"] = number
    opened.index.add(vectors)
    manifest = opened.manifest
    manifest.count, manifest.sources = len(rows) + len(kept), sources
    manifest.skipped += len(skipped) + len(collection.skipped)
    manifest.skipped_items += skipped + collection.skipped
    manifest.build_seconds = round(manifest.build_seconds + time.perf_counter() - start, 2)
    write_index_folder(folder, opened.index, rows + kept, manifest)
    return manifest
