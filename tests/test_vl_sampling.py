"""Low-shot sampling counts of the protocol, seeding, and the SNLI-VE zero-shot k-means."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from mmd2v2.vl.config import ProtocolConfig
from mmd2v2.vl.tasks import get_task
from mmd2v2.vl.tasks.base import VLExample
from mmd2v2.vl.tasks.snli_ve import LABELS, entailment_logits, kmeans_1d, sample_snli_ve
from mmd2v2.vl.tasks.vcr import CATEGORIES, sample_vcr
from mmd2v2.vl.tasks.vqa import sample_vqa


def _example(record: str, image: str, group: str, mode: str = "") -> VLExample:
    return VLExample(f"{record}{mode}", record, image, Path(f"{image}.jpg"), ("text",), 0, group=group, mode=mode)


def test_vcr_takes_n_questions_per_category_with_both_subtasks() -> None:
    examples = []
    for c, (category, _) in enumerate(CATEGORIES):
        for r in range(2 if category == "scene" else 6):  # 'scene' has fewer questions than asked for
            for mode in ("q2a", "qa2r"):
                examples.append(_example(f"{category}{r}", f"img{c}_{r}", category, mode))
    subset = sample_vcr(examples, 4, seed=0)
    per_category = Counter(e.group for e in subset if e.mode == "q2a")
    assert per_category == {name: (2 if name == "scene" else 4) for name, _ in CATEGORIES}
    assert len(subset) == 2 * (6 * 4 + 2) and Counter(e.mode for e in subset) == {"q2a": 26, "qa2r": 26}
    assert subset == sample_vcr(examples, 4, seed=0) and subset != sample_vcr(examples, 4, seed=1)


def test_snli_ve_takes_n_images_per_class_with_up_to_k_hypotheses_of_that_class() -> None:
    # 18 hypotheses per image (6 per class), as on real SNLI-VE (~17.8): the paper keeps ~5 per image
    examples = [_example(f"{i}-{k}", f"img{i}", LABELS[k % 3]) for i in range(30) for k in range(18)]
    subset = sample_snli_ve(examples, 4, seed=3, per_image=5)
    assert len({e.image_id for e in subset}) == 12 and len(subset) == 12 * 5  # 4 distinct images per class, 5 each
    assert Counter((e.image_id, e.group) for e in subset) == dict.fromkeys(
        {(e.image_id, e.group) for e in subset}, 5
    )  # one class per image
    assert Counter(e.group for e in subset) == dict.fromkeys(LABELS, 20)
    assert (
        subset == sample_snli_ve(examples, 4, seed=3, per_image=5) != sample_snli_ve(examples, 4, seed=4, per_image=5)
    )
    # 100 images per class at 5 hypotheses each: the paper's 0.3% subset of ~1,500 pairs (30 images here: 150)
    assert len(get_task("snli_ve").low_shot(examples, 100, 0, ProtocolConfig())) == 30 * 5


def test_vqa_takes_n_images_per_question_type_and_up_to_two_questions_each() -> None:
    types = ["how_many", "what_color", "what", "is", "does", "where", "who_which", "other"]
    examples = [_example(f"{t}{i}-{q}", f"img{t}{i}", t) for t in types for i in range(10) for q in range(3)]
    examples += [_example(f"mixed{i}-{q}", f"imgwhat{i}", "is") for i in range(10) for q in range(2)]  # two types
    subset = sample_vqa(examples, 5, seed=1, per_image=2)
    by_type = Counter(e.group for e in subset)
    assert by_type == dict.fromkeys(types, 10)  # 5 images x 2 questions per type
    per_image_type = Counter((e.image_id, e.group) for e in subset)
    assert set(per_image_type.values()) == {2}
    images_per_type = Counter(t for _, t in per_image_type)
    assert images_per_type == dict.fromkeys(types, 5)
    assert len({i for i, _ in per_image_type}) == 40  # an image is sampled for one type only
    with pytest.raises(ValueError, match="protocol.shots"):
        get_task("vqa").low_shot(examples, 0, 0, ProtocolConfig())


def test_kmeans_and_the_entailment_mapping() -> None:
    values = torch.tensor([10.1, 0.0, 5.0, 0.1, 10.0, 5.1])
    centres = kmeans_1d(values, 3)
    assert centres.tolist() == pytest.approx([0.05, 5.05, 10.05])
    logits = entailment_logits(torch.tensor([10.0, 5.0, 0.2]), centres, 1.0)
    assert logits.argmax(-1).tolist() == [0, 1, 2]  # highest similarity -> entailment, lowest -> contradiction
    assert logits[0].tolist() == pytest.approx([-0.05, -4.95, -9.95], abs=1e-5)
