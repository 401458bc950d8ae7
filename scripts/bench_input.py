"""Speed of the image input pipeline on COCO-like JPEGs, against today's path as the baseline, in the same run.

    python scripts/bench_input.py [--images 512] [--batch 256] [--size 224] [--workers 0 2] [--target 4500]
    python scripts/bench_input.py --recall runs/demo/export [--recall-scales 4 10]   # recall, fast vs every pixel

Writes COCO-like JPEGs (quality 90, COCO's common sizes 640x480, 480x640, 640x427, 500x375, 640x640, ...) cut
from the real photos bundled with scikit-image (`pip install -e ".[dev]"`), with a Karpathy-split JSON of five
captions per image, and reads them into model-ready batches through the real loaders:

- training pairs: `load_training_data` + `training_loader` (the run's sampler, `PairCollator`, tokenisation);
- feature cache / index build / evaluation: `image_batches`, the loader of `mmd2v2 cache`, `mmd2v2 index build`
  and `encode_split`.

Paths: "baseline" is today's path (every JPEG pixel decoded, resized, normalised to float32 on the host per
image); "fast" the default (JPEGs decoded at reduced DCT scale by PIL's draft mode, resized by torch's uint8
kernels, uint8 through the loader, normalised on the device); "uint8 only" the fast path's loader with
`data.fast_decode=false` (PIL decodes and resizes every pixel: the old pixels). Workers 0 = the loading
process itself; one thread per process. "per core" is images per CPU second of all the processes (loader
workers included), which other jobs on a shared machine do not dilute as they do images/s; "cores" is how many
such cores feed `--target` samples/s; "speed-up" compares per-core rates with the baseline's at the same workers.
Also prints how much the fast path changes the pixels. With `--recall`, a model
trained on the demo is evaluated on the demo's test split written as JPEGs (each image upscaled `--recall-scales`
times, quality `--quality`) with both decodings, and on its PNGs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmd2v2.config import SourceConfig  # noqa: E402
from mmd2v2.data.images import open_rgb  # noqa: E402
from mmd2v2.data.karpathy import load_karpathy_split  # noqa: E402
from mmd2v2.data.pairs import CaptionPairDataset, PairCollator, PairSample, decode_pair  # noqa: E402
from mmd2v2.data.preprocessing import DEFAULTS, ImageFiles, ImagePreprocessor, collate_images, image_batches  # noqa: E402
from mmd2v2.data.sources import load_training_data, training_loader  # noqa: E402
from mmd2v2.data.tokenization import build_word_tokenizer  # noqa: E402
from mmd2v2.models.exported import load_export, resolve_export  # noqa: E402
from mmd2v2.retrieval.evaluate import evaluate_retrieval, resolve_dataset  # noqa: E402

SIZES = [(640, 480)] * 4 + [(480, 640), (640, 427), (427, 640), (500, 375), (640, 640), (612, 612), (640, 360)]
PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
]
CAPTIONS = [
    "a photo of something",
    "a picture taken outside",
    "an object on a table",
    "a close up view",
    "a colourful scene with things in it",
]


def bundled_photos() -> list[np.ndarray]:
    """The colour photos shipped inside scikit-image (no download)."""
    try:
        from skimage import data
    except ImportError:
        raise SystemExit('bench_input.py needs scikit-image\'s bundled photos: pip install -e ".[dev]"') from None
    photos = []
    for name in PHOTOS:
        if name.startswith("motorcycle"):
            photos.append(data.stereo_motorcycle()[0 if name.endswith("left") else 1])
        else:
            photos.append(getattr(data, name)())
    return [p[..., :3] for p in photos]


def write_jpegs(folder: Path, count: int, quality: int, seed: int) -> Path:
    """`count` COCO-like JPEGs (a random crop of a photo at a COCO size, resized, maybe mirrored) and their
    Karpathy-split JSON (all 'train', five captions each); returns the JSON's path."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in bundled_photos()]
    images = []
    for index in range(count):
        photo, (width, height) = photos[index % len(photos)], SIZES[rng.integers(len(SIZES))]
        scale = min(photo.width / width, photo.height / height) * rng.uniform(0.6, 1.0)
        crop_w, crop_h = int(width * scale), int(height * scale)
        left, top = int(rng.integers(photo.width - crop_w + 1)), int(rng.integers(photo.height - crop_h + 1))
        image = photo.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(folder / f"{index:06d}.jpg", quality=quality)
        images.append(
            {
                "filepath": "",
                "filename": f"{index:06d}.jpg",
                "split": "train",
                "imgid": index,
                "cocoid": index,
                "sentences": [{"raw": caption} for caption in CAPTIONS],
            }
        )
    path = folder / "dataset_bench.json"
    path.write_text(json.dumps({"images": images}))
    return path


class LegacyPairs(CaptionPairDataset):
    """Today's training dataset: each pair's image decoded in full and normalised to float32 on the host."""

    def __getitem__(self, index: int) -> PairSample:
        record, caption = self.pairs[index]
        sample = decode_pair(self.preprocess, record.path, caption, record.image_id)
        pixels = sample.pixel_values
        return PairSample(None if pixels is None else self.preprocess.normalize(pixels), caption, record.image_id)


class LegacyFiles(ImageFiles):
    """Today's feature-cache and index loader: images decoded in full and normalised to float32 on the host."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int]:
        pixels, index = super().__getitem__(index)
        return (None if pixels is None else self.preprocess.normalize(pixels)), index


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (loader workers), user and system."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed_images(loader: DataLoader, count_key: Callable[[object], int]) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second (all processes) of one full pass over `loader`, worker start
    included; the second is the rate per core, which other jobs on a shared machine do not dilute."""
    wall, cpu, images = time.perf_counter(), cpu_seconds(), 0
    for batch in loader:
        images += count_key(batch)
    # the workers were joined when the iterator ended: their CPU time is in RUSAGE_CHILDREN now
    return images / (time.perf_counter() - wall), images / (cpu_seconds() - cpu)


def training_rate(
    json_path: Path, preprocess: ImagePreprocessor, legacy: bool, batch: int, workers: int
) -> tuple[float, float]:
    """Pairs (= decoded images) per second and per CPU second of one epoch through the training loader."""
    data = load_training_data([SourceConfig(kind="karpathy", path=str(json_path))], preprocess, 0)
    if legacy:
        data.sources[0] = dataclasses.replace(
            data.sources[0], data=LegacyPairs(data.sources[0].data.records, preprocess)
        )
    tokenizer = build_word_tokenizer([w for c in CAPTIONS for w in c.split()])
    steps = data.num_pairs // batch
    loader = training_loader(data, PairCollator(tokenizer, 32), batch, 1, 0, 1, workers, 0, 0, steps)
    return timed_images(loader, lambda b: len(b["image_ids"]))  # type: ignore[index]


def files_rate(
    paths: list[Path], preprocess: ImagePreprocessor, legacy: bool, batch: int, workers: int
) -> tuple[float, float]:
    """Images per second and per CPU second of one pass through the feature-cache / index-build / evaluation loader."""
    if legacy:
        loader = DataLoader(
            LegacyFiles(paths, preprocess), batch_size=batch, num_workers=workers, collate_fn=collate_images
        )
    else:
        loader = image_batches(paths, preprocess, batch, workers)
    return timed_images(loader, lambda b: len(b[1]))  # type: ignore[index]


def pixel_change(paths: list[Path], fast: ImagePreprocessor, full: ImagePreprocessor) -> dict[str, float]:
    """How far the fast path's pixels are from every-pixel decoding: grey levels (0-255) and PSNR."""
    diffs = np.concatenate([(fast.decode(p).float() - full.decode(p).float()).abs().flatten().numpy() for p in paths])
    mse = float(np.mean(diffs**2))
    return {
        "mean": float(diffs.mean()),
        "p99": float(np.percentile(diffs, 99)),
        "max": float(diffs.max()),
        "psnr": 10 * math.log10(255**2 / max(mse, 1e-12)),
        "normalised_mean": float(diffs.mean() / 255 / np.mean(fast.std_values)),
    }


def jpeg_recall(export: Path, scales: list[int], quality: int, folder: Path) -> list[tuple[str, str, dict[str, float]]]:
    """Recall@1/5/10 both ways of `export` on its demo test split: the PNGs, then per scale its JPEG copies decoded
    by the fast path and by every-pixel decoding."""
    bundle = load_export(resolve_export(export, "--recall"))
    json_path, image_root = resolve_dataset(bundle.config)
    split = bundle.config.eval.split
    records = load_karpathy_split(json_path, split, image_root)

    def recall(path: Path, root: Path | None, fast: bool) -> dict[str, float]:
        preprocess = ImagePreprocessor(**{**bundle.preprocess.to_dict(), "fast": fast})
        report = evaluate_retrieval(
            dataclasses.replace(bundle, preprocess=preprocess), path, root, split, 256, [1, 5, 10], progress=False
        )
        return {f"{d} R@{k}": report[d][f"R@{k}"] for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}  # type: ignore[index]

    rows = [("png", "-", recall(json_path, image_root, True))]
    for scale in scales:
        entries = []
        for index, record in enumerate(records):
            image = open_rgb(record.path)
            image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC).save(
                folder / f"test_{scale}_{index:05d}.jpg", quality=quality
            )
            entries.append(
                {
                    "filepath": "",
                    "filename": f"test_{scale}_{index:05d}.jpg",
                    "split": split,
                    "imgid": record.image_id,
                    "sentences": [{"raw": c} for c in record.captions],
                }
            )
        jpegs = folder / f"dataset_test_{scale}.json"
        jpegs.write_text(json.dumps({"images": entries}))
        size = f"jpeg x{scale} ({bundle.preprocess.size * scale} px)"
        rows += [(size, "every pixel", recall(jpegs, folder, False)), (size, "fast", recall(jpegs, folder, True))]
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the speed table, the pixel change and the cores needed for the target rate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="distinct JPEGs (five training pairs each)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="loader processes (0: the loading process)"
    )
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=3, help="measure every variant this often; medians are printed")
    parser.add_argument("--target", type=float, default=4500.0, help="samples/s to feed (docs/benchmarks.md)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where to write the JPEGs (default: a temporary folder)"
    )
    parser.add_argument("--recall", type=Path, default=None, help="an export trained on the demo (runs/demo/export)")
    parser.add_argument("--recall-scales", type=int, nargs="+", default=[4, 10], help="JPEG size over the demo's PNGs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core per process: per-core rates

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        json_path = write_jpegs(folder, args.images, args.quality, seed=0)
        paths = [r.path for r in load_karpathy_split(json_path, "train")]
        for path in paths:
            path.read_bytes()  # in the page cache: time decoding, not the disk
        settings = {**DEFAULTS, "size": args.size}
        fast = ImagePreprocessor(**settings)
        full = ImagePreprocessor(**{**settings, "fast": False})
        variants = [("baseline", full, True), ("uint8 only", full, False), ("fast", fast, False)]
        runs: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):  # every round measures every variant: load changes hit all of them alike
            for loader_name, measure in (("training pairs", training_rate), ("cache/index/eval", files_rate)):
                source: Path | list[Path] = json_path if measure is training_rate else paths
                for workers in args.workers:
                    for path_name, preprocess, legacy in variants:
                        rates = measure(source, preprocess, legacy, args.batch, workers)  # type: ignore[operator]
                        runs.setdefault((loader_name, path_name, workers), []).append(rates)
        medians = {key: tuple(statistics.median(r[i] for r in rates) for i in (0, 1)) for key, rates in runs.items()}
        rows = [
            (loader_name, path_name, workers, rate, per_core, per_core / medians[loader_name, "baseline", workers][1])
            for (loader_name, path_name, workers), (rate, per_core) in medians.items()
        ]
        change = pixel_change(paths, fast, full)
        start = time.perf_counter()
        batch = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8)
        fast.normalize(batch)
        normalise_ms = (time.perf_counter() - start) * 1000
        recalls = jpeg_recall(args.recall, args.recall_scales, args.quality, folder) if args.recall else []

    print(
        f"{args.images} JPEGs (quality {args.quality}; {args.images * 5} training pairs), batches of {args.batch} at "
        f"{args.size} px; medians of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
        "cores\n"
    )
    print(f"{'loader':<18}{'path':<12}{'workers':>8}{'images/s':>10}{'per core':>10}{'speed-up':>10}{'cores':>7}")
    for loader_name, path_name, workers, rate, per_core, ratio in rows:
        cores = math.ceil(args.target / per_core)
        print(f"{loader_name:<18}{path_name:<12}{workers:>8}{rate:>10.1f}{per_core:>10.1f}{ratio:>9.2f}x{cores:>7}")
    print(
        f"\npixels of the fast path against every-pixel decoding (grey levels of 255): mean {change['mean']:.2f}, "
        f"p99 {change['p99']:.0f}, max {change['max']:.0f}, PSNR {change['psnr']:.1f} dB "
        f"(mean {change['normalised_mean']:.4f} in normalised units)"
    )
    print(f"normalising one uint8 batch on this CPU (the device's work in training): {normalise_ms:.1f} ms")
    if recalls:
        print(f"\nrecall of {args.recall} on its test split (I->T / T->I R@1/5/10)")
        print(f"{'images':<26}{'decoding':<13}{'I->T R@1/5/10':>22}{'T->I R@1/5/10':>22}")
        for images, decoding, values in recalls:
            both = [
                "/".join(f"{values[f'{d} R@{k}']:.2f}" for k in (1, 5, 10)) for d in ("image_to_text", "text_to_image")
            ]
            print(f"{images:<26}{decoding:<13}{both[0]:>22}{both[1]:>22}")


if __name__ == "__main__":
    main()
