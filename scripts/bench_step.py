"""Where a training step's time goes, for a config against a baseline config, in the same run.

    python scripts/bench_step.py --config configs/demo.yaml \
        --baseline model.image.config.patch_size=8 teacher.config.patch_size=8

Times, on real demo batches read through the real loader: loading a batch (PNG decode, preprocessing,
tokenisation), the teacher's forward, the image and text branches' forward+backward, and one whole
optimisation step (both branches, the loss, backward, AdamW). Prints a table with the estimated training
time of the config's full run. Plain PyTorch (no DeepSpeed engine), so it isolates the model's cost.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmd2v2.config import Config, load_config  # noqa: E402
from mmd2v2.data.demo_scenes import write_demo_dataset  # noqa: E402
from mmd2v2.data.karpathy import load_karpathy_split  # noqa: E402
from mmd2v2.data.pairs import CaptionPairDataset, PairCollator  # noqa: E402
from mmd2v2.data.preprocessing import resolve_image_preprocessing  # noqa: E402
from mmd2v2.data.tokenization import prepare_tokenizer  # noqa: E402
from mmd2v2.training_parts import build_parts  # noqa: E402


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(config: Config, data_dir: Path, repeats: int) -> dict[str, float]:
    """Component timings (ms) of one micro-batch under `config`, plus the parameter count."""
    batch_size = config.trainer.micro_batch_size
    preprocess = resolve_image_preprocessing(config)
    write_demo_dataset(data_dir, batch_size, 1, 1, preprocess.size, config.data.demo_seed)
    records = load_karpathy_split(data_dir / "dataset_demo.json", "train", data_dir)
    tokenizer, config = prepare_tokenizer(config, [c for r in records for c in r.captions])
    dataset = CaptionPairDataset(records, preprocess)
    collate = PairCollator(tokenizer, config.data.max_text_length)
    indices = list(range(0, len(dataset), max(1, len(dataset) // batch_size)))[:batch_size]

    def load() -> dict[str, torch.Tensor]:
        batch = collate([dataset[i] for i in indices])
        return {**batch, "pixel_values": preprocess.normalize(batch["pixel_values"])}  # the step's normalisation

    batch = load()
    torch.manual_seed(config.trainer.seed)
    parts = build_parts(config)
    teacher, student, objective = parts.teacher, parts.student.train(), parts.objective
    optimizer = torch.optim.AdamW([*student.parameters(), *objective.parameters()], lr=config.optim.lr)

    def image_branch() -> None:
        student.image_forward(batch["pixel_values"]).embedding[:, 0].sum().backward()

    def text_branch() -> None:
        student.text_forward(batch["input_ids"], batch["attention_mask"]).embedding[:, 0].sum().backward()

    def whole_step() -> None:
        cls = teacher(batch["pixel_values"]) if teacher is not None else None
        image = student.image_forward(batch["pixel_values"])
        text = student.text_forward(batch["input_ids"], batch["attention_mask"])
        objective(image, text, cls, batch["image_ids"])["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = {"load batch": median_ms(load, repeats)}
    if teacher is not None:
        times["teacher forward"] = median_ms(lambda: teacher(batch["pixel_values"]), repeats)
    times["image fwd+bwd"] = median_ms(image_branch, repeats)
    times["text fwd+bwd"] = median_ms(text_branch, repeats)
    student.zero_grad(set_to_none=True)
    times["whole step (no load)"] = median_ms(whole_step, repeats)
    times["params (M)"] = sum(p.numel() for p in student.parameters()) / 1e6
    return times


def full_run_steps(config: Config) -> int:
    """Optimizer steps of the config's full run (demo data sizes)."""
    if config.trainer.max_steps:
        return config.trainer.max_steps
    pairs = config.data.demo_num_train * 5
    return max(1, math.ceil(config.trainer.epochs * (pairs // config.trainer.micro_batch_size)))


def main(argv: list[str] | None = None) -> None:
    """Print the component table for --config (+ --set overrides) against --baseline overrides."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the measured config")
    parser.add_argument(
        "--baseline",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides (on top of --config) that make the baseline",
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(True)
    configs = {"config": load_config(args.config, args.set), "baseline": load_config(args.config, args.baseline)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in configs.items():
            results[name] = measure(config, Path(tmp) / name, args.repeats)
            load_ms = results[name]["load batch"]  # the loader runs in the training process (num_workers=0)
            steps = full_run_steps(config)
            results[name]["full run, est. (s)"] = steps * (results[name]["whole step (no load)"] + load_ms) / 1000
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, micro-batch "
        f"{configs['config'].trainer.micro_batch_size}, median of {args.repeats}"
    )
    print(f"config:   {args.config} {' '.join(args.set)}")
    print(f"baseline: {args.config} {' '.join(args.baseline)}")
    print(f"{'':24} {'config':>10} {'baseline':>10} {'speed-up':>9}")
    for key in results["config"]:
        if key not in results["baseline"]:
            continue
        ours, base = results["config"][key], results["baseline"][key]
        ratio = f"{base / ours:8.2f}x" if ours > 0 and "params" not in key else ""
        print(f"{key:24} {_cell(ours):>10} {_cell(base):>10} {ratio:>9}")


def _cell(value: float) -> str:
    """One decimal for values of 10 and up, three significant digits below, so a fast component never prints 0.0."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


if __name__ == "__main__":
    main()
