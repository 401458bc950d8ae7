"""webdataset shards: counting, splitting across ranks and workers, resume, bad samples, and DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dataset_files import png_bytes, write_shard, write_shards

from mmd2v2.config import SourceConfig
from mmd2v2.data import mixture
from mmd2v2.data.mixture import MixedPairStream, MixedSource
from mmd2v2.data.pairs import PairCollator
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.sources import load_training_data
from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.data.webdataset_source import count_samples

PRE = ImagePreprocessor(8, [0.5] * 3, [0.5] * 3)


def _source(pattern: str | list[str], **extra: object) -> MixedSource:
    data = load_training_data([SourceConfig(kind="webdataset", path=pattern, **extra)], PRE, seed=0)
    assert data.streaming
    return data.sources[0]


def _rank_batches(
    source: MixedSource,
    rank: int,
    world: int,
    workers: int,
    start: int,
    total: int,
    monkeypatch: pytest.MonkeyPatch,
    micro: int = 2,
) -> list[list[str]]:
    """What a DataLoader with `workers` workers yields on `rank`: the workers' micro-batches taken in turn."""
    streams = []
    for worker in range(workers):
        monkeypatch.setattr(mixture, "get_worker_info", lambda w=worker: type("Info", (), {"id": w})())
        streams.append(iter(list(MixedPairStream([source], micro, rank, world, workers, 5, start, total))))
    return [[next(streams[turn % workers]).caption for _ in range(micro)] for turn in range(total - start)]


def test_brace_patterns_and_lists_name_the_same_shards(tmp_path: Path) -> None:
    pattern = write_shards(tmp_path, 3, 4)
    listed = [str(tmp_path / f"00000{i}.tar") for i in range(3)]
    assert len(_source(pattern).data) == len(_source(listed).data) == 12
    with pytest.raises(FileNotFoundError, match="000003.tar' does not exist"):
        _source(str(tmp_path / "{000000..000003}.tar"))


@pytest.mark.parametrize(("world", "workers"), [(1, 1), (2, 1), (2, 2), (1, 3)])
def test_every_sample_once_per_epoch_across_ranks_and_workers(
    tmp_path: Path, world: int, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _source(write_shards(tmp_path, 12, 4))  # 48 samples; 12 shards split over world × workers readers
    seen = []
    for rank in range(world):
        batches = _rank_batches(source, rank, world, workers, 0, 48 // (2 * world), monkeypatch)
        seen += [c for b in batches for c in b]
    assert sorted(seen) == sorted(f"sample {i}" for i in range(48)), f"{world * workers} readers"


def test_resume_continues_with_the_same_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _source(write_shards(tmp_path, 6, 5))
    for rank in (0, 1):
        full = _rank_batches(source, rank, 2, 2, 0, 40, monkeypatch)
        for start in (1, 7, 16, 33):  # mid-shard, mid-epoch and in a later epoch
            assert _rank_batches(source, rank, 2, 2, start, 40, monkeypatch) == full[start:]


def test_epochs_reshuffle_the_shard_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _source(write_shards(tmp_path, 8, 2))
    batches = _rank_batches(source, 0, 1, 1, 0, 16, monkeypatch)
    first, second = [c for b in batches[:8] for c in b], [c for b in batches[8:] for c in b]
    assert sorted(first) == sorted(second) and first != second


def test_fewer_shards_than_readers_is_a_clear_error(tmp_path: Path) -> None:
    source = _source(write_shards(tmp_path, 3, 4))
    with pytest.raises(ValueError, match="3 non-empty shards for 4 readers \\(2 ranks × 2 workers\\)"):
        MixedPairStream([source], 2, 0, 2, 2, 0, 0, 10)


def test_bad_samples_are_counted_and_a_damaged_shard_ends_early(tmp_path: Path) -> None:
    write_shard(
        tmp_path / "a.tar",
        [
            {"__key__": b"k0", "png": png_bytes(1), "txt": b"fine", "json": b'{"caption": "fine"}'},
            {"__key__": b"k1", "jpg": b"\xff\xd8 truncated jpeg", "txt": b"broken image", "json": b'{"caption": "x"}'},
            {"__key__": b"k2", "png": png_bytes(2), "txt": b"  ", "json": b'{"caption": " "}'},
            {"__key__": b"k3", "png": png_bytes(3), "txt": b"caf\xe9", "json": b'{"caption": "fine fine fine"}'},
            {"__key__": b"k4", "txt": b"no image", "json": b'{"title": "no caption field"}'},
            {"__key__": b"k5", "webp": png_bytes(4), "txt": b"fine fine fine fine", "json": b"{not json"},
        ],
    )
    for key, expected in (("txt", (2, 2, 1)), ("json", (1, 3, 1))):
        source = _source(str(tmp_path / "a.tar"), caption_key=key)
        samples = list(MixedPairStream([source], 1, 0, 1, 0, 0, 0, 6))
        batch = PairCollator(build_word_tokenizer(["fine"]), 4)(samples)
        assert (int(batch["num_skipped"]), int(batch["num_bad_captions"]), int(batch["num_truncated"])) == expected, key
    damaged = write_shard(
        tmp_path / "b.tar", [{"__key__": f"d{i}".encode(), "png": png_bytes(i), "txt": b"x"} for i in range(6)]
    )
    damaged.write_bytes(damaged.read_bytes()[:2600])  # cut inside a later member's data
    kept = count_samples(damaged)
    assert 0 < kept < 6
    with pytest.warns(UserWarning, match="unexpected end of data"):
        samples = list(MixedPairStream([_source(str(damaged))], 1, 0, 1, 0, 0, 0, 2 * kept))
    assert [s.caption for s in samples] == ["x"] * (2 * kept)


def test_real_dataloader_workers_resume_like_the_uninterrupted_run(tmp_path: Path) -> None:
    source = _source(write_shards(tmp_path, 4, 3))

    def captions(start: int) -> list[str]:
        stream = MixedPairStream([source], 2, 0, 1, 2, 5, start, 12)
        loader = torch.utils.data.DataLoader(
            stream, batch_size=2, num_workers=2, collate_fn=lambda s: [x.caption for x in s]
        )
        return [c for batch in loader for c in batch]

    full = captions(0)
    assert sorted(full) == sorted([f"sample {i}" for i in range(12)] * 2)  # two epochs
    assert captions(5) == full[10:]
