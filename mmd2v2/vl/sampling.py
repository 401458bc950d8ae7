"""Low-shot training subsets of the MAD protocol, seeded.

VCR: n questions per question category (7 categories). SNLI-VE: n images per class, with up to k hypotheses of that
class per picked image (the paper's ~5 hypotheses per image: 100 images per class give ~1,500 pairs, not the
~17.8 hypotheses a SNLI-VE image has). VQA: n images per question type (8 types), with up to k questions of that
type per picked image. A category with fewer candidates than n contributes all it has.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable

from mmd2v2.errors import UserError
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


def sample_per_image(
    examples: list[VLExample], groups: list[str], per_group: int, per_image: int, rng: random.Random
) -> list[VLExample]:
    """Up to `per_image` examples of a group from each of `per_group` images drawn per group (an image once)."""
    by_group_image: dict[str, dict[str, list[VLExample]]] = defaultdict(lambda: defaultdict(list))
    for example in examples:
        by_group_image[example.group][example.image_id].append(example)
    chosen_images: set[str] = set()
    chosen: list[VLExample] = []
    for group in groups:
        images = by_group_image.get(group, {})
        pool = [i for i in images if i not in chosen_images]
        for image in rng.sample(pool, min(per_group, len(pool))):
            chosen_images.add(image)
            candidates = images[image]
            chosen.extend(rng.sample(candidates, min(per_image, len(candidates))))
    return chosen


def sample_snli_ve(examples: list[VLExample], per_class: int, seed: int, per_image: int = 5) -> list[VLExample]:
    """Up to `per_image` hypotheses of the class from `per_class` images drawn per class (an image once)."""
    return sample_per_image(examples, list(LABELS), per_class, per_image, random.Random(seed))


def sample_vqa(examples: list[VLExample], per_type: int, seed: int, per_image: int = 2) -> list[VLExample]:
    """Up to `per_image` questions of each type from `per_type` images drawn per type (an image once)."""
    types = [name for name, _ in QUESTION_TYPES] + [OTHER_TYPE]
    return sample_per_image(examples, types, per_type, per_image, random.Random(seed))


def low_shot_subset(
    task: str,
    examples: list[VLExample],
    shots: int,
    seed: int,
    questions_per_image: int = 2,
    hypotheses_per_image: int = 5,
) -> list[VLExample]:
    """The task's low-shot subset of `examples` with `shots` per category / class / question type."""
    if shots < 1:
        raise UserError(f"protocol.shots: got {shots}, expected >= 1")
    if task == "vcr":
        return sample_vcr(examples, shots, seed)
    if task == "snli_ve":
        return sample_snli_ve(examples, shots, seed, hypotheses_per_image)
    return sample_vqa(examples, shots, seed, questions_per_image)
