"""Every shipped VL config (configs/vl_*.yaml) starts: built with tiny random stand-ins of its model families (each
folder or hub id it names replaced by a save_pretrained folder of the same model type), each protocol method
trains two optimizer steps and evaluates, on a tiny synthetic split in the config's own data format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY_TEXT, TINY_VISION
from transformers import BeitConfig, BeitModel, RobertaConfig, RobertaModel
from vl_files import save_tiny_clip, snli_ve_record, vcr_record, vqa_annotation, write_image, write_jsonl

from mmd2v2.config import Config, DataConfig, EncoderConfig, ModelConfig, SharedConfig
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.models.dual_encoder import DualEncoder
from mmd2v2.models.exported import save_export
from mmd2v2.vl.config import TeacherSpec, VLConfig, load_vl_config
from mmd2v2.vl.protocols import run_protocol
from mmd2v2.vl.tasks.snli_ve import LABELS

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("vl_*.yaml"))
WORDS = [
    "what",
    "color",
    "is",
    "the",
    "square",
    "how",
    "many",
    "circles",
    "are",
    "there",
    "a",
    "red",
    "green",
    "blue",
    "yes",
    "no",
    "two",
    "where",
    "left",
    "right",
    "it",
    "person1",
    "person2",
    "dog3",
    "doing",
    "dance",
    "sad",
    "because",
    "here",
    "late",
    "old",
    "why",
    "not",
    "entailment",
    "contradiction",
]


def _export(folder: Path) -> Path:
    tokenizer = build_word_tokenizer(WORDS)
    text = dict(TINY_TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_hidden_layers=1)
    model = ModelConfig(
        image=EncoderConfig(family="vit", config=dict(TINY_VISION, num_hidden_layers=1), num_blocks=1),
        text=EncoderConfig(family="bert", config=text, num_blocks=1),
        shared=SharedConfig(depth=1, width=32, heads=2),
        embed_dim=16,
    )
    save_export(
        DualEncoder(model),
        Config(model=model, data=DataConfig(image_size=32)),
        tokenizer,
        ImagePreprocessor(32, [0.5] * 3, [0.25] * 3),
        folder,
        {},
    )
    return folder


def _hf_model(family: str, folder: Path) -> Path:
    """A tiny random model of `family`, saved with save_pretrained (text models with a tokenizer)."""
    tokenizer = build_word_tokenizer(WORDS)
    if family == "clip":
        return save_tiny_clip(folder, WORDS)
    if family == "beit":
        BeitModel(BeitConfig(**dict(TINY_VISION, hidden_size=24, num_hidden_layers=1))).save_pretrained(str(folder))
    elif family == "roberta":
        config = dict(
            TINY_TEXT,
            hidden_size=24,
            num_hidden_layers=1,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            max_position_embeddings=128,
        )
        RobertaModel(RobertaConfig(**config)).save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    else:
        raise AssertionError(f"no tiny stand-in for teacher family '{family}': add one to this test")
    return folder


class StandIns:
    """One tiny stand-in per (kind, family), made on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[str, Path] = {}

    def folder(self, kind: str, family: str) -> Path:
        key = "mmd2v2" if kind == "mmd2v2" else family
        if key not in self.made:
            folder = self.root / key
            self.made[key] = _export(folder) if kind == "mmd2v2" else _hf_model(family, folder)
        return self.made[key]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (several threads on a loaded CPU wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> StandIns:
    return StandIns(tmp_path_factory.mktemp("stand_ins"))


def _model_overrides(cfg: VLConfig, stand_ins: StandIns) -> list[str]:
    export = stand_ins.folder("mmd2v2", "")
    overrides = [f"student.init_from={export}"] if cfg.student.init_from else []
    if cfg.protocol.zero_shot_model:
        overrides.append(f"protocol.zero_shot_model={export}")
    for role in ("vision", "text", "zero_shot"):
        spec: TeacherSpec = getattr(cfg.teachers, role)
        if spec.kind != "none":
            overrides.append(f"teachers.{role}.pretrained={stand_ins.folder(spec.kind, spec.family)}")
    return overrides


def _vqa_split(root: Path, cfg: VLConfig, split: str, count: int) -> list[str]:
    subtype = f"{split}2014"
    pattern = cfg.task.image_pattern or "COCO_{subtype}_{image_id:012d}.jpg"
    asked = [
        ("what color is the square", ["red", "green"]),
        ("how many circles are there", ["2", "two"]),
        ("is there a square", ["yes", "no"]),
    ]
    questions, annotations = [], []
    for i in range(count):
        text, answers = asked[i % 3]
        questions.append({"image_id": i // 2, "question": text, "question_id": i})
        annotations.append(vqa_annotation(i, i // 2, [answers[i % 2]] * 10))
        write_image(root / "images" / pattern.format(subtype=subtype, image_id=i // 2), i)
    (root / f"q_{split}.json").write_text(json.dumps({"data_subtype": subtype, "questions": questions}))
    (root / f"a_{split}.json").write_text(json.dumps({"data_subtype": subtype, "annotations": annotations}))
    return [
        f"task.{split}.records={root / f'q_{split}.json'}",
        f"task.{split}.annotations={root / f'a_{split}.json'}",
        f"task.{split}.image_root={root / 'images'}",
    ]


def _snli_ve_split(root: Path, cfg: VLConfig, split: str, images: int) -> list[str]:
    pattern = cfg.task.image_pattern or "{image_id}.jpg"
    records = []
    for i in range(images):
        write_image(root / split / pattern.format(image_id=f"{split}{i}"), i)
        records += [
            snli_ve_record(f"{split}{i}", f"a {c} square", label, f"{split}{i}-{k}")
            for k, (c, label) in enumerate(zip(("red", "green", "blue"), LABELS, strict=True))
        ]
    path = write_jsonl(root / f"{split}.jsonl", records)
    return [f"task.{split}.records={path}", f"task.{split}.image_root={root / split}"]


def _vcr_split(root: Path, cfg: VLConfig, split: str, count: int) -> list[str]:
    answers = [["doing", "a", "dance"], [[0], "is", "sad"], ["the", [2], "is", "red"], ["not"]]
    rationales = [["because", [1], "is", "here"], ["it", "is", "late"], [[0, 1], "are", "old"], ["why", "not"]]
    records = []
    for i in range(count):
        name = f"movie/{split}{i}.jpg"
        file = cfg.task.image_pattern.format(image_id=name) if cfg.task.image_pattern else name
        write_image(root / "images" / file, i)
        question = ["What", "is", [i % 2], "doing", "?"] if i % 2 else ["Where", "is", [0], "?"]
        records.append(vcr_record(f"{split}{i}", name, question, answers, rationales, i % 4, (i + 1) % 4))
    path = write_jsonl(root / f"{split}.jsonl", records)
    return [f"task.{split}.records={path}", f"task.{split}.image_root={root / 'images'}"]


def _data_overrides(cfg: VLConfig, root: Path) -> list[str]:
    """A tiny training (8 examples) and validation split in the config's task format and image naming."""
    if cfg.task.name == "vqa":
        return [*_vqa_split(root, cfg, "train", 8), *_vqa_split(root, cfg, "val", 6), "task.min_answer_count=1"]
    if cfg.task.name == "snli_ve":
        return [*_snli_ve_split(root, cfg, "train", 3), *_snli_ve_split(root, cfg, "val", 2)]
    return [*_vcr_split(root, cfg, "train", 4), *_vcr_split(root, cfg, "val", 2)]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_runs_each_protocol_method_with_stand_in_models(
    path: Path, stand_ins: StandIns, tmp_path: Path
) -> None:
    cfg = load_vl_config(path)
    settings = [s for s in cfg.protocol.settings if s != "full"]  # full = low-shot here: the split is tiny
    small = [
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "trainer.batch_size=4",
        "trainer.eval_batch_size=8",
        "trainer.progress_bar=false",
        "trainer.log_every=1",
        "adaptive.epochs=1.0",
        "protocol.shots=[1]",
        "protocol.seeds=[0]",
        "protocol.low_shot_max_steps=2",
        f"protocol.settings=[{', '.join(settings)}]",
    ]
    run_cfg = load_vl_config(path, [*_model_overrides(cfg, stand_ins), *_data_overrides(cfg, tmp_path), *small])
    report: dict[str, Any] = run_protocol(run_cfg, tmp_path / "protocol")
    runs = {r["method"]: r for r in report["runs"] if r["setting"] == "1/category"}
    assert set(runs) == set(cfg.protocol.methods) and len(cfg.protocol.methods) >= 3
    main = report["metric"]
    for method, run in runs.items():
        assert 0 <= run["metrics"][main] <= 100 and run["metrics"]["train_examples"] > 0
        log = [
            json.loads(line)
            for line in (tmp_path / "protocol" / "runs" / f"{method}_1_per_category_seed0" / "train_log.jsonl")
            .read_text()
            .splitlines()
        ]
        assert len([r for r in log if r["stage"] == "task"]) == 2  # two optimizer steps of the task stage
    if "zero_shot" in settings and cfg.task.name != "vqa":
        assert "zero-shot" in report["columns"]
    assert "training" in (tmp_path / "protocol" / "protocol.md").read_text()


def test_the_stand_ins_have_the_model_types_the_configs_name(stand_ins: StandIns) -> None:
    families = {
        (spec["kind"], spec.get("family", "beit"))
        for path in CONFIGS
        for spec in (yaml.safe_load(path.read_text()).get("teachers") or {}).values()
        if isinstance(spec, dict) and spec.get("kind", "none") != "none"
    }
    for kind, family in families:
        folder = stand_ins.folder(kind, family)
        config = json.loads((folder / "config.json").read_text()) if kind == "hf" else None
        assert kind == "mmd2v2" or config["model_type"] == family, (kind, family)
