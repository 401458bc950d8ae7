"""`mmd2v2 <pretrain|train|cache|eval|index|search|serve|demo-data|vl>`: the project's one console script."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mmd2v2.config import config_to_dict, load_config
from mmd2v2.errors import MissingExtraError, UserError
from mmd2v2.vl.cli import add_vl_arguments, run_vl


def add_run_arguments(parser: argparse.ArgumentParser, config_help: str, output_help: str) -> None:
    """Arguments every training program takes: config, run folder, --resume, --dump-config, overrides."""
    parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("--output-dir", type=Path, help=output_help)
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    parser.add_argument("--dump-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `train.py` / `mmd2v2 train`."""
    add_run_arguments(parser, "YAML config (defaults in code when omitted)", "run folder (default: trainer.output_dir)")


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


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mmd2v2 pretrain`."""
    add_run_arguments(
        parser,
        "YAML pretraining config (defaults in code when omitted)",
        "run folder; the encoder is exported to OUTPUT_DIR/model (default: trainer.output_dir)",
    )


def run_pretrain(args: argparse.Namespace) -> int:
    """Pretrain one unimodal encoder (data2vec 2.0) from parsed arguments."""
    from mmd2v2.pretrain.config import load_pretrain_config

    config = load_pretrain_config(args.config, args.overrides)
    if args.dump_config:
        print(json.dumps(config_to_dict(config), indent=2))
        return 0
    from mmd2v2.pretrain.run import pretrain

    pretrain(config, args.output_dir or Path(config.trainer.output_dir), resume=args.resume)
    return 0


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mmd2v2 cache`: the training command's config, output folder and overrides."""
    parser.add_argument("--config", type=Path, help="YAML config of the training run")
    parser.add_argument("--output-dir", type=Path, help="run folder (cache.dir: auto puts the cache in it)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def run_cache(args: argparse.Namespace) -> int:
    """Compute the run's feature cache (teacher targets, frozen encoder outputs) so training reads it."""
    config = load_config(args.config, args.overrides)
    from mmd2v2.train.preflight import check_run_config

    check_run_config(config)
    from mmd2v2.train.loop import attach_cache, prepare_run

    output_dir = args.output_dir or Path(config.trainer.output_dir)
    note = attach_cache(prepare_run(config, output_dir), output_dir, force=True)
    if int(os.environ.get("RANK", "0")) == 0:
        print(note)
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `eval/retrieval.py` / `mmd2v2 eval`."""
    parser.add_argument("--ckpt", type=Path, help="run folder (uses its export/) or exported folder")
    parser.add_argument(
        "--dataset",
        help="coco, flickr30k (Karpathy files under --data-root) or a Karpathy-style JSON "
        "(default: the split the model was trained with)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("MMD2V2_DATA", "data")),
        help="folder holding coco/ and flickr30k/ (default: $MMD2V2_DATA or data)",
    )
    parser.add_argument("--image-root", type=Path, help="image folder (default: beside the JSON, or the benchmark's)")
    parser.add_argument("--split", default="test", help="split of the caption JSON (default: test)")
    parser.add_argument("--json", type=Path, help="write the recalls to this JSON file")
    parser.add_argument("--plot", type=Path, help="write a PNG of recall@k for k = 1..50 in both directions")
    parser.add_argument("--save-embeddings", type=Path, help="write the split's embeddings to this .npz")
    parser.add_argument("--embeddings", type=Path, help="reuse embeddings from --save-embeddings instead of encoding")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate retrieval from parsed arguments: table on stdout, optional JSON, plot and saved embeddings."""
    from mmd2v2.retrieval.encode import load_embeddings, save_embeddings
    from mmd2v2.retrieval.evaluate import recall_report
    from mmd2v2.retrieval.recall import format_recall_table, recall_curve

    if args.embeddings is not None:
        embeddings, info = load_embeddings(args.embeddings)
        source = f"{info.get('dataset')} (embeddings {args.embeddings})"
    else:
        if args.ckpt is None:
            raise UserError("--ckpt is required (unless --embeddings gives saved vectors)")
        embeddings, info = _encode_for_eval(args)
        source = info["dataset"]
    if args.save_embeddings is not None:
        save_embeddings(embeddings, args.save_embeddings, info)
    metrics = recall_report(embeddings, args.split, [1, 5, 10])
    print(f"retrieval on '{args.split}' of {source} ({metrics['num_images']} images, {metrics['num_texts']} captions):")
    print(format_recall_table(metrics))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**metrics, **info}, indent=2))
    if args.plot:
        from mmd2v2.retrieval.plots import plot_recall_curve

        curve = recall_curve(embeddings.image_emb, embeddings.text_emb, embeddings.text_image_index, max_k=50)
        plot_recall_curve(curve, args.plot, f"recall@k, {Path(source.split(' (')[0]).name} '{args.split}'")
    return 0


def _encode_for_eval(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    from mmd2v2.data.karpathy import load_karpathy_split
    from mmd2v2.models.exported import load_export, resolve_export
    from mmd2v2.retrieval.benchmarks import benchmark_files
    from mmd2v2.retrieval.encode import encode_split
    from mmd2v2.retrieval.evaluate import resolve_dataset
    from mmd2v2.retrieval.index_store import checkpoint_id

    folder = resolve_export(args.ckpt)
    bundle = load_export(folder, args.device)
    if args.dataset:
        json_path, image_root = benchmark_files(args.dataset, args.data_root, args.image_root)
    else:
        json_path, image_root = resolve_dataset(bundle.config)
    records = load_karpathy_split(json_path, args.split, image_root)
    embeddings = encode_split(bundle, records, args.batch_size, bundle.config.data.max_text_length)
    return embeddings, {"dataset": str(json_path), "checkpoint": str(folder), "checkpoint_id": checkpoint_id(folder)}


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mmd2v2 index build|add|info`."""
    actions = parser.add_subparsers(dest="action", required=True)
    for name, text in (("build", "encode a collection into a new index folder"), ("add", "append items to an index")):
        action = actions.add_parser(name, help=text)
        if name == "build":
            action.add_argument("--ckpt", type=Path, required=True, help="run folder or exported model")
            action.add_argument("--out", type=Path, required=True, help="index folder to write")
            action.add_argument(
                "--index-type",
                default="auto",
                help="'auto' (exact below 100k vectors, HNSW or IVF-PQ above) or a FAISS factory string",
            )
            action.add_argument(
                "--memory-budget-gb", type=float, default=4.0, help="for auto: memory the index may use"
            )
            action.add_argument("--shard-size", type=int, default=10_000, help="items per resumable shard")
            action.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        else:
            action.add_argument("index_dir", type=Path)
            action.add_argument("--ckpt", type=Path, help="model (default: the one that built the index)")
        action.add_argument("--images", type=Path, action="append", help="folder of images (repeatable)")
        action.add_argument(
            "--texts", type=Path, action="append", help=".txt (a caption per line) or .jsonl with 'text'"
        )
        action.add_argument(
            "--dataset",
            action="append",
            help="coco, flickr30k or a Karpathy-style JSON: the images of "
            "--split, with their captions as metadata (repeatable)",
        )
        action.add_argument("--split", default="test", help="split of --dataset (default: test)")
        action.add_argument(
            "--data-root",
            type=Path,
            default=Path(os.environ.get("MMD2V2_DATA", "data")),
            help="folder holding coco/ and flickr30k/ (default: $MMD2V2_DATA or data)",
        )
        action.add_argument("--image-root", type=Path, help="image folder of --dataset (default: beside the JSON)")
        action.add_argument("--batch-size", type=int, default=128)
        action.add_argument("--device", default="cuda" if _cuda() else "cpu")
    info = actions.add_parser("info", help="describe an index folder")
    info.add_argument("index_dir", type=Path)


def run_index(args: argparse.Namespace) -> int:
    """Build, extend or describe an index folder."""
    from mmd2v2.retrieval.index_store import IndexFolder, read_manifest

    if args.action == "info":
        opened = IndexFolder(args.index_dir)
        print(json.dumps({**vars(opened.manifest), "ntotal": opened.index.ntotal}, indent=2))
        return 0
    from mmd2v2.models.exported import load_export, resolve_export
    from mmd2v2.retrieval.benchmarks import benchmark_files
    from mmd2v2.retrieval.collection import read_collection
    from mmd2v2.retrieval.index_build import BuildOptions, add_to_index, build_index

    datasets = [benchmark_files(spec, args.data_root, args.image_root) for spec in args.dataset or []]
    collection = read_collection(
        args.images, args.texts, [(json_path, args.split, root) for json_path, root in datasets]
    )
    if args.action == "build":
        folder = resolve_export(args.ckpt)
        options = BuildOptions(args.index_type, args.memory_budget_gb, args.shard_size, args.batch_size, args.overwrite)
        manifest = build_index(load_export(folder, args.device), folder, collection, args.out, options)
        if manifest is not None:
            _print_skipped(manifest.skipped_items)
            print(
                f"index '{args.out}': {manifest.count} vectors ({manifest.dim}-d, {manifest.index_type}), "
                f"{manifest.skipped} items skipped, {manifest.build_seconds:.1f} s"
            )
        return 0
    folder = resolve_export(args.ckpt or Path(IndexFolder(args.index_dir).manifest.checkpoint))
    earlier = len(read_manifest(args.index_dir).skipped_items)
    manifest = add_to_index(load_export(folder, args.device), folder, args.index_dir, collection, args.batch_size)
    _print_skipped(manifest.skipped_items[earlier:])
    print(f"index '{args.index_dir}': now {manifest.count} vectors, {manifest.skipped} items skipped in all")
    return 0


def _print_skipped(items: list[dict[str, str]], limit: int = 20) -> None:
    """Name each skipped item and its reason on stderr: the first `limit`, then how many more."""
    for item in items[:limit]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if len(items) > limit:
        print(f"... and {len(items) - limit} more", file=sys.stderr)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mmd2v2 search`."""
    parser.add_argument("index_dir", type=Path)
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="caption to search with")
    query.add_argument("--image", type=Path, help="image file to search with")
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--kind", choices=("image", "text"), help="only images or only captions (default: both)")
    parser.add_argument("--ckpt", type=Path, help="model (default: the one that built the index)")
    parser.add_argument("--json", action="store_true", help="print the hits as JSON")
    parser.add_argument("--device", default="cpu")


def run_search(args: argparse.Namespace) -> int:
    """Print the top-k items of an index for a text or image query."""
    from mmd2v2.data.images import open_rgb
    from mmd2v2.retrieval.search import Searcher, format_hits

    if not 1 <= args.k <= 1000:
        raise UserError(f"-k: got {args.k}, expected 1..1000")
    searcher = Searcher(args.index_dir, args.ckpt, args.device)
    hits = (
        searcher.by_text(args.text, args.k, args.kind)
        if args.text is not None
        else searcher.by_image(open_rgb(args.image, f"--image: '{args.image}'"), args.k, args.kind)
    )
    print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False) if args.json else format_hits(hits))
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mmd2v2 serve`."""
    parser.add_argument("index_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ckpt", type=Path, help="model (default: the one that built the index)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted image upload")
    parser.add_argument("--device", default="cpu")


def run_serve(args: argparse.Namespace) -> int:
    """Serve the search API and page until interrupted."""
    try:
        import uvicorn

        from mmd2v2.retrieval.service import create_app
    except ImportError as error:
        raise MissingExtraError(f"serving needs the 'serve' extra: pip install 'mmd2v2[serve]' ({error})") from None
    from mmd2v2.retrieval.search import Searcher

    app = create_app(Searcher(args.index_dir, args.ckpt, args.device), int(args.max_upload_mb * 2**20))
    print(f"serving '{args.index_dir}' on http://{args.host}:{args.port}/ (API docs at /api/docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def run_demo_data(args: argparse.Namespace) -> int:
    """Write the procedural demo dataset (arguments as `python -m mmd2v2.data.demo_scenes`)."""
    from mmd2v2.data.demo_scenes import main as demo_main

    demo_main(args.demo_args)
    return 0


def guarded(function, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    """Run a command; a UserError (bad input, a missing optional extra) becomes one line on stderr and exit 2.

    Any other exception is a bug and keeps its traceback."""
    try:
        return function(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mmd2v2` console script."""
    parser = argparse.ArgumentParser(prog="mmd2v2", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_pretrain_arguments(
        commands.add_parser(
            "pretrain", help="self-supervised (data2vec 2.0) pretraining of an image or text encoder on unpaired data"
        )
    )
    add_train_arguments(
        commands.add_parser("train", help="train a model (single process; use deepspeed train.py for many)")
    )
    add_cache_arguments(
        commands.add_parser(
            "cache",
            help="compute a run's feature cache (teacher targets, frozen "
            "encoder outputs); torchrun/deepspeed share the work",
        )
    )
    add_eval_arguments(commands.add_parser("eval", help="retrieval recall@k of a checkpoint"))
    add_index_arguments(commands.add_parser("index", help="build, extend or describe a FAISS index of a collection"))
    add_search_arguments(commands.add_parser("search", help="search an index by text or image"))
    add_serve_arguments(commands.add_parser("serve", help="HTTP search API and web page over an index"))
    demo = commands.add_parser(
        "demo-data", help="write the procedural demo dataset (OUT_DIR [--num-train N ...])", add_help=False
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    add_vl_arguments(commands.add_parser("vl", help="VL task finetuning with (adaptive) distillation (docs/vl.md)"))
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo-data"]:  # its own parser takes every argument, --help included
        return guarded(run_demo_data, argparse.Namespace(demo_args=argv[1:]))
    args = parser.parse_args(argv)
    handlers = {
        "pretrain": run_pretrain,
        "train": run_train,
        "cache": run_cache,
        "eval": run_eval,
        "index": run_index,
        "search": run_search,
        "serve": run_serve,
        "demo-data": run_demo_data,
        "vl": run_vl,
    }
    return guarded(handlers[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
