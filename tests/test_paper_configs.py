"""The paper setups: every config validates, and each trains a few steps through train.py with tiny stand-in
checkpoints in the real folder formats (the final form then finetunes from its own export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT, TINY_VISION
from test_train_cli import _run
from transformers import (
    BeitConfig,
    BeitModel,
    BertConfig,
    BertModel,
    Data2VecTextConfig,
    Data2VecTextModel,
)

from mmd2v2.data.karpathy import load_karpathy_split
from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.models.data2vec2_vision import Data2Vec2VisionConfig, Data2Vec2VisionModel

PAPER_CONFIGS = ["mmd2v2_coco", "mmd2v2_flickr30k", "mmd2v2_final", "mmd2v2_final_flickr30k"]


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_validates(name: str) -> None:
    result = _run("train.py", "--config", f"configs/{name}.yaml", "--dump-config")
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads(result.stdout)
    assert config["data"]["max_text_length"] == 64 and config["optim"]["betas"] == [0.9, 0.98]
    if "final" in name:
        assert config["loss"]["kd_kind"] == "contrastive" and config["loss"]["kd_bank_size"] == 65536
        assert config["teacher"]["target"] == "pre_norm" and config["model"]["shared"]["layer_scale_init"] == 0.2
        assert config["model"]["image"]["num_blocks"] == config["model"]["text"]["num_blocks"] == 6
    else:
        assert config["loss"]["contrastive_weight"] == 0.0 and config["loss"]["kd_kind"] == "mse"
        assert config["model"]["image"]["num_blocks"] == config["model"]["text"]["num_blocks"] == 5
    assert ("flickr30k" in config["eval"]["karpathy_json"]) == ("flickr30k" in name)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> dict[str, Path]:
    """Tiny checkpoints with the paper encoders' architectures, saved as HF folders (+ tokenizers for text)."""
    root = tmp_path_factory.mktemp("checkpoints")
    words = [w for r in load_karpathy_split(demo_dir / "dataset_demo.json", "train") for c in r.captions for w in c.lower().split()]
    tokenizer = build_word_tokenizer(words)
    text = {**TINY_TEXT, "vocab_size": len(tokenizer), "num_hidden_layers": 6, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    models = {
        "d2v2_image": Data2Vec2VisionModel(Data2Vec2VisionConfig(**{**TINY_VISION, "num_hidden_layers": 6})),
        "d2v2_text": Data2VecTextModel(Data2VecTextConfig(**text), add_pooling_layer=False),
        "bert": BertModel(BertConfig(**text), add_pooling_layer=False),
        "beitv2": BeitModel(BeitConfig(**{**TINY_VISION, "num_hidden_layers": 2, "use_mean_pooling": False}), add_pooling_layer=False),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
        if name in ("d2v2_text", "bert"):
            tokenizer.save_pretrained(root / name)
    return {name: root / name for name in models}


def _tiny(run: Path, demo_dir: Path, stand_ins: dict[str, Path], text: str) -> list[str]:
    sources = f"[{{kind: karpathy, path: {demo_dir / 'dataset_demo.json'}, weight: 0.6}}, " \
              f"{{kind: table, path: {demo_dir / 'pairs.tsv'}, image_column: image, caption_column: caption, " \
              f"image_root: {demo_dir}, weight: 0.4}}]"
    return [f"model.image.pretrained={stand_ins['d2v2_image']}", f"model.text.pretrained={stand_ins[text]}",
            f"teacher.pretrained={stand_ins['beitv2']}", "model.shared.width=32", "model.shared.heads=2",
            "model.embed_dim=16", "loss.kd_bank_size=64", f"data.sources={sources}", "data.image_size=32",
            "data.num_workers=0", f"eval.karpathy_json={demo_dir / 'dataset_demo.json'}", "eval.image_root=null",
            "eval.batch_size=8", "deepspeed.precision=fp32", "trainer.micro_batch_size=8", "trainer.max_steps=3",
            "trainer.log_every=1", "trainer.checkpoint_every=100", "trainer.progress_bar=false", f"trainer.output_dir={run}"]


def test_paper_setups_train_with_stand_in_checkpoints(tmp_path: Path, demo_dir: Path, stand_ins: dict[str, Path]) -> None:
    records = load_karpathy_split(demo_dir / "dataset_demo.json", "train")
    (demo_dir / "pairs.tsv").write_text("image\tcaption\n" + "".join(
        f"{r.path.relative_to(demo_dir).as_posix()}\t{r.captions[0]}\n" for r in records))
    runs = {}
    for name, text in (("mmd2v2_coco", "d2v2_text"), ("mmd2v2_final", "bert")):
        runs[name] = tmp_path / name
        result = _run("train.py", "--config", f"configs/{name}.yaml", "--output-dir", str(runs[name]),
                      *_tiny(runs[name], demo_dir, stand_ins, text))
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        log = [json.loads(line) for line in (runs[name] / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in log)  # finite
        if name == "mmd2v2_coco":
            assert "contrastive" not in log[0] and log[0]["kd"] > 0  # distillation only
        assert (runs[name] / "export" / "model.safetensors").is_file()

    finetune = tmp_path / "finetune"
    result = _run("train.py", "--config", "configs/mmd2v2_final_flickr30k.yaml", "--output-dir", str(finetune),
                  *_tiny(finetune, demo_dir, stand_ins, "bert"), f"trainer.init_from={runs['mmd2v2_final'] / 'export'}",
                  "trainer.max_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    bad = _run("train.py", "--config", "configs/mmd2v2_final_flickr30k.yaml", "--output-dir", str(tmp_path / "bad"),
               *_tiny(tmp_path / "bad", demo_dir, stand_ins, "bert"), f"trainer.init_from={runs['mmd2v2_coco'] / 'export'}")
    assert bad.returncode != 0 and "trainer.init_from: " in bad.stderr and "lacks" in bad.stderr  # a prototype export: 5 blocks, no modality embedding
