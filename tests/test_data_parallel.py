"""Data-parallel training under DeepSpeed: 2 CPU processes (gloo) with ZeRO 0, 1 or 2 train exactly like 1 process
on the same global batch (contrastive terms over the gathered batch, memory banks on)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

ROOT = Path(__file__).parent.parent
GLOBAL_BATCH = 16


def _train(run: Path, demo_dir: Path, processes: int, zero_stage: int) -> list[dict[str, float]]:
    overrides = tiny_overrides(
        run,
        demo_dir,
        **{
            "trainer.micro_batch_size": GLOBAL_BATCH // processes,
            "trainer.max_steps": 3,
            "trainer.checkpoint_every": 100,
            "deepspeed.zero_stage": zero_stage,
            "loss.contrastive_memory_bank": 64,
        },
    )
    launcher = (
        [sys.executable]
        if processes == 1
        else [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={processes}"]
    )
    result = subprocess.run(
        [*launcher, "train.py", "--config", "configs/demo.yaml", "--output-dir", str(run), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> list[dict[str, float]]:
    return _train(tmp_path_factory.mktemp("dp") / "one", demo_dir, 1, 0)


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun missing")
@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_two_processes_match_one_on_the_same_global_batch(
    zero_stage: int, single_process: list[dict[str, float]], demo_dir: Path, tmp_path: Path
) -> None:
    two = _train(tmp_path / "two", demo_dir, 2, zero_stage)
    assert [r["step"] for r in two] == [1, 2, 3]
    for one_step, two_step in zip(single_process, two):  # step 1: same forward; steps 2-3: same updates and banks
        for term in ("loss", "contrastive", "kd"):
            assert two_step[term] == pytest.approx(one_step[term], rel=1e-5, abs=1e-6), (
                zero_stage,
                one_step["step"],
                term,
            )
