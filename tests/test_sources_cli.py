"""Training through train.py on each new source kind (built from the tiny demo's images), and a mixture's resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides
from dataset_files import write_shard

from mmd2v2.data.karpathy import load_karpathy_split

ROOT = Path(__file__).parent.parent


def _train(
    run: Path, demo_dir: Path, sources: list[dict[str, object]], *extra: str
) -> subprocess.CompletedProcess[str]:
    args = [
        *tiny_overrides(run, demo_dir, **{"trainer.checkpoint_every": 2}),
        f"data.sources={json.dumps(sources)}",
        *extra,
    ]
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/demo.yaml", "--output-dir", str(run), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())}


def test_table_source_trains_and_reports_dropped_and_truncated(demo_dir: Path, tmp_path: Path) -> None:
    records = load_karpathy_split(demo_dir / "dataset_demo.json", "train")
    lines = ["image_path,caption"] + [f'{r.path.relative_to(demo_dir)},"{c}"' for r in records for c in r.captions]
    table = tmp_path / "pairs.csv"
    table.write_text("\n".join(lines + ["images/train/missing.png,gone", "images/train/x.png,  "]) + "\n")
    run = tmp_path / "run"
    result = _train(
        run,
        demo_dir,
        [{"kind": "table", "path": str(table), "image_column": "image_path", "image_root": str(demo_dir)}],
        "data.max_text_length=6",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["skipped_train_rows"] == 1 and metrics["truncated_train_captions"] > 0
    assert metrics["num_images"] == 12  # evaluated on the demo's test split
    assert "rows or captions dropped while reading: 1 (empty caption 1" in result.stdout


def test_hf_source_trains(demo_dir: Path, tmp_path: Path) -> None:
    import datasets

    records = load_karpathy_split(demo_dir / "dataset_demo.json", "train")
    dataset = datasets.Dataset.from_dict(
        {"image": [str(r.path) for r in records], "captions": [list(r.captions) for r in records]},
        features=datasets.Features(
            {"image": datasets.Image(), "captions": datasets.Sequence(datasets.Value("string"))}
        ),
    )
    dataset.save_to_disk(str(tmp_path / "hf"))
    run = tmp_path / "run"
    _train(run, demo_dir, [{"kind": "hf", "path": str(tmp_path / "hf"), "caption_column": "captions"}])
    assert json.loads((run / "metrics.json").read_text())["skipped_train_samples"] == 0


@pytest.fixture(scope="module")
def mixed_sources(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    """The demo's Karpathy JSON (weight 0.7) mixed with four webdataset shards of its images (weight 0.3)."""
    folder = tmp_path_factory.mktemp("shards")
    records = load_karpathy_split(demo_dir / "dataset_demo.json", "train")
    for shard in range(4):
        write_shard(
            folder / f"{shard:06d}.tar",
            [
                {"__key__": f"{r.image_id:06d}".encode(), "png": r.path.read_bytes(), "txt": r.captions[0].encode()}
                for r in records[shard::4]
            ],
        )
    return [
        {"kind": "karpathy", "path": str(demo_dir / "dataset_demo.json"), "weight": 0.7},
        {"kind": "webdataset", "path": str(folder / "{000000..000003}.tar"), "weight": 0.3},
    ]


def test_mixture_with_webdataset_resumes_with_the_same_losses(
    demo_dir: Path, tmp_path: Path, mixed_sources: list[dict[str, object]]
) -> None:
    run = tmp_path / "mixed"
    _train(run, demo_dir, mixed_sources, "data.num_workers=2", "model.image.config.drop_path_rate=0.2")
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    (resumed / "train_log.jsonl").write_text("")
    result = _train(
        resumed, demo_dir, mixed_sources, "data.num_workers=2", "model.image.config.drop_path_rate=0.2", "--resume"
    )
    assert "resuming from step_00000002 (step 2)" in result.stdout
    original, again = _losses(run), _losses(resumed)
    assert sorted(again) == [3, 4]
    for step in (3, 4):
        assert again[step] == pytest.approx(original[step], rel=1e-6, abs=1e-7)
