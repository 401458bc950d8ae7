"""VQA v2, SNLI-VE and VCR loaders on small files in the official formats; their metrics; bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vl_files import snli_ve_record, vcr_record, vqa_annotation, write_image, write_jsonl, write_vqa

from mmd2v2.vl.config import SplitFiles, TaskConfig
from mmd2v2.vl.tasks import get_task, load_task
from mmd2v2.vl.tasks.base import IGNORE_LABEL, BadRecordError, VLExample
from mmd2v2.vl.tasks.snli_ve import load_snli_ve_split
from mmd2v2.vl.tasks.vcr import load_vcr_split, question_category, render_tokens
from mmd2v2.vl.tasks.vqa import normalize_answer, question_type, vqa_accuracy


@pytest.fixture()
def vqa_files(tmp_path: Path) -> SplitFiles:
    questions = [
        {"image_id": 1, "question": "What color is the bus?", "question_id": 10},
        {"image_id": 1, "question": "How many dogs are there?", "question_id": 11},
        {"image_id": 2, "question": "Is it raining?", "question_id": 12},
        {"image_id": 2, "question": "What is this?", "question_id": 13},
    ]
    annotations = [
        vqa_annotation(10, 1, ["red"] * 1 + ["blue"] * 2 + ["green"] * 7),
        vqa_annotation(11, 1, ["two"] * 4 + ["2"] * 4 + ["3"] * 2),
        vqa_annotation(12, 2, ["green"] * 6 + ["yes"] * 4),
        vqa_annotation(13, 2, ["purple"] * 10),
    ]
    q, a = write_vqa(tmp_path, "train2014", questions, annotations)
    return SplitFiles(str(q), str(a), str(tmp_path / "train2014"))


def test_vqa_vocabulary_soft_scores_and_out_of_vocabulary(vqa_files: SplitFiles) -> None:
    cfg = TaskConfig(name="vqa", train=vqa_files, val=vqa_files, min_answer_count=2)
    task = load_task(cfg)
    assert task.classes == ["green"]  # majority answer of 2 questions; '2', 'purple' only of one
    cfg = TaskConfig(name="vqa", train=vqa_files, val=vqa_files, min_answer_count=1)
    task = load_task(cfg)
    assert task.classes == ["green", "2", "purple"]  # by frequency, then name
    bus, dogs, rain, this = task.train.examples
    assert bus.image.name == "COCO_train2014_000000000001.jpg" and bus.image.is_file()
    assert bus.targets == ((0, 1.0),) and bus.label == 0  # green 7/3 -> 1; red, blue outside the vocabulary
    assert dogs.targets == ((1, 1.0),)  # 'two' and '2' are the same answer
    assert rain.group == "is" and dogs.group == "how_many" and bus.group == "what_color"
    cfg = TaskConfig(name="vqa", train=vqa_files, val=vqa_files, min_answer_count=1, max_answers=2)
    task = load_task(cfg)
    assert task.train.examples[3].label == IGNORE_LABEL and task.train.examples[3].targets == ()
    assert task.train.skipped == {"answers_outside_vocabulary": 1}
    logits = torch.zeros(4, 2)
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:3], torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), reduction="none"
        )
        .sum(-1)
        .mean()
    )
    assert float(get_task("vqa").loss(logits, task.train.examples)) == pytest.approx(float(expected))


def test_vqa_soft_score_is_count_over_three(tmp_path: Path) -> None:
    q, a = write_vqa(
        tmp_path,
        "val2014",
        [{"image_id": 3, "question": "What color?", "question_id": 1}],
        [vqa_annotation(1, 3, ["red"] * 1 + ["blue"] * 2 + ["green"] * 7)],
    )
    files = SplitFiles(str(q), str(a), str(tmp_path / "val2014"))
    task = load_task(
        TaskConfig(name="vqa", train=files, val=files, min_answer_count=1), vocabulary=["red", "blue", "green"]
    )
    assert task.val.examples[0].targets == ((0, pytest.approx(1 / 3)), (1, pytest.approx(2 / 3)), (2, 1.0))


def test_vqa_accuracy_by_hand() -> None:
    humans = ["red"] * 2 + ["blue"] * 8
    assert vqa_accuracy("red", humans) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("blue", humans) == 1.0 and vqa_accuracy("green", humans) == 0.0
    assert vqa_accuracy("Two.", ["2"] * 3 + ["3"] * 7) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert normalize_answer("The Two dogs!") == "2 dogs" and normalize_answer("3.5") == "3.5"
    assert question_type("Why is he sad?") == "other" and question_type("Which one?") == "who_which"
    classes = ["red", "blue"]
    example = VLExample("q", "q", "1", Path("x"), ("?",), 1, answers=tuple(humans))
    assert get_task("vqa").metrics([example, example], torch.tensor([[1.0, 0.0], [0.0, 1.0]]), classes)[
        "vqa_accuracy"
    ] == pytest.approx(100 * (0.6 + 1.0) / 2)


def test_vqa_malformed_question_names_the_record_or_is_skipped(vqa_files: SplitFiles, tmp_path: Path) -> None:
    q, a = write_vqa(
        tmp_path / "bad",
        "val2014",
        [{"image_id": 1, "question": "What?", "question_id": 1}, {"image_id": 1, "question": "No id?"}],
        [vqa_annotation(1, 1, ["green"] * 10)],
    )
    bad = SplitFiles(str(q), str(a), None)
    with pytest.raises(BadRecordError, match=r"questions_val2014.json: question 1: expected question"):
        load_task(TaskConfig(name="vqa", train=vqa_files, val=bad, min_answer_count=1))
    task = load_task(TaskConfig(name="vqa", train=vqa_files, val=bad, min_answer_count=1, on_bad_record="skip"))
    assert len(task.val.examples) == 1 and task.val.skipped == {"malformed": 1}


def test_snli_ve_loader_accuracy_and_bad_labels(tmp_path: Path) -> None:
    records = [
        snli_ve_record("1001", "A dog runs.", "entailment", "p1"),
        snli_ve_record("1001", "A cat sleeps.", "contradiction", "p2"),
        snli_ve_record("1002", "The dog is happy.", "neutral", "p3"),
        snli_ve_record("1002", "Something.", "-", "p4"),
        "{not json",
    ]
    path = write_jsonl(tmp_path / "snli_ve_dev.jsonl", records)
    files = SplitFiles(str(path), None, str(tmp_path / "images"))
    with pytest.raises(BadRecordError, match=r"snli_ve_dev.jsonl: line 4 \(pairID p4\): gold_label '-'"):
        load_snli_ve_split(TaskConfig(name="snli_ve"), files)
    split = load_snli_ve_split(TaskConfig(name="snli_ve", on_bad_record="skip"), files)
    assert split.skipped == {"unlabelled": 1, "malformed": 1}
    assert [(e.image.name, e.texts[0], e.label, e.group) for e in split.examples] == [
        ("1001.jpg", "A dog runs.", 0, "entailment"),
        ("1001.jpg", "A cat sleeps.", 2, "contradiction"),
        ("1002.jpg", "The dog is happy.", 1, "neutral"),
    ]
    metrics = get_task("snli_ve").metrics(split.examples, torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]), [])
    assert metrics["accuracy"] == pytest.approx(200 / 3)


def _vcr_choices(tag: str) -> list[list[object]]:
    return [[f"{tag}{i}", [i % 3], "."] for i in range(4)]


def test_vcr_renders_object_references_and_scores_q2a_qa2r_q2ar(tmp_path: Path) -> None:
    assert (
        render_tokens(["Why", "is", [0, 2], "here", "?"], ["person", "person", "dog"])
        == "Why is person1 and dog3 here?"
    )
    assert render_tokens([[0, 1, 2], "ran"], ["person", "person", "dog"]) == "person1, person2 and dog3 ran"
    assert question_category("Why is person1 smiling?") == "explanation"
    assert question_category("What is person1 doing?") == "activity"
    assert question_category("Where are they?") == "scene"
    records = [
        vcr_record("a1", "m/1.jpg", ["What", "is", [0], "doing", "?"], _vcr_choices("ans"), _vcr_choices("why"), 2, 1),
        vcr_record("a2", "m/2.jpg", ["Why", "is", [1], "here", "?"], _vcr_choices("ans"), _vcr_choices("why"), 0, 3),
    ]
    path = write_jsonl(tmp_path / "val.jsonl", records)
    split = load_vcr_split(TaskConfig(name="vcr"), SplitFiles(str(path), None, str(tmp_path / "images")))
    q2a, qa2r = split.examples[0], split.examples[1]
    assert q2a.texts[1] == "What is person1 doing? ans1 person2." and q2a.label == 2 and q2a.mode == "q2a"
    assert qa2r.texts[3] == "What is person1 doing? ans2 dog3. why3 person1." and qa2r.label == 1
    assert q2a.image == tmp_path / "images" / "m/1.jpg" and q2a.group == "activity"
    logits = torch.zeros(4, 4)
    logits[0, 2] = logits[1, 1] = logits[2, 0] = logits[3, 0] = 1.0  # a1 both right; a2 answer right, rationale wrong
    metrics = get_task("vcr").metrics(split.examples, logits, [])
    assert (metrics["q2a"], metrics["qa2r"], metrics["q2ar"]) == (100.0, 50.0, 50.0)


def test_vcr_reference_to_a_missing_object_names_the_record(tmp_path: Path) -> None:
    records = [
        vcr_record("a1", "m/1.jpg", ["Is", [5], "ok", "?"], _vcr_choices("a"), _vcr_choices("r"), 0, 0),
        vcr_record("a2", "m/2.jpg", ["Is", [0], "ok", "?"], _vcr_choices("a"), _vcr_choices("r"), 0, 0),
    ]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    files = SplitFiles(str(path), None, None)
    with pytest.raises(
        BadRecordError, match=r"train.jsonl: line 1 \(annot_id a1\): refers to object 5, the record has 3"
    ):
        load_vcr_split(TaskConfig(name="vcr"), files)
    split = load_vcr_split(TaskConfig(name="vcr", on_bad_record="skip"), files)
    assert split.skipped == {"bad_object_reference": 1} and len(split.examples) == 2
    write_image(tmp_path / "m" / "2.jpg", 0)
    assert split.examples[0].image.is_file()
