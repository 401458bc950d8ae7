"""SNLI-VE: the official JSON-lines files (Flickr30K_ID image premise, sentence2 hypothesis, gold_label).

Low-shot: n images per class, with up to k hypotheses of that class per picked image (protocol.hypotheses_per_image;
the paper's ~5 hypotheses per image: 100 images per class give ~1,500 pairs, not the ~17.8 hypotheses a SNLI-VE
image has). Zero-shot: the cosine of image and hypothesis, clustered by k-means (k = 3) on the evaluated split; the
cluster of highest similarity is entailment, the middle one neutral, the lowest contradiction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mmd2v2.errors import UserError
from mmd2v2.vl.config import ProtocolConfig, SplitFiles, TaskConfig
from mmd2v2.vl.tasks.base import BadRecords, LoadedSplit, VLExample, image_folder, read_jsonl
from mmd2v2.vl.tasks.registry import VLTask, register_task
from mmd2v2.vl.tasks.sampling import sample_per_image

if TYPE_CHECKING:
    from mmd2v2.vl.batches import VLBatch
    from mmd2v2.vl.zero_shot import ZeroShotScorer

LABELS = ("entailment", "neutral", "contradiction")
DEFAULT_IMAGE_PATTERN = "{image_id}.jpg"


def load_snli_ve_split(cfg: TaskConfig, files: SplitFiles) -> LoadedSplit:
    """Examples of one SNLI-VE split; records without an image id, hypothesis or known gold label are bad."""
    if files.records is None:
        raise UserError("task: SNLI-VE needs the split's jsonl (task.train.records / task.val.records)")
    bad = BadRecords(cfg.on_bad_record)
    folder, pattern = image_folder(files.records, files.image_root), cfg.image_pattern or DEFAULT_IMAGE_PATTERN
    examples = []
    for line, record in read_jsonl(files.records, "task records", bad):
        image_id, hypothesis, gold = record.get("Flickr30K_ID"), record.get("sentence2"), record.get("gold_label")
        where = f"line {line} (pairID {record.get('pairID', '?')})"
        if not isinstance(image_id, (str, int)) or not isinstance(hypothesis, str) or not hypothesis.strip():
            bad.report(files.records, where, "expected Flickr30K_ID and a non-empty sentence2")
            continue
        if gold not in LABELS:
            bad.report(files.records, where, f"gold_label {gold!r} is not one of {', '.join(LABELS)}", "unlabelled")
            continue
        examples.append(
            VLExample(
                key=f"pairID {record.get('pairID', line)}",
                record_id=str(record.get("pairID", line)),
                image_id=str(image_id),
                image=folder / pattern.format(image_id=image_id),
                texts=(hypothesis.strip(),),
                label=LABELS.index(gold),
                group=str(gold),
            )
        )
    return LoadedSplit(examples, bad.summary())


def sample_snli_ve(examples: list[VLExample], per_class: int, seed: int, per_image: int = 5) -> list[VLExample]:
    """Up to `per_image` hypotheses of the class from `per_class` images drawn per class (an image once)."""
    return sample_per_image(examples, list(LABELS), per_class, per_image, seed)


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


@register_task
class SNLIVE(VLTask):
    """SNLI-VE: a 3-way head (entailment, neutral, contradiction), cross-entropy, accuracy."""

    name = "snli_ve"
    main_metric = "accuracy"
    unit = "pairs"
    fits_zero_shot_anchors = True

    def classes(self, cfg: TaskConfig, vocabulary: list[str] | None) -> list[str]:
        """The three labels."""
        return list(LABELS)

    def load_split(self, cfg: TaskConfig, files: SplitFiles, classes: list[str]) -> LoadedSplit:
        """Image-hypothesis pairs with their label."""
        return load_snli_ve_split(cfg, files)

    def metrics(self, examples: list[VLExample], logits: Tensor, classes: list[str]) -> dict[str, float]:
        """Accuracy over the pairs."""
        predicted = logits.argmax(-1).tolist()
        right = [p == e.label for e, p in zip(examples, predicted, strict=True)]
        return {"accuracy": 100.0 * sum(right) / max(1, len(right)), "num_pairs": float(len(right))}

    def sample(self, examples: list[VLExample], shots: int, seed: int, protocol: ProtocolConfig) -> list[VLExample]:
        """`shots` images per class, up to protocol.hypotheses_per_image hypotheses each."""
        return sample_snli_ve(examples, shots, seed, protocol.hypotheses_per_image)

    def zero_shot_anchors(self, similarities: Tensor) -> Tensor:
        """The 3 k-means centres of the similarities."""
        return kmeans_1d(similarities, 3)

    def zero_shot_logits(self, scorer: ZeroShotScorer, batch: VLBatch) -> Tensor:
        """-scale x distance of each pair's cosine to each class's anchor."""
        similarity = scorer.similarities(batch)
        if scorer.anchors is None:
            raise ValueError("SNLI-VE zero-shot logits need k-means anchors first (fit_anchors)")
        return entailment_logits(similarity, scorer.anchors, scorer.scale)
