"""Plots of retrieval results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmd2v2.files import atomic_path


def plot_recall_curve(curve: dict[str, np.ndarray], path: str | Path, title: str) -> Path:
    """Write a PNG of recall@k against k for both directions (from `recall_curve`); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for key, label in (("image_to_text", "image → text"), ("text_to_image", "text → image")):
        axes.plot(curve["k"], curve[key], marker="o", markersize=2.5, label=label)
    for k in (1, 5, 10):
        if k <= len(curve["k"]):
            axes.axvline(k, color="0.85", linewidth=0.8, zorder=0)
    axes.set(xlabel="k", ylabel="recall@k (%)", title=title, ylim=(0, 100), xlim=(1, int(curve["k"][-1])))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
