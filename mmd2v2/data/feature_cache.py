"""The feature cache on disk: fp16 memory-mapped shards of frozen-network outputs and a manifest tying them to
the checkpoints, preprocessing and dataset they were computed from.

Kinds: `teacher_cls` (per image and stored view: the teacher's CLS target), `image_tokens` (per image and view:
a frozen image encoder's output sequence), `text_tokens` (per pair: a frozen text encoder's output sequence, padded to
data.max_text_length). Rows are split into shards of `rows_per_shard`; each shard file is written under a
temporary name and renamed when complete, so an interrupted build resumes and never leaves a half-written
shard. `manifest.json` is written last: a folder without it is not a cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmd2v2.errors import MissingFileError, UserError
from mmd2v2.files import atomic_path, write_text_atomic

FORMAT = 1
PER_IMAGE = ("teacher_cls", "image_tokens")
PER_PAIR = ("text_tokens",)
MANIFEST = "manifest.json"


def tensor_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (names, dtypes, shapes, bytes): what its outputs depend on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def text_fingerprint(lines: list[str]) -> str:
    """SHA-256 of lines of text (the dataset's image paths and captions, a tokenizer's vocabulary)."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()


def shard_name(kind: str, shard: int) -> str:
    """File name of one shard of a kind."""
    return f"{kind}-{shard:05d}.npy"


def valid_name(shard: int) -> str:
    """File name of the per-image 'decodable' flags of an image shard."""
    return f"valid-{shard:05d}.npy"


@dataclass(frozen=True)
class CachePlan:
    """What a cache holds: which kinds, their row shapes, how many rows, and the fingerprints it must match."""

    kinds: dict[str, tuple[int, ...]]  # kind -> shape of one row
    num_images: int
    num_pairs: int
    rows_per_shard: int
    fingerprints: dict[str, Any]
    views: int = 1  # per-image kinds store this many (augmented) views of each image

    def num_rows(self, kind: str) -> int:
        """Rows of a kind: one per image or one per pair."""
        return self.num_images if kind in PER_IMAGE else self.num_pairs

    def num_shards(self, kind: str) -> int:
        """Shard files of a kind."""
        return -(-self.num_rows(kind) // self.rows_per_shard)

    def shard_rows(self, kind: str, shard: int) -> range:
        """Row indices held by one shard."""
        start = shard * self.rows_per_shard
        return range(start, min(start + self.rows_per_shard, self.num_rows(kind)))


def write_shard(folder: Path, name: str, array: np.ndarray) -> None:
    """Write one .npy shard atomically (temporary name, then rename)."""
    with atomic_path(folder / name) as tmp, tmp.open("wb") as handle:
        np.save(handle, array)


def write_manifest(folder: Path, plan: CachePlan, skipped_images: int) -> None:
    """Publish the cache: the manifest is written last, atomically."""
    manifest = {
        "format": FORMAT,
        "num_images": plan.num_images,
        "num_pairs": plan.num_pairs,
        "rows_per_shard": plan.rows_per_shard,
        "views": plan.views,
        "kinds": {k: list(v) for k, v in plan.kinds.items()},
        "skipped_images": skipped_images,
        "fingerprints": plan.fingerprints,
    }
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2))


def _difference(found: Any, expected: Any, path: str = "") -> str | None:
    """The first key path where two fingerprint trees differ."""
    if isinstance(found, dict) and isinstance(expected, dict):
        for key in sorted(set(found) | set(expected)):
            where = _difference(found.get(key), expected.get(key), f"{path}.{key}" if path else key)
            if where:
                return where
        return None
    return None if found == expected else path


class FeatureCache:
    """A finished cache folder, opened read-only with memory maps; rows come back as fp16 tensors."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            raise MissingFileError(f"cache.dir: '{self.folder}' has no {MANIFEST} (not a finished feature cache)")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise UserError(
                f"cache.dir: '{self.folder}' has cache format {self.manifest.get('format')}, expected {FORMAT}"
            )
        self.kinds = {k: tuple(v) for k, v in self.manifest["kinds"].items()}
        self.rows_per_shard = int(self.manifest["rows_per_shard"])
        self.views = int(self.manifest["views"])
        self._maps: dict[tuple[str, int], np.ndarray] = {}  # opened lazily, so DataLoader workers open their own

    def check(self, plan: CachePlan) -> None:
        """Refuse a cache made for other checkpoints, preprocessing, data or kinds (one line naming the difference)."""
        where = _difference(self.manifest["fingerprints"], plan.fingerprints)
        if where is None and self.kinds != plan.kinds:
            where = f"kinds ({sorted(self.kinds)} with row shapes {list(self.kinds.values())})"
        if where is None and (self.manifest["num_images"], self.manifest["num_pairs"]) != (
            plan.num_images,
            plan.num_pairs,
        ):
            where = "dataset size"
        if where is None and self.views != plan.views:
            where = f"number of views ({self.views})"
        if where is not None:
            raise UserError(
                f"cache.dir: '{self.folder}' was computed for a different {where}; rebuild it "
                "(mmd2v2 cache --config ...) or point cache.dir at another folder"
            )

    def _map(self, name: str, shard: int) -> np.ndarray:
        key = (name, shard)
        if key not in self._maps:
            path = self.folder / (valid_name(shard) if name == "valid" else shard_name(name, shard))
            self._maps[key] = np.load(path, mmap_mode="r")
        return self._maps[key]

    def row(self, kind: str, index: int, view: int = 0) -> Tensor:
        """One stored row (fp16) of a kind; per-image kinds hold one row per view."""
        shard, offset = divmod(index, self.rows_per_shard)
        stored = self._map(kind, shard)[offset]
        return torch.from_numpy(np.array(stored[view] if kind in PER_IMAGE else stored))

    def image_valid(self, image_row: int) -> bool:
        """Whether the image decoded when the cache was built (always true for a cache of text rows only)."""
        if not any(kind in PER_IMAGE for kind in self.kinds):
            return True
        shard, offset = divmod(image_row, self.rows_per_shard)
        return bool(self._map("valid", shard)[offset])

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into DataLoader workers without open memory maps."""
        return {**self.__dict__, "_maps": {}}
