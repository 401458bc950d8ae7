"""The benchmark scripts run end to end on tiny settings and print their tables (no timing asserted)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from conftest import tiny_overrides

ROOT = Path(__file__).parent.parent


def test_bench_step_prints_component_table(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = tiny_overrides(tmp_path / "run", tmp_path / "unused") + ["trainer.micro_batch_size=8"]
    monkeypatch.setattr(sys, "argv", ["bench_step.py", "--config", str(ROOT / "configs" / "demo.yaml"), "--repeats", "1",
                                      "--set", *tiny, "--baseline", *tiny, "model.text.num_blocks=1"])
    runpy.run_path(str(ROOT / "scripts" / "bench_step.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["config", "baseline", "speed-up"])
    rows = {line[:24].strip(): line[24:].split() for line in lines[header + 1:]}
    for row in ("load batch", "teacher forward", "image fwd+bwd", "text fwd+bwd", "whole step (no load)",
                "full run, est. (s)"):
        ours, base, ratio = rows[row]
        assert float(ours) > 0 and float(base) > 0 and ratio.endswith("x")
    assert float(rows["params (M)"][0]) > float(rows["params (M)"][1])  # the baseline kept 1 of 2 text blocks
