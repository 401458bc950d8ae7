"""Image-caption batches from a fairseq2 data pipeline (optional backend, own environment: docs/formats.md).

fairseq2 pins its own torch and transformers, so this module needs nothing of mmd2v2 beyond the
Karpathy reader and runs in the `.venv-fairseq2` environment that `.ci/fairseq2.sh` builds.

Images are decoded with PIL inside the pipeline's threaded `map`, not with fairseq2's native
`ImageDecoder`: in 0.8.1 that decoder reads only JPEG and PNG, and returns a palette PNG as its
palette indices and a 1-bit PNG as packed bits (one channel each). PIL releases the GIL while
decoding, so the `num_parallel_calls` threads decode in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from fairseq2.data.data_pipeline import DataPipeline, read_sequence
from PIL import Image

from mmd2v2.data.images import open_rgb
from mmd2v2.data.karpathy import Dropped, ImageRecord
from mmd2v2.errors import ImageDecodeError

SKIP_REASON = "undecodable image"


def _check(
    records: Sequence[ImageRecord],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    rank: int,
    world_size: int,
    num_parallel_calls: int,
) -> None:
    """Raise a one-line ValueError for the first invalid argument of `build_pair_pipeline`."""
    if not records:
        raise ValueError("records: got none, expected at least one ImageRecord")
    if image_size < 1:
        raise ValueError(f"image_size: got {image_size}, expected a positive integer")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean/std: got {len(mean)}/{len(std)} values, expected 3 each (RGB)")
    if any(value <= 0 for value in std):
        raise ValueError(f"std: got {list(std)}, expected positive values")
    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size}, expected a positive integer")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: got {rank} with world_size {world_size}, expected 0 <= rank < world_size")
    if num_parallel_calls < 1:
        raise ValueError(f"num_parallel_calls: got {num_parallel_calls}, expected a positive integer")


def build_pair_pipeline(
    records: Sequence[ImageRecord],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_parallel_calls: int = 2,
    skipped: Dropped | None = None,
) -> DataPipeline:
    """A fairseq2 pipeline over every (image, caption) pair of `records`, batched for one rank.

    All ranks must pass the same `records` and `seed`: the pairs are shuffled with `seed`, then rank
    `rank` keeps every `world_size`-th pair, so one pass over all ranks yields each pair exactly once
    (the first ranks get one more pair when the count does not divide). Images are RGB, resized
    (bicubic) to `image_size`², scaled to [0, 1] and normalised by `mean`/`std`. Each example is
    `{"pixel_values": float32 (B, 3, S, S), "captions": list[str], "image_ids": int64 (B,)}`; the last
    batch may be smaller. Call `pipeline.reset()` between epochs: the shuffle continues its seeded
    generator, so every epoch has a new order that the same seed reproduces.

    A pair whose image cannot be read or decoded is left out and counted in `skipped`
    (reason `SKIP_REASON`, `skipped.first` names the first path), each time it is met.
    """
    _check(records, image_size, mean, std, batch_size, rank, world_size, num_parallel_calls)
    lock = threading.Lock()
    mean_t = torch.tensor([float(v) for v in mean], dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor([float(v) for v in std], dtype=torch.float32).view(3, 1, 1)
    pairs = [(str(record.path), caption, record.image_id) for record in records for caption in record.captions]

    def decode(pair: tuple[str, str, int]) -> dict[str, Any] | None:
        path, caption, image_id = pair
        try:
            rgb = open_rgb(path)
        except ImageDecodeError:
            if skipped is not None:
                with lock:
                    skipped.add(SKIP_REASON, path)
            return None
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
        pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(image_size, image_size, 3)
        pixels = pixels.permute(2, 0, 1).to(torch.float32).div_(255.0)
        return {"pixel_values": (pixels - mean_t) / std_t, "caption": caption, "image_id": image_id}

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "captions": [example["caption"] for example in examples],
            "image_ids": torch.tensor([example["image_id"] for example in examples], dtype=torch.int64),
        }

    return (
        read_sequence(pairs)
        .shuffle(0, seed=seed)
        .shard(rank, world_size, allow_uneven=True)
        .map(decode, num_parallel_calls=num_parallel_calls)
        .filter(lambda example: example is not None)
        .bucket(batch_size)
        .map(collate)
        .prefetch(2)
        .and_return()
    )
