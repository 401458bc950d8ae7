"""Image-caption pairs for training and evaluation: datasets, a resumable sampler, and collation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler, default_collate
from transformers import PreTrainedTokenizerBase

from mmd2v2.data.karpathy import ImageRecord
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.errors import ImageDecodeError, UserError


@dataclass
class PairSample:
    """One decoded training pair: uint8 (S, S, 3) pixels (the training step normalises them on the device), None image
    = undecodable image, None caption = empty or undecodable caption.
    `features`: rows of the feature cache (teacher CLS, frozen encoder outputs); with them the image may be absent."""

    pixel_values: Tensor | None
    caption: str | None
    image_id: int
    features: dict[str, Tensor] | None = None

    @property
    def usable(self) -> bool:
        """Whether the pair can train: a caption, and an image or the cached rows that replace it."""
        return self.caption is not None and (self.pixel_values is not None or self.features is not None)


def decode_pair(
    preprocess: ImagePreprocessor, source: str | Path | BinaryIO, caption: str | None, image_id: int
) -> PairSample:
    """Decode one pair's image (not at all when its caption is bad); a decoding failure marks the image bad."""
    if caption is None:
        return PairSample(None, None, image_id)
    try:
        pixels: Tensor | None = preprocess.decode(source)
    except ImageDecodeError:
        pixels = None
    return PairSample(pixels, caption, image_id)


class CaptionPairDataset(Dataset[PairSample]):
    """Every (image, caption) pair of a split; an undecodable image yields a sample marked as bad."""

    def __init__(self, records: list[ImageRecord], preprocess: ImagePreprocessor) -> None:
        self.records = records
        self.preprocess = preprocess
        self.pairs = [(r, c) for r, caption_list in ((r, r.captions) for r in records) for c in caption_list]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> PairSample:
        record, caption = self.pairs[index]
        return decode_pair(self.preprocess, record.path, caption, record.image_id)


class PairCollator:
    """Stacks good samples (images stay uint8), tokenises captions, and counts dropped samples and truncated captions."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: list[PairSample]) -> dict[str, Tensor]:
        good = [s for s in samples if s.usable]
        lengths = self.tokenizer([s.caption for s in good])["input_ids"] if good else []
        tokens = (
            self.tokenizer(
                [s.caption for s in good],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            if good
            else {
                "input_ids": torch.zeros(0, 1, dtype=torch.long),
                "attention_mask": torch.zeros(0, 1, dtype=torch.long),
            }
        )
        with_pixels = bool(good) and all(s.pixel_values is not None for s in good)
        batch = {
            "pixel_values": default_collate([s.pixel_values for s in good])
            if with_pixels
            else torch.zeros(0),  # in shared memory in a worker
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "image_ids": torch.tensor([s.image_id for s in good], dtype=torch.long),
            "num_skipped": torch.tensor(sum(s.caption is not None and not s.usable for s in samples)),
            "num_bad_captions": torch.tensor(sum(s.caption is None for s in samples)),
            "num_truncated": torch.tensor(sum(len(ids) > self.max_length for ids in lengths)),
        }
        if good and good[0].features is not None:
            for kind in good[0].features:
                batch[kind] = torch.stack([s.features[kind] for s in good])  # type: ignore[index]
            if "text_tokens" in batch:  # cached at max_length: keep the batch's padded length
                batch["text_tokens"] = batch["text_tokens"][:, : tokens["input_ids"].shape[1]]
        return batch


class ResumableBatchSampler(Sampler[list[int]]):
    """Micro-batches of this rank for optimizer steps `start_step` onwards, from a seeded permutation per epoch.

    Each optimizer step consumes one global batch (micro × accumulation × world) of the epoch's permutation;
    this rank takes its slice of every micro-batch. Resuming at any step gives the same order as an
    uninterrupted run, and no sample is loaded for the steps skipped.
    """

    def __init__(
        self,
        num_samples: int,
        micro_batch: int,
        accumulation: int,
        world_size: int,
        rank: int,
        seed: int,
        start_step: int,
        total_steps: int,
        with_epoch: bool = False,
    ) -> None:
        self.num_samples = num_samples
        self.with_epoch = with_epoch  # yield epoch × num_samples + index (datasets that vary by epoch decode it)
        self.micro_batch = micro_batch
        self.accumulation = accumulation
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self.global_batch = micro_batch * accumulation * world_size
        self.steps_per_epoch = num_samples // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(f"dataset has {num_samples} pairs, fewer than one global batch of {self.global_batch}")

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.accumulation

    def __iter__(self) -> Iterator[list[int]]:
        epoch, permutation = -1, torch.empty(0, dtype=torch.long)
        for step in range(self.start_step, self.total_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                permutation = torch.randperm(self.num_samples, generator=generator)
            base = (step % self.steps_per_epoch) * self.global_batch
            for micro in range(self.accumulation):
                start = base + (micro * self.world_size + self.rank) * self.micro_batch
                offset = epoch * self.num_samples if self.with_epoch else 0
                yield [offset + i for i in permutation[start : start + self.micro_batch].tolist()]
