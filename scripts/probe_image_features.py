"""Linear probes of a frozen image encoder on the demo scenes: what do its features know, per grid cell?

For each of the 9 grid cells a linear classifier reads the encoder's frozen output (the patch tokens laid end to end,
or the CLS alone) and predicts the cell's colour (8 + empty), shape (4 + empty) and size (2 + empty); the table gives
held-out accuracy, averaged over the cells, for each encoder named, beside a random init of the same architecture
(the baseline of the same run). Probe scenes come from the unpaired image split *after* the ones pretraining reads
(indices from --offset on), so a probe never sees a pretraining image, a paired scene or a test scene.

    python scripts/probe_image_features.py data/pretrained/demo_image/model data/pretrained/demo_teacher/model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmd2v2.data.demo_scenes import COLOURS, SHAPES, SIZES, generate_scene, render
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.models.data2vec2_vision import Data2Vec2VisionModel

ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}


def scene_labels(count: int, offset: int, seed: int, image_size: int) -> tuple[Tensor, dict[str, Tensor]]:
    """uint8 images (N, H, W, 3) and, per attribute, (N, 9) labels: index of the value in each cell, last = empty."""
    images, labels = [], {name: np.full((count, 9), len(values)) for name, values in ATTRIBUTES.items()}
    for i in range(count):
        scene = generate_scene(seed, "unpaired_images", offset + i)
        images.append(np.asarray(render(scene, image_size)))
        for obj in scene.objects:
            cell = obj.row * 3 + obj.col
            for name, values in ATTRIBUTES.items():
                labels[name][i, cell] = values.index(getattr(obj, name))
    return torch.from_numpy(np.stack(images)), {k: torch.from_numpy(v) for k, v in labels.items()}


def cell_of_patches(grid: int) -> Tensor:
    """(9, grid²) weights: row c averages the patches whose centres lie in grid cell c of the 3×3 scene layout."""
    centres = (torch.arange(grid) + 0.5) / grid  # in image widths
    cell = (centres * 3).long()  # the scene cell (0..2) each patch row / column falls in
    member = cell.unsqueeze(0) == torch.arange(3).unsqueeze(1)  # (3, grid): patch row / column i lies in cell r
    weights = (member[:, None, :, None] & member[None, :, None, :]).reshape(9, grid * grid).float()
    return weights / weights.sum(1, keepdim=True)


@torch.no_grad()
def encode(model: Data2Vec2VisionModel, images: Tensor, preprocess: ImagePreprocessor) -> dict[str, Tensor]:
    """The frozen model's last-block features: 'patches' (N, T·C) laid end to end, 'cell' (N, 9, C) the mean of each
    cell's patches, 'cls' (N, C)."""
    features: dict[str, list[Tensor]] = {"patches": [], "cell": [], "cls": []}
    cells = cell_of_patches(int(model.config.image_size) // int(model.config.patch_size))
    for start in range(0, len(images), 256):
        hidden = model(pixel_values=preprocess.normalize(images[start : start + 256])).last_hidden_state
        patches = hidden[:, 1:]
        features["patches"].append(patches.flatten(1))
        features["cell"].append(torch.einsum("kt,ntc->nkc", cells, patches))
        features["cls"].append(hidden[:, 0])
    return {name: torch.cat(parts) for name, parts in features.items()}


def probe_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, classes: int, max_iter: int = 100
) -> float:
    """Held-out accuracy of a multinomial logistic regression (standardised inputs, L2 1e-3, full-batch L-BFGS)."""
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    linear = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(train_x), train_y) + 1e-3 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (linear(test_x).argmax(1) == test_y).float().mean().item()


def probe_model(
    model: Data2Vec2VisionModel,
    images: Tensor,
    labels: dict[str, Tensor],
    train: int,
    preprocess: ImagePreprocessor,
    max_iter: int = 100,
) -> dict[str, float]:
    """Mean accuracy over the 9 cells for each (feature, attribute) pair, e.g. 'patches/shape'."""
    scores = {}
    for feature, x in encode(model.eval(), images, preprocess).items():
        for name, y in labels.items():
            accuracies = []
            for c in range(9):
                xc = x[:, c] if feature == "cell" else x
                accuracies.append(
                    probe_accuracy(
                        xc[:train], y[:train, c], xc[train:], y[train:, c], len(ATTRIBUTES[name]) + 1, max_iter
                    )
                )
            scores[f"{feature}/{name}"] = float(np.mean(accuracies))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoders", nargs="+", type=Path, help="data2vec2-vision HF folders (mmd2v2 pretrain's model/)")
    parser.add_argument("--train", type=int, default=1500, help="probe training scenes")
    parser.add_argument("--test", type=int, default=500, help="held-out probe scenes")
    parser.add_argument("--offset", type=int, default=100_000, help="first unpaired-split index the probes use")
    parser.add_argument("--seed", type=int, default=0, help="the demo generator's seed (as data.demo_seed)")
    parser.add_argument("--max-iter", type=int, default=100, help="L-BFGS iterations of each probe")
    parser.add_argument("--mean", type=float, default=0.5, help="pixel normalisation mean (the demo's)")
    parser.add_argument("--std", type=float, default=0.25, help="pixel normalisation std (the demo's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = {str(folder): Data2Vec2VisionModel.from_pretrained(folder) for folder in args.encoders}
    first = next(iter(models.values()))
    models = {"random init (same architecture)": Data2Vec2VisionModel(first.config), **models}
    size = int(first.config.image_size)
    images, labels = scene_labels(args.train + args.test, args.offset, args.seed, size)
    preprocess = ImagePreprocessor(size, [args.mean] * 3, [args.std] * 3)
    rows = {
        name: probe_model(model, images, labels, args.train, preprocess, args.max_iter)
        for name, model in models.items()
    }
    columns = list(next(iter(rows.values())))
    print("| encoder | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, scores in rows.items():
        print(f"| {name} | " + " | ".join(f"{scores[c]:.3f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
