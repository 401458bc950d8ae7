"""Speed of the recall@k computation on a COCO-sized test set, against a dense-matrix baseline, in the same run.

    python scripts/bench_recall.py [--images 5000] [--per-image 5] [--dim 256]

Random L2-normalised embeddings (captions near their image). Ours: `recall_at_k` (exact scores in query blocks,
bounded memory, with the tie rule; there are no ties here). Baseline: one dense image x caption score matrix with
NumPy and a full argsort per row. Both must give the same recalls.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmd2v2.retrieval.recall import recall_at_k  # noqa: E402


def dense_baseline(
    images: np.ndarray, texts: np.ndarray, owner: np.ndarray, ks: list[int]
) -> dict[str, dict[str, float]]:
    """Recall@k from the full score matrix and argsort (memory N x M)."""
    scores = images @ texts.T
    text_order = np.argsort(-scores, axis=1)[:, : max(ks)]
    i2t = np.where(
        (owner[text_order] == np.arange(len(images))[:, None]).any(axis=1),
        (owner[text_order] == np.arange(len(images))[:, None]).argmax(axis=1),
        max(ks),
    )
    image_order = np.argsort(-scores.T, axis=1)[:, : max(ks)]
    hits = image_order == owner[:, None]
    t2i = np.where(hits.any(axis=1), hits.argmax(axis=1), max(ks))
    return {
        "image_to_text": {f"R@{k}": 100 * float(np.mean(i2t < k)) for k in ks},
        "text_to_image": {f"R@{k}": 100 * float(np.mean(t2i < k)) for k in ks},
    }


def main(argv: list[str] | None = None) -> None:
    """Print the timing table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.images, args.dim)).astype(np.float32)
    owner = np.repeat(np.arange(args.images), args.per_image)
    texts = images[owner] + 6.0 * rng.normal(size=(len(owner), args.dim)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    ks = [1, 5, 10]
    timings, results = {}, {}
    for name, fn in (
        ("recall_at_k (blocked, ties)", lambda: recall_at_k(images, texts, owner, ks)),
        ("dense matrix + argsort", lambda: dense_baseline(images, texts, owner, ks)),
    ):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[name] = fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    ours, baseline = results.values()
    for direction in ours:
        for k in ours[direction]:
            assert abs(ours[direction][k] - baseline[direction][k]) < 1e-9, "both methods must agree"
    print(f"{args.images} images x {len(owner)} captions, dim {args.dim}, best of {args.repeats}")
    print(f"{'method':<30} {'seconds':>8} {'I→T R@5':>8} {'T→I R@5':>8}")
    for name, seconds in timings.items():
        print(
            f"{name:<30} {seconds:>8.2f} {results[name]['image_to_text']['R@5']:>8.2f} {results[name]['text_to_image']['R@5']:>8.2f}"
        )


if __name__ == "__main__":
    main()
