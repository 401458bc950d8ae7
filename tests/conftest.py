"""Shared fixtures: a tiny model config and a tiny demo dataset, so tests run in seconds on a CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_VISION = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
TINY_TEXT = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 99,
    "max_position_embeddings": 48,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def tiny_overrides(output_dir: Path, data_dir: Path, **extra: object) -> list[str]:
    """`key=value` overrides turning configs/demo.yaml into a seconds-long run on a tiny dataset."""
    values: dict[str, object] = {
        "model.image.config.image_size": 32,
        "model.image.config.patch_size": 8,
        "model.image.config.hidden_size": 32,
        "model.image.config.num_hidden_layers": 2,
        "model.image.config.intermediate_size": 64,
        "model.image.num_blocks": 2,
        "model.text.config.hidden_size": 32,
        "model.text.config.intermediate_size": 64,
        "model.text.config.num_hidden_layers": 2,
        "model.text.num_blocks": 2,
        "model.shared.width": 32,
        "model.shared.heads": 2,
        "model.embed_dim": 16,
        "teacher.config.image_size": 32,
        "teacher.config.patch_size": 8,
        "teacher.config.hidden_size": 24,
        "teacher.config.intermediate_size": 48,
        "data.demo_dir": str(data_dir),
        "data.demo_num_train": 24,
        "data.demo_num_val": 4,
        "data.demo_num_test": 12,
        "data.image_size": 32,
        "trainer.micro_batch_size": 16,
        "trainer.max_steps": 4,
        "trainer.log_every": 1,
        "trainer.checkpoint_every": 2,
        "trainer.progress_bar": False,
        "trainer.output_dir": str(output_dir),
        "eval.batch_size": 8,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@contextmanager
def process_group_undone() -> Iterator[None]:
    """Undo the launcher variables and process group that training in this process sets up (later subprocesses)."""
    import torch.distributed as dist

    saved = dict(os.environ)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo dataset (24 train / 4 val / 12 test images of 32×32), shared by the session."""
    from mmd2v2.data.demo_scenes import write_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(root, num_train=24, num_val=4, num_test=12, image_size=32, seed=0)
    return root
