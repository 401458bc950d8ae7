"""`mmd2v2 eval`: benchmark names, saved and reused embeddings, JSON with rsum and mean, the recall@k plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_index import _export

from mmd2v2.cli import main
from mmd2v2.retrieval.encode import load_embeddings
from mmd2v2.retrieval.recall import recall_at_k


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("eval") / "export")


def _coco_layout(demo_dir: Path, root: Path) -> None:
    """The demo's test split rewritten as COCO's Karpathy file: filepath val2014, images under coco/images/."""
    data = json.loads((demo_dir / "dataset_demo.json").read_text())
    (root / "coco" / "images" / "val2014").mkdir(parents=True)
    images = []
    for entry in data["images"]:
        if entry["split"] != "test":
            continue
        shutil.copy(
            demo_dir / entry["filepath"] / entry["filename"], root / "coco" / "images" / "val2014" / entry["filename"]
        )
        images.append({**entry, "filepath": "val2014", "cocoid": entry["imgid"]})
    (root / "coco" / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))


def test_eval_saves_and_reuses_embeddings_and_plots(
    export: Path, demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, emb, plot = tmp_path / "recall.json", tmp_path / "emb.npz", tmp_path / "curve.png"
    assert (
        main(
            [
                "eval",
                "--ckpt",
                str(export),
                "--dataset",
                str(demo_dir / "dataset_demo.json"),
                "--json",
                str(first),
                "--save-embeddings",
                str(emb),
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    report = json.loads(first.read_text())
    embeddings, info = load_embeddings(emb)
    assert embeddings.image_emb.shape == (12, 8) and embeddings.text_emb.shape == (60, 8)
    assert (
        report["image_to_text"]
        == recall_at_k(embeddings.image_emb, embeddings.text_emb, embeddings.text_image_index)["image_to_text"]
    )
    six = [*report["image_to_text"].values(), *report["text_to_image"].values()]
    assert report["rsum"] == pytest.approx(sum(six)) and report["mean_recall"] == pytest.approx(sum(six) / 6)
    assert report["checkpoint_id"] == info["checkpoint_id"] and report["num_images"] == 12
    assert f"{report['rsum']:.2f}" in table and f"mean {report['mean_recall']:.2f}" in table
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 300

    again = tmp_path / "again.json"
    assert main(["eval", "--embeddings", str(emb), "--json", str(again)]) == 0  # no model, no images needed
    assert {k: v for k, v in json.loads(again.read_text()).items()} == report


def test_benchmark_names_resolve_under_the_data_root(
    export: Path, demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _coco_layout(demo_dir, tmp_path)
    out = tmp_path / "coco.json"
    assert (
        main(["eval", "--ckpt", str(export), "--dataset", "coco", "--data-root", str(tmp_path), "--json", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    assert report["num_images"] == 12 and report["dataset"] == str(tmp_path / "coco" / "dataset_coco.json")
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(export), "--dataset", "flickr30k", "--data-root", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "flickr30k/dataset_flickr30k.json" in error and "\n" not in error
    assert main(["eval", "--dataset", "coco", "--data-root", str(tmp_path)]) == 2
    assert "--ckpt is required" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(np.arange(3).tobytes())
    assert main(["eval", "--embeddings", str(tmp_path / "bad.npz")]) == 2
    assert "not an embeddings file" in capsys.readouterr().err
