"""Batches of VL examples: decoded images (each once per batch), the texts, and their word-aware tokenisation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from transformers import PreTrainedTokenizerBase

from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.errors import ImageDecodeError
from mmd2v2.vl.tasks.base import VLExample
from mmd2v2.vl.words import TokenizedTexts, tokenize_with_words


@dataclass
class VLBatch:
    """B examples: their images, their N = B * texts_per_example texts, and which image each text goes with."""

    examples: list[VLExample]
    pixel_values: Tensor  # (B, 3, H, W)
    texts: list[str]  # N
    image_index: Tensor  # (N,)
    tokens: TokenizedTexts
    skipped: int  # examples dropped because their image could not be decoded

    def to(self, device: torch.device | str) -> VLBatch:
        """The batch with its tensors on `device`."""
        tokens = TokenizedTexts(
            self.tokens.input_ids.to(device),
            self.tokens.attention_mask.to(device),
            self.tokens.word_index,
            self.tokens.num_words,
            self.tokens.truncated,
        )
        return VLBatch(
            self.examples, self.pixel_values.to(device), self.texts, self.image_index.to(device), tokens, self.skipped
        )


class ExampleImages(Dataset[tuple[VLExample, Tensor | None]]):
    """Examples with their decoded image (None when it cannot be decoded); decoded images can be kept in memory."""

    def __init__(self, examples: list[VLExample], preprocess: ImagePreprocessor, cache: bool) -> None:
        self.examples, self.preprocess = examples, preprocess
        self.cache: dict[str, Tensor | None] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[VLExample, Tensor | None]:
        example = self.examples[index]
        key = str(example.image)
        if self.cache is not None and key in self.cache:
            return example, self.cache[key]
        try:
            pixels: Tensor | None = self.preprocess.load(example.image)
        except ImageDecodeError:
            pixels = None
        if self.cache is not None:
            self.cache[key] = pixels
        return example, pixels


class BatchCollator:
    """Builds a VLBatch: drops examples whose image is bad (counted), tokenises every text with word indices."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: list[tuple[VLExample, Tensor | None]]) -> VLBatch:
        good = [(e, p) for e, p in items if p is not None]
        examples = [e for e, _ in good]
        texts = [t for e in examples for t in e.texts]
        image_index = torch.tensor([i for i, e in enumerate(examples) for _ in e.texts], dtype=torch.long)
        pixels = torch.stack([p for _, p in good]) if good else torch.zeros(0)
        tokens = tokenize_with_words(self.tokenizer, texts or [""], self.max_length)
        return VLBatch(examples, pixels, texts, image_index, tokens, len(items) - len(good))


class SkippableBatches(Sampler[list[int]]):
    """The batches of `batches` (a BatchSampler); after `skip(n)` the next pass leaves out its first n batches
    without loading their examples (how a resumed run gets back to its place in the data)."""

    def __init__(self, batches: Sampler[list[int]]) -> None:
        self.batches, self.to_skip = batches, 0

    def skip(self, count: int) -> None:
        """Leave out the first `count` batches of the next pass."""
        self.to_skip = count

    def __iter__(self) -> Iterator[list[int]]:
        count, self.to_skip = self.to_skip, 0
        for index, batch in enumerate(self.batches):
            if index >= count:
                yield batch

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def example_loader(
    examples: list[VLExample],
    preprocess: ImagePreprocessor,
    collator: BatchCollator,
    batch_size: int,
    shuffle: bool,
    seed: int,
    cache: bool = False,
    workers: int = 0,
) -> DataLoader[VLBatch]:
    """A loader over `examples` (seeded shuffling when `shuffle`); its batch sampler can skip batches on resume.
    `workers` processes decode and tokenise (same batches, same order); decoded images are kept in memory across
    passes only with `cache` and no workers (a worker's memory is gone after each pass)."""
    generator = torch.Generator().manual_seed(seed)
    dataset = ExampleImages(examples, preprocess, cache and workers == 0)
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_sampler=SkippableBatches(BatchSampler(order, batch_size, drop_last=False)),
        generator=generator,
        collate_fn=collator,
        num_workers=workers,
    )
