"""A VL finetuning run: task data, student, teachers, (stage 1 adaptive finetuning,) task finetuning with
(M)AD, evaluation, and the run folder (config.yaml, train_log.jsonl, tb/, metrics.json, model/).

A plain PyTorch loop with AdamW (no DeepSpeed engine): VL runs here are single-process and small, and the
protocols train many short runs in one process, where an engine per run only adds start-up time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mmd2v2.config import dump_config
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.errors import UserError
from mmd2v2.files import write_text_atomic
from mmd2v2.runtime.metrics import MetricWindow
from mmd2v2.runtime.optim import parameter_groups
from mmd2v2.runtime.precision import resolved_precision
from mmd2v2.runtime.random_state import restore_rng_state, rng_state, seed_everything
from mmd2v2.runtime.schedule import WarmupCosine
from mmd2v2.vl.batches import BatchCollator, SkippableBatches, VLBatch, example_loader
from mmd2v2.vl.checkpoint import save_vl_model
from mmd2v2.vl.config import VLConfig, needed_teachers, same_run_settings
from mmd2v2.vl.objective import VLObjective
from mmd2v2.vl.resume import RESUME, Position, SavedRun, load_run_state, remove_run_state, save_run_state
from mmd2v2.vl.student import VLStudent, build_backbone
from mmd2v2.vl.tasks import TaskData, load_task
from mmd2v2.vl.tasks.base import VLExample
from mmd2v2.vl.teachers import HFImageTeacher, build_teachers
from mmd2v2.vl.zero_shot import ZeroShotScorer, prepare_scorer

Step = Callable[[VLBatch], tuple[Tensor, dict[str, Tensor]]]


def uses_bf16(device: str, precision: str) -> bool:
    """Whether `precision` ('auto', 'bf16', 'fp32') means bf16 on `device` (auto: on CUDA GPUs that have it)."""
    return resolved_precision(precision) == "bf16" if torch.device(device).type == "cuda" else precision == "bf16"


def autocast(device: str, precision: str) -> torch.autocast:
    """bf16 autocast on `device` when `precision` means bf16 there, else a context that changes nothing."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


@torch.no_grad()
def predict(
    student: VLStudent,
    examples: list[VLExample],
    preprocess: ImagePreprocessor,
    collator: BatchCollator,
    batch_size: int,
    device: str,
    progress: bool = False,
    workers: int = 0,
    precision: str = "fp32",
) -> tuple[list[VLExample], Tensor, int]:
    """Logits of every example whose image decodes (VCR: (B, 4) choice scores); also the count left out."""
    student.eval()
    kept, logits, skipped = [], [], 0
    for batch in tqdm(
        example_loader(examples, preprocess, collator, batch_size, False, 0, workers=workers),
        desc="evaluate",
        unit="batch",
        disable=not progress,
    ):
        skipped += batch.skipped
        if not batch.examples:
            continue
        batch = batch.to(device)
        with autocast(device, precision):
            output = student(batch.pixel_values, batch.tokens.input_ids, batch.tokens.attention_mask, batch.image_index)
            scores = student.logits(output)
        kept.extend(batch.examples)
        logits.append(scores.view(len(batch.examples), -1).float().cpu())
    if not kept:
        raise UserError("evaluation: no image of the split could be decoded (check task.val.image_root)")
    return kept, torch.cat(logits), skipped


def evaluate_examples(
    student: VLStudent,
    task: TaskData,
    examples: list[VLExample],
    preprocess: ImagePreprocessor,
    collator: BatchCollator,
    batch_size: int,
    device: str,
    progress: bool,
    workers: int = 0,
    precision: str = "fp32",
) -> dict[str, float]:
    """The task's metrics on `examples`, plus how many were left out for undecodable images."""
    kept, logits, skipped = predict(
        student, examples, preprocess, collator, batch_size, device, progress, workers, precision
    )
    return {**task.definition.metrics(kept, logits, task.classes), "skipped_images": float(skipped)}


class StageRunner:
    """Runs training stages with AdamW + warm-up/cosine, logging to train_log.jsonl and TensorBoard, and saving the
    training state to RUN/resume/ every `trainer.checkpoint_every` steps."""

    def __init__(
        self,
        cfg: VLConfig,
        student: VLStudent,
        preprocess: ImagePreprocessor,
        collator: BatchCollator,
        output_dir: Path | None,
        objective_rng: torch.Generator,
    ) -> None:
        self.cfg, self.student, self.preprocess, self.collator = cfg, student, preprocess, collator
        self.output_dir, self.objective_rng = output_dir, objective_rng
        self.writer = SummaryWriter(str(output_dir / "tb")) if output_dir is not None else None
        self.global_step, self.skipped = 0, 0

    def run(
        self,
        name: str,
        step_fn: Step,
        examples: list[VLExample],
        epochs: float,
        max_steps: int | None,
        seed: int,
        saved: SavedRun | None = None,
    ) -> None:
        """Train for `epochs` (or `max_steps`) over `examples` with `step_fn`'s loss (`seed` shuffles); from `saved`
        (a state of this stage), go on where it stopped."""
        cfg = self.cfg.trainer
        per_epoch = max(1, math.ceil(len(examples) / cfg.batch_size))
        total = max_steps or max(1, math.ceil(epochs * per_epoch))
        optimizer = torch.optim.AdamW(
            parameter_groups(self.student, self.cfg.optim),
            lr=self.cfg.optim.lr,
            betas=tuple(self.cfg.optim.betas),
            eps=self.cfg.optim.eps,
        )
        schedule = WarmupCosine(total, round(self.cfg.optim.warmup_fraction * total), self.cfg.optim.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        loader = example_loader(
            examples,
            self.preprocess,
            self.collator,
            cfg.batch_size,
            True,
            seed,
            self.cfg.task.cache_images,
            cfg.num_workers,
        )
        generator = loader.generator
        assert generator is not None and isinstance(loader.batch_sampler, SkippableBatches)
        window, step, batches = MetricWindow(), 0, 0
        if saved is not None:
            optimizer.load_state_dict(saved.optimizer)
            scheduler.load_state_dict(saved.scheduler)
            generator.set_state(saved.pass_rng)
            loader.batch_sampler.skip(saved.position.batches)
            step, batches = saved.position.step, saved.position.batches
        bar = tqdm(total=total, initial=step, desc=name, unit="step", disable=not cfg.progress_bar)
        self.student.train()
        while step < total:
            pass_rng, pass_start, resumed_pass = generator.get_state(), step, batches > 0
            for batch in loader:
                batches += 1
                self.skipped += batch.skipped
                if len(batch.examples) < 2:
                    continue
                with autocast(cfg.device, cfg.precision):
                    loss, terms = step_fn(batch.to(cfg.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                window.add(terms)
                step += 1
                self.global_step += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == total:
                    self._log(name, window.means(), scheduler.get_last_lr()[0])
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    self._save(
                        Position(name, step, self.global_step, batches, self.skipped), optimizer, scheduler, pass_rng
                    )
                if step >= total:
                    break
            if step == pass_start and not resumed_pass:
                raise UserError(
                    f"{name}: no batch with two or more decodable examples (check the images and trainer.batch_size)"
                )
            batches = 0
        bar.close()

    def _save(
        self,
        position: Position,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        pass_rng: Tensor,
    ) -> None:
        if self.output_dir is not None:
            save_run_state(
                self.output_dir,
                self.student,
                position,
                optimizer,
                scheduler,
                rng_state(),
                self.objective_rng.get_state(),
                pass_rng,
            )

    def _log(self, stage: str, means: dict[str, float], lr: float) -> None:
        if self.output_dir is None or self.writer is None:
            return
        record = {"stage": stage, "step": self.global_step, **means, "lr": lr}
        with (self.output_dir / "train_log.jsonl").open("a") as log:
            log.write(json.dumps(record) + "\n")
        for key, value in means.items():
            self.writer.add_scalar(f"{stage}/{key}", value, self.global_step)
        self.writer.add_scalar("optim/lr", lr, self.global_step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def train_vl(
    cfg: VLConfig,
    output_dir: str | Path | None,
    task: TaskData | None = None,
    train_examples: list[VLExample] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train and evaluate one run; with `output_dir`, write the run folder. Returns the metrics. With `resume`, a run
    that saved its training state in `output_dir` (and has the same settings) goes on from there."""
    started = time.perf_counter()
    seed_everything(cfg.trainer.seed)
    task = task or load_task(cfg.task)
    examples = task.train.examples if train_examples is None else train_examples
    if not examples:
        raise UserError("training split: no usable example (see the skipped counts)")
    parts = build_backbone(cfg.student, [t for e in task.train.examples for t in e.texts])
    distill, adaptive = cfg.distill, cfg.adaptive
    need_vision, need_text = needed_teachers(distill)
    teachers = build_teachers(
        cfg.teachers, parts.preprocess, cfg.task.max_text_length, need_vision, need_text, distill.confidence_weighting
    )
    student = VLStudent(
        parts.backbone,
        task.num_outputs,
        cfg.student.head_hidden_ratio,
        teachers.vision.dim if teachers.vision else None,
        teachers.text.dim if teachers.text else None,
        len(parts.tokenizer) if adaptive.enabled else None,
    ).to(cfg.trainer.device)
    for teacher in {id(t): t for t in (teachers.vision, teachers.text, teachers.dual) if t is not None}.values():
        teacher.to(cfg.trainer.device)
    if isinstance(teachers.vision, HFImageTeacher) and uses_bf16(cfg.trainer.device, cfg.trainer.precision):
        teachers.vision.teacher.autocast_dtype = torch.bfloat16  # the image teacher keeps fp32 unless told
    collator = BatchCollator(parts.tokenizer, cfg.task.max_text_length)
    scorer = None
    if teachers.dual is not None:
        scorer = ZeroShotScorer(teachers.dual, task, cfg.teachers.zero_shot_logit_scale, cfg.teachers.zero_shot_prompt)
        prepare_scorer(
            scorer,
            task.train.examples,
            parts.preprocess,
            collator,
            cfg.trainer.eval_batch_size,
            False,
            cfg.trainer.num_workers,
        )
    objective = VLObjective(
        distill, adaptive, task, student, teachers, scorer, parts.tokenizer, cfg.task.max_text_length, cfg.trainer.seed
    )
    out = Path(output_dir) if output_dir is not None else None
    saved = _resumed_state(out, cfg, student) if resume and out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)  # metrics.json marks a finished run: never a stale one
        if saved is None:
            (out / "train_log.jsonl").write_text("")
        dump_config(cfg, out / "config.yaml")
    runner = StageRunner(cfg, student, parts.preprocess, collator, out, objective.generator)
    if saved is not None:
        restore_rng_state(saved.rng)
        objective.generator.set_state(saved.objective_rng)
        runner.global_step, runner.skipped = saved.position.global_step, saved.position.skipped
    stage = saved.position.stage if saved is not None else None
    if adaptive.enabled and stage != "task":
        runner.run(
            "adapt",
            objective.adapt_step,
            task.train.examples if adaptive.full_data else examples,
            adaptive.epochs,
            None,
            cfg.trainer.seed + 1,
            saved if stage == "adapt" else None,
        )
    runner.run(
        "task",
        objective.task_step,
        examples,
        cfg.trainer.epochs,
        cfg.trainer.max_steps,
        cfg.trainer.seed,
        saved if stage == "task" else None,
    )
    runner.close()
    metrics = evaluate_examples(
        student,
        task,
        task.val.examples,
        parts.preprocess,
        collator,
        cfg.trainer.eval_batch_size,
        cfg.trainer.device,
        cfg.trainer.progress_bar,
        cfg.trainer.num_workers,
        cfg.trainer.precision,
    )
    metrics.update(
        {
            "main_metric": task.definition.main_metric,
            "train_examples": len(examples),
            "skipped_train_images": runner.skipped,
            "skipped_train_records": task.train.skipped,
            "skipped_val_records": task.val.skipped,
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    if out is not None:
        save_vl_model(
            student.cpu(),
            parts,
            out / "model",
            {
                "name": task.name,
                "classes": task.classes,
                "head_hidden_ratio": cfg.student.head_hidden_ratio,
                "max_text_length": cfg.task.max_text_length,
            },
        )
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
        remove_run_state(out)
    return metrics


def _resumed_state(out: Path, cfg: VLConfig, student: VLStudent) -> SavedRun | None:
    """The saved training state of the run in `out`, loaded into `student` (None, with a message, when there is none)."""
    if not (out / RESUME).is_dir():
        print(f"no saved training state in '{out}': starting from step 0", flush=True)
        return None
    if not same_run_settings(out / "config.yaml", cfg):
        raise UserError(
            f"--resume: '{out / 'config.yaml'}' trains something else than these settings (compare with "
            "--dump-config); resume with the same config, or use a new --output-dir"
        )
    saved = load_run_state(out, student)
    if saved is not None:
        print(
            f"resuming stage '{saved.position.stage}' at step {saved.position.step} "
            f"(step {saved.position.global_step} of the run)",
            flush=True,
        )
    return saved
