"""Training sources: Karpathy JSON layouts, tables, img2dataset downloads, HF datasets, mixing, bad input, config."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from dataset_files import png_bytes, write_flickr30k, write_png

from mmd2v2.config import ConfigError, SourceConfig, config_from_dict
from mmd2v2.data.karpathy import Dropped
from mmd2v2.data.mixture import PATTERN_LENGTH, MixedPairStream, MixedSource, MixturePattern
from mmd2v2.data.pairs import CaptionPairDataset, PairCollator, PairSample
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.sources import configured_sources, load_training_data
from mmd2v2.data.tables import load_table
from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.retrieval.evaluate import resolve_dataset

PRE = ImagePreprocessor(8, [0.5] * 3, [0.5] * 3)


def test_flickr30k_layout_without_filepath_or_ids(tmp_path: Path) -> None:
    path = write_flickr30k(tmp_path, 4)
    data = load_training_data(
        [SourceConfig(kind="karpathy", path=str(path), image_root=str(tmp_path / "flickr30k-images"))], PRE, seed=0
    )
    dataset = data.sources[0].data
    assert len(dataset) == 6 and not data.streaming and data.dropped.total() == 0
    assert all(dataset[i].pixel_values is not None for i in range(6))
    assert data.captions[:2] == ["Picture 0 first.", "Picture 0 second."]


def test_coco_layout_counts_empty_captions_and_keeps_restval(tmp_path: Path) -> None:
    images = []
    for index, (split, folder) in enumerate([("train", "train2014"), ("restval", "val2014"), ("test", "val2014")]):
        write_png(tmp_path / folder / f"COCO_{index}.jpg", index)
        images.append(
            {
                "filepath": folder,
                "filename": f"COCO_{index}.jpg",
                "imgid": index,
                "split": split,
                "cocoid": index,
                "sentences": [{"raw": f"photo {index}"}, {"raw": " "}],
            }
        )
    images.append({"filepath": "train2014", "filename": "none.jpg", "split": "train", "sentences": [{"raw": ""}]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images}))
    data = load_training_data([SourceConfig(kind="karpathy", path=str(path))], PRE, seed=0)
    assert data.captions == ["photo 0", "photo 1"]
    assert data.dropped.counts == Counter({"empty caption": 3})
    assert str(path) in data.dropped.summary()


def _write_table(path: Path, rows: list[tuple[str, str]], columns: tuple[str, str] = ("image_path", "caption")) -> None:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({columns[0]: [r[0] for r in rows], columns[1]: [r[1] for r in rows]}), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(columns, row, strict=True))) + "\n" for row in rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        path.write_text(sep.join(columns) + "\n" + "".join(f'{a}{sep}"{b}"\n' for a, b in rows))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_tables_group_rows_by_image_and_drop_bad_rows(tmp_path: Path, suffix: str) -> None:
    for index in range(3):
        write_png(tmp_path / "img" / f"{index}.png", index)
    absolute = str(write_png(tmp_path / "elsewhere" / "abs.png", 9))
    rows = [
        ("0.png", "a cat"),
        ("1.png", "a dog"),
        ("0.png", "a cat, again"),
        (absolute, "absolute path"),
        ("2.png", "   "),
        ("http://example.com/x.jpg", "never downloaded"),
        ("missing.png", "no file"),
    ]
    path = tmp_path / f"pairs{suffix}"
    _write_table(path, rows)
    dropped = Dropped()
    records = load_table(path, "image_path", "caption", tmp_path / "img", dropped=dropped)
    assert [r.captions for r in records] == [("a cat", "a cat, again"), ("a dog",), ("absolute path",), ("no file",)]
    assert records[2].path == Path(absolute) and records[0].path == tmp_path / "img" / "0.png"
    assert dropped.counts == Counter({"empty caption": 1, "URL not downloaded": 1})
    dataset = CaptionPairDataset(records, PRE)
    assert [dataset[i].pixel_values is None for i in range(len(dataset))] == [False, False, False, False, True]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_row_that_is_not_utf8_is_dropped_and_located(tmp_path: Path, suffix: str) -> None:
    write_png(tmp_path / "0.png", 0)
    path = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        path.write_bytes(b"image_path,caption\n0.png,fine\n0.png,caf\xe9 latin-1\n0.png,also fine\n")
    else:
        path.write_bytes(
            b'{"image_path": "0.png", "caption": "fine"}\n{"image_path": "0.png", "caption": "caf\xe9"}\n'
            b'{broken json\n{"image_path": "0.png", "caption": "also fine"}\n'
        )
    dropped = Dropped()
    records = load_table(path, "image_path", "caption", dropped=dropped)
    assert records[0].captions == ("fine", "also fine")
    assert dropped.total() == (1 if suffix == ".csv" else 2)
    assert dropped.first == f"{path} line {3 if suffix == '.csv' else 2}"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_a_table_without_the_column_names_file_and_column(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    _write_table(path, [("0.png", "x")], columns=("url", "caption"))
    with pytest.raises(ValueError, match="no column 'image_path'") as info:
        load_table(path, "image_path", "caption")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_table_format(tmp_path: Path) -> None:
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unknown table format '.xlsx'"):
        load_table(tmp_path / "t.xlsx", "image", "caption")


def test_urls_resolve_to_an_img2dataset_download_folder(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "cc3m"
    write_png(out / "00000" / "000000000.jpg", 1)
    write_png(out / "00000" / "000000002.jpg", 2)
    pq.write_table(
        pa.table(
            {
                "url": ["http://a/1.jpg", "http://a/2.jpg", "http://a/3.jpg"],
                "key": ["000000000", "000000001", "000000002"],
                "status": ["success", "failed_to_download", "success"],
            }
        ),
        out / "00000.parquet",
    )
    table = tmp_path / "cc3m.tsv"
    table.write_text("url\tcaption\nhttp://a/1.jpg\tone\nhttp://a/2.jpg\ttwo\nhttp://a/3.jpg\tthree\n")
    dropped = Dropped()
    records = load_table(table, "url", "caption", img2dataset_dir=out, dropped=dropped)
    assert [(r.path, r.captions) for r in records] == [
        (out / "00000" / "000000000.jpg", ("one",)),
        (out / "00000" / "000000002.jpg", ("three",)),
    ]
    assert dropped.counts == Counter({"URL not downloaded": 1})


def _save_hf(tmp_path: Path, captions: list[object], images: list[bytes]) -> Path:
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Sequence(datasets.Value("string"))
            if isinstance(captions[0], list)
            else datasets.Value("string"),
        }
    )
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "text": captions}, features=features
    )
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_hf_dataset_with_caption_lists_and_a_broken_image(tmp_path: Path) -> None:
    folder = _save_hf(
        tmp_path, [["one", "uno"], ["two", " "], ["three"]], [png_bytes(1), png_bytes(2), b"\x89PNG broken"]
    )
    data = load_training_data(
        [SourceConfig(kind="hf", path=str(folder), image_column="image", caption_column="text")], PRE, seed=0
    )
    dataset = data.sources[0].data
    assert data.captions == ["one", "uno", "two", "three"] and data.dropped.total() == 1
    samples = [dataset[i] for i in range(len(dataset))]
    assert [s.image_id for s in samples] == [0, 0, 1, 2]
    assert [s.pixel_values is None for s in samples] == [False, False, False, True]


def test_hf_dataset_errors_name_the_column(tmp_path: Path) -> None:
    folder = _save_hf(tmp_path, ["one"], [png_bytes(1)])
    for source, message in [
        (SourceConfig(kind="hf", path=str(folder), caption_column="caption"), "no column 'caption'"),
        (
            SourceConfig(kind="hf", path=str(folder), image_column="text", caption_column="text"),
            "column 'text' is .*expected an Image",
        ),
        (SourceConfig(kind="hf", path=str(folder), split="validation", caption_column="text"), "no split 'validation'"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_training_data([source], PRE, seed=0)


def test_mixture_pattern_honours_weights_exactly_and_counts_in_closed_form() -> None:
    pattern = MixturePattern([0.7, 0.3], seed=1)
    assert pattern.taken(PATTERN_LENGTH) == [7000, 3000]
    drawn = [pattern.source(i) for i in range(2 * PATTERN_LENGTH + 123)]
    for position in (0, 5, 999, PATTERN_LENGTH + 17, 2 * PATTERN_LENGTH + 123):
        assert pattern.taken(position) == [drawn[:position].count(0), drawn[:position].count(1)]
    assert drawn[:PATTERN_LENGTH] != sorted(drawn[:PATTERN_LENGTH])  # interleaved, not in blocks
    with pytest.raises(ValueError, match="below 1/10000"):
        MixturePattern([1.0, 1e-6], seed=0)


class _Numbers(torch.utils.data.Dataset):
    """A map-style source whose samples are their own index (as image id)."""

    def __init__(self, size: int) -> None:
        self.pairs = [(None, f"n{i}") for i in range(size)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> PairSample:
        return PairSample(torch.zeros(1), f"n{index}", index)


def test_mixed_stream_is_deterministic_weighted_and_resumes_exactly() -> None:
    sources = [MixedSource(_Numbers(50), 0.7, "a"), MixedSource(_Numbers(20), 0.3, "b")]
    full = [s.image_id for s in MixedPairStream(sources, 4, 0, 1, 0, seed=3, start_batch=0, total_batches=100)]
    assert full == [s.image_id for s in MixedPairStream(sources, 4, 0, 1, 0, seed=3, start_batch=0, total_batches=100)]
    from_b = Counter(i >> 40 for i in full)
    assert abs(from_b[1] / len(full) - 0.3) < 0.03
    first_epoch_a = [i for i in full if i >> 40 == 0][:50]
    assert sorted(first_epoch_a) == list(range(50))  # every sample of a source once per epoch
    resumed = [s.image_id for s in MixedPairStream(sources, 4, 0, 1, 0, seed=3, start_batch=37, total_batches=100)]
    assert resumed == full[37 * 4 :]


def test_collator_counts_bad_captions_and_truncations() -> None:
    tokenizer = build_word_tokenizer(["a", "b"])
    samples = [
        PairSample(torch.zeros(3, 2, 2), "a b a b a b", 0),
        PairSample(torch.zeros(3, 2, 2), "a", 1),
        PairSample(None, None, 2),
        PairSample(None, "a", 3),
    ]
    batch = PairCollator(tokenizer, 4)(samples)
    assert (int(batch["num_skipped"]), int(batch["num_bad_captions"]), int(batch["num_truncated"])) == (1, 1, 1)
    assert batch["input_ids"].shape == (2, 4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.sources=[{kind: csv, path: a}]", "'data.sources[0].kind': got 'csv'"),
        ("data.sources=[{kind: table}]", "'data.sources[0].path': must be set"),
        ("data.sources=[{kind: table, path: a, weight: -1}]", "'data.sources[0].weight': got -1.0"),
        ("data.sources=[{kind: table, path: a, colum: x}]", "unknown config key 'data.sources[0].colum'"),
        ("data.sources=[{kind: table, path: [a, b]}]", "a list of paths is only for kind webdataset"),
        ("data.sources=[{kind: webdataset, path: a, caption_key: html}]", "'data.sources[0].caption_key': got 'html'"),
        ("data.sources=[7]", "'data.sources[0]': got 7, expected a mapping"),
    ],
)
def test_bad_source_config_is_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        config_from_dict({}, [override])
    assert "\n" not in str(info.value)


def test_sources_and_evaluation_split_resolution(tmp_path: Path) -> None:
    config = config_from_dict({"data": {"demo": True, "demo_dir": "d"}})
    assert configured_sources(config.data)[0].path == str(Path("d") / "dataset_demo.json")
    assert resolve_dataset(config) == (Path("d") / "dataset_demo.json", None)
    config = config_from_dict(
        {
            "data": {
                "sources": [
                    {"kind": "table", "path": "t.csv"},
                    {"kind": "karpathy", "path": "coco.json", "image_root": "coco"},
                ]
            }
        }
    )
    assert resolve_dataset(config) == (Path("coco.json"), Path("coco"))
    config = config_from_dict(
        {
            "data": {"sources": [{"kind": "table", "path": "t.csv"}], "karpathy_json": "k.json"},
            "eval": {"karpathy_json": "f30k.json", "image_root": "imgs"},
        }
    )
    assert resolve_dataset(config) == (Path("f30k.json"), Path("imgs"))
    assert [s.kind for s in configured_sources(config.data)] == ["table"]
    with pytest.raises(ValueError, match="set eval.karpathy_json"):
        resolve_dataset(config_from_dict({"data": {"sources": [{"kind": "table", "path": "t.csv"}]}}))
