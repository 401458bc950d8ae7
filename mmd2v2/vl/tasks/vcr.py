"""VCR: the official JSON-lines files; object references become names such as "person1"; Q->A, QA->R, Q->AR.

A record has `objects` (detector class per box), `img_fn`, `question`, `answer_choices` and `rationale_choices`
(token lists in which a list of integers refers to boxes), `answer_label`, `rationale_label` and `annot_id`.
Each record gives two examples: Q->A (question + each answer) and QA->R (question + right answer + each rationale).
Low-shot: n questions per question category (7 categories), both of their examples. Zero-shot: the choice whose text
best matches the image; prompt `ia` (the paper's IA / IR) scores the answer (Q->A) or the rationale (QA->R) alone,
`iqa` the question + answer [+ right answer + rationale].
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from torch import Tensor

from mmd2v2.errors import BadRecordError, UserError
from mmd2v2.vl.config import ProtocolConfig, SplitFiles, TaskConfig
from mmd2v2.vl.tasks.base import BadRecords, LoadedSplit, VLExample, image_folder, read_jsonl
from mmd2v2.vl.tasks.registry import VLTask, register_task
from mmd2v2.vl.tasks.sampling import sample_records

if TYPE_CHECKING:
    from mmd2v2.vl.batches import VLBatch
    from mmd2v2.vl.zero_shot import ZeroShotScorer

NUM_CHOICES = 4
# the 7 question categories of the VCR paper, by keywords, checked in this order (the first match wins)
CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hypothetical", re.compile(r"\b(if|would|could|will|might|going to)\b")),
    ("explanation", re.compile(r"\b(why|how come|reason|purpose)\b")),
    ("mental", re.compile(r"\b(feel|feeling|feels|think|thinking|thinks|want|wants|like|mood|emotion|opinion)\b")),
    ("temporal", re.compile(r"\b(happen|happened|happening|before|after|next|when|later|just|earlier)\b")),
    ("role", re.compile(r"\b(relation|relationship|related|occupation|job|work|role|profession|who)\b")),
    ("scene", re.compile(r"\b(where|place|location|near|room|building|here)\b")),
    ("activity", re.compile(r".")),
)


class ObjectReferenceError(BadRecordError):
    """A reference to an object index the record's objects list does not have."""


def object_name(objects: list[str], index: int) -> str:
    """The display name of box `index`: its class and 1-based index, e.g. 'person1'."""
    if not 0 <= index < len(objects):
        raise ObjectReferenceError(f"refers to object {index}, the record has {len(objects)} objects")
    return f"{objects[index]}{index + 1}"


def render_tokens(tokens: list[Any], objects: list[str]) -> str:
    """A VCR token list as text: [0, 2] -> 'person1 and person3', plain tokens joined with spaces."""
    words = []
    for token in tokens:
        if isinstance(token, list):
            if not token or not all(isinstance(i, int) for i in token):
                raise ObjectReferenceError(f"malformed object reference {token!r}")
            names = [object_name(objects, i) for i in token]
            words.append(names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1])
        elif isinstance(token, str):
            words.append(token)
        else:
            raise ObjectReferenceError(f"unexpected token {token!r}")
    return re.sub(r"\s+([?.!,;:'])", r"\1", " ".join(words))


def question_category(question: str) -> str:
    """One of the 7 VCR question categories, from keywords of the question."""
    text = question.lower()
    for name, pattern in CATEGORIES:
        if pattern.search(text):
            return name
    return CATEGORIES[-1][0]


def _choices(record: dict[str, Any], key: str) -> list[list[Any]]:
    choices = record.get(key)
    if not isinstance(choices, list) or len(choices) != NUM_CHOICES or not all(isinstance(c, list) for c in choices):
        raise ObjectReferenceError(f"expected {key} as {NUM_CHOICES} token lists")
    return choices


def load_vcr_split(cfg: TaskConfig, files: SplitFiles) -> LoadedSplit:
    """Q->A and QA->R examples of one VCR split (test records without labels are bad records)."""
    if files.records is None:
        raise UserError("task: VCR needs the split's jsonl (task.train.records / task.val.records)")
    bad = BadRecords(cfg.on_bad_record)
    folder = image_folder(files.records, files.image_root)
    examples = []
    for line, record in read_jsonl(files.records, "task records", bad):
        annot = str(record.get("annot_id", f"line{line}"))
        where = f"line {line} (annot_id {annot})"
        objects, image = record.get("objects"), record.get("img_fn")
        answer, rationale = record.get("answer_label"), record.get("rationale_label")
        if not (
            isinstance(objects, list)
            and all(isinstance(o, str) for o in objects)
            and isinstance(image, str)
            and isinstance(record.get("question"), list)
        ):
            bad.report(files.records, where, "expected objects (list of names), img_fn and question (token list)")
            continue
        if not (isinstance(answer, int) and isinstance(rationale, int) and 0 <= answer < 4 and 0 <= rationale < 4):
            bad.report(files.records, where, "expected answer_label and rationale_label in 0..3", "unlabelled")
            continue
        try:
            question = render_tokens(record["question"], objects)
            answers = [render_tokens(c, objects) for c in _choices(record, "answer_choices")]
            rationales = [render_tokens(c, objects) for c in _choices(record, "rationale_choices")]
        except ObjectReferenceError as error:
            bad.report(files.records, where, str(error), "bad_object_reference")
            continue
        path = folder / (cfg.image_pattern.format(image_id=image) if cfg.image_pattern else image)
        common = {"record_id": annot, "image_id": image, "image": path, "group": question_category(question)}
        examples.append(
            VLExample(
                key=f"annot_id {annot} q2a",
                texts=tuple(f"{question} {a}" for a in answers),
                label=answer,
                mode="q2a",
                prompts=tuple(answers),
                **common,
            )
        )
        examples.append(
            VLExample(
                key=f"annot_id {annot} qa2r",
                texts=tuple(f"{question} {answers[answer]} {r}" for r in rationales),
                label=rationale,
                mode="qa2r",
                prompts=tuple(rationales),
                **common,
            )
        )
    return LoadedSplit(examples, bad.summary())


def sample_vcr(examples: list[VLExample], per_category: int, seed: int) -> list[VLExample]:
    """All examples (Q->A and QA->R) of `per_category` questions drawn from each question category."""
    return sample_records(examples, [name for name, _ in CATEGORIES], per_category, seed)


PROMPTS = {"ia": ", IA / IR prompts", "iqa": ", IQA prompts"}  # the zero-shot row's name in protocol tables


@register_task
class VCR(VLTask):
    """VCR: one score per candidate text, softmax over the four; Q->A, QA->R and Q->AR."""

    name = "vcr"
    main_metric = "q2a"
    unit = "examples (Q->A + QA->R)"
    texts_per_example = NUM_CHOICES

    def classes(self, cfg: TaskConfig, vocabulary: list[str] | None) -> list[str]:
        """The choice numbers."""
        return [str(i) for i in range(NUM_CHOICES)]

    def num_outputs(self, classes: list[str]) -> int:
        """One score per choice text."""
        return 1

    def load_split(self, cfg: TaskConfig, files: SplitFiles, classes: list[str]) -> LoadedSplit:
        """Q->A and QA->R examples."""
        return load_vcr_split(cfg, files)

    def metrics(self, examples: list[VLExample], logits: Tensor, classes: list[str]) -> dict[str, float]:
        """Q->A, QA->R and Q->AR (both right) accuracy over the questions."""
        predicted = logits.argmax(-1).tolist()
        correct: dict[str, dict[str, bool]] = {}
        for example, p in zip(examples, predicted, strict=True):
            correct.setdefault(example.record_id, {})[example.mode] = p == example.label
        q2a = [c["q2a"] for c in correct.values() if "q2a" in c]
        qa2r = [c["qa2r"] for c in correct.values() if "qa2r" in c]
        both = [c["q2a"] and c["qa2r"] for c in correct.values() if len(c) == 2]
        return {
            "q2a": 100.0 * sum(q2a) / max(1, len(q2a)),
            "qa2r": 100.0 * sum(qa2r) / max(1, len(qa2r)),
            "q2ar": 100.0 * sum(both) / max(1, len(both)),
            "num_questions": float(len(correct)),
        }

    def sample(self, examples: list[VLExample], shots: int, seed: int, protocol: ProtocolConfig) -> list[VLExample]:
        """`shots` questions per question category."""
        return sample_vcr(examples, shots, seed)

    def zero_shot_texts(self, batch: VLBatch, prompt: str) -> list[str]:
        """Each choice alone with prompt `ia`, else the full texts."""
        if prompt == "ia":
            return [p for example in batch.examples for p in example.prompts]
        return batch.texts

    def zero_shot_method(self, prompt: str) -> str:
        """The prompts used."""
        return PROMPTS[prompt]

    def zero_shot_logits(self, scorer: ZeroShotScorer, batch: VLBatch) -> Tensor:
        """Scale x cosine of the image with each choice: (B, 4)."""
        return scorer.scale * scorer.similarities(batch).view(len(batch.examples), -1)
