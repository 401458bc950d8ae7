"""SNLI-VE: the official JSON-lines files (Flickr30K_ID image premise, sentence2 hypothesis, gold_label)."""

from __future__ import annotations

from mmd2v2.errors import UserError
from mmd2v2.vl.config import SplitFiles, TaskConfig
from mmd2v2.vl.tasks.base import BadRecords, LoadedSplit, VLExample, image_folder, read_jsonl

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
