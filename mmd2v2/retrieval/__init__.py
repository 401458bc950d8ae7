"""Retrieval: batch encoding, recall@k with FAISS, evaluation of checkpoints."""
