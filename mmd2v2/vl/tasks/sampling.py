"""Seeded low-shot sampling helpers of the MAD protocol; each task (its `low_shot`) says which groups it draws from.

A group is an example's low-shot stratum (VLExample.group): a question category, class or question type. A group
with fewer candidates than asked for contributes all it has.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable

from mmd2v2.vl.tasks.base import VLExample


def distinct_per_group(examples: list[VLExample], key: Callable[[VLExample], str]) -> dict[str, list[str]]:
    """Each group's distinct `key` values in first-seen order (a dict keeps the order, in linear time)."""
    groups: dict[str, dict[str, None]] = defaultdict(dict)
    for example in examples:
        groups[example.group][key(example)] = None
    return {group: list(values) for group, values in groups.items()}


def sample_records(examples: list[VLExample], groups: list[str], per_group: int, seed: int) -> list[VLExample]:
    """All examples of `per_group` records (record_id) drawn from each group."""
    rng = random.Random(seed)
    records = distinct_per_group(examples, lambda e: e.record_id)
    chosen: set[str] = set()
    for group in groups:
        pool = records.get(group, [])
        chosen.update(rng.sample(pool, min(per_group, len(pool))))
    return [e for e in examples if e.record_id in chosen]


def sample_per_image(
    examples: list[VLExample], groups: list[str], per_group: int, per_image: int, seed: int
) -> list[VLExample]:
    """Up to `per_image` examples of a group from each of `per_group` images drawn per group (an image once)."""
    rng = random.Random(seed)
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
