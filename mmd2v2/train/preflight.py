"""Checks that fail a run at once, before DeepSpeed or any model is loaded."""

from __future__ import annotations

from pathlib import Path

from mmd2v2.config import Config, ConfigError
from mmd2v2.models.unimodal import family_for


def check_run_config(config: Config) -> None:
    """Raise a one-line error for unknown families, a loss or head nothing serves or trains, missing data, bad batches."""
    family_for(config.model.image.family, "image", "model.image.family")
    family_for(config.model.text.family, "text", "model.text.family")
    if config.teacher.enabled:
        family_for(config.teacher.family, "image", "teacher.family")
    for key, value in (
        ("model.image.pretrained", config.model.image.pretrained),
        ("model.text.pretrained", config.model.text.pretrained),
        ("teacher.pretrained", config.teacher.pretrained),
        ("data.tokenizer", config.data.tokenizer),
    ):
        looks_local = value is not None and value.startswith((".", "/", "~"))
        if looks_local and not Path(value).expanduser().exists():
            raise ConfigError(f"{key}: '{value}' does not exist (expected a local folder or a hub id)")
    if config.loss.kd_weight > 0 and not config.teacher.enabled:
        raise ConfigError(
            f"loss.kd_weight is {config.loss.kd_weight} but teacher.enabled is false: no teacher to distil "
            "from (enable the teacher or set loss.kd_weight: 0)"
        )
    if config.model.projection and config.loss.contrastive_weight == 0:
        raise ConfigError(
            "model.projection is true but loss.contrastive_weight is 0: nothing would train the projection "
            "(set model.projection: false to retrieve with the distilled CLS)"
        )
    if config.trainer.init_from is not None and not Path(config.trainer.init_from).is_dir():
        raise ConfigError(
            f"trainer.init_from: '{config.trainer.init_from}' is not a folder (expected an mmd2v2 export)"
        )
    if config.data.karpathy_json is None and not config.data.demo and not config.data.sources:
        raise ConfigError(
            "data.karpathy_json is not set (and data.demo is false, data.sources is empty): no dataset to train on"
        )
    if config.data.karpathy_json is not None and not Path(config.data.karpathy_json).is_file():
        raise ConfigError(
            f"data.karpathy_json: '{config.data.karpathy_json}' does not exist (expected a Karpathy-split JSON)"
        )
    if config.data.image_root is not None and not Path(config.data.image_root).is_dir():
        raise ConfigError(f"data.image_root: '{config.data.image_root}' is not a folder")
    for key, value in (
        ("trainer.micro_batch_size", config.trainer.micro_batch_size),
        ("deepspeed.gradient_accumulation_steps", config.deepspeed.gradient_accumulation_steps),
    ):
        if value < 1:
            raise ConfigError(f"{key}: got {value}, expected a positive integer")
