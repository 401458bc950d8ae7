"""The feature cache: a cached training step equals the uncached one (to fp16 rounding), `mmd2v2 cache` + training
read it, and a cache of other checkpoints, preprocessing or with augmentation is refused with one line."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import process_group_undone, tiny_overrides

from mmd2v2.config import load_config
from mmd2v2.data.augmentation import apply_crop_flip
from mmd2v2.data.pairs import PairCollator
from mmd2v2.losses.objective import MMD2V2Objective
from mmd2v2.train.feature_cache import CacheRefused, open_cache, stored_view
from mmd2v2.train.loop import RunParts, attach_cache, prepare_run
from mmd2v2.training_parts import TrainingModule

ROOT = Path(__file__).parent.parent
FROZEN = {
    "model.image.freeze": True,
    "model.text.freeze": True,
    "cache.encoders": True,
    "cache.rows_per_shard": 10,
    "trainer.max_steps": 3,
}


@pytest.fixture(autouse=True)
def process_group_is_undone() -> Iterator[None]:
    """prepare_run starts a process group in this process: undone after each test."""
    with process_group_undone():
        yield


def _parts(run: Path, demo_dir: Path, **extra: object) -> RunParts:
    overrides = tiny_overrides(run, demo_dir, **{**FROZEN, "cache.dir": str(run / "cache"), **extra})
    return prepare_run(load_config(ROOT / "configs" / "demo.yaml", overrides), run)


def _loss_and_grads(
    module: TrainingModule, batch: dict[str, torch.Tensor], teacher_cls: torch.Tensor
) -> tuple[float, torch.Tensor]:
    module = copy.deepcopy(module)  # same weights and (empty) banks for both paths
    terms = module(**batch, teacher_cls=teacher_cls)
    terms["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in module.parameters() if p.requires_grad and p.grad is not None])
    return float(terms["loss"].detach()), grads


def test_cached_step_gives_the_uncached_loss_and_gradients(tmp_path: Path, demo_dir: Path) -> None:
    parts = _parts(tmp_path / "run", demo_dir)
    collate = PairCollator(parts.tokenizer, parts.config.data.max_text_length)
    indices = list(range(0, 80, 5))  # 16 pairs, several captions of the same images
    plain = collate([parts.data.sources[0].data[i] for i in indices])
    plain["pixel_values"] = parts.preprocess.normalize(plain["pixel_values"])  # as the training step does
    teacher = parts.teacher
    assert teacher is not None
    with torch.no_grad():
        plain_teacher = teacher(plain["pixel_values"])
    objective = MMD2V2Objective(parts.config.loss, parts.config.model.embed_dim, teacher.dim)
    module = TrainingModule(parts.student, objective, len(indices)).train()

    note = attach_cache(parts, tmp_path / "run", force=True)
    assert note.startswith("feature cache: teacher_cls, image_tokens, text_tokens from") and parts.teacher is None
    cached = collate([parts.data.sources[0].data[i] for i in indices])
    assert cached["pixel_values"].numel() == 0  # nothing decoded: every image-side input is cached
    assert (
        cached["image_tokens"].dtype == torch.float16 and cached["text_tokens"].shape[1] == plain["input_ids"].shape[1]
    )
    for key in ("input_ids", "attention_mask", "image_ids"):
        assert torch.equal(cached[key], plain[key])
    inputs = {k: v for k, v in plain.items() if not k.startswith("num_")}
    uncached_loss, uncached_grads = _loss_and_grads(module, inputs, plain_teacher)
    cached_inputs = {
        k: (v.float() if v.is_floating_point() else v) for k, v in cached.items() if not k.startswith("num_")
    }
    cached_loss, cached_grads = _loss_and_grads(module, cached_inputs, cached_inputs.pop("teacher_cls"))
    assert cached_loss == pytest.approx(uncached_loss, rel=1e-3)
    assert (cached_grads - uncached_grads).norm() / uncached_grads.norm() < 5e-3  # fp16 storage rounding
    assert uncached_grads.norm() > 0


def test_other_checkpoints_preprocessing_or_augmentation_are_refused(tmp_path: Path, demo_dir: Path) -> None:
    run = tmp_path / "run"
    parts = _parts(run, demo_dir)
    attach_cache(parts, run, force=True)
    for extra, difference in (
        ({"data.image_mean": [0.4, 0.5, 0.5]}, "a different preprocessing"),
        ({"teacher.target": "pre_norm"}, "a different teacher.target"),
        ({"data.max_text_length": 24}, "a different tokenizer.max_length"),
        ({"cache.encoders": False}, "a different image_encoder"),
    ):
        other = _parts(run, demo_dir, **extra)
        with pytest.raises(ValueError, match=f"cache.dir: '.*cache' was computed for {difference}"):
            open_cache(
                other.config,
                run,
                other.data,
                other.preprocess,
                other.tokenizer,
                other.teacher,
                other.student,
                other.passes,
                torch.device("cpu"),
            )
    augmented = _parts(run, demo_dir, **{"data.hflip_prob": 0.5})
    with pytest.raises(
        CacheRefused, match="cache.dir: training augmentation .* set cache.views to the augmented views"
    ):
        attach_cache(augmented, run)
    auto = _parts(tmp_path / "auto", demo_dir, **{"data.hflip_prob": 0.5, "cache.dir": "auto"})
    assert attach_cache(auto, tmp_path / "auto").startswith("feature cache: off (training augmentation")
    one_pass = _parts(tmp_path / "auto", demo_dir, **{"cache.dir": "auto"})
    assert (
        attach_cache(one_pass, tmp_path / "auto")
        == "feature cache: off (0.4 passes over the data; building it costs one)"
    )


def test_cache_command_then_training_reads_it_and_an_interrupted_build_resumes(tmp_path: Path, demo_dir: Path) -> None:
    run = tmp_path / "run"
    overrides = tiny_overrides(run, demo_dir, **{**FROZEN, "cache.dir": "auto"})
    command = [
        sys.executable,
        "-m",
        "mmd2v2.cli",
        "cache",
        "--config",
        "configs/demo.yaml",
        "--output-dir",
        str(run),
        *overrides,
    ]
    built = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    cache = run / "feature_cache"
    assert "feature cache: teacher_cls, image_tokens, text_tokens from" in built.stdout and "built in" in built.stdout
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["num_images"] == 24 and manifest["num_pairs"] == 120 and manifest["skipped_images"] == 0
    kept = (cache / "teacher_cls-00000.npy").stat().st_mtime_ns
    (cache / "manifest.json").unlink()  # as if the build had been killed before finishing
    (cache / "valid-00002.npy").unlink()
    rebuilt = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rebuilt.returncode == 0 and (cache / "valid-00002.npy").is_file()
    assert (cache / "teacher_cls-00000.npy").stat().st_mtime_ns == kept  # finished shards are not recomputed
    trained = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/demo.yaml", "--output-dir", str(run), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"feature cache: teacher_cls, image_tokens, text_tokens from '{cache}'" in trained.stdout
    assert "built in" not in trained.stdout
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in log)
    augmented = tmp_path / "augmented"  # trainable encoders, augmentation: 2 stored views of the teacher's input
    overrides = tiny_overrides(
        augmented,
        demo_dir,
        **{
            "cache.dir": str(augmented / "views"),
            "cache.views": 2,
            "data.random_crop_scale": [0.6, 1.0],
            "data.hflip_prob": 0.5,
        },
    )
    trained = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/demo.yaml", "--output-dir", str(augmented), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "feature cache: teacher_cls from" in trained.stdout and "built in" in trained.stdout
    assert json.loads((augmented / "views" / "manifest.json").read_text())["views"] == 2


def test_augmented_training_reads_the_stored_view_of_its_epoch(tmp_path: Path, demo_dir: Path) -> None:
    run = tmp_path / "run"
    parts = _parts(
        run,
        demo_dir,
        **{
            "data.random_crop_scale": [0.5, 1.0],
            "data.hflip_prob": 0.5,
            "cache.views": 2,
            "model.image.freeze": False,
            "cache.encoders": False,
        },
    )
    source, teacher = parts.data.sources[0].data, parts.teacher
    assert teacher is not None
    assert attach_cache(parts, run, force=True).startswith("feature cache: teacher_cls from")
    cached = parts.data.sources[0].data
    assert cached.wants_epoch and cached.cache.views == 2
    collate = PairCollator(parts.tokenizer, parts.config.data.max_text_length)
    for epoch in (0, 1, 2):  # views 0, 1, 0
        indices = [0, 7, 33]
        batch = collate([cached[epoch * len(cached) + i] for i in indices])
        plain = collate([source[i] for i in indices])
        rows = [cached.image_rows[i] for i in indices]
        expected = torch.stack([stored_view(parts.config, row, epoch % 2) for row in rows])
        assert torch.equal(batch["crop_theta"], expected)
        with torch.no_grad():
            target = teacher(apply_crop_flip(parts.preprocess.normalize(plain["pixel_values"]), expected))
        torch.testing.assert_close(batch["teacher_cls"].float(), target, rtol=2e-3, atol=2e-3)
    first, second = (collate([cached[e * len(cached)]])["teacher_cls"] for e in (0, 1))
    assert not torch.equal(first, second)  # two different crops of the image
