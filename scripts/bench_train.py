"""Training throughput of the real step (DeepSpeed engine, the run's precision), uncached against feature-cached.

    python scripts/bench_train.py                          # demo + paper-size configs, table to stdout
    python scripts/bench_train.py --paper-batch 256 --append docs/benchmarks.md   # on a GPU: the issue's numbers

Setups: the demo config, and the paper's final architecture at full size with random weights (Data2Vec 2.0
ViT-B/16 image encoder truncated to 6 blocks, RoBERTa-base-size text encoder truncated to 6, one shared block of
width 768, BEiT ViT-B/16 teacher, contrastive distillation with a 65,536-entry bank), with trainable encoders and
LiT-style frozen ones. Each is measured uncached (the teacher, and the frozen encoders, run every step) and with
what the feature cache supplies (the teacher's CLS; the frozen encoders' outputs too when frozen). Inputs are
synthetic tensors of the real shapes (captions of 32 tokens), copied to the device every step as the loader's
batches are; decoding images is not measured. FLOPs per sample are counted with torch.utils.flop_counter over a
whole step; MFU = counted FLOPs per second / the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmd2v2.config import Config, load_config  # noqa: E402
from mmd2v2.models.dual_encoder import DualEncoder  # noqa: E402
from mmd2v2.models.teacher import ImageTeacher  # noqa: E402
from mmd2v2.runtime.engine import ensure_distributed_env  # noqa: E402
from mmd2v2.runtime.precision import resolved_precision  # noqa: E402
from mmd2v2.training_parts import build_engine, build_parts, train_step  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}  # dense, no sparsity
THESIS_PAIRS, THESIS_EPOCHS, THESIS_GPU_HOURS = 3.26e6, 7, 14.0  # final setup: ~7 h on 2 RTX 4090
CAPTION_TOKENS = 32
VIT_B = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "image_size": 224,
    "patch_size": 16,
}


def paper_overrides(frozen: bool) -> list[str]:
    """configs/mmd2v2_final.yaml at full size with random weights (no checkpoints or data needed)."""
    image = {**VIT_B}
    text = {
        "vocab_size": 50265,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 514,
        "pad_token_id": 1,
        "type_vocab_size": 1,
    }
    teacher = {**VIT_B, "use_mean_pooling": False, "use_relative_position_bias": True, "layer_scale_init_value": 0.1}
    return [
        "model.image.pretrained=null",
        f"model.image.config={image}",
        "model.text.family=roberta",
        "model.text.pretrained=null",
        f"model.text.config={text}",
        "teacher.pretrained=null",
        f"teacher.config={teacher}",
        f"model.image.freeze={frozen}",
        f"model.text.freeze={frozen}",
        "data.sources=[]",
        "data.demo=true",
        "deepspeed.precision=auto",
        "data.random_crop_scale=null",
        "data.hflip_prob=0.0",
    ]


@dataclasses.dataclass
class Setup:
    """One measured configuration: its config and which frozen outputs the cached variant reads."""

    name: str
    config: Config
    cache_encoders: bool


def setups(paper_batch: int, demo_batch: int | None) -> list[Setup]:
    """The demo config and the paper-size config with trainable and with frozen encoders."""
    demo = load_config(ROOT / "configs" / "demo.yaml", [f"trainer.micro_batch_size={demo_batch}"] if demo_batch else [])
    result = [Setup("demo", demo, False)]
    for frozen in (False, True):
        config = load_config(
            ROOT / "configs" / "mmd2v2_final.yaml",
            [*paper_overrides(frozen), f"trainer.micro_batch_size={paper_batch}"],
        )
        result.append(Setup("paper, frozen encoders (LiT)" if frozen else "paper, trainable encoders", config, frozen))
    return result


def synthetic_batch(
    config: Config, teacher: ImageTeacher | None, student: DualEncoder, cached: bool, device: torch.device
) -> dict[str, torch.Tensor]:
    """A host batch of the real shapes: pixels and tokens, or the cache's fp16 rows in their place."""
    size, batch = config.data.image_size or 224, config.trainer.micro_batch_size
    generator = torch.Generator().manual_seed(0)
    vocab = student.text_encoder.model.config.vocab_size
    tokens = torch.randint(4, vocab, (batch, CAPTION_TOKENS), generator=generator)
    host = {
        "pixel_values": torch.randn(batch, 3, size, size, generator=generator),
        "input_ids": tokens,
        "attention_mask": torch.ones_like(tokens),
        "image_ids": torch.arange(batch),
    }
    if cached:
        if teacher is not None:
            host["teacher_cls"] = torch.randn(batch, teacher.dim).half()
        if student.image_encoder.fully_frozen:
            tokens = student.image_sequence_length(size)
            host["image_tokens"] = torch.randn(batch, tokens, student.image_encoder.width).half()
            host["pixel_values"] = torch.zeros(0)
        if student.text_encoder.fully_frozen:
            host["text_tokens"] = torch.randn(batch, CAPTION_TOKENS, student.text_encoder.width).half()
    return {k: v.pin_memory() if device.type == "cuda" else v for k, v in host.items()}


def measure(setup: Setup, cached: bool, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median step time, samples/s, counted FLOPs per sample and peak device memory of one variant."""
    config = setup.config
    torch.manual_seed(0)
    parts = build_parts(config)
    engine = build_engine(config, parts.student, parts.objective, parts.teacher, 10**6)
    dtype = next(engine.module.parameters()).dtype
    host = synthetic_batch(config, parts.teacher, engine.module.student, cached, device)

    def step(engine: Any = engine, teacher: ImageTeacher | None = parts.teacher) -> None:
        batch = {
            k: v.to(device, dtype=dtype if v.is_floating_point() else v.dtype, non_blocking=True)
            for k, v in host.items()
        }
        train_step(engine, teacher, batch)

    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    batch = config.trainer.micro_batch_size
    result = {
        "step_s": seconds,
        "samples_s": batch / seconds,
        "gflops_sample": counter.get_total_flops() / batch / 1e9,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
    }
    del step, engine, parts
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of a known GPU, else None (no MFU on CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def table(rows: list[tuple[str, str, dict[str, float]]], device: torch.device) -> list[str]:
    """Markdown table: one row per (setup, variant), with the cached/uncached speed-up and the thesis-run cost."""
    peak = peak_flops(device)
    lines = [
        "| setup | variant | batch | step (s) | samples/s | GFLOPs/sample | MFU | peak mem (GiB) | speed-up | "
        "thesis run (GPU-h) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    uncached = {setup: r["samples_s"] for setup, variant, r in rows if variant == "uncached"}
    for setup, variant, r in rows:
        flops_per_s = r["gflops_sample"] * 1e9 * r["samples_s"]
        mfu = f"{100 * flops_per_s / peak:.1f}%" if peak else "–"
        memory = "–" if r["peak_gib"] != r["peak_gib"] else f"{r['peak_gib']:.1f}"
        hours = f"{THESIS_PAIRS * THESIS_EPOCHS / r['samples_s'] / 3600:.1f}" if setup.startswith("paper") else "–"
        lines.append(
            f"| {setup} | {variant} | {r['batch']:.0f} | {r['step_s']:.3f} | {r['samples_s']:.1f} | "
            f"{r['gflops_sample']:.1f} | {mfu} | {memory} | {r['samples_s'] / uncached[setup]:.2f}x | {hours} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure every setup uncached and cached; print (and optionally append) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--paper-batch",
        type=int,
        default=256 if torch.cuda.is_available() else 8,
        help="micro-batch of the paper-size setups (default: 256 on a GPU, 8 on a CPU)",
    )
    parser.add_argument("--demo-batch", type=int, help="micro-batch of the demo setup (default: the config's)")
    parser.add_argument("--only", choices=("demo", "paper"), help="measure one kind of setup")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--append", type=Path, help="append the table, device and command to this markdown file")
    args = parser.parse_args(argv)
    ensure_distributed_env()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[tuple[str, str, dict[str, float]]] = []
    for setup in setups(args.paper_batch, args.demo_batch):
        if args.only and not setup.name.startswith(args.only):
            continue
        for cached in (False, True):
            variant = (
                ("teacher + encoders cached" if setup.cache_encoders else "teacher cached") if cached else "uncached"
            )
            result = measure(setup, cached, args.steps, args.warmup, device)
            rows.append((setup.name, variant, {**result, "batch": setup.config.trainer.micro_batch_size}))
            print(f"{setup.name:30} {variant:26} {result['samples_s']:9.1f} samples/s", file=sys.stderr)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    header = [
        f"Device: {where}; torch {torch.__version__}; precision "
        f"{resolved_precision('auto')} (auto); median of {args.steps} steps after {args.warmup} warm-up.",
        f"Command: `python scripts/bench_train.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
    ]
    lines = (
        header
        + table(rows, device)
        + [
            "",
            f"Thesis run = {THESIS_PAIRS / 1e6:.2f}M pairs x {THESIS_EPOCHS} epochs at "
            f"the row's samples/s on one such device; reference: about "
            f"{THESIS_GPU_HOURS:.0f} GPU-hours (7 h on 2 RTX 4090).",
        ]
    )
    print("\n".join(lines))
    if args.append is not None:
        with args.append.open("a") as handle:
            handle.write(f"\n### Training throughput, {date.today().isoformat()}\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
