"""Zero-shot predictions of a dual encoder (CLIP or an mmd2v2 export): the zero-shot protocol and teacher logits for CW.

VCR: the choice whose text best matches the image; prompt `ia` (the paper's IA / IR) scores the answer (Q->A) or the
rationale (QA->R) alone, `iqa` the question + answer [+ right answer + rationale]. SNLI-VE: the cosine of image
and hypothesis, clustered by k-means (k = 3) on the evaluated split; the cluster of highest similarity is
entailment, the middle one neutral, the lowest contradiction. VQA: image against every answer of the vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.vl.batches import BatchCollator, VLBatch, example_loader
from mmd2v2.vl.tasks import TaskData, task_metrics
from mmd2v2.vl.tasks.base import VLExample
from mmd2v2.vl.teachers import FrozenDualEncoder


def kmeans_1d(values: Tensor, k: int = 3, iterations: int = 100) -> Tensor:
    """Centres of a 1-D k-means (Lloyd's, initialised at evenly spaced quantiles), sorted in ascending order."""
    values = values.double().flatten()
    if values.numel() < k:
        raise ValueError(f"k-means: {values.numel()} values, fewer than k = {k}")
    centres = torch.quantile(values, torch.linspace(0.5 / k, 1 - 0.5 / k, k, dtype=torch.double))
    for _ in range(iterations):
        assignment = (values[:, None] - centres[None]).abs().argmin(-1)
        updated = torch.stack(
            [values[assignment == c].mean() if bool((assignment == c).any()) else centres[c] for c in range(k)]
        )
        if torch.allclose(updated, centres):
            break
        centres = updated
    return centres.sort().values.float()


def entailment_logits(similarity: Tensor, anchors: Tensor, scale: float) -> Tensor:
    """(N, 3) logits in SNLI-VE label order (entailment, neutral, contradiction): -scale * |s - anchor|.

    `anchors` are ascending k-means centres, so the highest is entailment's and the lowest contradiction's.
    """
    ordered = anchors.flip(0).to(similarity.device)
    return -scale * (similarity[:, None] - ordered[None]).abs()


class ZeroShotScorer:
    """Per-task logits of a dual encoder for a batch: (B, classes) for VQA / SNLI-VE, (B, 4) for VCR."""

    def __init__(self, dual: FrozenDualEncoder, task: TaskData, scale: float, prompt: str = "ia") -> None:
        self.dual, self.task, self.scale, self.prompt = dual, task, scale, prompt
        self.answer_embeddings: Tensor | None = None
        self.anchors: Tensor | None = None

    def prompts(self, batch: VLBatch) -> list[str]:
        """The texts matched against the image: VCR's choices alone with prompt `ia`, else the batch's texts."""
        if self.task.name == "vcr" and self.prompt == "ia":
            return [prompt for example in batch.examples for prompt in example.prompts]
        return batch.texts

    def similarities(self, batch: VLBatch) -> Tensor:
        """Cosine between each text and its image: (N,)."""
        return self.dual.similarity(batch.pixel_values, self.prompts(batch), batch.image_index)

    def fit_anchors(self, similarities: Tensor) -> None:
        """SNLI-VE: k-means anchors from image-hypothesis similarities (no labels)."""
        self.anchors = kmeans_1d(similarities, 3)

    @torch.no_grad()
    def logits(self, batch: VLBatch) -> Tensor:
        """Zero-shot logits of the batch's examples."""
        if self.task.name == "vqa":
            if self.answer_embeddings is None:
                self.answer_embeddings = self.dual.text_embeddings(self.task.classes)
            images = F.normalize(self.dual.image_features(batch.pixel_values), dim=-1)
            return self.scale * images @ self.answer_embeddings.T
        similarity = self.similarities(batch)
        if self.task.name == "vcr":
            return self.scale * similarity.view(len(batch.examples), -1)
        if self.anchors is None:
            raise ValueError("SNLI-VE zero-shot logits need k-means anchors first (fit_anchors)")
        return entailment_logits(similarity, self.anchors, self.scale)


def collect_similarities(
    scorer: ZeroShotScorer,
    examples: list[VLExample],
    preprocess: ImagePreprocessor,
    collator: BatchCollator,
    batch_size: int,
    progress: bool,
    workers: int = 0,
) -> Tensor:
    """Image-text cosine of every text of `examples`, in order."""
    out = []
    for batch in tqdm(
        example_loader(examples, preprocess, collator, batch_size, False, 0, workers=workers),
        desc="similarities",
        disable=not progress,
    ):
        if batch.examples:
            out.append(scorer.similarities(batch).cpu())
    return torch.cat(out)


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
    if scorer.task.name == "snli_ve":
        scorer.fit_anchors(collect_similarities(scorer, examples, preprocess, collator, batch_size, progress, workers))
    kept, logits = [], []
    for batch in tqdm(
        example_loader(examples, preprocess, collator, batch_size, False, 0, workers=workers),
        desc="zero-shot",
        disable=not progress,
    ):
        if batch.examples:
            kept.extend(batch.examples)
            logits.append(scorer.logits(batch).cpu())
    return task_metrics(scorer.task.name, kept, torch.cat(logits), scorer.task.classes)
