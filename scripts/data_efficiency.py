"""Data efficiency on the demo: random-init encoders vs pretrained ones (frozen, top block unfrozen, + distillation)
at several paired-set sizes, every run with the same step budget, recall on the unchanged 500-image test split.

    python scripts/data_efficiency.py                                  # the whole table (hours on 2 CPU cores)
    python scripts/data_efficiency.py --sizes 300 --variants random frozen --seeds 0   # a part of it

Each run is `train.py` in a subprocess with its own folder under --out; a finished run (metrics.json) is reused, so
an interrupted table goes on where it stopped. The pretrained folders come from configs/pretrain_demo_*.yaml
(`mmd2v2 pretrain`, made once); their pretraining time is read from their pretrain.json and printed apart.
Prints a Markdown table: mean ± std over seeds of R@1/5/10 both ways and of mean recall (rsum / 6), and the mean
training time per run. No choice here reads the test split: every run trains the full budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRETRAINED = {
    "image": "data/pretrained/demo_image",
    "text": "data/pretrained/demo_text",
    "teacher": "data/pretrained/demo_teacher",
}
UNFROZEN_TOP = ["model.image.unfreeze_top=1", "model.text.unfreeze_top=1", "cache.encoders=false"]
# demo_pretrained.yaml with nothing frozen and no distillation; with RANDOM_SAME_ARCH the encoders start from random
# weights of the same architectures as the pretrained ones, so the two rows differ only in the initial weights
FULL_FINETUNE = ("model.image.freeze=false", "model.text.freeze=false", "cache.encoders=false", "loss.kd_weight=0")
RANDOM_SAME_ARCH = (
    "model.image.pretrained=null",
    "model.image.config={image_size: 64, patch_size: 16, hidden_size: 128, num_hidden_layers: 4, "
    "num_attention_heads: 4, intermediate_size: 256}",
    "model.text.pretrained=null",
    "model.text.config={hidden_size: 128, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 384, "
    "max_position_embeddings: 40, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
)


@dataclass(frozen=True)
class Variant:
    """One row family of the table: a config and its overrides."""

    name: str
    label: str
    config: str
    overrides: tuple[str, ...]


VARIANTS = {
    v.name: v
    for v in (
        Variant("random", "random init (configs/demo.yaml)", "configs/demo.yaml", ()),
        Variant(
            "random_same",
            "random init, the pretrained architectures, all trained",
            "configs/demo_pretrained.yaml",
            (*FULL_FINETUNE, *RANDOM_SAME_ARCH),
        ),
        Variant("full_ft", "pretrained, all trained", "configs/demo_pretrained.yaml", FULL_FINETUNE),
        Variant(
            "full_ft_mse",
            "pretrained, all trained + MSE distillation",
            "configs/demo_pretrained.yaml",
            (*FULL_FINETUNE, "loss.kd_kind=mse", "loss.kd_weight=0.2", "teacher.target=post_norm"),
        ),
        Variant(
            "full_ft_mse_pool",
            "pretrained, all trained + MSE distillation of the teacher's mean patch token",
            "configs/demo_pretrained.yaml",
            (*FULL_FINETUNE, "loss.kd_kind=mse", "loss.kd_weight=0.2", "teacher.target=mean_patches"),
        ),
        Variant(
            "full_ft_ckd_pool",
            "pretrained, all trained + contrastive distillation of the teacher's mean patch token",
            "configs/demo_pretrained.yaml",
            (
                *FULL_FINETUNE,
                "loss.kd_kind=contrastive",
                "loss.kd_weight=0.2",
                "loss.kd_bank_size=4096",
                "teacher.target=mean_patches",
            ),
        ),
        Variant("frozen", "pretrained, frozen + shared block", "configs/demo_pretrained.yaml", ("loss.kd_weight=0",)),
        Variant(
            "top1",
            "pretrained, top block unfrozen",
            "configs/demo_pretrained.yaml",
            (*UNFROZEN_TOP, "loss.kd_weight=0"),
        ),
        Variant(
            "top1_mse",
            "top block unfrozen + MSE distillation",
            "configs/demo_pretrained.yaml",
            (*UNFROZEN_TOP, "loss.kd_kind=mse", "loss.kd_weight=0.2", "teacher.target=post_norm"),
        ),
        Variant(
            "top1_ckd",
            "top block unfrozen + contrastive distillation",
            "configs/demo_pretrained.yaml",
            (
                *UNFROZEN_TOP,
                "loss.kd_kind=contrastive",
                "loss.kd_weight=0.2",
                "loss.kd_bank_size=4096",
                "teacher.target=post_norm",
            ),
        ),
    )
}
RECALLS = [
    ("image_to_text", "R@1"),
    ("image_to_text", "R@5"),
    ("image_to_text", "R@10"),
    ("text_to_image", "R@1"),
    ("text_to_image", "R@5"),
    ("text_to_image", "R@10"),
]


def run_one(variant: Variant, size: int, seed: int, steps: int, out: Path, extra: list[str]) -> dict[str, float]:
    """Train (or reuse) one run and return its metrics.json."""
    folder = out / variant.name / f"n{size}_s{seed}"
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        command = [
            sys.executable,
            "train.py",
            "--config",
            variant.config,
            "--output-dir",
            str(folder),
            f"data.demo_num_train={size}",
            f"data.demo_dir=data/demo_n{size}",
            f"trainer.seed={seed}",
            f"trainer.max_steps={steps}",
            "trainer.progress_bar=false",
            *variant.overrides,
            *extra,
        ]
        print(f"[{variant.name} n={size} seed={seed}] {' '.join(command[1:])}", flush=True)
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        (out / variant.name).mkdir(parents=True, exist_ok=True)
        (out / variant.name / f"n{size}_s{seed}.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise SystemExit(
                f"run failed ({variant.name}, n={size}, seed={seed}): {result.stderr.strip().splitlines()[-1]}"
            )
    return json.loads(metrics.read_text())


def mean_recall(metrics: dict[str, dict[str, float]]) -> float:
    """rsum / 6: the mean of R@1/5/10 both ways."""
    return sum(metrics[d][k] for d, k in RECALLS) / len(RECALLS)


def cell(values: list[float]) -> str:
    """'mean ± std' over seeds (just the value for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def pretraining_note() -> str:
    """One line with the pretraining time of each pretrained folder (paid once, apart from the table)."""
    parts = []
    for role, folder in PRETRAINED.items():
        info = ROOT / folder / "model" / "pretrain.json"
        if info.is_file():
            data = json.loads(info.read_text())
            parts.append(f"{role} {data['steps']} steps {data['seconds'] / 60:.1f} min")
    return "pretraining (paid once): " + ("; ".join(parts) if parts else "no pretrained folders found")


def main() -> None:
    """Run the grid and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 3000, 6000], help="paired training images")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="training seeds of every size (default: 0 1 2 at the two smallest sizes, 0 above)",
    )
    parser.add_argument("--steps", type=int, default=422, help="optimizer steps of 128 pairs, every run (default 422)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "data_efficiency")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: tabulate the runs that have finished (rows without any are left out)",
    )
    parser.add_argument("extra", nargs="*", metavar="key=value", help="overrides for every run")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    small = sorted(args.sizes)[:2]
    lines = [
        "| variant | paired images | seeds | I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 | mean recall "
        "| train min/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.variants:
        variant = VARIANTS[name]
        for size in args.sizes:
            seeds = args.seeds if args.seeds is not None else ([0, 1, 2] if size in small else [0])
            if args.finished_only:
                seeds = [s for s in seeds if (args.out / name / f"n{size}_s{s}" / "metrics.json").is_file()]
                if not seeds:
                    continue
            runs = [run_one(variant, size, seed, args.steps, args.out, args.extra) for seed in seeds]
            values = [cell([m[d][k] for m in runs]) for d, k in RECALLS]
            minutes = statistics.mean(m["train_seconds"] for m in runs) / 60
            lines.append(
                f"| {variant.label} | {size} | {len(seeds)} | {' | '.join(values)} | "
                f"{cell([mean_recall(m) for m in runs])} | {minutes:.1f} |"
            )
            print(lines[-1], flush=True)
    table = "\n".join([*lines, "", pretraining_note()])
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
