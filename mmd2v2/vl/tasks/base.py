"""What every VL task loader produces: examples, record-level error handling and bad-record counts."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmd2v2.errors import BadRecordError, MissingFileError

IGNORE_LABEL = -100  # label of an example without a usable answer (no loss, still evaluated)


@dataclass(frozen=True)
class VLExample:
    """One input of a VL task: an image, one text (VQA, SNLI-VE) or four candidate texts (VCR), and its label."""

    key: str  # names the record in messages: question_id, pairID, annot_id/mode
    record_id: str  # groups examples made from one record (VCR's Q->A and QA->R share it)
    image_id: str
    image: Path
    texts: tuple[str, ...]
    label: int  # class / choice index, or IGNORE_LABEL
    group: str = ""  # low-shot stratum: VQA question type, SNLI-VE class, VCR question category
    targets: tuple[tuple[int, float], ...] = ()  # VQA: (answer index, soft score) pairs
    answers: tuple[str, ...] = ()  # VQA: the human answers (for the VQA accuracy)
    mode: str = ""  # VCR: q2a or qa2r
    prompts: tuple[str, ...] = ()  # VCR: each choice alone, the zero-shot IA / IR prompts (answers or rationales)


@dataclass
class BadRecords:
    """Skips and counts bad records (on_bad_record=skip) or raises on the first (error)."""

    policy: str = "error"
    counts: Counter[str] = field(default_factory=Counter)

    def report(self, path: str | Path, where: str, problem: str, kind: str = "malformed") -> None:
        """Record one bad record: raise BadRecordError, or count it under `kind`."""
        if self.policy == "error":
            raise BadRecordError(f"{path}: {where}: {problem}")
        self.counts[kind] += 1

    def summary(self) -> dict[str, int]:
        """Counts by kind (empty when nothing was skipped)."""
        return dict(self.counts)


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file, with a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what}: '{path}' does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRecordError(f"{path}: not valid JSON ({error})") from None


def read_jsonl(path: str | Path, what: str, bad: BadRecords) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) of a JSON-lines file; unparsable lines go to `bad`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what}: '{path}' does not exist")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                bad.report(path, f"line {number}", f"not valid JSON ({error.msg})")
                continue
            if not isinstance(record, dict):
                bad.report(path, f"line {number}", "expected a JSON object")
                continue
            yield number, record


def image_folder(records: str | Path, image_root: str | None) -> Path:
    """The folder image names are resolved against: `image_root`, else the records file's folder."""
    return Path(image_root) if image_root else Path(records).parent


@dataclass
class LoadedSplit:
    """A split's examples and what was skipped while reading it."""

    examples: list[VLExample]
    skipped: dict[str, int]
