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
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
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
from mmd2v2.runtime.engine import create_engine, ensure_distributed_env
from mmd2v2.runtime.metrics import MetricWindow
from mmd2v2.runtime.precision import resolved_precision
from mmd2v2.runtime.random_state import restore_rng_state, rng_state, seed_everything
from mmd2v2.train.feature_cache import CachedPairs, open_cache

COUNTED = {
    "skipped": "num_skipped",
    "bad_captions": "num_bad_captions",
    "truncated": "num_truncated",
}  # state key: batch key


class TrainingModule(nn.Module):
    """What DeepSpeed optimises: the student plus the loss's learnable state (temperatures, memory banks)."""

    def __init__(self, student: DualEncoder, objective: MMD2V2Objective, micro_batch_size: int) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.micro_batch_size = micro_batch_size

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        image_ids: Tensor,
        teacher_cls: Tensor | None,
        image_tokens: Tensor | None = None,
        text_tokens: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms of one batch (contrastive terms against every rank's rows); `image_tokens`/`text_tokens`:
        cached frozen-encoder outputs used instead of running the encoders."""
        image = self.student.image_forward(pixel_values, encoded=image_tokens)
        text = self.student.text_forward(input_ids, attention_mask, encoded=text_tokens)
        return self.objective(image, text, teacher_cls, image_ids, self.micro_batch_size)


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
    """What a run is made of before the engine: resolved config, data, preprocessing, tokenizer, networks, length."""

    config: Config
    data: TrainingData
    json_path: Path
    image_root: Path | None
    preprocess: ImagePreprocessor
    tokenizer: PreTrainedTokenizerBase
    teacher: ImageTeacher | None
    student: DualEncoder
    total_steps: int
    global_batch: int

    @property
    def passes(self) -> float:
        """Planned passes over the training data."""
        return self.total_steps * self.global_batch / max(1, self.data.num_pairs)


def prepare_run(config: Config, output_dir: Path) -> RunParts:
    """Process group, data, tokenizer, teacher and student (with trainer.init_from weights) of a run."""
    config = dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, output_dir=str(output_dir)))
    ensure_distributed_env()
    seed_everything(config.trainer.seed)
    sources, json_path, image_root = prepare_data(config)
    preprocess = resolve_image_preprocessing(config)
    data = load_training_data(sources, preprocess, config.trainer.seed)
    tokenizer, config = prepare_tokenizer(config, data.captions)
    teacher = ImageTeacher(config.teacher) if config.teacher.enabled and config.loss.kd_weight > 0 else None
    student = DualEncoder(config.model, teacher_dim=teacher.dim if teacher else None)
    if config.trainer.init_from:  # on resume too (a checkpoint then replaces them): the cache's fingerprints need them
        load_student_weights(student, config.trainer.init_from)
    global_batch = (
        config.trainer.micro_batch_size * config.deepspeed.gradient_accumulation_steps * dist.get_world_size()
    )
    steps_per_epoch = data.num_pairs // global_batch
    if steps_per_epoch == 0:
        raise UserError(f"the training data has {data.num_pairs} pairs, fewer than one global batch of {global_batch}")
    total_steps = config.trainer.max_steps or max(1, math.ceil(config.trainer.epochs * steps_per_epoch))
    return RunParts(
        config, data, json_path, image_root, preprocess, tokenizer, teacher, student, total_steps, global_batch
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


def train(config: Config, output_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train, export and evaluate one run; returns the final metrics (rank 0) or {} (other ranks)."""
    output_dir = Path(output_dir)
    parts = prepare_run(config, output_dir)
    config, data, student, total_steps, global_batch = (
        parts.config,
        parts.data,
        parts.student,
        parts.total_steps,
        parts.global_batch,
    )
    rank, world = dist.get_rank(), dist.get_world_size()
    teacher_dim = parts.teacher.dim if parts.teacher else None
    objective = MMD2V2Objective(config.loss, config.model.embed_dim, teacher_dim)
    cache_note = attach_cache(parts, output_dir)
    teacher, preprocess, tokenizer = parts.teacher, parts.preprocess, parts.tokenizer
    accumulation = config.deepspeed.gradient_accumulation_steps
    if config.trainer.activation_checkpointing:
        student.enable_activation_checkpointing()
    if config.trainer.compile:
        student.compile_parts()
    engine = create_engine(TrainingModule(student, objective, config.trainer.micro_batch_size), config, total_steps)
    device, dtype = engine.device, next(engine.module.parameters()).dtype
    if teacher is not None:
        teacher.to(device)
        teacher.autocast_dtype = torch.bfloat16 if resolved_precision(config.deepspeed.precision) == "bf16" else None

    step, counts = 0, dict.fromkeys(COUNTED, 0)
    tag = latest_complete_tag(output_dir) if resume else None
    if tag is not None:
        state = load_checkpoint(engine, output_dir, tag)
        step, counts = int(state["step"]), {key: int(state.get(key, 0)) for key in COUNTED}
        restore_rng_state(state["rng"])
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, output_dir / "config.yaml")
        if resume:
            print(f"resuming from {tag} (step {step})" if tag else "no complete checkpoint found: starting from step 0")
        print(
            f"training data: {data.num_pairs} pairs from {len(data.sources)} source(s); "
            f"rows or captions dropped while reading: {data.dropped.summary()}"
        )
        print(cache_note)

    loader = training_loader(
        data,
        PairCollator(tokenizer, config.data.max_text_length),
        config.trainer.micro_batch_size,
        accumulation,
        rank,
        world,
        loader_workers(config.data.num_workers),
        config.trainer.seed,
        step,
        total_steps,
    )
    writer = SummaryWriter(str(output_dir / "tb")) if rank == 0 else None
    window, samples_since, last_log = MetricWindow(), 0, time.perf_counter()
    bar = tqdm(
        total=total_steps, initial=step, desc="train", unit="step", disable=rank != 0 or not config.trainer.progress_bar
    )
    engine.train()
    augmentation = crop_flip_settings(config.data)
    seen, loop_start = 0, time.perf_counter()
    for batch in loader:
        for key, batch_key in COUNTED.items():
            counts[key] += int(batch.pop(batch_key))
        seen += config.trainer.micro_batch_size
        if seen >= global_batch // world and counts["skipped"] >= seen:
            raise UserError(
                f"no training image could be decoded (first source: {data.sources[0].name}); check the image root"
            )
        if len(batch["image_ids"]) < 2:
            continue  # nothing to contrast (only possible when almost a whole batch failed to decode)
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
        teacher_cls = batch.pop("teacher_cls", None)  # from the feature cache, else computed now
        if teacher_cls is None and teacher is not None:
            teacher_cls = teacher(batch["pixel_values"])
        terms = engine(**batch, teacher_cls=teacher_cls)
        engine.backward(terms["loss"])
        engine.step()
        window.add(terms)
        samples_since += len(batch["image_ids"]) * world
        if engine.global_steps == step:
            continue  # inside a gradient-accumulation window
        step = engine.global_steps
        bar.update(step - bar.n)
        if step % config.trainer.log_every == 0 or step == total_steps:
            means = window.means()
            elapsed = time.perf_counter() - last_log
            bar.set_postfix(loss=f"{means['loss']:.3f}")
            if writer is not None:
                record = {
                    "step": step,
                    **means,
                    "lr": engine.get_lr()[0],
                    "samples_per_s": samples_since / max(elapsed, 1e-9),
                }
                with (output_dir / "train_log.jsonl").open("a") as log:
                    log.write(json.dumps(record) + "\n")
                for key, value in means.items():
                    writer.add_scalar(f"loss/{key}" if "scale" not in key else f"temperature/{key}", value, step)
                for key in ("logit_scale", "kd_logit_scale"):
                    if key in means:
                        writer.add_scalar(f"temperature/{key.replace('logit_scale', 'T')}", 1.0 / means[key], step)
                writer.add_scalar("optim/lr", record["lr"], step)
                writer.add_scalar("speed/samples_per_s", record["samples_per_s"], step)
            samples_since, last_log = 0, time.perf_counter()
        if step % config.trainer.checkpoint_every == 0 and step < total_steps:
            save_checkpoint(
                engine, output_dir, step, {"step": step, **counts, "rng": rng_state()}, config.trainer.keep_checkpoints
            )
    bar.close()
    train_seconds = time.perf_counter() - loop_start
    save_checkpoint(
        engine, output_dir, step, {"step": step, **counts, "rng": rng_state()}, config.trainer.keep_checkpoints
    )
    if writer is not None:
        writer.close()
    if rank != 0:
        return {}
    data_counts = {
        "skipped_train_samples": counts["skipped"],
        "skipped_train_rows": data.dropped.total() + counts["bad_captions"],
        "truncated_train_captions": counts["truncated"],
    }
    return finish_run(
        engine.module.student,
        config,
        tokenizer,
        preprocess,
        output_dir,
        step,
        data_counts,
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
