"""Retrieval: batch encoding, recall@k with FAISS, evaluation of checkpoints."""

from mmd2v2.retrieval.recall import first_hit_ranks, format_recall_table, recall_at_k, recall_curve, rsum

__all__ = ["first_hit_ranks", "format_recall_table", "recall_at_k", "recall_curve", "rsum"]
