"""webdataset tar shards as a streaming source: whole shards per reader, resumable by sample count."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mmd2v2.data.pairs import PairSample, decode_pair
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.errors import MissingExtraError, MissingFileError


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError:
        raise MissingExtraError("webdataset sources need the webdataset package: pip install 'mmd2v2[data]'") from None
    return webdataset


def expand_shards(path: str | list[str], name: str) -> list[Path]:
    """Shard files of a brace pattern ('data/{000000..000009}.tar') or a list of patterns; all must exist."""
    expand_urls = _webdataset().shardlists.expand_urls  # brace expansion as webdataset's own loaders do it
    patterns = path if isinstance(path, list) else [path]
    shards = [Path(url) for pattern in patterns for url in expand_urls(pattern)]
    missing = [str(shard) for shard in shards if not shard.is_file()]
    if missing:
        raise MissingFileError(f"{name}: shard '{missing[0]}' does not exist ({len(missing)} of {len(shards)} missing)")
    return shards


def count_samples(shard: Path) -> int:
    """Samples (groups of files sharing a key) in a shard, up to the first damage in a truncated file."""
    from webdataset.tariterators import base_plus_ext

    count, last = 0, None
    try:
        with tarfile.open(shard, mode="r:") as archive:
            for member in archive:
                key, _ = base_plus_ext(member.name) if member.isreg() else (None, None)
                if key is not None and key != last:
                    count, last = count + 1, key
    except (tarfile.TarError, OSError, EOFError):
        pass  # a damaged tail: the samples before it are read, the stream stops at the same place
    return count


def _caption(sample: dict[str, Any], caption_key: str, caption_field: str) -> str | None:
    """The sample's caption, or None when it is missing, empty or not UTF-8 text."""
    try:
        if caption_key == "json":
            text = json.loads(sample["json"].decode("utf-8")).get(caption_field)
        else:
            text = sample["txt"].decode("utf-8")
    except (KeyError, AttributeError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return text.strip() if isinstance(text, str) and text.strip() else None


def sample_id(shard: Path, key: str) -> int:
    """A stable 40-bit image id for a shard's sample."""
    return int.from_bytes(hashlib.blake2b(f"{shard.name}/{key}".encode(), digest_size=5).digest(), "big")


class ShardedPairs:
    """One webdataset source: each reader slot streams whole shards, from a shard order shuffled per epoch."""

    def __init__(
        self,
        shards: list[Path],
        counts: list[int],
        image_keys: list[str],
        caption_key: str,
        caption_field: str,
        preprocess: ImagePreprocessor,
        seed: int,
    ) -> None:
        self.shards = [s for s, c in zip(shards, counts, strict=True) if c > 0]
        self.counts = [c for c in counts if c > 0]
        self.image_keys = image_keys
        self.caption_key = caption_key
        self.caption_field = caption_field
        self.preprocess = preprocess
        self.seed = seed

    def __len__(self) -> int:
        return sum(self.counts)

    def epoch_shards(self, epoch: int, slot: int, num_slots: int) -> list[int]:
        """Shard indices read by `slot` in `epoch`: every num_slots-th of the epoch's seeded shard order."""
        order = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return order[slot::num_slots].tolist()

    def _pairs(self, shard: int, skip: int) -> Iterator[PairSample]:
        wds = _webdataset()
        path = self.shards[shard]
        samples = wds.tarfile_samples(iter([{"url": str(path)}]), handler=wds.warn_and_stop)
        for position, sample in enumerate(samples):
            if position >= self.counts[shard]:
                return
            if position < skip:
                continue
            image = next((sample[k] for k in self.image_keys if k in sample), None)
            caption = _caption(sample, self.caption_key, self.caption_field)
            yield decode_pair(self.preprocess, io.BytesIO(image or b""), caption, sample_id(path, sample["__key__"]))

    def stream(self, slot: int, num_slots: int, start: int) -> Iterator[PairSample]:
        """This slot's endless stream of pairs from its `start`-th sample on (earlier shards are not opened)."""
        epoch = 0
        while True:
            for shard in self.epoch_shards(epoch, slot, num_slots):
                if start >= self.counts[shard]:
                    start -= self.counts[shard]
                    continue
                yield from self._pairs(shard, start)
                start = 0
            epoch += 1
