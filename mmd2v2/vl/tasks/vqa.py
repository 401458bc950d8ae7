"""VQA v2: the official questions + annotations JSON, an answer vocabulary, soft scores and the VQA accuracy.

Low-shot: n images per question type (8 types), with up to k questions of that type per picked image
(protocol.questions_per_image). Zero-shot logits: the image against every answer of the vocabulary (the IA prompt);
`vl protocol` runs no zero-shot setting for VQA.

Questions file: {"data_subtype": "train2014", "questions": [{"image_id", "question", "question_id"}]};
annotations file: {"annotations": [{"question_id", "image_id", "multiple_choice_answer",
"answers": [{"answer", "answer_id", ...} x 10]}]}. Images default to COCO's file names.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmd2v2.errors import UserError
from mmd2v2.vl.config import ProtocolConfig, SplitFiles, TaskConfig
from mmd2v2.vl.tasks.base import IGNORE_LABEL, BadRecords, LoadedSplit, VLExample, image_folder, read_json
from mmd2v2.vl.tasks.registry import VLTask, register_task
from mmd2v2.vl.tasks.sampling import sample_per_image

if TYPE_CHECKING:
    from mmd2v2.vl.batches import VLBatch
    from mmd2v2.vl.zero_shot import ZeroShotScorer

DEFAULT_IMAGE_PATTERN = "COCO_{subtype}_{image_id:012d}.jpg"
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:']")
PERIOD = re.compile(r"(?<!\d)\.(?!\d)")  # a full stop that is not a decimal point
# (type, first-word patterns) in matching order; a question belongs to the first type whose pattern matches
QUESTION_TYPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("how_many", re.compile(r"^how many\b")),
    ("what_color", re.compile(r"^what colou?r\b")),
    ("what", re.compile(r"^(what|what's)\b")),
    ("is", re.compile(r"^(is|are|was|were|isn't|aren't)\b")),
    ("does", re.compile(r"^(do|does|did|can|could|has|have|had|will|would|should)\b")),
    ("where", re.compile(r"^where\b")),
    ("who_which", re.compile(r"^(who|whose|whom|which)\b")),
)
OTHER_TYPE = "other"  # why, how, when, and everything else: the eighth type


def normalize_answer(answer: str) -> str:
    """The VQA evaluation's answer normalisation: lower case, punctuation, number words to digits, no articles."""
    text = PERIOD.sub("", PUNCTUATION.sub(" ", answer.lower().replace("\n", " ").replace("\t", " ")))
    words = [NUMBER_WORDS.get(word, word) for word in text.split()]
    return " ".join(word for word in words if word not in ARTICLES)


def question_type(question: str) -> str:
    """One of 8 question types from the question's first words (how_many, what_color, what, is, does, where,
    who_which, other)."""
    text = question.strip().lower()
    for name, pattern in QUESTION_TYPES:
        if pattern.match(text):
            return name
    return OTHER_TYPE


def soft_score(count: int) -> float:
    """Training target of an answer given by `count` annotators: min(1, count / 3)."""
    return min(1.0, count / 3.0)


def vqa_accuracy(predicted: str, human_answers: list[str] | tuple[str, ...]) -> float:
    """The VQA accuracy of one prediction: mean over leave-one-out subsets of min(1, matches among the others / 3)."""
    if not human_answers:
        raise ValueError("vqa_accuracy: a question needs at least one human answer")
    predicted = normalize_answer(predicted)
    answers = [normalize_answer(a) for a in human_answers]
    if len(answers) == 1:
        return float(answers[0] == predicted)
    scores = [min(1.0, sum(a == predicted for j, a in enumerate(answers) if j != i) / 3.0) for i in range(len(answers))]
    return sum(scores) / len(scores)


def _read_annotations(files: SplitFiles, bad: BadRecords) -> dict[int, dict[str, Any]]:
    """question_id -> annotation of the split (empty when the split has no annotations file)."""
    if files.annotations is None:
        return {}
    data = read_json(files.annotations, "task annotations")
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise UserError(f"{files.annotations}: expected an object with an 'annotations' list (VQA annotations JSON)")
    by_question: dict[int, dict[str, Any]] = {}
    for index, item in enumerate(annotations):
        answers = item.get("answers") if isinstance(item, dict) else None
        if (
            not isinstance(answers, list)
            or not isinstance(item.get("question_id"), int)
            or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers)
        ):
            bad.report(files.annotations, f"annotation {index}", "expected question_id and an answers list of {answer}")
            continue
        by_question[item["question_id"]] = item
    return by_question


def build_answer_vocabulary(files: SplitFiles, min_count: int, max_answers: int) -> list[str]:
    """Answers that are the majority (multiple-choice) answer of at least `min_count` training questions, most
    frequent first, at most `max_answers`."""
    counts: Counter[str] = Counter()
    for item in _read_annotations(files, BadRecords("skip")).values():
        answer = item.get("multiple_choice_answer")
        if not isinstance(answer, str):
            answer = Counter(normalize_answer(a["answer"]) for a in item["answers"]).most_common(1)[0][0]
        counts[normalize_answer(answer)] += 1
    vocabulary = [a for a, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count and a]
    if not vocabulary:
        raise UserError(
            f"{files.annotations}: no answer is given to {min_count} or more questions (lower task.min_answer_count)"
        )
    return vocabulary[:max_answers]


def load_vqa_split(cfg: TaskConfig, files: SplitFiles, vocabulary: list[str]) -> LoadedSplit:
    """Examples of one VQA split; answers outside the vocabulary are counted and their question gets IGNORE_LABEL."""
    if files.records is None:
        raise UserError("task: VQA needs the split's questions JSON (task.train.records / task.val.records)")
    bad = BadRecords(cfg.on_bad_record)
    data = read_json(files.records, "task questions")
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        raise UserError(f"{files.records}: expected an object with a 'questions' list (VQA questions JSON)")
    subtype = str(data.get("data_subtype", ""))
    annotations = _read_annotations(files, bad)
    index_of = {answer: i for i, answer in enumerate(vocabulary)}
    folder, pattern = image_folder(files.records, files.image_root), cfg.image_pattern or DEFAULT_IMAGE_PATTERN
    examples, out_of_vocabulary = [], 0
    for position, question in enumerate(questions):
        if not (
            isinstance(question, dict)
            and isinstance(question.get("question"), str)
            and isinstance(question.get("question_id"), int)
            and isinstance(question.get("image_id"), int)
        ):
            bad.report(
                files.records, f"question {position}", "expected question (text), question_id and image_id (int)"
            )
            continue
        qid = question["question_id"]
        annotation = annotations.get(qid)
        if files.annotations is not None and annotation is None:
            bad.report(files.records, f"question_id {qid}", f"has no annotation in {files.annotations}", "unanswered")
            continue
        human = tuple(a["answer"] for a in annotation["answers"]) if annotation else ()
        counts = Counter(normalize_answer(a) for a in human)
        targets = tuple(sorted((index_of[a], soft_score(c)) for a, c in counts.items() if a in index_of))
        label = max(targets, key=lambda t: t[1])[0] if targets else IGNORE_LABEL
        if human and not targets:
            out_of_vocabulary += 1
        examples.append(
            VLExample(
                key=f"question_id {qid}",
                record_id=str(qid),
                image_id=str(question["image_id"]),
                image=folder / pattern.format(subtype=subtype, image_id=question["image_id"]),
                texts=(question["question"],),
                label=label,
                group=question_type(question["question"]),
                targets=targets,
                answers=human,
            )
        )
    skipped = bad.summary()
    if out_of_vocabulary:
        skipped["answers_outside_vocabulary"] = out_of_vocabulary
    return LoadedSplit(examples, skipped)


def soft_targets(examples: list[VLExample], num_answers: int) -> Tensor:
    """Soft-score matrix (B, num_answers)."""
    targets = torch.zeros(len(examples), num_answers)
    for row, example in enumerate(examples):
        for index, score in example.targets:
            targets[row, index] = score
    return targets


def sample_vqa(examples: list[VLExample], per_type: int, seed: int, per_image: int = 2) -> list[VLExample]:
    """Up to `per_image` questions of each type from `per_type` images drawn per type (an image once)."""
    types = [name for name, _ in QUESTION_TYPES] + [OTHER_TYPE]
    return sample_per_image(examples, types, per_type, per_image, seed)


@register_task
class VQA(VLTask):
    """VQA v2: a head over the answer vocabulary, BCE on soft scores, the VQA accuracy."""

    name = "vqa"
    main_metric = "vqa_accuracy"
    unit = "questions"
    zero_shot_protocol = False

    def classes(self, cfg: TaskConfig, vocabulary: list[str] | None) -> list[str]:
        """The given vocabulary, else the one of the training annotations."""
        return vocabulary or build_answer_vocabulary(cfg.train, cfg.min_answer_count, cfg.max_answers)

    def load_split(self, cfg: TaskConfig, files: SplitFiles, classes: list[str]) -> LoadedSplit:
        """Questions with their soft targets over `classes`."""
        return load_vqa_split(cfg, files, classes)

    def labelled_loss(self, logits: Tensor, labels: Tensor, keep: Tensor, examples: list[VLExample]) -> Tensor:
        """BCE on soft scores, summed over answers, over questions with an answer in the vocabulary."""
        targets = soft_targets(examples, logits.shape[-1]).to(logits.device)
        per_answer = F.binary_cross_entropy_with_logits(logits[keep].float(), targets[keep], reduction="none")
        return per_answer.sum(-1).mean()

    def metrics(self, examples: list[VLExample], logits: Tensor, classes: list[str]) -> dict[str, float]:
        """The VQA accuracy over questions with human answers."""
        predicted = logits.argmax(-1).tolist()
        scored = [vqa_accuracy(classes[p], e.answers) for e, p in zip(examples, predicted, strict=True) if e.answers]
        return {"vqa_accuracy": 100.0 * sum(scored) / max(1, len(scored)), "num_questions": float(len(scored))}

    def sample(self, examples: list[VLExample], shots: int, seed: int, protocol: ProtocolConfig) -> list[VLExample]:
        """`shots` images per question type, up to protocol.questions_per_image questions each."""
        return sample_vqa(examples, shots, seed, protocol.questions_per_image)

    def zero_shot_logits(self, scorer: ZeroShotScorer, batch: VLBatch) -> Tensor:
        """Scale x cosine of each image with every answer."""
        images = F.normalize(scorer.dual.image_features(batch.pixel_values), dim=-1)
        return scorer.scale * images @ scorer.class_embeddings().T
