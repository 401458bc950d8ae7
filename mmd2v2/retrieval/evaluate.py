"""Retrieval evaluation of an exported checkpoint on a Karpathy-style split."""

from __future__ import annotations

from pathlib import Path

from mmd2v2.config import Config
from mmd2v2.data.karpathy import load_karpathy_split
from mmd2v2.errors import UserError
from mmd2v2.models.exported import ExportedModel
from mmd2v2.retrieval.encode import SplitEmbeddings, encode_split
from mmd2v2.retrieval.recall import TIE_RULE, recall_at_k, rsum, tied_counts


def resolve_dataset(config: Config) -> tuple[Path, Path | None]:
    """The Karpathy split file and image root to evaluate on.

    In order: eval.karpathy_json, data.karpathy_json, the first karpathy source of data.sources, the demo set.
    """
    if config.eval.karpathy_json is not None:
        return Path(config.eval.karpathy_json), Path(config.eval.image_root) if config.eval.image_root else None
    if config.data.karpathy_json is not None:
        return Path(config.data.karpathy_json), Path(config.data.image_root) if config.data.image_root else None
    karpathy = [s for s in config.data.sources if s.kind == "karpathy"]
    if karpathy:
        return Path(str(karpathy[0].path)), Path(karpathy[0].image_root) if karpathy[0].image_root else None
    if config.data.demo:
        return Path(config.data.demo_dir) / "dataset_demo.json", None
    raise UserError(
        "no Karpathy split to evaluate on: set eval.karpathy_json (data.sources has no karpathy source "
        "and data.karpathy_json is not set)"
    )


def recall_report(embeddings: SplitEmbeddings, split: str, ks: list[int]) -> dict[str, object]:
    """Recall@k both ways (ties: TIE_RULE), their sum (rsum) and mean, the split's sizes and its tied captions."""
    recalls = recall_at_k(embeddings.image_emb, embeddings.text_emb, embeddings.text_image_index, ks)
    total = rsum(recalls)
    report: dict[str, object] = dict(recalls)
    report.update(
        {
            "rsum": total,
            "mean_recall": total / (2 * len(ks)),
            "split": split,
            "num_images": int(len(embeddings.image_emb)),
            "num_texts": int(len(embeddings.text_emb)),
            "skipped_images": embeddings.num_skipped,
            "tie_rule": TIE_RULE,
            **tied_counts(embeddings.image_emb, embeddings.text_emb, embeddings.text_image_index),
        }
    )
    return report


def evaluate_retrieval(
    bundle: ExportedModel,
    json_path: Path,
    image_root: Path | None,
    split: str,
    batch_size: int,
    ks: list[int],
    progress: bool = True,
) -> dict[str, object]:
    """Encode `split` and report recall@k both ways: {"image_to_text": {...}, "text_to_image": {...}, "rsum", ...}."""
    records = load_karpathy_split(json_path, split, image_root)
    embeddings = encode_split(bundle, records, batch_size, bundle.config.data.max_text_length, progress)
    return recall_report(embeddings, split, ks)
