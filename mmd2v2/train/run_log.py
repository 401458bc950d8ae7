"""A training run's progress bar, train_log.jsonl and TensorBoard scalars."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mmd2v2.config import Config
from mmd2v2.runtime.metrics import MetricWindow


class RunLog:
    """A run's progress bar, and on rank 0 its train_log.jsonl and TensorBoard scalars: the loss terms' means over
    each `trainer.log_every` steps, learning rate and throughput."""

    def __init__(self, config: Config, output_dir: Path, step: int, total_steps: int, rank: int) -> None:
        self.output_dir, self.log_every, self.total_steps = output_dir, config.trainer.log_every, total_steps
        self.writer = SummaryWriter(str(output_dir / "tb")) if rank == 0 else None
        self.window, self.samples_since, self.last_log = MetricWindow(), 0, time.perf_counter()
        self.bar = tqdm(
            total=total_steps,
            initial=step,
            desc="train",
            unit="step",
            disable=rank != 0 or not config.trainer.progress_bar,
        )

    def add(self, terms: dict[str, Tensor], samples: int) -> None:
        """Count one micro-batch's loss terms and its samples over all ranks."""
        self.window.add(terms)
        self.samples_since += samples

    def step_done(self, step: int, engine: Any) -> None:
        """Advance the bar to `step`; at a log point, write the window's means and reset it."""
        self.bar.update(step - self.bar.n)
        if step % self.log_every != 0 and step != self.total_steps:
            return
        means = self.window.means()
        elapsed = time.perf_counter() - self.last_log
        self.bar.set_postfix(loss=f"{means['loss']:.3f}")
        if self.writer is not None:
            record = {
                "step": step,
                **means,
                "lr": engine.get_lr()[0],
                "samples_per_s": self.samples_since / max(elapsed, 1e-9),
            }
            with (self.output_dir / "train_log.jsonl").open("a") as log:
                log.write(json.dumps(record) + "\n")
            for key, value in means.items():
                self.writer.add_scalar(f"loss/{key}" if "scale" not in key else f"temperature/{key}", value, step)
            for key in ("logit_scale", "kd_logit_scale"):
                if key in means:
                    self.writer.add_scalar(f"temperature/{key.replace('logit_scale', 'T')}", 1.0 / means[key], step)
            self.writer.add_scalar("optim/lr", record["lr"], step)
            self.writer.add_scalar("speed/samples_per_s", record["samples_per_s"], step)
        self.samples_since, self.last_log = 0, time.perf_counter()

    def close(self) -> None:
        """Close the bar and the TensorBoard file."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
