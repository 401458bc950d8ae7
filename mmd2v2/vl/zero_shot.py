"""Zero-shot predictions of a dual encoder (CLIP or an mmd2v2 export): the zero-shot protocol and teacher logits for CW.

Each task says how (its `zero_shot_texts`, `zero_shot_logits` and, for SNLI-VE, anchors fitted on the split).
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm import tqdm

from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.vl.batches import BatchCollator, VLBatch, example_loader
from mmd2v2.vl.tasks import TaskData
from mmd2v2.vl.tasks.base import VLExample
from mmd2v2.vl.teachers import FrozenDualEncoder


class ZeroShotScorer:
    """Per-task logits of a dual encoder for a batch: (B, classes) for VQA / SNLI-VE, (B, 4) for VCR."""

    def __init__(self, dual: FrozenDualEncoder, task: TaskData, scale: float, prompt: str = "ia") -> None:
        self.dual, self.task, self.scale, self.prompt = dual, task, scale, prompt
        self.embeddings: Tensor | None = None
        self.anchors: Tensor | None = None

    def prompts(self, batch: VLBatch) -> list[str]:
        """The texts matched against the image: VCR's choices alone with prompt `ia`, else the batch's texts."""
        return self.task.definition.zero_shot_texts(batch, self.prompt)

    def similarities(self, batch: VLBatch) -> Tensor:
        """Cosine between each text and its image: (N,)."""
        return self.dual.similarity(batch.pixel_values, self.prompts(batch), batch.image_index)

    def class_embeddings(self) -> Tensor:
        """L2-normalised text embeddings of the task's classes (computed once)."""
        if self.embeddings is None:
            self.embeddings = self.dual.text_embeddings(self.task.classes)
        return self.embeddings

    def fit_anchors(self, similarities: Tensor) -> None:
        """SNLI-VE: k-means anchors from image-text similarities (no labels)."""
        self.anchors = self.task.definition.zero_shot_anchors(similarities)

    @torch.no_grad()
    def logits(self, batch: VLBatch) -> Tensor:
        """Zero-shot logits of the batch's examples."""
        return self.task.definition.zero_shot_logits(self, batch)


def prepare_scorer(
    scorer: ZeroShotScorer,
    examples: list[VLExample],
    preprocess: ImagePreprocessor,
    collator: BatchCollator,
    batch_size: int,
    progress: bool,
    workers: int = 0,
) -> None:
    """Fit what the task's zero-shot logits need (SNLI-VE: anchors) on the image-text cosines of `examples`."""
    if not scorer.task.definition.fits_zero_shot_anchors:
        return
    similarities = []
    for batch in tqdm(
        example_loader(examples, preprocess, collator, batch_size, False, 0, workers=workers),
        desc="similarities",
        disable=not progress,
    ):
        if batch.examples:
            similarities.append(scorer.similarities(batch).cpu())
    scorer.fit_anchors(torch.cat(similarities))


def zero_shot_evaluate(
    scorer: ZeroShotScorer,
    examples: list[VLExample],
    preprocess: ImagePreprocessor,
    collator: BatchCollator,
    batch_size: int,
    progress: bool,
    workers: int = 0,
) -> dict[str, float]:
    """The zero-shot protocol on `examples` (SNLI-VE fits its k-means anchors on them first)."""
    prepare_scorer(scorer, examples, preprocess, collator, batch_size, progress, workers)
    kept, logits = [], []
    for batch in tqdm(
        example_loader(examples, preprocess, collator, batch_size, False, 0, workers=workers),
        desc="zero-shot",
        disable=not progress,
    ):
        if batch.examples:
            kept.extend(batch.examples)
            logits.append(scorer.logits(batch).cpu())
    return scorer.task.definition.metrics(kept, torch.cat(logits), scorer.task.classes)
