"""Several sources in one run: a seeded, exactly weighted interleaving, streamed per reader slot and resumable.

A reader slot is one DataLoader worker of one rank (world × workers slots). Each slot draws its samples
from the sources in a seeded repeating pattern whose counts match the weights, so how many samples a slot
has taken from each source after n samples is known without replaying anything: that is how a resumed
run starts every source exactly where the interrupted one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from mmd2v2.data.pairs import PairSample
from mmd2v2.data.webdataset_source import ShardedPairs
from mmd2v2.errors import UserError

PATTERN_LENGTH = 10_000  # weights are honoured to 1/PATTERN_LENGTH over every PATTERN_LENGTH samples


class MixturePattern:
    """Which source each sample of a slot's stream comes from, with closed-form counts per source."""

    def __init__(self, weights: list[float], seed: int) -> None:
        shares = np.asarray(weights, dtype=np.float64) / sum(weights) * PATTERN_LENGTH
        counts = np.floor(shares).astype(np.int64)
        counts[np.argsort(counts - shares, kind="stable")[: PATTERN_LENGTH - counts.sum()]] += 1  # largest remainders
        if (counts == 0).any():
            raise UserError(
                f"data.sources: weight {weights[int(np.argmin(counts))]} is below 1/{PATTERN_LENGTH} of the total"
            )
        self.pattern = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(weights)), counts))
        one_hot = np.eye(len(weights), dtype=np.int64)[self.pattern]
        self.prefix = np.vstack([np.zeros((1, len(weights)), dtype=np.int64), one_hot.cumsum(axis=0)])

    def source(self, position: int) -> int:
        """Source of the slot's `position`-th sample."""
        return int(self.pattern[position % PATTERN_LENGTH])

    def taken(self, position: int) -> list[int]:
        """Samples taken from each source before the `position`-th one."""
        cycles, rest = divmod(position, PATTERN_LENGTH)
        return (cycles * self.prefix[-1] + self.prefix[rest]).tolist()


def map_stream(dataset: Dataset[PairSample], slot: int, num_slots: int, seed: int, start: int) -> Iterator[PairSample]:
    """A slot's endless stream over a map-style dataset: its share of a seeded permutation per epoch."""
    size = len(dataset)  # type: ignore[arg-type]
    per_epoch = len(range(slot, size, num_slots))
    epoch, offset = divmod(start, per_epoch)
    while True:
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))[slot::num_slots]
        for index in order[offset:].tolist():
            yield dataset[index]
        epoch, offset = epoch + 1, 0


@dataclass
class MixedSource:
    """One component of a mixture: a map-style dataset or webdataset shards, its weight and its name."""

    data: Dataset[PairSample] | ShardedPairs
    weight: float
    name: str


class MixedPairStream(IterableDataset[PairSample]):
    """The samples of one rank for micro-batches `start_batch` .. `total_batches` of a weighted mixture.

    DataLoader workers take turns batch by batch; worker w of a run resumed after N micro-batches plays
    the part of worker (w + N) % workers of the uninterrupted run, so the batches continue unchanged.
    """

    def __init__(
        self,
        sources: list[MixedSource],
        micro_batch: int,
        rank: int,
        world_size: int,
        num_workers: int,
        seed: int,
        start_batch: int,
        total_batches: int,
    ) -> None:
        self.sources = sources
        self.micro_batch = micro_batch
        self.rank = rank
        self.world_size = world_size
        self.workers = max(1, num_workers)
        self.seed = seed
        self.start_batch = start_batch
        self.total_batches = total_batches
        self.pattern = MixturePattern([s.weight for s in sources], seed)
        num_slots = world_size * self.workers
        for source in sources:
            if isinstance(source.data, ShardedPairs) and len(source.data.shards) < num_slots:
                raise UserError(
                    f"{source.name}: {len(source.data.shards)} non-empty shards for {num_slots} readers "
                    f"({world_size} ranks × {self.workers} workers); every reader needs a whole shard: "
                    "write more shards or lower data.num_workers"
                )
            if len(source.data) < num_slots:  # type: ignore[arg-type]
                raise UserError(
                    f"{source.name}: {len(source.data)} pairs for {num_slots} readers; need at least one each"
                )  # type: ignore[arg-type]

    def _batches_of(self, role: int, end: int) -> int:
        """Micro-batches worker `role` has produced once the rank has consumed `end` of them (round-robin)."""
        return end // self.workers + (1 if role < end % self.workers else 0)

    def __iter__(self) -> Iterator[PairSample]:
        info = get_worker_info()
        role = ((info.id if info is not None else 0) + self.start_batch) % self.workers
        slot, num_slots = self.rank * self.workers + role, self.world_size * self.workers
        done = self._batches_of(role, self.start_batch) * self.micro_batch
        end = self._batches_of(role, self.total_batches) * self.micro_batch
        taken = self.pattern.taken(done)
        streams = []
        for index, (source, start) in enumerate(zip(self.sources, taken, strict=True)):
            seed = self.seed * 7919 + index
            streams.append(
                source.data.stream(slot, num_slots, start)
                if isinstance(source.data, ShardedPairs)
                else map_stream(source.data, slot, num_slots, seed, start)
            )
        offsets = [index << 40 for index in range(len(self.sources))] if len(self.sources) > 1 else [0]
        for position in range(done, end):
            index = self.pattern.source(position)
            sample = next(streams[index])
            sample.image_id += offsets[index]
            yield sample
