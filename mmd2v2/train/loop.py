"""The training run: data, model, DeepSpeed engine, loop with logging and checkpoints, export, evaluation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from mmd2v2.config import Config, SourceConfig, dump_config
from mmd2v2.data.augmentation import apply_crop_flip, crop_flip_settings, random_resized_crop_flip
from mmd2v2.data.demo_scenes import write_demo_dataset
from mmd2v2.data.pairs import CaptionPairDataset, PairCollator
from mmd2v2.data.preprocessing import ImagePreprocessor, loader_workers, resolve_image_preprocessing
from mmd2v2.data.sources import TrainingData, configured_sources, load_training_data, training_loader
from mmd2v2.data.tokenization import prepare_tokenizer
from mmd2v2.errors import MissingFileError, UserError
from mmd2v2.files import write_text_atomic
from mmd2v2.losses.objective import MMD2V2Objective
from mmd2v2.models.dual_encoder import DualEncoder
from mmd2v2.models.exported import load_export, load_student_weights, save_export
from mmd2v2.models.teacher import ImageTeacher
from mmd2v2.retrieval.evaluate import evaluate_retrieval, resolve_dataset
from mmd2v2.retrieval.recall import format_recall_table
from mmd2v2.runtime.checkpoint import latest_complete_tag, load_checkpoint, save_checkpoint
from mmd2v2.runtime.engine import ensure_distributed_env
from mmd2v2.runtime.random_state import restore_rng_state, rng_state, seed_everything
from mmd2v2.train.feature_cache import CachedPairs, open_cache
from mmd2v2.train.run_log import RunLog
from mmd2v2.training_parts import build_engine, build_parts, train_step

COUNTED = {
    "skipped": "num_skipped",
    "bad_captions": "num_bad_captions",
    "truncated": "num_truncated",
}  # state key: batch key


def prepare_data(config: Config) -> tuple[list[SourceConfig], Path, Path | None]:
    """Generate the demo set when asked (rank 0, others wait); the training sources and the evaluation split's JSON and root."""
    if config.data.demo and config.data.karpathy_json is None:
        if dist.get_rank() == 0:
            write_demo_dataset(
                config.data.demo_dir,
                config.data.demo_num_train,
                config.data.demo_num_val,
                config.data.demo_num_test,
                resolve_image_preprocessing(config).size,
                config.data.demo_seed,
            )
        dist.barrier()
    json_path, image_root = resolve_dataset(config)
    if not json_path.is_file():
        raise MissingFileError(f"evaluation split: '{json_path}' does not exist (expected a Karpathy-split JSON)")
    if image_root is not None and not image_root.is_dir():
        raise MissingFileError(f"evaluation image root: '{image_root}' is not a folder")
    return configured_sources(config.data), json_path, image_root


def _to_device(
    batch: dict[str, Tensor], device: torch.device, dtype: torch.dtype, preprocess: ImagePreprocessor
) -> dict[str, Tensor]:
    """The batch on the device (copied from pinned memory without waiting), uint8 pixels normalised there to `dtype`."""
    batch = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, non_blocking=True)
        for k, v in batch.items()
    }
    if batch["pixel_values"].dtype == torch.uint8:
        batch["pixel_values"] = preprocess.normalize(batch["pixel_values"], dtype)
    return batch


@dataclasses.dataclass
class RunParts:
    """What a run is made of before the engine: resolved config, data, preprocessing, tokenizer, networks, loss,
    length."""

    config: Config
    data: TrainingData
    json_path: Path
    image_root: Path | None
    preprocess: ImagePreprocessor
    tokenizer: PreTrainedTokenizerBase
    teacher: ImageTeacher | None
    student: DualEncoder
    objective: MMD2V2Objective
    total_steps: int
    global_batch: int

    @property
    def passes(self) -> float:
        """Planned passes over the training data."""
        return self.total_steps * self.global_batch / max(1, self.data.num_pairs)


def prepare_run(config: Config, output_dir: Path) -> RunParts:
    """Process group, data, tokenizer, teacher, student (with trainer.init_from weights) and objective of a run."""
    config = dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, output_dir=str(output_dir)))
    ensure_distributed_env()
    seed_everything(config.trainer.seed)
    sources, json_path, image_root = prepare_data(config)
    preprocess = resolve_image_preprocessing(config)
    data = load_training_data(sources, preprocess, config.trainer.seed)
    tokenizer, config = prepare_tokenizer(config, data.captions)
    networks = build_parts(config)
    if config.trainer.init_from:  # on resume too (a checkpoint then replaces them): the cache's fingerprints need them
        load_student_weights(networks.student, config.trainer.init_from)
    global_batch = (
        config.trainer.micro_batch_size * config.deepspeed.gradient_accumulation_steps * dist.get_world_size()
    )
    steps_per_epoch = data.num_pairs // global_batch
    if steps_per_epoch == 0:
        raise UserError(f"the training data has {data.num_pairs} pairs, fewer than one global batch of {global_batch}")
    total_steps = config.trainer.max_steps or max(1, math.ceil(config.trainer.epochs * steps_per_epoch))
    return RunParts(
        config,
        data,
        json_path,
        image_root,
        preprocess,
        tokenizer,
        networks.teacher,
        networks.student,
        networks.objective,
        total_steps,
        global_batch,
    )


def local_device() -> torch.device:
    """This process's accelerator (LOCAL_RANK's GPU), or the CPU."""
    return (
        torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def attach_cache(parts: RunParts, output_dir: Path, force: bool = False) -> str:
    """Open (building if missing) the run's feature cache and make the training data read it; returns a status line.
    With cached teacher targets the teacher is released: it never runs during training."""
    cache, note = open_cache(
        parts.config,
        output_dir,
        parts.data,
        parts.preprocess,
        parts.tokenizer,
        parts.teacher,
        parts.student,
        parts.passes,
        local_device(),
        force,
    )
    if cache is not None:
        source = parts.data.sources[0]
        assert isinstance(source.data, CaptionPairDataset)
        cached = CachedPairs(source.data, cache, "image_tokens" not in cache.kinds, parts.config)
        parts.data.sources[0] = dataclasses.replace(source, data=cached)
        if "teacher_cls" in cache.kinds:
            parts.teacher = None
    return note


@dataclasses.dataclass
class Progress:
    """Where a run stands: the optimizer step and the loader's counts of bad samples (kept in every checkpoint)."""

    step: int = 0
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(COUNTED, 0))

    def data_counts(self, data: TrainingData) -> dict[str, int]:
        """The counts as the metrics and the export's metadata report them."""
        return {
            "skipped_train_samples": self.counts["skipped"],
            "skipped_train_rows": data.dropped.total() + self.counts["bad_captions"],
            "truncated_train_captions": self.counts["truncated"],
        }


def resume_progress(engine: Any, output_dir: Path, resume: bool) -> tuple[Progress, str | None]:
    """With `resume`, the latest complete checkpoint's engine state, progress and random state, and its tag;
    otherwise (or without one) step 0 and no tag."""
    tag = latest_complete_tag(output_dir) if resume else None
    if tag is None:
        return Progress(), None
    state = load_checkpoint(engine, output_dir, tag)
    restore_rng_state(state["rng"])
    return Progress(int(state["step"]), {key: int(state.get(key, 0)) for key in COUNTED}), tag


def save_progress(engine: Any, output_dir: Path, progress: Progress, keep: int) -> None:
    """A resumable checkpoint of the engine, the progress and the random state."""
    state = {"step": progress.step, **progress.counts, "rng": rng_state()}
    save_checkpoint(engine, output_dir, progress.step, state, keep)


def announce_run(parts: RunParts, output_dir: Path, resume: bool, tag: str | None, step: int, cache_note: str) -> None:
    """Save the resolved config; print where a resumed run starts, what the training data holds, the cache's status."""
    output_dir.mkdir(parents=True, exist_ok=True)
    dump_config(parts.config, output_dir / "config.yaml")
    if resume:
        print(f"resuming from {tag} (step {step})" if tag else "no complete checkpoint found: starting from step 0")
    print(
        f"training data: {parts.data.num_pairs} pairs from {len(parts.data.sources)} source(s); "
        f"rows or captions dropped while reading: {parts.data.dropped.summary()}"
    )
    print(cache_note)


def count_dropped(batch: dict[str, Tensor], counts: dict[str, int]) -> None:
    """Move the loader's per-batch counts of undecodable, malformed and truncated samples into `counts`."""
    for key, batch_key in COUNTED.items():
        counts[key] += int(batch.pop(batch_key))


def prepare_batch(
    batch: dict[str, Tensor],
    device: torch.device,
    dtype: torch.dtype,
    preprocess: ImagePreprocessor,
    augmentation: dict[str, Any] | None,
) -> dict[str, Tensor]:
    """The step's inputs on the device: pixels normalised, then cropped and flipped as the feature cache's stored
    view was (its `crop_theta`) or at random as configured."""
    crop_theta = batch.pop("crop_theta", None)  # float32: the stored view whose teacher target the cache holds
    batch = _to_device(batch, device, dtype, preprocess)
    if crop_theta is not None:
        batch["pixel_values"] = apply_crop_flip(batch["pixel_values"], crop_theta)
    elif batch["pixel_values"].numel() and augmentation is not None:
        batch["pixel_values"] = random_resized_crop_flip(
            batch["pixel_values"],
            tuple(augmentation["scale"]),
            tuple(augmentation["ratio"]),
            augmentation["flip_prob"],
        )
    return batch


def run_steps(engine: Any, parts: RunParts, output_dir: Path, progress: Progress) -> float:
    """Train from `progress` (updated in place) to the planned step, logging and checkpointing on the way; returns
    the loop's seconds."""
    config, data = parts.config, parts.data
    rank, world = dist.get_rank(), dist.get_world_size()
    loader = training_loader(
        data,
        PairCollator(parts.tokenizer, config.data.max_text_length),
        config.trainer.micro_batch_size,
        config.deepspeed.gradient_accumulation_steps,
        rank,
        world,
        loader_workers(config.data.num_workers),
        config.trainer.seed,
        progress.step,
        parts.total_steps,
    )
    log = RunLog(config, output_dir, progress.step, parts.total_steps, rank)
    engine.train()
    device, dtype = engine.device, next(engine.module.parameters()).dtype
    augmentation = crop_flip_settings(config.data)
    seen, loop_start = 0, time.perf_counter()
    for batch in loader:
        count_dropped(batch, progress.counts)
        seen += config.trainer.micro_batch_size
        if seen >= parts.global_batch // world and progress.counts["skipped"] >= seen:
            raise UserError(
                f"no training image could be decoded (first source: {data.sources[0].name}); check the image root"
            )
        if len(batch["image_ids"]) < 2:
            continue  # nothing to contrast (only possible when almost a whole batch failed to decode)
        batch = prepare_batch(batch, device, dtype, parts.preprocess, augmentation)
        log.add(train_step(engine, parts.teacher, batch), len(batch["image_ids"]) * world)
        if engine.global_steps == progress.step:
            continue  # inside a gradient-accumulation window
        progress.step = engine.global_steps
        log.step_done(progress.step, engine)
        if progress.step % config.trainer.checkpoint_every == 0 and progress.step < parts.total_steps:
            save_progress(engine, output_dir, progress, config.trainer.keep_checkpoints)
    train_seconds = time.perf_counter() - loop_start
    log.close()
    save_progress(engine, output_dir, progress, config.trainer.keep_checkpoints)
    return train_seconds


def train(config: Config, output_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train, export and evaluate one run; returns the final metrics (rank 0) or {} (other ranks)."""
    output_dir = Path(output_dir)
    parts = prepare_run(config, output_dir)
    cache_note = attach_cache(parts, output_dir)
    engine = build_engine(parts.config, parts.student, parts.objective, parts.teacher, parts.total_steps)
    progress, tag = resume_progress(engine, output_dir, resume)
    if dist.get_rank() == 0:
        announce_run(parts, output_dir, resume, tag, progress.step, cache_note)
    train_seconds = run_steps(engine, parts, output_dir, progress)
    if dist.get_rank() != 0:
        return {}
    return finish_run(
        engine.module.student,
        parts.config,
        parts.tokenizer,
        parts.preprocess,
        output_dir,
        progress.step,
        progress.data_counts(parts.data),
        parts.json_path,
        parts.image_root,
        train_seconds,
    )


def finish_run(
    student: DualEncoder,
    config: Config,
    tokenizer: PreTrainedTokenizerBase,
    preprocess: ImagePreprocessor,
    output_dir: Path,
    step: int,
    data_counts: dict[str, int],
    json_path: Path,
    image_root: Path | None,
    train_seconds: float,
) -> dict[str, Any]:
    """Export the student, evaluate retrieval on the configured split, print and save the metrics."""
    export_dir = save_export(
        student, config, tokenizer, preprocess, output_dir / "export", {"step": step, **data_counts}
    )
    bundle = load_export(export_dir)
    metrics = evaluate_retrieval(
        bundle,
        json_path,
        image_root,
        config.eval.split,
        config.eval.batch_size,
        config.eval.ks,
        config.trainer.progress_bar,
    )
    metrics.update(data_counts)
    metrics["train_seconds"] = round(train_seconds, 1)  # this process's loop (a resumed run: since the resume)
    write_text_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2))
    meta_path = export_dir / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["metrics"] = metrics
    write_text_atomic(meta_path, json.dumps(meta, indent=2))
    print(f"\nretrieval on '{config.eval.split}' ({metrics['num_images']} images, {metrics['num_texts']} captions):")
    print(format_recall_table(metrics))
    print(
        f"trained to step {step} in {train_seconds / 60:.1f} min; skipped training samples (undecodable images): "
        f"{data_counts['skipped_train_samples']}; rows or captions dropped (empty, not UTF-8, malformed, not downloaded): "
        f"{data_counts['skipped_train_rows']}; captions truncated to data.max_text_length: "
        f"{data_counts['truncated_train_captions']}"
    )
    print(f"exported model: {export_dir}")
    return metrics
