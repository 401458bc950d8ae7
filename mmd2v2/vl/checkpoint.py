"""A finetuned VL model on disk: the backbone as an mmd2v2 export (loads with load_export), the task head in
safetensors, and a JSON of the task (name, classes) and metrics. Written to a temporary folder, then renamed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.errors import MissingFileError, reading
from mmd2v2.files import atomic_folder
from mmd2v2.models.exported import load_export, save_export
from mmd2v2.vl.student import StudentParts, VLStudent
from mmd2v2.vl.tasks import get_task

BACKBONE, HEAD, TASK = "backbone", "head.safetensors", "task.json"


def save_vl_model(student: VLStudent, parts: StudentParts, folder: str | Path, task: dict[str, Any]) -> Path:
    """Write the finetuned student (backbone export + task head + task.json) to `folder` atomically."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        save_export(
            student.backbone, parts.config, parts.tokenizer, parts.preprocess, tmp / BACKBONE, {"vl_task": task["name"]}
        )
        save_file({k: v.detach().cpu().contiguous() for k, v in student.head.state_dict().items()}, str(tmp / HEAD))
        (tmp / TASK).write_text(json.dumps(task, indent=2))
    return folder


def load_vl_model(folder: str | Path) -> tuple[VLStudent, PreTrainedTokenizerBase, ImagePreprocessor, dict[str, Any]]:
    """Load what `save_vl_model` wrote: the eval-mode student, its tokenizer and preprocessing, and task.json."""
    folder = Path(folder)
    if not (folder / TASK).is_file() or not (folder / HEAD).is_file():
        raise MissingFileError(f"'{folder}' is not a VL model folder: missing '{TASK}' or '{HEAD}'")
    with reading(folder / TASK):
        task = json.loads((folder / TASK).read_text())
        outputs, ratio = get_task(task["name"]).num_outputs(task["classes"]), task["head_hidden_ratio"]
    bundle = load_export(folder / BACKBONE)
    student = VLStudent(bundle.model, outputs, ratio)
    with reading(folder / HEAD):
        student.head.load_state_dict(load_file(str(folder / HEAD)))
    return student.eval(), bundle.tokenizer, bundle.preprocess, task
