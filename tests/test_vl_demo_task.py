"""The VCR-style demo records: facts about an object checked by hand, one right answer and one right rationale."""

from __future__ import annotations

import numpy as np
import pytest

from mmd2v2.data.demo_scenes import Scene, SceneObject, generate_scene
from mmd2v2.vl.demo_task import _object_facts, demo_vcr_record

# a large red circle at the top left, a small blue square at the top right, a small red cross in the center
SCENE = Scene(
    objects=(
        SceneObject("red", "circle", "large", 0, 0, 0.0, 0.0),
        SceneObject("blue", "square", "small", 0, 2, 0.0, 0.0),
        SceneObject("red", "cross", "small", 1, 1, 0.0, 0.0),
    ),
    captions=("",) * 5,
    background=128,
    shades=((0, 0, 0),) * 3,
    noise_seed=0,
)


def _words(tokens: list[object]) -> str:
    return " ".join(f"<{t[0]}>" if isinstance(t, list) else str(t) for t in tokens)


def test_facts_about_an_object_by_hand() -> None:
    true, false = _object_facts(SCENE, 0)
    assert sorted(map(_words, true)) == sorted(
        [
            "<0> is large",
            "<0> is to the left of <1>",
            "<0> is to the left of <2>",
            "<0> is above <2>",
            "<0> is one of two red shapes",
        ]
    )
    assert sorted(map(_words, false)) == sorted(
        [
            "<0> is small",
            "<0> is to the right of <1>",
            "<0> is above <1>",
            "<0> is below <1>",
            "<0> is to the right of <2>",
            "<0> is below <2>",
            "<0> is the only red shape",
            "<0> is one of three red shapes",
            "<0> is one of four red shapes",
        ]
    )
    assert "<1> is the only blue shape" in map(_words, _object_facts(SCENE, 1)[0])


@pytest.mark.parametrize("index", range(40))
def test_each_record_has_one_right_answer_and_one_right_rationale(index: int) -> None:
    scene = generate_scene(1000, "train", index)
    record = demo_vcr_record(scene, np.random.default_rng(index), "train", index)
    question, objects = _words(record["question"]), record["objects"]
    k = next(t[0] for t in record["question"] if isinstance(t, list))
    obj = scene.objects[k]
    assert objects == [o.shape for o in scene.objects] and record["img_fn"] == f"train/{index:06d}.png"
    if question.startswith("what color"):
        assert question == f"what color is <{k}> {obj.place} ?"
        right = [c for c in map(_words, record["answer_choices"]) if c == f"<{k}> is {obj.colour}"]
    else:
        assert question == f"where is the {obj.colour} <{k}> ?"
        right = [c for c in map(_words, record["answer_choices"]) if c == f"<{k}> is {obj.place}"]
    assert len(right) == 1 and _words(record["answer_choices"][record["answer_label"]]) == right[0]
    assert len({_words(c) for c in record["answer_choices"]}) == 4
    true, false = map(lambda facts: set(map(_words, facts)), _object_facts(scene, k))
    rationales = [_words(c) for c in record["rationale_choices"]]
    assert [r in true for r in rationales] == [i == record["rationale_label"] for i in range(4)]
    assert all(r in false for i, r in enumerate(rationales) if i != record["rationale_label"])
