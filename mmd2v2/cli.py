"""`mmd2v2 <train|eval|demo-data>`: the project's one console script."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmd2v2.config import ConfigError, config_to_dict, load_config


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `train.py` / `mmd2v2 train`."""
    parser.add_argument("--config", type=Path, help="YAML config (defaults in code when omitted)")
    parser.add_argument("--output-dir", type=Path, help="run folder (default: trainer.output_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    parser.add_argument("--dump-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def run_train(args: argparse.Namespace) -> int:
    """Train from parsed arguments."""
    config = load_config(args.config, args.overrides)
    if args.dump_config:
        print(json.dumps(config_to_dict(config), indent=2))
        return 0
    from mmd2v2.train.preflight import check_run_config

    check_run_config(config)
    from mmd2v2.train.loop import train

    train(config, args.output_dir or Path(config.trainer.output_dir), resume=args.resume)
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `eval/retrieval.py` / `mmd2v2 eval`."""
    parser.add_argument("--ckpt", type=Path, required=True, help="run folder (uses its export/) or exported folder")
    parser.add_argument("--split", default="test", help="split of the caption JSON (default: test)")
    parser.add_argument("--dataset", type=Path, help="Karpathy-style JSON (default: the one the model was trained on)")
    parser.add_argument("--image-root", type=Path, help="image folder (default: beside the JSON)")
    parser.add_argument("--json", type=Path, help="write the recalls to this JSON file")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate retrieval from parsed arguments; prints a table, optionally writes JSON."""
    from mmd2v2.models.pretrained import load_pretrained
    from mmd2v2.retrieval.evaluate import evaluate_retrieval, resolve_dataset
    from mmd2v2.retrieval.recall import format_recall_table

    folder = args.ckpt / "export" if (args.ckpt / "export").is_dir() else args.ckpt
    if not folder.is_dir():
        raise FileNotFoundError(f"--ckpt: '{args.ckpt}' is not a folder")
    bundle = load_pretrained(folder, args.device)
    json_path, image_root = (args.dataset, args.image_root) if args.dataset else resolve_dataset(bundle.config)
    metrics = evaluate_retrieval(bundle, json_path, image_root, args.split, args.batch_size, bundle.config.eval.ks)
    print(f"retrieval on '{args.split}' of {json_path} ({metrics['num_images']} images, {metrics['num_texts']} captions):")
    print(format_recall_table(metrics))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2))
    return 0


def run_demo_data(args: argparse.Namespace) -> int:
    """Write the procedural demo dataset (arguments as `python -m mmd2v2.data.demo_scenes`)."""
    from mmd2v2.data.demo_scenes import main as demo_main

    demo_main(args.demo_args)
    return 0


def guarded(function, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    """Run a command; expected user errors become one line on stderr and exit code 2."""
    try:
        return function(args)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mmd2v2` console script."""
    parser = argparse.ArgumentParser(prog="mmd2v2", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(commands.add_parser("train", help="train a model (single process; use deepspeed train.py for many)"))
    add_eval_arguments(commands.add_parser("eval", help="retrieval recall@k of a checkpoint"))
    demo = commands.add_parser("demo-data", help="write the procedural demo dataset (OUT_DIR [--num-train N ...])",
                               add_help=False)
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    handlers = {"train": run_train, "eval": run_eval, "demo-data": run_demo_data}
    return guarded(handlers[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
