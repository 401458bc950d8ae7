"""Resuming an interrupted VL run. Every `trainer.checkpoint_every` steps the run saves RUN/resume/: the student
(safetensors), AdamW and schedule state, the random streams (global, objective, data order) and where it was in
the data (torch.load(weights_only=True) reads it back), and its position (JSON). A temporary folder is renamed into
place, so a run killed while saving keeps the previous state. The folder is removed once the run has finished.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from mmd2v2.errors import DamagedFileError, UserError
from mmd2v2.files import atomic_folder

RESUME, STUDENT, STATE, POSITION = "resume", "student.safetensors", "state.pt", "position.json"


@dataclass
class Position:
    """Where a run stopped: its stage, optimizer steps in that stage and in all, batches drawn from the current
    pass over the data, and undecodable training images met so far."""

    stage: str
    step: int
    global_step: int
    batches: int
    skipped: int


@dataclass
class SavedRun:
    """What `load_run_state` returns (tensors and plain containers only)."""

    position: Position
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    objective_rng: torch.Tensor
    pass_rng: torch.Tensor  # the data-order generator at the start of the current pass


def save_run_state(
    run: Path,
    student: torch.nn.Module,
    position: Position,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng: dict[str, Any],
    objective_rng: torch.Tensor,
    pass_rng: torch.Tensor,
) -> None:
    """Write RUN/resume/ (temporary folder, then renamed)."""
    with atomic_folder(run / RESUME) as tmp:
        save_model(student, str(tmp / STUDENT))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "objective_rng": objective_rng,
                "pass_rng": pass_rng,
            },
            tmp / STATE,
        )
        (tmp / POSITION).write_text(json.dumps(asdict(position)))


def load_run_state(run: Path, student: torch.nn.Module) -> SavedRun | None:
    """Load RUN/resume/ into `student` and return the rest; None when the run saved no state."""
    folder = run / RESUME
    if not (folder / POSITION).is_file():
        return None
    try:
        position = Position(**json.loads((folder / POSITION).read_text()))
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)  # AdamW moves its state to the params
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        raise DamagedFileError(f"'{folder}': unreadable training state ({error})") from error
    missing, unexpected = load_model(student, str(folder / STUDENT), strict=False)
    if missing or unexpected:
        raise UserError(
            f"'{folder / STUDENT}' does not fit this run's student (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}): was the config changed?"
        )
    return SavedRun(
        position, state["optimizer"], state["scheduler"], state["rng"], state["objective_rng"], state["pass_rng"]
    )


def remove_run_state(run: Path) -> None:
    """Delete RUN/resume/ (the run finished; its model/ folder is the result)."""
    shutil.rmtree(run / RESUME, ignore_errors=True)
