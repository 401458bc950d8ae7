"""Every shipped retrieval config starts: each configs/*.yaml except vl_* and pretrain_* (the configs of `mmd2v2 vl`
and `mmd2v2 pretrain`) trains two optimizer steps through the training command, exports and evaluates, with tiny random stand-ins of its own model families (saved with
save_pretrained where it names `pretrained` folders or hub ids) and tiny synthetic data in its own formats.
Only sizes change (widths, depths, image size, batch); losses, banks, freezing and heads stay as configured."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import process_group_undone
from PIL import Image

from mmd2v2.cli import main
from mmd2v2.config import read_yaml
from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.models.unimodal import FAMILIES, Family

ROOT = Path(__file__).parent.parent
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith(("vl_", "pretrain_")))
LABELLED = [name for name in CONFIGS if name == "demo" or name.startswith("mmd2v2_")]
WIDTH = 32  # every stand-in's hidden size and the shared width, so a CLS distilled without a head fits the teacher
WORDS = [
    "a",
    "red",
    "blue",
    "green",
    "big",
    "small",
    "circle",
    "square",
    "triangle",
    "left",
    "of",
    "right",
    "above",
    "below",
]


@pytest.fixture(scope="module", autouse=True)
def process_group_is_undone() -> Iterator[None]:
    """Training in this process starts a process group: undone after the module."""
    with process_group_undone():
        yield


def _caption(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=5))


def _image(path: Path, rng: np.random.Generator) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path, format="JPEG")
    return path.name


def _karpathy(json_path: Path, image_root: Path, rng: np.random.Generator) -> None:
    """A Karpathy split file: 8 train, 2 restval, 2 val, 4 test images with 2 captions each; two test images share
    one caption (an exact tie)."""
    if json_path.exists():
        return
    splits = ["train"] * 8 + ["restval"] * 2 + ["val"] * 2 + ["test"] * 4
    images = []
    for index, split in enumerate(splits):
        folder = "val2014" if split in ("val", "test") else "train2014"
        captions = [_caption(rng), "a red circle left of a blue square" if index >= len(splits) - 2 else _caption(rng)]
        images.append(
            {
                "filepath": folder,
                "filename": _image(image_root / folder / f"{index}.jpg", rng),
                "imgid": index,
                "split": split,
                "sentences": [{"raw": c} for c in captions],
            }
        )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"dataset": "synthetic", "images": images}))


def _table(source: dict[str, Any], rng: np.random.Generator) -> None:
    """A caption table in the source's format (by suffix); with img2dataset_dir, URLs and img2dataset's files layout."""
    import pandas as pd

    path, rows = Path(source["path"]), []
    image_root = Path(source.get("image_root") or path.parent)
    downloads = source.get("img2dataset_dir")
    for index in range(8):
        if downloads:
            url = f"https://example.invalid/{index}.jpg"
            _image(Path(downloads) / "00000" / f"{index:09d}.jpg", rng)
            rows.append(
                {source.get("image_column", "image"): url, source.get("caption_column", "caption"): _caption(rng)}
            )
        else:
            name = _image(image_root / f"{index}.jpg", rng)
            rows.append(
                {source.get("image_column", "image"): name, source.get("caption_column", "caption"): _caption(rng)}
            )
    if downloads:
        keys = [f"{index:09d}" for index in range(8)]
        pd.DataFrame(
            {"url": [next(iter(r.values())) for r in rows], "key": keys, "status": ["success"] * 8}
        ).to_parquet(Path(downloads) / "00000.parquet")
    frame = pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    writers = {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".tsv": lambda: frame.to_csv(path, sep="\t", index=False),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".parquet": lambda: frame.to_parquet(path),
    }
    writers[path.suffix]()


def _family(section: dict[str, Any], modality: str, key: str) -> Family:
    name = section.get("family", "beit" if key == "teacher" else "")
    if name == "auto":
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(section["pretrained"]).model_type
        return next(f for f in FAMILIES.values() if f.config_class.model_type == model_type and f.modality == modality)
    assert name in FAMILIES, f"{key}.family '{name}': no stand-in for this family (add one to {Path(__file__).name})"
    return FAMILIES[name]


def _stand_in(section: dict[str, Any], modality: str, key: str, folder: Path, max_text_length: int) -> None:
    """A tiny random model of the section's family (same model_type), saved with save_pretrained (+ tokenizer)."""
    family = _family(section, modality, key)
    layers = section.get("num_blocks") or 2
    sizes: dict[str, Any] = {
        "hidden_size": WIDTH,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 2 * WIDTH,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    if modality == "image":
        sizes.update(image_size=32, patch_size=8)
        if "use_mean_pooling" in inspect.signature(family.config_class.__init__).parameters:
            sizes["use_mean_pooling"] = False
    else:
        tokenizer = build_word_tokenizer(WORDS)
        tokenizer.save_pretrained(folder)
        sizes.update(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, max_position_embeddings=max_text_length + 2
        )
    kwargs = (
        {"add_pooling_layer": False}
        if "add_pooling_layer" in inspect.signature(family.model_class.__init__).parameters
        else {}
    )
    torch.manual_seed(0)
    family.model_class(family.config_class(**sizes), **kwargs).save_pretrained(folder)


def _tiny_overrides(name: str, tmp: Path, done: dict[str, Path]) -> list[str]:
    """`key=value` overrides that keep the config's families, losses, banks and data formats at tiny sizes."""
    raw = read_yaml((ROOT / "configs" / f"{name}.yaml").read_text())

    def local(path: str) -> str:
        return str(tmp / "files" / Path(path).relative_to(Path(path).anchor))

    model, data = raw.get("model", {}), raw.get("data", {})
    max_text_length = data.get("max_text_length", 64)
    values: dict[str, Any] = {
        "model.shared.width": WIDTH,
        "model.shared.heads": 2,
        "model.embed_dim": WIDTH if model.get("projection") is False else 16,
        "data.num_workers": 0,
        "deepspeed.precision": "fp32",
        "trainer.max_steps": 2,
        "trainer.micro_batch_size": 4,
        "trainer.log_every": 1,
        "trainer.checkpoint_every": 1000,
        "trainer.progress_bar": False,
        "eval.batch_size": 8,
    }
    for key, section, modality in (
        ("model.image", model.get("image", {}), "image"),
        ("model.text", model.get("text", {}), "text"),
        ("teacher", raw.get("teacher", {}), "image"),
    ):
        if section.get("pretrained"):
            folder = tmp / "stand_ins" / key
            _stand_in(section, modality, key, folder, max_text_length)
            values[f"{key}.pretrained"] = str(folder)
            if key == "model.image":
                values["data.image_size"] = 32  # the stand-in's resolution
    if data.get("tokenizer"):
        values["data.tokenizer"] = str(tmp / "stand_ins" / "model.text")
    rng = np.random.default_rng(0)
    sources = []
    for source in data.get("sources", []):
        source = dict(source, path=local(source["path"]))
        for folder_key in ("image_root", "img2dataset_dir"):
            if source.get(folder_key):
                source[folder_key] = local(source[folder_key])
        kind = source.get("kind", "karpathy")
        assert kind in ("karpathy", "table"), f"{name}: no synthetic data for source kind '{kind}' (add a writer here)"
        if kind == "karpathy":
            _karpathy(Path(source["path"]), Path(source.get("image_root") or Path(source["path"]).parent), rng)
        else:
            _table(source, rng)
        sources.append(source)
    if sources:
        values["data.sources"] = sources
    for section in ("data", "eval"):
        json_path = raw.get(section, {}).get("karpathy_json")
        if json_path:
            root = raw[section].get("image_root")
            _karpathy(Path(local(json_path)), Path(local(root)) if root else Path(local(json_path)).parent, rng)
            values[f"{section}.karpathy_json"] = local(json_path)
            if root:
                values[f"{section}.image_root"] = local(root)
    if data.get("demo"):
        values.update(
            {
                "data.demo_dir": str(tmp / "demo"),
                "data.demo_num_train": 16,
                "data.demo_num_val": 2,
                "data.demo_num_test": 4,
            }
        )
    init_from = raw.get("trainer", {}).get("init_from")
    if init_from:
        parent = next(
            c
            for c in CONFIGS
            if f"{read_yaml((ROOT / 'configs' / f'{c}.yaml').read_text())['trainer']['output_dir']}/export" == init_from
        )
        values["trainer.init_from"] = str(_trained(parent, tmp.parent, done) / "export")
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def _trained(name: str, root: Path, done: dict[str, Path]) -> Path:
    """Run `name` once (after the run its trainer.init_from names) and return its run folder."""
    if name not in done:
        tmp = root / name
        overrides = _tiny_overrides(name, tmp, done)
        run = tmp / "run"
        assert (
            main(["train", "--config", str(ROOT / "configs" / f"{name}.yaml"), "--output-dir", str(run), *overrides])
            == 0
        )
        done[name] = run
    return done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The module's run folders by config name, filled as the tests train them."""
    return tmp_path_factory.mktemp("shipped"), {}


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_trains_exports_and_evaluates(
    name: str, runs: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    run = _trained(name, *runs)
    out = capsys.readouterr().out
    raw = read_yaml((ROOT / "configs" / f"{name}.yaml").read_text())
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    loss = raw.get("loss", {})
    assert ("contrastive" in log[0]) == (loss.get("contrastive_weight", 1.0) > 0)
    assert ("kd" in log[0]) == (loss.get("kd_weight", 1.0) > 0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["image_to_text"]) == {"R@1", "R@5", "R@10"} and metrics["num_texts"] > metrics["num_images"] > 0
    assert "tied_captions" in metrics and "ties: " in out
    config = read_yaml((run / "export" / "config.yaml").read_text())
    assert config["model"]["projection"] == raw.get("model", {}).get("projection", True)


def test_a_finetune_refuses_another_architecture_s_export(
    runs: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, done = runs
    overrides = _tiny_overrides("mmd2v2_final_flickr30k", root / "mmd2v2_final_flickr30k", done)
    prototype = _trained("mmd2v2_coco", root, done) / "export"
    code = main(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "mmd2v2_final_flickr30k.yaml"),
            "--output-dir",
            str(root / "bad"),
            *overrides,
            f"trainer.init_from={prototype}",
        ]
    )
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the stand-ins' progress bars
    assert code == 2 and error.startswith("error: trainer.init_from: ") and "lacks" in error


@pytest.mark.parametrize(
    ("override", "keys"),
    [
        ("teacher.enabled=false", ("loss.kd_weight", "teacher.enabled")),
        ("loss.contrastive_weight=0", ("model.projection", "loss.contrastive_weight")),
    ],
)
def test_a_loss_or_head_nothing_serves_or_trains_is_refused_before_data(
    override: str, keys: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--output-dir",
            str(tmp_path / "run"),
            f"data.demo_dir={tmp_path / 'demo'}",
            override,
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and all(key in error for key in keys)
    assert not (tmp_path / "demo").exists() and not (tmp_path / "run").exists()  # nothing read or written


@pytest.mark.parametrize("name", LABELLED)
def test_every_value_is_labelled_paper_or_ours(name: str) -> None:
    """Each value that starts on a line of its own carries [paper] or [ours] there or in the comment line above."""
    lines = (ROOT / "configs" / f"{name}.yaml").read_text().splitlines()
    depth, missing = 0, []
    for number, line in enumerate(lines):
        code = line.split("#")[0]
        starts_value = depth == 0 and re.match(r"^\s*(- |[\w.]+:\s*\S)", code)
        depth += code.count("{") + code.count("[") - code.count("}") - code.count("]")
        tagged = any(
            tag in text for text in (line, lines[number - 1] if number else "") for tag in ("[paper]", "[ours]")
        )
        if starts_value and not tagged:
            missing.append(f"{number + 1}: {line.strip()}")
    assert not missing, f"configs/{name}.yaml: values without [paper] or [ours]: {missing}"
