"""Low-shot training subsets of the MAD protocol, seeded.

VCR: n questions per question category (7 categories). SNLI-VE: n images per class, with every hypothesis of a
picked image. VQA: n images per question type (8 types), with up to k questions of that type per picked image.
A category with fewer candidates than n contributes all it has.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable

from mmd2v2.vl.tasks.base import VLExample
from mmd2v2.vl.tasks.snli_ve import LABELS
from mmd2v2.vl.tasks.vcr import CATEGORIES
from mmd2v2.vl.tasks.vqa import OTHER_TYPE, QUESTION_TYPES


def distinct_per_group(examples: list[VLExample], key: Callable[[VLExample], str]) -> dict[str, list[str]]:
    """Each group's distinct `key` values in first-seen order (a dict keeps the order, in linear time)."""
    groups: dict[str, dict[str, None]] = defaultdict(dict)
    for example in examples:
        groups[example.group][key(example)] = None
    return {group: list(values) for group, values in groups.items()}


def sample_vcr(examples: list[VLExample], per_category: int, seed: int) -> list[VLExample]:
    """All examples (Q->A and QA->R) of `per_category` questions drawn from each question category."""
    rng = random.Random(seed)
    records = distinct_per_group(examples, lambda e: e.record_id)
    chosen: set[str] = set()
    for category, _ in CATEGORIES:
        pool = records.get(category, [])
        chosen.update(rng.sample(pool, min(per_category, len(pool))))
    return [e for e in examples if e.record_id in chosen]


def sample_snli_ve(examples: list[VLExample], per_class: int, seed: int) -> list[VLExample]:
    """All hypotheses of `per_class` images drawn for each class (an image is drawn at most once)."""
    rng = random.Random(seed)
    images_of = distinct_per_group(examples, lambda e: e.image_id)
    chosen: set[str] = set()
    for label in LABELS:
        pool = [i for i in images_of.get(label, []) if i not in chosen]
        chosen.update(rng.sample(pool, min(per_class, len(pool))))
    return [e for e in examples if e.image_id in chosen]


def sample_vqa(examples: list[VLExample], per_type: int, seed: int, per_image: int = 2) -> list[VLExample]:
    """Up to `per_image` questions of each type from `per_type` images drawn per type (an image once)."""
    rng = random.Random(seed)
    by_type_image: dict[str, dict[str, list[VLExample]]] = defaultdict(lambda: defaultdict(list))
    for example in examples:
        by_type_image[example.group][example.image_id].append(example)
    chosen_images: set[str] = set()
    chosen: list[VLExample] = []
    for question_type in [name for name, _ in QUESTION_TYPES] + [OTHER_TYPE]:
        images = by_type_image.get(question_type, {})
        pool = [i for i in images if i not in chosen_images]
        for image in rng.sample(pool, min(per_type, len(pool))):
            chosen_images.add(image)
            questions = images[image]
            chosen.extend(rng.sample(questions, min(per_image, len(questions))))
    return chosen


def low_shot_subset(task: str, examples: list[VLExample], shots: int, seed: int, per_image: int = 2) -> list[VLExample]:
    """The task's low-shot subset of `examples` with `shots` per category / class / question type."""
    if shots < 1:
        raise ValueError(f"protocol.shots: got {shots}, expected >= 1")
    if task == "vcr":
        return sample_vcr(examples, shots, seed)
    if task == "snli_ve":
        return sample_snli_ve(examples, shots, seed)
    return sample_vqa(examples, shots, seed, per_image)
