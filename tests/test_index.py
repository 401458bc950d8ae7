"""Index folders: build from the CLI, search, resume after a kill, split across ranks, append, and refuse bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT, TINY_VISION

from mmd2v2.cli import main
from mmd2v2.config import Config, EncoderConfig, ModelConfig, SharedConfig
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.models.dual_encoder import DualEncoder
from mmd2v2.models.exported import load_export, save_export
from mmd2v2.retrieval import index_build
from mmd2v2.retrieval.collection import read_collection
from mmd2v2.retrieval.index_build import BuildOptions, build_index
from mmd2v2.retrieval.index_store import (
    IndexFolder,
    apply_search_params,
    build_faiss_index,
    choose_index_type,
    default_search_params,
)
from mmd2v2.retrieval.search import Searcher

WORDS = [
    "small",
    "large",
    "red",
    "green",
    "blue",
    "circle",
    "square",
    "cross",
    "at",
    "top",
    "left",
    "right",
    "bottom",
    "and",
]


def _export(folder: Path, seed: int = 0, embed_dim: int = 8) -> Path:
    tokenizer = build_word_tokenizer(WORDS)
    image = EncoderConfig(family="vit", config=TINY_VISION, num_blocks=2)
    text = EncoderConfig(family="bert", config={**TINY_TEXT, "vocab_size": len(tokenizer)}, num_blocks=2)
    config = Config(
        model=ModelConfig(image=image, text=text, shared=SharedConfig(depth=1, width=32, heads=2), embed_dim=embed_dim)
    )
    torch.manual_seed(seed)
    model = DualEncoder(config.model).eval()
    return save_export(model, config, tokenizer, ImagePreprocessor(32, [0.5] * 3, [0.5] * 3), folder, {"step": 0})


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("model") / "export")


@pytest.fixture()
def captions(tmp_path: Path) -> Path:
    path = tmp_path / "captions.txt"
    lines = [
        f"{size} {colour} {shape} at top"
        for size in ("small", "large")
        for colour in ("red", "green", "blue")
        for shape in ("circle",)
    ] + ["large green square", "blue cross at left and red circle", "red cross"]
    path.write_text("\n\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")  # 9 captions, 3 empty lines
    return path


def _vectors(folder: Path) -> np.ndarray:
    opened = IndexFolder(folder)
    return np.stack([opened.index.reconstruct(i) for i in range(opened.index.ntotal)])


def test_build_info_and_search_from_the_cli(
    tmp_path: Path, export: Path, demo_dir: Path, captions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "index"
    assert (
        main(
            [
                "index",
                "build",
                "--ckpt",
                str(export),
                "--images",
                str(demo_dir / "images" / "test"),
                "--texts",
                str(captions),
                "--out",
                str(out),
                "--shard-size",
                "5",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "manifest.json", "metadata.jsonl"]
    assert not list(tmp_path.glob(".index*"))  # partial and temporary folders are gone
    capsys.readouterr()
    assert main(["index", "info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == info["ntotal"] == 12 + 9 and info["index_type"] == "Flat" and info["dim"] == 8
    assert info["skipped"] == 3  # the three empty caption lines

    # the CLI's ranking equals a brute-force ranking of the model's own embeddings
    bundle = load_export(export)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    query = "small red circle at top right"
    tokens = bundle.tokenizer([query], return_tensors="pt")
    q = bundle.model.encode_texts(tokens["input_ids"], tokens["attention_mask"]).numpy()[0]
    scores = _vectors(out) @ q
    expected = np.argsort(-scores, kind="stable")[:4]
    assert main(["search", str(out), "--text", query, "-k", "4", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in hits] == expected.tolist()
    assert [h["score"] for h in hits] == pytest.approx(scores[expected].tolist(), abs=1e-5)
    assert hits[0]["row"] == rows[hits[0]["id"]]
    image_rows = [r for r in rows if r["kind"] == "image"]
    assert (
        main(["search", str(out), "--image", str(demo_dir / "images" / "test" / image_rows[0]["path"]), "-k", "1"]) == 0
    )
    assert image_rows[0]["path"] in capsys.readouterr().out  # an indexed image finds itself first

    # --kind: the best items of one kind only, in the brute-force order
    for kind, k in (("image", 4), ("text", 3)):
        ranked = [i for i in np.argsort(-scores, kind="stable") if rows[i]["kind"] == kind][:k]
        assert main(["search", str(out), "--text", query, "-k", str(k), "--kind", kind, "--json"]) == 0
        assert [h["id"] for h in json.loads(capsys.readouterr().out)] == ranked


def test_killed_build_resumes_from_finished_shards(
    tmp_path: Path, export: Path, demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, images = load_export(export), [demo_dir / "images" / "test"]
    options = BuildOptions(shard_size=3, batch_size=4, progress=False)
    build_index(bundle, export, read_collection(images), tmp_path / "reference", options)

    real, done = index_build._encode_shard, []

    def dies_after_two(*args: object) -> None:
        if len(done) == 2:
            raise KeyboardInterrupt("killed")
        real(*args)  # type: ignore[arg-type]
        done.append(args[3])

    monkeypatch.setattr(index_build, "_encode_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_index(bundle, export, read_collection(images), tmp_path / "index", options)
    assert not (tmp_path / "index").exists() and len(list((tmp_path / ".index.partial").glob("*.npy"))) == 2
    done.clear()
    monkeypatch.setattr(index_build, "_encode_shard", lambda *a: (real(*a), done.append(a[3])))  # type: ignore[func-returns-value]
    build_index(bundle, export, read_collection(images), tmp_path / "index", options)
    assert done == [2, 3]  # only the unfinished shards were encoded
    np.testing.assert_array_equal(_vectors(tmp_path / "index"), _vectors(tmp_path / "reference"))
    assert (tmp_path / "index" / "metadata.jsonl").read_text() == (
        tmp_path / "reference" / "metadata.jsonl"
    ).read_text()


def test_ranks_encode_their_own_shards(
    tmp_path: Path, export: Path, demo_dir: Path, captions: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = load_export(export)
    options = BuildOptions(shard_size=4, batch_size=4, progress=False, wait_timeout_s=5)
    build_index(
        bundle, export, read_collection([demo_dir / "images" / "test"], [captions]), tmp_path / "reference", options
    )
    encoded: list[tuple[str, int]] = []
    real = index_build._encode_shard
    monkeypatch.setattr(
        index_build, "_encode_shard", lambda *a: (real(*a), encoded.append((a[4].__class__.__name__, a[3])))
    )  # type: ignore[func-returns-value]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):  # rank 1 finishes first; rank 0 encodes its shards, then assembles the index
        monkeypatch.setenv("RANK", rank)
        result = build_index(
            bundle, export, read_collection([demo_dir / "images" / "test"], [captions]), tmp_path / "index", options
        )
        assert (result is None) == (rank == "1")
    assert [shard for _, shard in encoded] == [1, 3, 5, 0, 2, 4]
    np.testing.assert_array_equal(_vectors(tmp_path / "index"), _vectors(tmp_path / "reference"))


def test_undecodable_images_are_skipped_and_counted(tmp_path: Path, export: Path, demo_dir: Path) -> None:
    folder = tmp_path / "images"
    shutil.copytree(demo_dir / "images" / "test", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    manifest = build_index(
        load_export(export), export, read_collection([folder]), tmp_path / "index", BuildOptions(progress=False)
    )
    assert manifest is not None and manifest.count == 12 and manifest.skipped == 1
    assert "broken.png" not in (tmp_path / "index" / "metadata.jsonl").read_text()


def test_build_names_each_skipped_file_and_its_reason(
    tmp_path: Path, export: Path, demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "images"
    shutil.copytree(demo_dir / "images" / "val", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "index"
    assert main(["index", "build", "--ckpt", str(export), "--images", str(folder), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 items skipped" in captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith("skipped ")]  # not the progress bars
    assert lines == [
        f"skipped {folder / 'broken.png'}: not an image format PIL can read",
        f"skipped {folder / 'empty.jpg'}: not an image format PIL can read",
    ]
    recorded = IndexFolder(out).manifest.skipped_items
    assert [Path(item["path"]).name for item in recorded] == ["broken.png", "empty.jpg"]
    assert all(item["reason"] for item in recorded)


def test_skipped_items_beyond_twenty_are_counted_not_listed(capsys: pytest.CaptureFixture[str]) -> None:
    from mmd2v2.cli import _print_skipped

    _print_skipped([{"path": f"f{i}.png", "reason": "empty"} for i in range(23)])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 21 and lines[0] == "skipped f0.png: empty" and lines[-1] == "... and 3 more"


def test_add_appends_items(
    tmp_path: Path, export: Path, demo_dir: Path, captions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "index"
    assert (
        main(["index", "build", "--ckpt", str(export), "--images", str(demo_dir / "images" / "val"), "--out", str(out)])
        == 0
    )
    before = _vectors(out)
    assert main(["index", "add", str(out), "--texts", str(captions)]) == 0
    opened = IndexFolder(out)
    assert opened.manifest.count == 4 + 9 and [s["kind"] for s in opened.manifest.sources] == ["images", "texts"]
    np.testing.assert_array_equal(_vectors(out)[:4], before)
    assert opened.row(4) == {"kind": "text", "text": "small red circle at top", "id": 4}
    assert main(["search", str(out), "--text", "large green square", "-k", "1"]) == 0
    assert "'large green square'" in capsys.readouterr().out


def test_bad_input_gets_one_line_errors_and_nothing_is_overwritten(
    tmp_path: Path, export: Path, demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "index"
    build = ["index", "build", "--ckpt", str(export), "--images", str(demo_dir / "images" / "val"), "--out", str(out)]
    assert main(build) == 0
    original = (out / "index.faiss").read_bytes()

    def error_of(argv: list[str]) -> str:
        capsys.readouterr()
        assert main(argv) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("error: ") and "\n" not in message
        return message

    assert "already exists" in error_of(build)
    assert "is not a folder" in error_of(
        ["index", "build", "--ckpt", str(export), "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]
    )
    other = _export(tmp_path / "other", seed=1)
    assert "checkpoint id" in error_of(["search", str(out), "--text", "red", "--ckpt", str(other)])
    wider = _export(tmp_path / "wider", embed_dim=12)
    assert "8-d vectors" in error_of(["search", str(out), "--text", "red", "--ckpt", str(wider)])
    assert "expected 1..1000" in error_of(["search", str(out), "--text", "red", "-k", "0"])
    assert "not a readable image" in error_of(
        ["search", str(out), "--image", str(tmp_path / "index" / "manifest.json")]
    )
    assert (out / "index.faiss").read_bytes() == original

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    with open(broken / "metadata.jsonl", "a") as extra:
        extra.write('{"kind": "text", "text": "stray"}\n')
    assert "counts disagree" in error_of(["search", str(broken), "--text", "red"])
    (broken / "index.faiss").write_bytes(b"garbage")
    assert "corrupt" in error_of(["index", "info", str(broken)])
    (broken / "manifest.json").unlink()
    assert "missing 'manifest.json'" in error_of(["index", "info", str(broken)])


def test_index_type_follows_collection_size_and_memory_budget() -> None:
    assert choose_index_type(50_000, 256, 4 * 2**30) == "Flat"
    assert choose_index_type(1_000_000, 256, 4 * 2**30) == "HNSW32,Flat"  # 1.28 GB of vectors and graph fit
    # they do not: 4-bit PQ codes (32 bytes) re-ranked by 8-bit codes (256 bytes), or the PQ codes alone
    assert choose_index_type(1_000_000, 256, 2**30) == "IVF1024,PQ64x4fs,Refine(SQ8)"
    assert choose_index_type(1_000_000, 256, 2**28) == "IVF1024,PQ64x4fs"


@pytest.mark.parametrize("index_type", ["HNSW32,Flat", "IVF16,PQ8x4fs", "IVF16,Flat", "IVF16,PQ8x4fs,Refine(SQ8)"])
def test_approximate_indexes_find_the_exact_neighbours(index_type: str) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    data = (centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[:50] + 0.05 * rng.normal(size=(50, 16)).astype(np.float32)
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    index = build_faiss_index(data, index_type)
    apply_search_params(index, {**default_search_params(index_type), **({"nprobe": 4} if "IVF" in index_type else {})})
    found = index.search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert (
        recall
        > {"HNSW32,Flat": 0.95, "IVF16,Flat": 0.9, "IVF16,PQ8x4fs": 0.15, "IVF16,PQ8x4fs,Refine(SQ8)": 0.6}[index_type]
    )


@pytest.mark.parametrize(
    ("index_type", "exact_kind_limit"),
    [("Flat", 10), ("HNSW32,Flat", 10), ("IVF16,Flat", 10), ("Flat", 0), ("IVF16,Flat", 0)],
)
def test_kind_filter_finds_a_rare_kind_and_reads_rows_written_in_any_key_order(
    tmp_path: Path, index_type: str, exact_kind_limit: int
) -> None:
    from mmd2v2.retrieval.index_store import IndexManifest, write_index_folder

    rng = np.random.default_rng(0)
    data = rng.normal(size=(3000, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    images = {7, 1500, 2999}  # 3 images among 2997 captions; one row as an older build wrote it (kind not first)
    rows = [
        {"kind": "image", "path": f"{i}.png"}
        if i in images
        else {"text": f"caption {i}", "kind": "text"}
        if i == 11
        else {"kind": "text", "text": f"caption {i}"}
        for i in range(3000)
    ]
    manifest = IndexManifest("export", "id", 16, 3000, index_type, search_params=default_search_params(index_type))
    write_index_folder(tmp_path / "index", build_faiss_index(data, index_type), rows, manifest)
    opened = IndexFolder(tmp_path / "index")
    opened.exact_kind_limit = exact_kind_limit  # 0: over-fetch neighbours until enough are of the kind
    if "IVF" in index_type:
        apply_search_params(opened.index, {"nprobe": 16})  # every list: the exact ranking, to compare with
    hits = opened.search(data[:2], 5, "image")
    exact = [sorted(images, key=lambda i: -float(data[i] @ q)) for q in data[:2]]
    assert [[h.id for h in hits[q]] for q in range(2)] == exact  # all 3 found, fewer than k exist
    assert [h.id for h in opened.search(data[11:12], 1, "text")[0]] == [11]
    assert opened.kind_mask("text").sum() == 2997
    with pytest.raises(ValueError, match="expected 'image' or 'text'"):
        opened.search(data[:1], 5, "video")


def test_searcher_by_id_returns_the_item_first(tmp_path: Path, export: Path, demo_dir: Path) -> None:
    build_index(
        load_export(export),
        export,
        read_collection([demo_dir / "images" / "test"]),
        tmp_path / "index",
        BuildOptions(progress=False),
    )
    searcher = Searcher(tmp_path / "index")
    assert searcher.by_id(5, k=3)[0].id == 5
    with pytest.raises(KeyError, match="id 99"):
        searcher.by_id(99)


def test_fast_scan_pq_index_searches_by_id_by_encoding_the_item_again(
    tmp_path: Path, export: Path, demo_dir: Path, captions: Path
) -> None:
    from PIL import Image

    from mmd2v2.retrieval.collection import image_path

    images = tmp_path / "images"
    shutil.copytree(demo_dir / "images" / "test", images)
    build_index(
        load_export(export),
        export,
        read_collection([images], [captions]),
        tmp_path / "index",
        BuildOptions(index_type="IVF2,PQ4x4fs", progress=False),
    )
    searcher = Searcher(tmp_path / "index")
    assert not searcher.index.stores_vectors  # FAISS's reconstruct would crash the process on these codes
    rows = [searcher.index.row(i) for i in range(searcher.index.manifest.count)]
    text_id, image_id = (
        next(i for i, r in enumerate(rows) if r["kind"] == "text"),
        next(i for i, r in enumerate(rows) if r["kind"] == "image"),
    )
    assert [h.id for h in searcher.by_id(text_id, 5)] == [h.id for h in searcher.by_text(rows[text_id]["text"], 5)]
    with Image.open(image_path(rows[image_id], searcher.index.manifest.sources)) as image:
        expected = [h.id for h in searcher.by_image(image.convert("RGB"), 5, "image")]
    assert [h.id for h in searcher.by_id(image_id, 5, "image")] == expected
    assert all(h.row["kind"] == "image" for h in searcher.by_id(image_id, 5, "image"))
    image_path(rows[image_id], searcher.index.manifest.sources).unlink()
    with pytest.raises(FileNotFoundError, match=f"item {image_id}: its image"):
        searcher.by_id(image_id)


def test_build_from_a_karpathy_split_keeps_captions_as_metadata(
    tmp_path: Path, export: Path, demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "index"
    assert (
        main(
            [
                "index",
                "build",
                "--ckpt",
                str(export),
                "--dataset",
                str(demo_dir / "dataset_demo.json"),
                "--split",
                "val",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    opened = IndexFolder(out)
    data = json.loads((demo_dir / "dataset_demo.json").read_text())
    val = [e for e in data["images"] if e["split"] == "val"]
    assert opened.manifest.count == len(val) == 4 and opened.manifest.sources[0]["split"] == "val"
    row = opened.row(0)
    assert row["path"] == f"{val[0]['filepath']}/{val[0]['filename']}" and row["captions"] == [
        s["raw"] for s in val[0]["sentences"]
    ]
    capsys.readouterr()
    assert (
        main(
            [
                "index",
                "build",
                "--ckpt",
                str(export),
                "--dataset",
                "coco",
                "--data-root",
                str(tmp_path),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "coco/dataset_coco.json" in capsys.readouterr().err
