"""DeepSpeed set-up: process environment, the DeepSpeed JSON built from the config, engine creation.

Any program config with `optim`, `deepspeed` and `trainer.micro_batch_size` sections works (training, pretraining).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from mmd2v2.runtime.optim import parameter_groups
from mmd2v2.runtime.precision import resolved_precision
from mmd2v2.runtime.schedule import WarmupCosine


def ensure_distributed_env() -> None:
    """Set the variables a launcher would (single process) so DeepSpeed needs no MPI, then init the group."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        )
    if not dist.is_initialized():
        if os.environ["WORLD_SIZE"] == "1" and not torch.cuda.is_available():
            skip_shared_memory_kernels()
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)


def skip_shared_memory_kernels() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce (`deepspeed_shm_comm`, ~30 s of ninja on a
    2-core machine, the first time) for a single process, which reduces nothing: it builds the op only when its
    table of compatible ops (`deepspeed.ops.__compatible_ops__`) says the op can be built."""
    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def deepspeed_config(config: Any, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON for this run (batch sizes, AdamW, ZeRO stage, precision, clipping)."""
    ds, optim = config.deepspeed, config.optim
    micro = config.trainer.micro_batch_size
    precision = resolved_precision(ds.precision)
    fused = torch.cuda.is_available() if optim.fused is None else optim.fused
    base = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "train_batch_size": micro * ds.gradient_accumulation_steps * world_size,
        "gradient_clipping": ds.gradient_clipping,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.lr,
                "betas": list(optim.betas),
                "eps": optim.eps,
                "weight_decay": optim.weight_decay,
                "torch_adam": True,
                **({"fused": True} if fused else {}),
            },
        },
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _deep_merge(base, ds.extra)


def create_engine(module: nn.Module, config: Any, total_steps: int) -> Any:
    """Wrap `module` in a DeepSpeed engine with AdamW and the warm-up + cosine schedule."""
    world_size = dist.get_world_size()
    groups = parameter_groups(module, config.optim)
    schedule = WarmupCosine(total_steps, round(config.optim.warmup_fraction * total_steps), config.optim.min_lr_ratio)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=groups,
        config=deepspeed_config(config, world_size),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    return engine
