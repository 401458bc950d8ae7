"""Training data from `data.sources` (or `data.karpathy_json` / the demo): one interface over every kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from mmd2v2.config import DataConfig, SourceConfig
from mmd2v2.data.karpathy import Dropped, load_karpathy_split
from mmd2v2.data.mixture import MixedPairStream, MixedSource
from mmd2v2.data.pairs import CaptionPairDataset, PairCollator, PairSample, ResumableBatchSampler
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.webdataset_source import ShardedPairs, count_samples, expand_shards
from mmd2v2.errors import MissingFileError, UserError


@dataclass
class TrainingData:
    """The run's training sources, their pairs per epoch, and what reading them dropped."""

    sources: list[MixedSource]
    dropped: Dropped = field(default_factory=Dropped)

    @property
    def num_pairs(self) -> int:
        """Pairs in one epoch over all sources."""
        return sum(len(s.data) for s in self.sources)  # type: ignore[arg-type]

    @property
    def captions(self) -> list[str]:
        """Captions of the random-access sources (a word vocabulary is built from them when no tokenizer is given)."""
        return [c for s in self.sources if not isinstance(s.data, ShardedPairs) for _, c in s.data.pairs]  # type: ignore[union-attr]

    @property
    def streaming(self) -> bool:
        """Whether the run streams (several sources or shards) rather than sampling one random-access source."""
        return len(self.sources) > 1 or isinstance(self.sources[0].data, ShardedPairs)


def configured_sources(data: DataConfig) -> list[SourceConfig]:
    """`data.sources`, else the training split of `data.karpathy_json`, else of the demo set."""
    if data.sources:
        return data.sources
    if data.karpathy_json is not None:
        return [SourceConfig(kind="karpathy", path=data.karpathy_json, image_root=data.image_root)]
    if data.demo:
        return [SourceConfig(kind="karpathy", path=str(Path(data.demo_dir) / "dataset_demo.json"))]
    raise UserError("no training data: set data.sources, data.karpathy_json or data.demo=true")


def _path(source: SourceConfig, name: str) -> Path:
    path = Path(str(source.path))
    if not path.exists():
        raise MissingFileError(f"{name}.path: '{path}' does not exist")
    return path


def load_source(
    source: SourceConfig, name: str, preprocess: ImagePreprocessor, seed: int, dropped: Dropped
) -> Dataset[PairSample] | ShardedPairs:
    """The pairs of one configured source; rows or captions it cannot use are counted in `dropped`."""
    if source.image_root is not None and not Path(source.image_root).is_dir():
        raise MissingFileError(f"{name}.image_root: '{source.image_root}' is not a folder")
    if source.kind == "karpathy":
        return CaptionPairDataset(
            load_karpathy_split(_path(source, name), source.split, source.image_root, dropped), preprocess
        )
    if source.kind == "table":
        from mmd2v2.data.tables import load_table

        records = load_table(
            _path(source, name),
            source.image_column,
            source.caption_column,
            source.image_root,
            source.img2dataset_dir,
            dropped,
        )
        return CaptionPairDataset(records, preprocess)
    if source.kind == "hf":
        from mmd2v2.data.hf_source import HFCaptionPairs, load_hf_dataset

        dataset = load_hf_dataset(str(source.path), source.split)
        return HFCaptionPairs(
            dataset, source.image_column, source.caption_column, preprocess, str(source.path), dropped
        )
    shards = expand_shards(source.path, f"{name}.path")
    return ShardedPairs(
        shards,
        [count_samples(s) for s in shards],
        source.image_keys,
        source.caption_key,
        source.caption_column,
        preprocess,
        seed,
    )


def load_training_data(sources: list[SourceConfig], preprocess: ImagePreprocessor, seed: int) -> TrainingData:
    """Read every configured source (tables, JSON and shard headers; images are decoded later)."""
    data = TrainingData([])
    for index, source in enumerate(sources):
        name = f"data.sources[{index}]"
        loaded = load_source(source, name, preprocess, seed * 7919 + index, data.dropped)
        data.sources.append(MixedSource(loaded, source.weight, f"{name} ({source.kind} '{source.path}')"))
    return data


def training_loader(
    data: TrainingData,
    collate: PairCollator,
    micro_batch: int,
    accumulation: int,
    rank: int,
    world: int,
    num_workers: int,
    seed: int,
    start_step: int,
    total_steps: int,
) -> DataLoader:
    """This rank's micro-batches for optimizer steps `start_step` onwards, the same as an uninterrupted run's."""
    if not data.streaming:
        sampler = ResumableBatchSampler(
            data.num_pairs,
            micro_batch,
            accumulation,
            world,
            rank,
            seed,
            start_step,
            total_steps,
            with_epoch=getattr(data.sources[0].data, "wants_epoch", False),
        )
        return DataLoader(
            data.sources[0].data,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),  # uint8 batches copied to the GPU without waiting
            generator=torch.Generator().manual_seed(seed),
        )  # keeps the global RNG untouched
    stream = MixedPairStream(
        data.sources, micro_batch, rank, world, num_workers, seed, start_step * accumulation, total_steps * accumulation
    )
    return DataLoader(
        stream,
        batch_size=micro_batch,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )  # keeps the global RNG untouched
