"""The dependency rule of docs/design.md: programs do not import each other, the VL path needs no DeepSpeed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


def _loaded(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("mmd2v2.vl.train", ("deepspeed", "mmd2v2.train", "mmd2v2.pretrain")),
        ("mmd2v2.pretrain.run", ("mmd2v2.train", "mmd2v2.vl")),
        ("mmd2v2.models.exported", ("deepspeed", "mmd2v2.train", "mmd2v2.pretrain", "mmd2v2.vl")),
        ("mmd2v2.api", ("deepspeed", "mmd2v2.train", "mmd2v2.pretrain", "mmd2v2.vl")),
        ("mmd2v2", ("mmd2v2.api", "torch")),
    ],
)
def test_programs_and_the_library_import_only_downwards(module: str, forbidden: tuple[str, ...]) -> None:
    loaded = _loaded(module)
    assert not [
        m for m in loaded if m.split(".")[0] in forbidden or any(m == f or m.startswith(f + ".") for f in forbidden)
    ]


def test_vl_pretraining_and_scripts_do_not_use_the_training_program_as_a_toolkit() -> None:
    """What the programs share lives in the library (runtime/, training_parts.py, data/...), not in train/."""
    root = Path(__file__).resolve().parent.parent
    files = [*(root / "scripts").glob("*.py"), *(root / "mmd2v2" / "vl").rglob("*.py")]
    files += [*(root / "mmd2v2" / "pretrain").rglob("*.py"), *(root / "eval").glob("*.py")]
    offenders = [
        f"{path.relative_to(root)}: {line.strip()}"
        for path in files
        for line in path.read_text().splitlines()
        if re.match(r"\s*(from mmd2v2\.train[. ]|import mmd2v2\.train\b)", line)
    ]
    assert not offenders
