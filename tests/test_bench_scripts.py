"""The benchmark scripts run end to end on tiny settings and print their tables (no timing asserted)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

ROOT = Path(__file__).parent.parent


def test_bench_step_prints_component_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = tiny_overrides(tmp_path / "run", tmp_path / "unused") + ["trainer.micro_batch_size=8"]
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench_step.py",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--repeats",
            "1",
            "--set",
            *tiny,
            "--baseline",
            *tiny,
            "model.text.num_blocks=1",
        ],
    )
    runpy.run_path(str(ROOT / "scripts" / "bench_step.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["config", "baseline", "speed-up"])
    rows = {line[:24].strip(): line[24:].split() for line in lines[header + 1 :]}
    for row in (
        "load batch",
        "teacher forward",
        "image fwd+bwd",
        "text fwd+bwd",
        "whole step (no load)",
        "full run, est. (s)",
    ):
        ours, base, ratio = rows[row]
        assert float(ours) > 0 and float(base) > 0 and ratio.endswith("x")
    assert float(rows["params (M)"][0]) > float(rows["params (M)"][1])  # the baseline kept 1 of 2 text blocks


def test_load_test_reports_latency_and_zero_errors(
    tmp_path: Path, demo_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_index import _export

    from mmd2v2.models.exported import load_export
    from mmd2v2.retrieval.collection import read_collection
    from mmd2v2.retrieval.index_build import BuildOptions, build_index

    export = _export(tmp_path / "export")
    build_index(
        load_export(export),
        export,
        read_collection([demo_dir / "images" / "test"]),
        tmp_path / "index",
        BuildOptions(progress=False),
    )
    monkeypatch.setattr(
        sys, "argv", ["load_test.py", "--index", str(tmp_path / "index"), "--clients", "4", "--requests", "16"]
    )
    runpy.run_path(str(ROOT / "scripts" / "load_test.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["batching", "clients", "requests"])
    rows = [line.split() for line in lines[header + 1 :]]
    assert [row[:3] for row in rows] == [["off", "1", "4"], ["off", "4", "16"], ["on", "1", "4"], ["on", "4", "16"]]
    assert all(float(row[3]) > 0 and float(row[4]) >= float(row[3]) and row[6] == "0" for row in rows)


def test_bench_index_compares_our_search_path_with_raw_faiss(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench_index.py",
            "--count",
            "4000",
            "--dim",
            "32",
            "--queries",
            "50",
            "--clusters",
            "20",
            "--types",
            "Flat",
            "HNSW32,Flat",
            "IVF16,PQ8x4fs,Refine(SQ8)",
        ],
    )
    runpy.run_path(str(ROOT / "scripts" / "bench_index.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("index"))
    rows = {line.split()[0]: line.split() for line in lines[header + 1 :]}
    assert list(rows) == ["Flat", "HNSW32,Flat", "IVF16,PQ8x4fs,Refine(SQ8)"]
    assert rows["Flat"][-1] == "1.000"  # exact search is its own reference
    assert all(0.0 < float(row[-1]) <= 1.0 and row[-2].endswith("%") for row in rows.values())


def test_bench_recall_agrees_with_the_dense_baseline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_recall.py", "--images", "200", "--dim", "16", "--repeats", "1"])
    runpy.run_path(str(ROOT / "scripts" / "bench_recall.py"), run_name="__main__")  # asserts both methods agree
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("200 images x 1000 captions") and len(lines) == 4
    assert lines[2].split()[-2:] == lines[3].split()[-2:]  # same R@5 both ways


def test_bench_train_prints_and_appends_the_cached_against_uncached_table(tmp_path: Path) -> None:
    import subprocess

    report = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/bench_train.py",
            "--only",
            "demo",
            "--demo-batch",
            "8",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--append",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| demo")]
    assert [r[1].strip() for r in rows] == ["uncached", "teacher cached"]
    for row in rows:
        assert float(row[2]) == 8 and float(row[4]) > 0 and float(row[5]) > 0 and row[8].strip().endswith("x")
    assert rows[0][8].strip() == "1.00x"
    assert "Training throughput" in report.read_text() and "| demo | teacher cached |" in report.read_text()


def test_bench_input_compares_the_fast_path_with_todays_in_the_same_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("skimage")  # the bench's real photos (dev extra)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench_input.py",
            "--images",
            "6",
            "--batch",
            "4",
            "--size",
            "32",
            "--workers",
            "0",
            "--rounds",
            "1",
            "--data-dir",
            str(tmp_path),
        ],
    )
    runpy.run_path(str(ROOT / "scripts" / "bench_input.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["loader", "path", "workers"])
    rows = [(line[:18].strip(), line[18:30].strip(), *line[30:].split()) for line in lines[header + 1 : header + 7]]
    assert [row[:3] for row in rows] == [
        (loader, path, "0")
        for loader in ("training pairs", "cache/index/eval")
        for path in ("baseline", "uint8 only", "fast")
    ]
    assert all(float(row[3]) > 0 and float(row[4]) > 0 and row[5].endswith("x") and int(row[6]) >= 1 for row in rows)
    assert rows[0][5] == "1.00x" and any(
        line.startswith("pixels of the fast path") and "PSNR" in line for line in lines
    )
    assert len(list(tmp_path.glob("*.jpg"))) == 6


def test_probe_image_features_maps_patches_to_cells_and_prints_a_row_per_encoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from probe_image_features import cell_of_patches

    from mmd2v2.models.data2vec2_vision import Data2Vec2VisionConfig, Data2Vec2VisionModel

    weights = cell_of_patches(4)  # patch centres at 1/8, 3/8, 5/8, 7/8 of the width: cells 0, 1, 1, 2
    assert weights.shape == (9, 16)
    assert weights[0].nonzero().flatten().tolist() == [0]
    assert weights[4].nonzero().flatten().tolist() == [5, 6, 9, 10] and weights[4, 5].item() == 0.25
    assert weights[8].nonzero().flatten().tolist() == [15]
    config = Data2Vec2VisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    Data2Vec2VisionModel(config).save_pretrained(tmp_path / "encoder")
    monkeypatch.setattr(
        sys,
        "argv",
        ["probe_image_features.py", str(tmp_path / "encoder"), "--train", "30", "--test", "10", "--max-iter", "5"],
    )
    runpy.run_path(str(ROOT / "scripts" / "probe_image_features.py"), run_name="__main__")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert lines[0].split(" | ")[1:4] == ["patches/colour", "patches/shape", "patches/size"]
    assert [line.split(" | ")[0] for line in lines[1:]] == [
        "| random init (same architecture)",
        f"| {tmp_path / 'encoder'}",
    ]
    for line in lines[1:]:
        assert all(0 <= float(v) <= 1 for v in line.strip(" |").split(" | ")[1:])
