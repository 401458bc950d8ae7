"""The whole path through the CLI on a tiny demo: train, checkpoint, resume, export, evaluate, bad input."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

ROOT = Path(__file__).parent.parent


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())}


# drop path and augmentation draw random numbers, so resuming must also restore the RNG state
STOCHASTIC = {"model.image.config.drop_path_rate": 0.2, "data.random_crop_scale": [0.6, 1.0], "data.hflip_prob": 0.5}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    """A 4-step run of configs/demo.yaml shrunk to tiny sizes, through train.py."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    result = _run(
        "train.py",
        "--config",
        "configs/demo.yaml",
        "--output-dir",
        str(run),
        *tiny_overrides(run, demo_dir, **STOCHASTIC),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image→text" in result.stdout and "skipped training samples (undecodable images): 0" in result.stdout
    return run


def test_training_writes_run_folder(trained_run: Path) -> None:
    assert (trained_run / "config.yaml").is_file()
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert all((p / "complete.json").is_file() for p in (trained_run / "checkpoints").iterdir())
    assert list((trained_run / "tb").glob("events.out.tfevents.*"))
    log = [json.loads(line) for line in (trained_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {
        "loss",
        "contrastive",
        "contrastive_i2t",
        "contrastive_t2i",
        "kd",
        "kd_image",
        "kd_text",
        "logit_scale",
        "lr",
        "samples_per_s",
    } <= set(log[0])
    assert abs(log[0]["logit_scale"] - 1 / 0.07) < 0.1
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics["image_to_text"]) == {"R@1", "R@5", "R@10"} and metrics["num_images"] == 12


def test_eval_script_reads_run_and_writes_json(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "recall.json"
    result = _run("eval/retrieval.py", "--ckpt", str(trained_run), "--split", "test", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    recalls = json.loads(out.read_text())
    assert recalls["image_to_text"] == json.loads((trained_run / "metrics.json").read_text())["image_to_text"]
    assert all(0.0 <= v <= 100.0 for d in ("image_to_text", "text_to_image") for v in recalls[d].values())
    assert "R@5" in result.stdout


def test_resume_after_stop_repeats_the_same_losses(trained_run: Path, demo_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "checkpoints" / "step_00000004")  # as if killed after step 2's checkpoint
    (run / "checkpoints" / "step_00000003").mkdir()  # and mid-way through writing step 3's
    (run / "train_log.jsonl").write_text("")
    result = _run(
        "train.py",
        "--config",
        "configs/demo.yaml",
        "--output-dir",
        str(run),
        "--resume",
        *tiny_overrides(run, demo_dir, **STOCHASTIC),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from step_00000002 (step 2)" in result.stdout
    resumed, original = _losses(run), _losses(trained_run)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(original[step], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trainer.max_stepz=3"], "unknown config key 'trainer.max_stepz'"),
        (["model.image.family=resnet"], "model.image.family: unknown image model family 'resnet'"),
        (["data.karpathy_json=/no/such/dataset.json", "data.demo=false"], "'/no/such/dataset.json' does not exist"),
    ],
)
def test_bad_input_fails_at_once_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = _run("train.py", "--config", "configs/demo.yaml", "--output-dir", str(tmp_path / "r"), *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_console_script_dump_config() -> None:
    result = _run("-m", "mmd2v2.cli", "train", "--config", "configs/demo.yaml", "--dump-config", "loss.kd_weight=0.5")
    assert result.returncode == 0 and json.loads(result.stdout)["loss"]["kd_weight"] == 0.5


def test_undecodable_training_images_are_skipped_counted_and_reported(demo_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "demo"
    shutil.copytree(demo_dir, data)
    broken = sorted((data / "images" / "train").iterdir())[:8]
    for path in broken:
        path.write_bytes(b"\x89PNG truncated")
    run = tmp_path / "run"
    result = _run(
        "train.py",
        "--config",
        "configs/demo.yaml",
        "--output-dir",
        str(run),
        *tiny_overrides(run, data, **{"trainer.checkpoint_every": 100}),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = json.loads((run / "metrics.json").read_text())["skipped_train_samples"]
    assert skipped > 0
    assert f"skipped training samples (undecodable images): {skipped}" in result.stdout


def test_zero2_accumulation_and_contrastive_distillation(demo_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "z2"
    result = _run(
        "train.py",
        "--config",
        "configs/demo.yaml",
        "--output-dir",
        str(run),
        *tiny_overrides(
            run,
            demo_dir,
            **{
                "deepspeed.zero_stage": 2,
                "deepspeed.gradient_accumulation_steps": 2,
                "trainer.micro_batch_size": 8,
                "loss.kd_kind": "contrastive",
                "loss.kd_bank_size": 32,
                "trainer.max_steps": 3,
                "trainer.checkpoint_every": 100,
            },
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert {"kd_logit_scale", "kd_image", "kd_text"} <= set(log[0]) and all(math.isfinite(r["loss"]) for r in log)
