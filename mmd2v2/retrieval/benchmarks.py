"""The standard retrieval benchmarks by name: where their Karpathy-split files live under a data root."""

from __future__ import annotations

from pathlib import Path

from mmd2v2.errors import MissingFileError

# name → (caption JSON, image folder) relative to the data root; the test split is the Karpathy 5k / 1k test
BENCHMARKS = {
    "coco": ("coco/dataset_coco.json", "coco/images"),  # images/train2014, images/val2014 (the JSON's filepath)
    "flickr30k": ("flickr30k/dataset_flickr30k.json", "flickr30k/images"),  # images/<id>.jpg (flickr30k-images)
}


def benchmark_files(name_or_path: str, data_root: Path, image_root: Path | None) -> tuple[Path, Path | None]:
    """The caption JSON and image root of `coco`, `flickr30k` or a Karpathy-style JSON path."""
    if name_or_path in BENCHMARKS:
        json_name, images = BENCHMARKS[name_or_path]
        json_path = data_root / json_name
        if not json_path.is_file():
            raise MissingFileError(
                f"--dataset {name_or_path}: '{json_path}' does not exist (expected Karpathy's "
                f"{Path(json_name).name} there; set --data-root)"
            )
        return json_path, image_root or data_root / images
    path = Path(name_or_path)
    if not path.is_file():
        raise MissingFileError(
            f"--dataset: '{path}' is neither {' nor '.join(BENCHMARKS)} nor an existing Karpathy-style JSON"
        )
    return path, image_root
