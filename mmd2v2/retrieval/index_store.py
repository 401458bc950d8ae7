"""Index folders: a FAISS index, its metadata table and a manifest, written atomically and checked on load.

INDEX_DIR/index.faiss     the FAISS index (inner product over L2-normalised embeddings)
INDEX_DIR/metadata.jsonl  one JSON row per vector, in id order (kind, path or text, fields)
INDEX_DIR/manifest.json   checkpoint path and id, dimension, metric, count, index type, search parameters, the items
                          left out (path and reason of each)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmd2v2.errors import DamagedFileError, MissingFileError, UserError
from mmd2v2.files import atomic_folder

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.jsonl"
MANIFEST_FILE = "manifest.json"
FORMAT = "mmd2v2-index-v1"
KIND_PREFIX = '{"kind": "'  # metadata rows start with their kind
EXACT_LIMIT = 100_000  # below this many vectors an exact (flat) index is both fast and small
EXACT_KIND_LIMIT = 10_000  # a kind filter scores every item of a kind this rare (10k x 256-d: 10 MB kept)


@dataclass
class IndexManifest:
    """What an index folder holds and which model made it."""

    checkpoint: str  # folder of the exported model that encoded the vectors
    checkpoint_id: str  # sha256 of its weights: queries must come from the same model
    dim: int
    count: int
    index_type: str  # FAISS factory string
    metric: str = "inner_product"
    search_params: dict[str, int] = field(default_factory=dict)  # nprobe (IVF), efSearch (HNSW)
    sources: list[dict[str, str]] = field(default_factory=list)
    skipped: int = 0  # items that could not be read or decoded
    skipped_items: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"} of each skipped item
    build_seconds: float = 0.0
    created: str = ""
    format: str = FORMAT


def checkpoint_id(export_dir: str | Path) -> str:
    """A short fingerprint of an exported model: sha256 of its safetensors weights."""
    digest = hashlib.sha256()
    with open(Path(export_dir) / "model.safetensors", "rb") as weights:
        for chunk in iter(lambda: weights.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def choose_index_type(count: int, dim: int, memory_budget_bytes: float) -> str:
    """The FAISS factory string for `count` vectors of `dim` floats that fits `memory_budget_bytes`.

    Exact below 100k vectors; HNSW over the raw vectors when vectors and graph fit; else IVF with 4-bit fast-scan
    PQ codes (dim/4 bytes a vector) re-ranked by 8-bit scalar-quantised vectors (dim bytes) when those fit;
    else the PQ codes alone (smallest, lowest recall).
    """
    if count < EXACT_LIMIT:
        return "Flat"
    if count * (dim * 4 + 32 * 2 * 4) * 1.1 <= memory_budget_bytes:
        return "HNSW32,Flat"
    nlist = 2 ** round(math.log2(math.sqrt(count)))
    subquantizers = next(m for m in range(max(2, dim // 4), 0, -1) if dim % m == 0 and m % 2 == 0)
    ivf_pq = f"IVF{nlist},PQ{subquantizers}x4fs"
    if count * (dim + subquantizers / 2) * 1.1 <= memory_budget_bytes:
        return f"{ivf_pq},Refine(SQ8)"
    return ivf_pq


def default_search_params(index_type: str) -> dict[str, int]:
    """Search-time parameters that give high recall for the approximate index types."""
    params = {}
    if index_type.startswith("IVF"):
        params["nprobe"] = 32
    if index_type.startswith("HNSW"):
        params["efSearch"] = 256
    if "Refine" in index_type:
        params["k_factor"] = 8  # re-rank 8k candidates with the finer codes
    return params


def build_faiss_index(vectors: np.ndarray, index_type: str, seed: int = 0) -> Any:
    """A FAISS inner-product index of `vectors` (trained on a sample of at most 64 points per list when needed)."""
    import faiss

    try:
        index = faiss.index_factory(vectors.shape[1], index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise UserError(
            f"--index-type: FAISS cannot build '{index_type}' ({str(error).splitlines()[-1][:120]})"
        ) from None
    if not index.is_trained:
        nlist = getattr(faiss.extract_index_ivf(index), "nlist", 256) if index_type.startswith("IVF") else 256
        sample = min(len(vectors), max(64 * nlist, 10_000))
        if len(vectors) < nlist:
            raise UserError(
                f"index type '{index_type}' needs at least {nlist} vectors to train, the collection has {len(vectors)}"
            )
        rows = (
            np.random.default_rng(seed).choice(len(vectors), sample, replace=False)
            if sample < len(vectors)
            else slice(None)
        )
        index.train(vectors[rows])
    index.add(vectors)
    return index


def apply_search_params(index: Any, params: dict[str, int]) -> None:
    """Set nprobe / efSearch / k_factor on an index (no-op for exact indexes)."""
    import faiss

    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]
    if "efSearch" in params:
        faiss.downcast_index(index).hnsw.efSearch = params["efSearch"]
    if "k_factor" in params:
        faiss.downcast_index(index).k_factor = params["k_factor"]


def write_index_folder(folder: Path, index: Any, rows: list[dict[str, Any]], manifest: IndexManifest) -> None:
    """Write index, metadata and manifest into a temporary sibling, then rename it to `folder` (replacing it)."""
    import faiss

    if index.ntotal != len(rows) or manifest.count != len(rows):
        raise ValueError(
            f"internal: {index.ntotal} vectors, {len(rows)} metadata rows, manifest count {manifest.count}"
        )
    with atomic_folder(folder, "writing") as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        with open(tmp / METADATA_FILE, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        manifest.created = manifest.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        (tmp / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))


def read_manifest(folder: Path) -> IndexManifest:
    """The manifest of an index folder (one-line errors when it is missing or not a manifest)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise MissingFileError(f"{folder}: missing '{MANIFEST_FILE}' (not a complete mmd2v2 index folder)")
    try:
        manifest = IndexManifest(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise DamagedFileError(f"{path}: not a valid manifest ({error})") from None
    if manifest.format != FORMAT:
        raise DamagedFileError(f"{path}: format '{manifest.format}', expected '{FORMAT}'")
    return manifest


class SearchHit:
    """One search result: vector id, score and its metadata row (parsed when first read)."""

    __slots__ = ("id", "score", "_line", "_row")

    def __init__(self, vector_id: int, score: float, line: str) -> None:
        self.id, self.score, self._line, self._row = vector_id, score, line, None

    @property
    def row(self) -> dict[str, Any]:
        """The metadata row of the hit."""
        if self._row is None:
            self._row = json.loads(self._line)
        return self._row

    def to_dict(self) -> dict[str, Any]:
        """{"id", "score", "row"} for JSON output."""
        return {"id": self.id, "score": self.score, "row": self.row}


class SearchResults:
    """Top-k ids and scores of a batch of queries; `results[q]` gives query q's hits with their metadata rows."""

    def __init__(self, scores: np.ndarray, ids: np.ndarray, lines: list[str]) -> None:
        self.scores, self.ids, self._lines = scores, ids, lines

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, query: int) -> list[SearchHit]:
        return [
            SearchHit(i, s, self._lines[i])
            for s, i in zip(self.scores[query].tolist(), self.ids[query].tolist())
            if i >= 0
        ]


class IndexFolder:
    """An opened index folder, validated: every file present and every count and dimension consistent."""

    def __init__(self, folder: str | Path) -> None:
        import faiss

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MissingFileError(f"index folder '{self.folder}' does not exist")
        for name in (INDEX_FILE, METADATA_FILE, MANIFEST_FILE):
            if not (self.folder / name).is_file():
                raise MissingFileError(f"{self.folder}: missing '{name}' (not a complete mmd2v2 index folder)")
        self.manifest = read_manifest(self.folder)
        try:
            self.index = faiss.read_index(str(self.folder / INDEX_FILE))
        except RuntimeError:
            raise DamagedFileError(f"{self.folder / INDEX_FILE}: corrupt or not a FAISS index") from None
        self.lines = (self.folder / METADATA_FILE).read_text(encoding="utf-8").splitlines()
        self._kinds: dict[str, np.ndarray] = {}
        self._kind_matrices: dict[str, np.ndarray | None] = {}
        self.exact_kind_limit = EXACT_KIND_LIMIT
        counts = {"index": self.index.ntotal, "metadata rows": len(self.lines), "manifest count": self.manifest.count}
        if len(set(counts.values())) != 1:
            raise DamagedFileError(
                f"{self.folder}: counts disagree ({', '.join(f'{k} {v}' for k, v in counts.items())})"
            )
        if self.index.d != self.manifest.dim:
            raise DamagedFileError(
                f"{self.folder}: index dimension {self.index.d} but manifest says {self.manifest.dim}"
            )
        apply_search_params(self.index, self.manifest.search_params)
        if (
            self.stores_vectors
            and self.manifest.index_type.startswith("IVF")
            and "Refine" not in self.manifest.index_type
        ):
            faiss.extract_index_ivf(self.index).make_direct_map()  # lets `reconstruct` look up a stored vector

    @property
    def stores_vectors(self) -> bool:
        """Whether a stored vector can be read back by id: not from 4-bit fast-scan PQ codes ("PQ64x4fs") without a
        refine stage, whose `reconstruct` crashes the process in FAISS."""
        parts = self.manifest.index_type.split(",")
        return not any(part.endswith("fs") for part in parts) or any(part.startswith("Refine") for part in parts)

    def row(self, vector_id: int) -> dict[str, Any]:
        """The metadata row of one vector (parsed on demand)."""
        if not 0 <= vector_id < len(self.lines):
            raise KeyError(f"id {vector_id} is not in this index (0..{len(self.lines) - 1})")
        return json.loads(self.lines[vector_id])

    def check_queries(self, dim: int, model_id: str | None) -> None:
        """Refuse queries from a model other than the one that built the index."""
        if dim != self.manifest.dim:
            raise UserError(
                f"{self.folder}: index holds {self.manifest.dim}-d vectors, the query model makes {dim}-d ones"
            )
        if model_id is not None and model_id != self.manifest.checkpoint_id:
            raise UserError(
                f"{self.folder}: built with checkpoint id {self.manifest.checkpoint_id} "
                f"({self.manifest.checkpoint}), the query model's id is {model_id}"
            )

    def search(self, queries: np.ndarray, k: int, kind: str | None = None) -> SearchResults:
        """Top-k hits (score-descending) for each query vector; with `kind` ('image' or 'text'), only items of
        that kind: all of them scored when they are few (`exact_kind_limit`), else the index is asked for more
        neighbours until k of them are found or it has none left."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.index.d)
        if kind is None:
            scores, ids = self.index.search(queries, min(k, self.index.ntotal))
            return SearchResults(scores, ids, self.lines)
        wanted = self.kind_mask(kind)
        if not wanted.any():
            none = np.zeros((len(queries), 0))
            return SearchResults(none.astype(np.float32), none.astype(np.int64), self.lines)
        vectors = self._kind_vectors(kind)
        if vectors is not None:  # few items of this kind: score them all (exact, and no graph can miss one)
            ids = np.flatnonzero(wanted)
            scores = queries @ vectors.T
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            return SearchResults(np.take_along_axis(scores, top, axis=1), ids[top], self.lines)
        fetch = min(self.index.ntotal, max(4 * k, 64))
        while True:
            scores, ids = self.index.search(queries, fetch)
            keep = (ids >= 0) & wanted[np.maximum(ids, 0)]
            if fetch == self.index.ntotal or keep.sum(axis=1).min() >= k:
                break
            fetch = min(self.index.ntotal, 4 * fetch)
        out_scores, out_ids = np.zeros((len(ids), k), dtype=np.float32), np.full((len(ids), k), -1, dtype=np.int64)
        for query in range(len(ids)):
            chosen = np.flatnonzero(keep[query])[:k]  # the index returns neighbours best first
            out_scores[query, : len(chosen)], out_ids[query, : len(chosen)] = scores[query, chosen], ids[query, chosen]
        return SearchResults(out_scores, out_ids, self.lines)

    def _kind_vectors(self, kind: str) -> np.ndarray | None:
        """The stored vectors of a kind that has at most `exact_kind_limit` items (None: more, or the index does not
        store readable vectors); kept after the first call."""
        if kind not in self._kind_matrices:
            ids = np.flatnonzero(self.kind_mask(kind))
            matrix = None
            if self.stores_vectors and len(ids) <= self.exact_kind_limit:
                matrix = self.index.reconstruct_batch(ids)
            self._kind_matrices[kind] = (
                None if matrix is None else np.asarray(matrix, dtype=np.float32).reshape(len(ids), -1)
            )
        return self._kind_matrices[kind]

    def kind_mask(self, kind: str) -> np.ndarray:
        """(count,) bool: which items are of `kind` ('image' or 'text'); computed once per kind."""
        if kind not in ("image", "text"):
            raise ValueError(f"kind: got '{kind}', expected 'image' or 'text'")
        if kind not in self._kinds:
            self._kinds[kind] = np.fromiter((_row_kind(line) == kind for line in self.lines), bool, len(self.lines))
        return self._kinds[kind]


def _row_kind(line: str) -> str | None:
    """The "kind" of a metadata row: read from the line's start where it comes first (as written), else parsed."""
    if line.startswith(KIND_PREFIX):
        return line[len(KIND_PREFIX) : line.index('"', len(KIND_PREFIX))]
    return json.loads(line).get("kind")
