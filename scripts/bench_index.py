"""Index benchmark: build time, memory, queries/s and recall@10 of exact, HNSW and IVF-PQ indexes, and the overhead of
mmd2v2's search path (index folder + metadata) over raw FAISS with the same parameters, in the same run.

    python scripts/bench_index.py [--count 1000000] [--dim 256] [--queries 1000]

Data: L2-normalised clustered synthetic vectors (Gaussian blobs around random centres), queries drawn the same way.
Recall@10 is measured against the exact search's top 10.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmd2v2.retrieval.index_store import (  # noqa: E402
    IndexFolder,
    IndexManifest,
    apply_search_params,
    build_faiss_index,
    choose_index_type,
    default_search_params,
    write_index_folder,
)


def clustered(count: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """`count` unit vectors in `clusters` Gaussian blobs."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        block = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
        out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def timed(fn, repeats: int = 3) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    """Best wall time (s) of `repeats` calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> None:
    """Print the comparison table."""
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument(
        "--types",
        nargs="*",
        default=["Flat", "HNSW32,Flat", "auto-ivfpq"],
        help="FAISS factory strings; auto-ivfpq = what --index-type auto picks under a tight memory budget",
    )
    args = parser.parse_args(argv)
    data = clustered(args.count, args.dim, args.clusters, seed=0)
    queries = clustered(args.queries, args.dim, args.clusters, seed=0)[: args.queries]  # same centres, new points
    queries = queries + 0.05 * np.random.default_rng(1).normal(size=queries.shape).astype(np.float32)
    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {args.count:,} x {args.dim} vectors, "
        f"{args.queries} queries (one batch), k=10"
    )
    exact_ids = None
    rows = [{"kind": "text", "text": f"item {i}", "id": i} for i in range(args.count)]
    header = f"{'index':<16} {'build s':>8} {'MB':>8} {'raw q/s':>9} {'ours q/s':>9} {'overhead':>9} {'recall@10':>10}"
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.types:
            index_type = (
                choose_index_type(args.count, args.dim, 0.35 * args.count * args.dim * 4)
                if spec == "auto-ivfpq"
                else spec
            )
            build_s, index = timed(lambda index_type=index_type: build_faiss_index(data, index_type), repeats=1)
            params = default_search_params(index_type)
            folder = Path(tmp) / index_type.replace(",", "_")
            manifest = IndexManifest(
                checkpoint="synthetic",
                checkpoint_id="synthetic",
                dim=args.dim,
                count=args.count,
                index_type=index_type,
                search_params=params,
            )
            write_index_folder(folder, index, rows, manifest)
            megabytes = (folder / "index.faiss").stat().st_size / 2**20
            opened = IndexFolder(folder)  # applies the same search parameters to its own copy
            raw = faiss.read_index(str(folder / "index.faiss"))
            apply_search_params(raw, params)
            raw_s, (_, found) = timed(lambda raw=raw: raw.search(queries, 10))  # type: ignore[misc]
            ours_s, results = timed(lambda opened=opened: opened.search(queries, 10))
            assert np.array_equal(results.ids, found), "our search path must return exactly FAISS's results"  # type: ignore[union-attr]
            assert results[0][0].row["id"] == found[0][0]  # type: ignore[index]
            if exact_ids is None:
                exact_ids = (
                    found if index_type == "Flat" else faiss.knn(queries, data, 10, faiss.METRIC_INNER_PRODUCT)[1]
                )
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact_ids)])
            overhead = 100 * (ours_s - raw_s) / raw_s
            lines.append(
                f"{index_type + (' ' + str(params) if params else ''):<16} {build_s:>8.1f} {megabytes:>8.0f} "
                f"{args.queries / raw_s:>9.0f} {args.queries / ours_s:>9.0f} {overhead:>8.1f}% {recall:>10.3f}"
            )
            print(lines[-1] if len(lines) > 1 else header + "\n" + lines[-1], flush=True)
            del index, raw, opened


if __name__ == "__main__":
    main()
