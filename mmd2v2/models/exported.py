"""Exported inference checkpoints: resolved config, safetensors weights, tokenizer, preprocessing, metadata.

A folder written by `save_export` loads with `load_export(folder)` alone: no training code, no
original encoder checkpoints and no unpickling (weights are safetensors, everything else JSON/YAML).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from mmd2v2.config import Config, config_from_dict, config_to_dict, read_yaml
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.tokenization import load_tokenizer
from mmd2v2.errors import DamagedFileError, MissingFileError, UserError, reading
from mmd2v2.files import atomic_folder
from mmd2v2.models.dual_encoder import DualEncoder

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
METADATA = "metadata.json"
PREPROCESSING = "preprocessing.json"
TOKENIZER = "tokenizer"
EXPORT_FILES = (WEIGHTS, CONFIG, METADATA, PREPROCESSING, TOKENIZER)
TRAINING_ONLY_PREFIXES = ("distill_head.",)


@dataclass
class ExportedModel:
    """Everything needed for inference: the model, its tokenizer and image preprocessing."""

    model: DualEncoder
    tokenizer: PreTrainedTokenizerBase
    preprocess: ImagePreprocessor
    config: Config
    metadata: dict[str, Any]


def _self_contained_config(model: DualEncoder, config: Config) -> Config:
    """Config whose encoders rebuild from their stored architectures (no pretrained paths or files)."""
    model_config = dataclasses.replace(
        config.model, image=model.image_encoder.architecture, text=model.text_encoder.architecture
    )
    return dataclasses.replace(config, model=model_config)


def save_export(
    model: DualEncoder,
    config: Config,
    tokenizer: PreTrainedTokenizerBase,
    preprocess: ImagePreprocessor,
    folder: str | Path,
    metadata: dict[str, Any],
) -> Path:
    """Write an inference folder atomically (temporary sibling, then rename); returns its path."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in model.state_dict().items()
            if not k.startswith(TRAINING_ONLY_PREFIXES)
        }
        save_file(state, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(
            yaml.safe_dump(config_to_dict(_self_contained_config(model, config)), sort_keys=False)
        )
        tokenizer.save_pretrained(str(tmp / TOKENIZER))
        (tmp / PREPROCESSING).write_text(json.dumps(preprocess.to_dict(), indent=2))
        versions = {"python": platform.python_version(), "torch": torch.__version__}
        for package in ("transformers", "mmd2v2"):
            with contextlib.suppress(ImportError, AttributeError):
                versions[package] = __import__(package).__version__
        meta = {
            "format": "mmd2v2-export-v1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions,
            **metadata,
        }
        (tmp / METADATA).write_text(json.dumps(meta, indent=2))
    return folder


def resolve_export(path: str | Path, what: str = "--ckpt") -> Path:
    """The export folder `path` names: an export itself or a run folder holding one as export/.

    Neither there is a one-line MissingFileError naming `what` and the path."""
    path = Path(path)
    for folder in (path / "export", path):
        if any((folder / name).exists() for name in EXPORT_FILES):
            return folder  # load_export names any file it lacks
    if not path.is_dir():
        raise MissingFileError(f"{what}: '{path}' is not a folder (expected an mmd2v2 export or a run folder)")
    raise MissingFileError(f"{what}: '{path}' is neither an mmd2v2 export nor a run folder holding export/")


def load_export(folder: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """Load an exported folder into an eval-mode model with its tokenizer and preprocessing.

    A missing or damaged file is a one-line UserError naming it."""
    folder = Path(folder)
    for name in EXPORT_FILES:
        if not (folder / name).exists():
            raise MissingFileError(f"'{folder}' is not an mmd2v2 export: missing '{name}'")
    with reading(folder / CONFIG):
        config = config_from_dict(read_yaml((folder / CONFIG).read_text()))
    with reading(folder / PREPROCESSING):
        preprocess = ImagePreprocessor.from_dict(json.loads((folder / PREPROCESSING).read_text()))
    with reading(folder / METADATA):
        metadata = json.loads((folder / METADATA).read_text())
    model = DualEncoder(config.model, teacher_dim=None)
    with reading(folder / WEIGHTS):
        state = load_file(str(folder / WEIGHTS))
        missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DamagedFileError(
            f"{folder / WEIGHTS}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with reading(folder / TOKENIZER):
        tokenizer = load_tokenizer(folder / TOKENIZER)
    return ExportedModel(model.to(device).eval(), tokenizer, preprocess, config, metadata)


def load_student_weights(model: DualEncoder, folder: str | Path) -> None:
    """Start `model` from an export's weights, given it or its run folder (training-only heads keep their init)."""
    folder = resolve_export(folder, "trainer.init_from")
    path = folder / WEIGHTS
    if not path.is_file():
        raise MissingFileError(f"trainer.init_from: '{folder}' has no {WEIGHTS} (expected an mmd2v2 export folder)")
    with reading(path):
        state = load_file(str(path))
    own = model.state_dict()
    for name, tensor in state.items():
        if name not in own:
            raise UserError(f"trainer.init_from: tensor '{name}' of {path} does not exist in this model's config")
        if own[name].shape != tensor.shape:
            raise UserError(
                f"trainer.init_from: tensor '{name}' has shape {tuple(tensor.shape)} in {path}, "
                f"the config makes {tuple(own[name].shape)}"
            )
    missing = [k for k in own if k not in state and not k.startswith(TRAINING_ONLY_PREFIXES)]
    if missing:
        raise UserError(f"trainer.init_from: {path} lacks {len(missing)} tensors of this model (first: '{missing[0]}')")
    model.load_state_dict(state, strict=False)
