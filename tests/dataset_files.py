"""Writers of small datasets in the real on-disk formats the training sources read (tiny PNGs made with PIL)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(value: int, size: int = 8) -> bytes:
    """A tiny grey PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value % 256, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, value: int) -> Path:
    """Write a tiny PNG (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(value))
    return path


def write_flickr30k(root: Path, num_images: int) -> Path:
    """dataset_flickr30k.json as Karpathy released it: no filepath, images in flickr30k-images/."""
    images = []
    for index in range(num_images):
        name = f"{1000 + index}.jpg"
        write_png(root / "flickr30k-images" / name, index)
        split = "test" if index == num_images - 1 else "train"
        images.append(
            {
                "filename": name,
                "split": split,
                "sentids": [2 * index, 2 * index + 1],
                "imgid": index,
                "sentences": [
                    {"raw": f"Picture {index} first.", "tokens": [], "imgid": index, "sentid": 2 * index},
                    {"raw": f"Picture {index} second.", "tokens": [], "imgid": index, "sentid": 2 * index + 1},
                ],
            }
        )
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"dataset": "flickr30k", "images": images}))
    return path


def write_shard(path: Path, samples: list[dict[str, bytes]]) -> Path:
    """A webdataset tar: every sample's files are KEY.EXT members, consecutive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for sample in samples:
            key = sample["__key__"].decode()
            for ext, data in sample.items():
                if ext != "__key__":
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    return path


def write_shards(folder: Path, num_shards: int, per_shard: int) -> str:
    """`num_shards` shards of `per_shard` PNG + txt samples; returns the brace pattern naming them."""
    for shard in range(num_shards):
        samples = [
            {
                "__key__": f"{shard:04d}{i:04d}".encode(),
                "png": png_bytes(shard * per_shard + i),
                "txt": f"sample {shard * per_shard + i}".encode(),
            }
            for i in range(per_shard)
        ]
        write_shard(folder / f"{shard:06d}.tar", samples)
    return str(folder / f"{{000000..{num_shards - 1:06d}}}.tar")
