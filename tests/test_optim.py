"""Optimizer groups: weight decay by parameter kind, and the encoders' learning rate scaled per block
(`optim.encoder_lr_scale`, `optim.layer_decay`) as the DeepSpeed engine then applies it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

from mmd2v2.config import ConfigError, OptimConfig, load_config
from mmd2v2.pretrain.config import load_pretrain_config
from mmd2v2.runtime.optim import encoder_lr_scales

ROOT = Path(__file__).parent.parent


def test_layer_decay_by_hand() -> None:
    names = [
        "student.image_encoder.model.embeddings.patch_embeddings.projection.weight",
        "student.image_encoder.model.encoder.layer.0.attention.query.weight",
        "student.image_encoder.model.encoder.layer.1.output.dense.bias",
        "student.image_encoder.model.layernorm.weight",
        "student.text_encoder.model.blocks.0.attn.qkv.weight",  # timm naming, one block
        "student.text_encoder.model.blocks.0.norm1.bias",
        "student.text_encoder.model.pos_embed",
        "student.shared.blocks.3.qkv.weight",  # not an encoder: the full lr whatever its block
        "objective.logit_scale",
    ]
    scales = encoder_lr_scales(names, encoder_lr_scale=0.5, layer_decay=0.1)
    # image encoder: 2 blocks, so embeddings 0.5·0.1³, block 0 0.5·0.1², block 1 0.5·0.1, final norm 0.5
    # text encoder: 1 block, so embeddings 0.5·0.1², block 0 0.5·0.1
    expected = [5e-4, 5e-3, 5e-2, 0.5, 5e-2, 5e-2, 5e-3, 1.0, 1.0]
    assert [scales[n] for n in names] == pytest.approx(expected)
    assert set(encoder_lr_scales(names, 1.0, 1.0).values()) == {1.0}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("encoder_lr_scale", -0.1, "expected >= 0"), ("layer_decay", 0.0, "in (0, 1]"), ("layer_decay", 1.5, "in (0, 1]")],
)
def test_bad_scales_are_refused(key: str, value: float, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"'optim\.{key}'.*{re.escape(expected)}"):
        OptimConfig(**{key: value})


def test_pretraining_refuses_encoder_scales() -> None:
    with pytest.raises(ConfigError, match=r"'optim\.layer_decay': scales the dual encoder"):
        load_pretrain_config(ROOT / "configs" / "pretrain_demo_image.yaml", ["optim.layer_decay=0.5"])


# DeepSpeed keeps its process groups in module globals, so an engine is built in a child process: later tests in
# this process build their own
ENGINE_STEP = """
import json, sys, torch
from pathlib import Path
from mmd2v2.config import load_config
from mmd2v2.data.pairs import PairCollator
from mmd2v2.train.loop import prepare_run
from mmd2v2.training_parts import build_engine, train_step

config = load_config(Path("configs/demo.yaml"), sys.argv[2:])
parts = prepare_run(config, Path(sys.argv[1]))
engine = build_engine(parts.config, parts.student, parts.objective, parts.teacher, parts.total_steps)
before = {n: p.detach().clone() for n, p in parts.student.named_parameters()}
collate = PairCollator(parts.tokenizer, parts.config.data.max_text_length)
batch = collate([parts.data.sources[0].data[i] for i in range(0, 80, 5)])
batch["pixel_values"] = parts.preprocess.normalize(batch["pixel_values"])
train_step(engine, parts.teacher, {k: v for k, v in batch.items() if not k.startswith("num_")})
moved = [n for n, p in parts.student.named_parameters() if not torch.equal(p.detach(), before[n])]
print(json.dumps({"lrs": sorted({g["initial_lr"] for g in engine.optimizer.param_groups}), "moved": moved, "all": list(before)}))
"""


def test_engine_steps_each_group_at_its_scaled_lr(tmp_path: Path, demo_dir: Path) -> None:
    overrides = tiny_overrides(
        tmp_path, demo_dir, **{"optim.encoder_lr_scale": 0.0, "optim.warmup_fraction": 0.0, "loss.kd_weight": 0}
    )
    done = subprocess.run(
        [sys.executable, "-c", ENGINE_STEP, str(tmp_path), *overrides], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["lrs"] == [0.0, load_config(ROOT / "configs" / "demo.yaml", overrides).optim.lr]
    encoders = {n for n in result["all"] if n.startswith(("image_encoder.", "text_encoder."))}
    assert encoders and not set(result["moved"]) & encoders  # lr 0: no step and no weight decay
    assert {"shared.blocks.0.qkv.weight", "projection.weight"} <= set(result["moved"])
