"""Karpathy JSON reading, preprocessing, tokenisation, bad images, and the resumable sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmd2v2.data.karpathy import load_karpathy_split
from mmd2v2.data.pairs import CaptionPairDataset, PairCollator, ResumableBatchSampler
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.tokenization import build_word_tokenizer


def _write_coco_like(tmp_path: Path) -> Path:
    """A COCO-style Karpathy JSON with train/restval/val/test images, one of them corrupt."""
    images = []
    for index, split in enumerate(["train", "restval", "val", "test"]):
        folder = tmp_path / ("train2014" if split in ("train", "restval") else "val2014")
        folder.mkdir(exist_ok=True)
        name = f"COCO_{index:012d}.jpg"
        Image.fromarray(np.full((20, 30, 3), 40 * index, dtype=np.uint8)).save(folder / name)
        images.append(
            {
                "filepath": folder.name,
                "filename": name,
                "imgid": index,
                "split": split,
                "cocoid": 1000 + index,
                "sentids": [2 * index, 2 * index + 1],
                "sentences": [
                    {"raw": f"A photo number {index}.", "tokens": ["a", "photo"], "imgid": index, "sentid": 2 * index},
                    {"raw": "  ", "tokens": [], "imgid": index, "sentid": 2 * index + 1},
                ],
            }
        )
    (tmp_path / "val2014" / images[3]["filename"]).write_bytes(b"\xff\xd8 not really a jpeg")
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": images}))
    return path


def test_karpathy_split_includes_restval_and_drops_blank_captions(tmp_path: Path) -> None:
    path = _write_coco_like(tmp_path)
    train = load_karpathy_split(path, "train")
    assert [r.image_id for r in train] == [0, 1]
    assert train[1].path == tmp_path / "train2014" / "COCO_000000000001.jpg"
    assert train[0].captions == ("A photo number 0.",)
    assert [r.image_id for r in load_karpathy_split(path, "test")] == [3]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid UTF-8 JSON"),
        ('{"imgs": []}', "expected a top-level object with an 'images' list"),
        ('{"images": [{"filename": "a.jpg", "sentences": []}]}', r"images\[0\]: missing field 'split'"),
        (
            '{"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": 3}]}]}',
            r"images\[0\].sentences\[0\]: expected an object with a string 'raw'",
        ),
        (
            '{"images": [{"filename": "a.jpg", "split": "val", "sentences": [{"raw": "x"}]}]}',
            "split 'test' has no images",
        ),
    ],
)
def test_bad_caption_files_name_file_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_karpathy_split(path, "test")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_caption_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_karpathy_split(tmp_path / "nope.json", "train")


def test_preprocessing_resizes_and_normalises(tmp_path: Path) -> None:
    Image.fromarray(np.full((20, 30, 3), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    pixels = ImagePreprocessor(16, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]).load(tmp_path / "white.png")
    assert pixels.shape == (3, 16, 16)
    torch.testing.assert_close(pixels, torch.full((3, 16, 16), 2.0))


def test_undecodable_images_are_skipped_and_counted(tmp_path: Path) -> None:
    path = _write_coco_like(tmp_path)
    records = load_karpathy_split(path, "train") + load_karpathy_split(path, "test")
    dataset = CaptionPairDataset(records, ImagePreprocessor(16, [0.5] * 3, [0.5] * 3))
    tokenizer = build_word_tokenizer(["a", "photo", "number"])
    batch = PairCollator(tokenizer, 8)([dataset[i] for i in range(len(dataset))])
    assert int(batch["num_skipped"]) == 1
    assert batch["pixel_values"].shape == (2, 16, 16, 3) and batch["image_ids"].tolist() == [0, 1]
    assert batch["input_ids"][0, 0] == tokenizer.cls_token_id


def test_word_tokenizer_frames_and_pads() -> None:
    tokenizer = build_word_tokenizer(["red", "circle", "a"])
    out = tokenizer(["A red circle", "a purple circle"], padding=True, return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(out["input_ids"][1])
    assert tokens == ["[CLS]", "a", "[UNK]", "circle", "[SEP]"]
    assert tokenizer.pad_token_id == 0


def test_sampler_resumes_in_the_same_order_and_splits_ranks() -> None:
    full = list(ResumableBatchSampler(50, 4, 2, 1, 0, seed=3, start_step=0, total_steps=13))
    resumed = list(ResumableBatchSampler(50, 4, 2, 1, 0, seed=3, start_step=5, total_steps=13))
    assert resumed == full[5 * 2 :]
    steps_per_epoch = 50 // 8
    first_epoch = [i for batch in full[: steps_per_epoch * 2] for i in batch]
    assert len(set(first_epoch)) == len(first_epoch) == 48  # no repeats inside an epoch
    ranks = [list(ResumableBatchSampler(50, 4, 2, 2, r, seed=3, start_step=0, total_steps=3)) for r in (0, 1)]
    seen = [i for rank in ranks for batch in rank for i in batch]
    assert len(seen) == len(set(seen)) == 3 * 16  # each global batch split across ranks, nothing twice
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(5, 4, 2, 1, 0, seed=0, start_step=0, total_steps=1)
