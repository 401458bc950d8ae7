"""`mmd2v2 vl <train|eval|protocol|demo-data>`: VL task finetuning from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmd2v2.config import config_to_dict
from mmd2v2.errors import UserError
from mmd2v2.files import write_text_atomic
from mmd2v2.vl.config import load_vl_config


def add_vl_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mmd2v2 vl ...`."""
    actions = parser.add_subparsers(dest="vl_action", required=True)
    for name, text in (
        ("train", "finetune on a VL task (and evaluate on its validation split)"),
        ("protocol", "zero-shot / low-shot / full runs of several methods and seeds -> table"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", type=Path, help="VL YAML config (defaults in code when omitted)")
        action.add_argument("--output-dir", type=Path, help="run folder (default: trainer.output_dir)")
        action.add_argument("--dump-config", action="store_true", help="print the resolved config and exit")
        action.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        if name == "train":
            action.add_argument(
                "--resume",
                action="store_true",
                help="go on from the training state the run saved in OUTPUT_DIR/resume/ "
                "(every trainer.checkpoint_every steps)",
            )
        if name == "protocol":
            action.add_argument(
                "--fresh",
                action="store_true",
                help="retrain every run (default: reuse runs of OUTPUT_DIR/runs that finished with "
                "the same settings, so an interrupted protocol goes on where it stopped)",
            )
    evaluate = actions.add_parser("eval", help="evaluate a finetuned model (RUN/model) on a task split")
    evaluate.add_argument("--run", type=Path, required=True, help="run folder written by `vl train`")
    evaluate.add_argument("--json", type=Path, help="also write the metrics here")
    evaluate.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="overrides of the run's config, e.g. task.val.records=other.jsonl",
    )
    demo = actions.add_parser("demo-data", help="write the VL demo task files and images into OUT_DIR")
    demo.add_argument("out_dir", type=Path)
    demo.add_argument(
        "--num-train", type=int, default=1500, help="training images (3 questions, 3 statements, 1 VCR record each)"
    )
    demo.add_argument("--num-val", type=int, default=300, help="validation images")
    demo.add_argument("--image-size", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)


def _print_metrics(metrics: dict[str, object]) -> None:
    for key, value in metrics.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")


def run_vl(args: argparse.Namespace) -> int:
    """Dispatch `mmd2v2 vl ...`."""
    if args.vl_action == "demo-data":
        from mmd2v2.vl.demo_task import write_vl_demo

        print(write_vl_demo(args.out_dir, args.num_train, args.num_val, args.image_size, args.seed))
        return 0
    if args.vl_action == "eval":
        return _evaluate(args)
    cfg = load_vl_config(args.config, args.overrides)
    if args.dump_config:
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    output_dir = args.output_dir or Path(cfg.trainer.output_dir)
    if args.vl_action == "protocol":
        from mmd2v2.vl.protocols import run_protocol

        run_protocol(cfg, output_dir, reuse=not args.fresh)
        print(f"table: {output_dir / 'protocol.md'} and {output_dir / 'protocol.json'}")
        return 0
    from mmd2v2.vl.train import train_vl

    metrics = train_vl(cfg, output_dir, resume=args.resume)
    _print_metrics(metrics)
    print(f"run folder: {output_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mmd2v2.vl.batches import BatchCollator
    from mmd2v2.vl.checkpoint import load_vl_model
    from mmd2v2.vl.tasks import load_task
    from mmd2v2.vl.train import evaluate_examples

    cfg = load_vl_config(args.run / "config.yaml", args.overrides)
    student, tokenizer, preprocess, info = load_vl_model(args.run / "model")
    if info["name"] != cfg.task.name:
        raise UserError(f"--run: the model was trained for {info['name']}, the config names task {cfg.task.name}")
    task = load_task(cfg.task, with_train=False, vocabulary=info["classes"])
    metrics = evaluate_examples(
        student.to(cfg.trainer.device),
        task,
        task.val.examples,
        preprocess,
        BatchCollator(tokenizer, info["max_text_length"]),
        cfg.trainer.eval_batch_size,
        cfg.trainer.device,
        cfg.trainer.progress_bar,
        cfg.trainer.num_workers,
        cfg.trainer.precision,
    )
    metrics["skipped_records"] = sum(task.val.skipped.values())
    _print_metrics(metrics)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(metrics, indent=2))
    return 0
