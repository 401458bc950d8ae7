"""fairseq2 pipeline backend (own environment, .ci/fairseq2.sh): sharding, batches, normalisation, seeds, bad images."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fairseq2")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mmd2v2.data.fairseq2_pipeline import SKIP_REASON, build_pair_pipeline  # noqa: E402
from mmd2v2.data.karpathy import Dropped, ImageRecord, load_karpathy_split  # noqa: E402

SIZE = 6
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.5)
# (file, RGB colour, image size, number of captions): solid colours stay exact through the bicubic resize
IMAGES = [
    ("a.png", (255, 0, 0), (6, 6), 2),
    ("b.png", (0, 128, 255), (9, 5), 2),
    ("c.png", (10, 20, 30), (6, 6), 1),
    ("d.png", (200, 200, 200), (3, 12), 2),
    ("e.png", (77, 1, 254), (6, 6), 2),
]


def write_split(root: Path, corrupt: bool = False) -> list[ImageRecord]:
    """PNGs + a Karpathy JSON in `root`; with `corrupt`, one more image whose PNG is cut short."""
    entries = []
    for imgid, (name, colour, size, n_captions) in enumerate(IMAGES):
        Image.new("RGB", size, colour).save(root / name)
        entries.append(
            {
                "filename": name,
                "imgid": imgid,
                "split": "train",
                "sentences": [{"raw": f"{name} caption {k}"} for k in range(n_captions)],
            }
        )
    if corrupt:
        Image.new("RGB", (SIZE, SIZE), (1, 2, 3)).save(root / "bad.png")
        (root / "bad.png").write_bytes((root / "bad.png").read_bytes()[:40])
        entries.append(
            {
                "filename": "bad.png",
                "imgid": 99,
                "split": "train",
                "sentences": [{"raw": "bad one"}, {"raw": "bad two"}],
            }
        )
    (root / "split.json").write_text(json.dumps({"images": entries}), encoding="utf-8")
    return load_karpathy_split(root / "split.json", "train")


def run(records: list[ImageRecord], **options: object) -> list[dict]:
    """One pass over a pipeline with the test's size/mean/std and batches of 3 (seed 0 unless given)."""
    settings: dict = {"image_size": SIZE, "mean": MEAN, "std": STD, "batch_size": 3, "seed": 0, **options}
    return list(build_pair_pipeline(records, **settings))


def pairs_of(batches: list[dict]) -> list[tuple[int, str]]:
    return [(int(i), caption) for batch in batches for i, caption in zip(batch["image_ids"], batch["captions"])]


def test_every_pair_once_per_epoch_across_two_ranks(tmp_path: Path) -> None:
    records = write_split(tmp_path)
    expected = sorted((r.image_id, c) for r in records for c in r.captions)
    assert len(expected) == 9  # does not divide by 2: rank 0 gets 5 pairs, rank 1 gets 4
    ranks = [run(records, rank=rank, world_size=2) for rank in (0, 1)]
    assert [len(pairs_of(batches)) for batches in ranks] == [5, 4]
    assert sorted(pairs_of(ranks[0]) + pairs_of(ranks[1])) == expected
    for batches in ranks:
        assert [len(b["captions"]) for b in batches][:-1] == [3] * (len(batches) - 1)
        for batch in batches:
            n = len(batch["captions"])
            assert batch["pixel_values"].shape == (n, 3, SIZE, SIZE) and batch["pixel_values"].dtype == torch.float32
            assert batch["image_ids"].shape == (n,) and batch["image_ids"].dtype == torch.int64


def test_normalisation_matches_hand_computation(tmp_path: Path) -> None:
    records = write_split(tmp_path)
    colours = {imgid: colour for imgid, (_, colour, _, _) in enumerate(IMAGES)}
    for batch in run(records):
        for pixels, image_id in zip(batch["pixel_values"], batch["image_ids"]):
            expected = [(c / 255 - m) / s for c, m, s in zip(colours[int(image_id)], MEAN, STD)]
            for channel in range(3):
                torch.testing.assert_close(pixels[channel], torch.full((SIZE, SIZE), expected[channel]))


def test_seeded_order_is_reproducible_and_changes_per_epoch(tmp_path: Path) -> None:
    records = write_split(tmp_path)
    assert pairs_of(run(records, seed=3)) == pairs_of(run(records, seed=3))
    assert pairs_of(run(records, seed=3)) != pairs_of(run(records, seed=4))
    first, second = (build_pair_pipeline(records, SIZE, MEAN, STD, 3, seed=5) for _ in range(2))
    epochs = []
    for pipeline in (first, second):
        one = pairs_of(list(pipeline))
        pipeline.reset()
        epochs.append((one, pairs_of(list(pipeline))))
    assert epochs[0] == epochs[1] and epochs[0][0] != epochs[0][1]
    assert sorted(epochs[0][0]) == sorted(epochs[0][1])


def test_corrupt_png_is_skipped_and_counted(tmp_path: Path) -> None:
    records = write_split(tmp_path, corrupt=True)
    skipped = Dropped()
    pipeline = build_pair_pipeline(records, SIZE, MEAN, STD, 4, seed=1, num_parallel_calls=3, skipped=skipped)
    pairs = pairs_of(list(pipeline))
    assert len(pairs) == 9 and all(image_id != 99 for image_id, _ in pairs)
    assert skipped.counts == Counter({SKIP_REASON: 2}) and skipped.first == str(tmp_path / "bad.png")
    pipeline.reset()
    assert len(pairs_of(list(pipeline))) == 9 and skipped.total() == 4  # counted each time met


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"rank": 2, "world_size": 2}, "rank: got 2 with world_size 2"),
        ({"batch_size": 0}, "batch_size: got 0"),
        ({"mean": (0.5, 0.5)}, "mean/std: got 2/3 values"),
        ({"std": (1.0, 0.0, 1.0)}, "std: got [1.0, 0.0, 1.0]"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path: Path, option: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        run(write_split(tmp_path), **option)
    assert message in str(error.value) and "\n" not in str(error.value)
