"""Build the feature cache of a run and serve its rows to training in place of the frozen networks' forwards.

The teacher is always frozen, so its CLS targets are cached whenever distillation is on; a fully frozen encoder's
output sequences are cached too when `cache.encoders` is set. With training augmentation the cache stores
`cache.views` augmented views per image (each a fixed crop-and-flip of the image, training's epoch e uses view
e % views and crops the student's pixels the same way); without `cache.views` it is refused, as are streamed
sources, which have no stable row numbers. `cache.dir: auto` turns the cache on only where it is safe and pays off (at least two passes over
the data); an explicit folder turns it on or fails with the reason.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mmd2v2.config import Config
from mmd2v2.data.augmentation import apply_crop_flip, crop_flip_settings, view_crop_flip
from mmd2v2.data.feature_cache import (
    MANIFEST,
    PER_IMAGE,
    PER_PAIR,
    CachePlan,
    FeatureCache,
    shard_name,
    tensor_fingerprint,
    text_fingerprint,
    valid_name,
    write_manifest,
    write_shard,
)
from mmd2v2.data.pairs import CaptionPairDataset, PairSample
from mmd2v2.data.preprocessing import ImagePreprocessor, image_batches, loader_workers
from mmd2v2.data.sources import TrainingData
from mmd2v2.errors import UserError
from mmd2v2.losses.distributed import data_parallel_world
from mmd2v2.models.dual_encoder import DualEncoder
from mmd2v2.models.teacher import ImageTeacher

AUTO = "auto"


class CacheRefused(UserError):
    """The configured cache cannot be used for this run (the message says why)."""


def cache_folder(config: Config, output_dir: Path) -> Path | None:
    """Where the cache lives: the configured folder, <output_dir>/feature_cache for 'auto', None when off."""
    if config.cache.dir is None:
        return None
    return output_dir / "feature_cache" if config.cache.dir == AUTO else Path(config.cache.dir)


def cache_source(config: Config, data: TrainingData) -> CaptionPairDataset:
    """The run's one random-access source, or CacheRefused with the reason the run cannot be cached (cheap checks)."""
    if crop_flip_settings(config.data) is not None and config.cache.views < 1:
        raise CacheRefused(
            "training augmentation (data.random_crop_scale / data.hflip_prob) gives the teacher and the "
            "encoders a new view every step: set cache.views to the augmented views to store per image"
        )
    source = data.sources[0].data if len(data.sources) == 1 else None
    if not isinstance(source, CaptionPairDataset):
        raise CacheRefused(
            "the feature cache needs one random-access source (karpathy or table), not "
            f"{len(data.sources)} sources or streamed shards"
        )
    return source


def plan_cache(
    config: Config,
    source: CaptionPairDataset,
    preprocess: ImagePreprocessor,
    tokenizer: PreTrainedTokenizerBase,
    teacher: ImageTeacher | None,
    student: DualEncoder,
) -> CachePlan:
    """What this run's cache must hold and the fingerprints (hashes of every weight) it must match; CacheRefused
    when there is nothing to cache."""
    augmentation = crop_flip_settings(config.data)
    kinds: dict[str, tuple[int, ...]] = {}
    fingerprints: dict[str, object] = {
        "data": text_fingerprint([f"{r.path}" for r in source.records] + [c for _, c in source.pairs]),
        "preprocessing": preprocess.to_dict(),
    }
    if augmentation is not None:
        fingerprints["augmentation"] = {**augmentation, "seed": config.trainer.seed}
    if teacher is not None:
        kinds["teacher_cls"] = (teacher.dim,)
        fingerprints["teacher"] = {"target": teacher.target, "weights": tensor_fingerprint(teacher.model)}
    if config.cache.encoders and student.image_encoder.fully_frozen:
        kinds["image_tokens"] = (student.image_sequence_length(preprocess.size), student.image_encoder.width)
        fingerprints["image_encoder"] = tensor_fingerprint(student.image_encoder)
    if config.cache.encoders and student.text_encoder.fully_frozen:
        kinds["text_tokens"] = (config.data.max_text_length, student.text_encoder.width)
        fingerprints["text_encoder"] = tensor_fingerprint(student.text_encoder)
        vocabulary = [f"{token}\t{index}" for token, index in sorted(tokenizer.get_vocab().items())]
        fingerprints["tokenizer"] = {
            "vocabulary": text_fingerprint(vocabulary),
            "max_length": config.data.max_text_length,
        }
    if not kinds:
        raise CacheRefused("nothing to cache: no distillation teacher, and no fully frozen encoder with cache.encoders")
    return CachePlan(
        kinds,
        len(source.records),
        len(source.pairs),
        config.cache.rows_per_shard,
        fingerprints,
        config.cache.views if augmentation is not None else 1,
    )


def stored_view(config: Config, image_row: int, view: int) -> Tensor:
    """The crop-and-flip matrix of one stored view (the same at cache-building and at training time)."""
    augmentation = crop_flip_settings(config.data)
    assert augmentation is not None
    return view_crop_flip(
        config.trainer.seed,
        image_row,
        view,
        tuple(augmentation["scale"]),
        tuple(augmentation["ratio"]),
        augmentation["flip_prob"],
    )


def _build_image_shard(
    plan: CachePlan,
    folder: Path,
    shard: int,
    source: CaptionPairDataset,
    preprocess: ImagePreprocessor,
    teacher: ImageTeacher | None,
    student: DualEncoder,
    config: Config,
    device: torch.device,
) -> None:
    kinds = [k for k in plan.kinds if k in PER_IMAGE]
    rows = plan.shard_rows(kinds[0], shard)
    arrays = {k: np.zeros((len(rows), plan.views, *plan.kinds[k]), dtype=np.float16) for k in kinds}
    augmented = crop_flip_settings(config.data) is not None
    valid = np.zeros(len(rows), dtype=bool)
    loader = image_batches(
        [source.records[row].path for row in rows],
        preprocess,
        config.cache.batch_size,
        loader_workers(config.data.num_workers),
    )
    with torch.inference_mode():
        for pixels, positions in loader:
            if pixels is None:
                continue
            pixels = preprocess.normalize(pixels.to(device, non_blocking=True))
            valid[positions] = True
            for view in range(plan.views):
                seen = pixels
                if augmented:
                    seen = apply_crop_flip(pixels, torch.stack([stored_view(config, rows[i], view) for i in positions]))
                if "teacher_cls" in arrays and teacher is not None:
                    arrays["teacher_cls"][positions, view] = teacher(seen).cpu().half().numpy()
                if "image_tokens" in arrays:
                    arrays["image_tokens"][positions, view] = student.image_encoder(seen).cpu().half().numpy()
    for kind, array in arrays.items():
        write_shard(folder, shard_name(kind, shard), array)
    write_shard(folder, valid_name(shard), valid)  # written last: it marks the shard complete


def _build_text_shard(
    plan: CachePlan,
    folder: Path,
    shard: int,
    source: CaptionPairDataset,
    tokenizer: PreTrainedTokenizerBase,
    student: DualEncoder,
    config: Config,
    device: torch.device,
) -> None:
    rows = plan.shard_rows("text_tokens", shard)
    array = np.zeros((len(rows), *plan.kinds["text_tokens"]), dtype=np.float16)
    with torch.inference_mode():
        for start in range(0, len(rows), config.cache.batch_size):
            chunk = rows[start : start + config.cache.batch_size]
            tokens = tokenizer(
                [source.pairs[i][1] for i in chunk],
                padding="max_length",
                truncation=True,
                max_length=config.data.max_text_length,
                return_tensors="pt",
            ).to(device)
            hidden = student.text_encoder(tokens["input_ids"], tokens["attention_mask"])
            array[start : start + len(chunk)] = hidden.cpu().half().numpy()
    write_shard(folder, shard_name("text_tokens", shard), array)


def build_cache(
    plan: CachePlan,
    folder: Path,
    source: CaptionPairDataset,
    preprocess: ImagePreprocessor,
    tokenizer: PreTrainedTokenizerBase,
    teacher: ImageTeacher | None,
    student: DualEncoder,
    config: Config,
    device: torch.device,
    progress: bool,
) -> None:
    """Compute the missing shards (rank r builds shards r, r + world, ...), then rank 0 writes the manifest."""
    rank, world = data_parallel_world()
    folder.mkdir(parents=True, exist_ok=True)
    for module in (teacher, student.image_encoder, student.text_encoder):
        if module is not None:
            module.to(device)
    image_shards = plan.num_shards(PER_IMAGE[0]) if any(k in PER_IMAGE for k in plan.kinds) else 0
    text_shards = plan.num_shards("text_tokens") if "text_tokens" in plan.kinds else 0
    jobs = [("image", s) for s in range(image_shards)] + [("text", s) for s in range(text_shards)]
    mine = [(kind, shard) for i, (kind, shard) in enumerate(jobs) if i % world == rank]
    for kind, shard in tqdm(mine, desc="feature cache", unit="shard", disable=rank != 0 or not progress):
        if (folder / (valid_name(shard) if kind == "image" else shard_name("text_tokens", shard))).is_file():
            continue  # finished by an earlier, interrupted build
        if kind == "image":
            _build_image_shard(plan, folder, shard, source, preprocess, teacher, student, config, device)
        else:
            _build_text_shard(plan, folder, shard, source, tokenizer, student, config, device)
    if world > 1:
        dist.barrier()
    if rank == 0:
        skipped = sum(int((~np.load(folder / valid_name(s))).sum()) for kind, s in jobs if kind == "image")
        write_manifest(folder, plan, skipped)
    if world > 1:
        dist.barrier()


def open_cache(
    config: Config,
    output_dir: Path,
    data: TrainingData,
    preprocess: ImagePreprocessor,
    tokenizer: PreTrainedTokenizerBase,
    teacher: ImageTeacher | None,
    student: DualEncoder,
    passes: float,
    device: torch.device,
    force: bool = False,
) -> tuple[FeatureCache | None, str]:
    """The run's checked cache (built first when missing) and a line saying what it holds or why there is none.

    `passes`: planned passes over the data; 'auto' skips the cache below two (building it costs one pass).
    `force`: build even when 'auto' would not (the `mmd2v2 cache` command)."""
    folder = cache_folder(config, output_dir)
    if folder is None:
        return None, "feature cache: off (cache.dir is null)"
    auto = config.cache.dir == AUTO
    try:
        source = cache_source(config, data)
        if auto and not force and passes < 2 and not (folder / MANIFEST).is_file():  # before hashing any weights
            return None, f"feature cache: off ({passes:.1f} passes over the data; building it costs one)"
        plan = plan_cache(config, source, preprocess, tokenizer, teacher, student)
    except CacheRefused as reason:
        if auto and not force:
            return None, f"feature cache: off ({reason})"
        raise CacheRefused(f"cache.dir: {reason}; set cache.dir=null to train without a cache") from None
    built = ""
    if not (folder / MANIFEST).is_file():
        start = time.perf_counter()
        build_cache(
            plan, folder, source, preprocess, tokenizer, teacher, student, config, device, config.trainer.progress_bar
        )
        built = f", built in {time.perf_counter() - start:.0f} s"
    cache = FeatureCache(folder)
    cache.check(plan)
    return cache, f"feature cache: {', '.join(cache.kinds)} from '{folder}'{built}"


class CachedPairs(Dataset[PairSample]):
    """A CaptionPairDataset whose samples carry their cached rows; images are decoded only when still needed.

    With stored views, the sampler passes `epoch × len + index` (see `wants_epoch`) and epoch e reads view
    e % views; when the student still needs pixels, the sample carries that view's crop (`crop_theta`)."""

    def __init__(self, source: CaptionPairDataset, cache: FeatureCache, need_pixels: bool, config: Config) -> None:
        self.source, self.cache, self.need_pixels, self.config = source, cache, need_pixels, config
        self.image_rows = [row for row, record in enumerate(source.records) for _ in record.captions]
        self.wants_epoch = crop_flip_settings(config.data) is not None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, position: int) -> PairSample:
        epoch, index = divmod(position, len(self.source))
        record, caption = self.source.pairs[index]
        row, view = self.image_rows[index], epoch % self.cache.views
        if caption is None or not self.cache.image_valid(row):
            return PairSample(None, caption, record.image_id)  # counted like an undecodable image
        features = {kind: self.cache.row(kind, index if kind in PER_PAIR else row, view) for kind in self.cache.kinds}
        if not self.need_pixels:
            return PairSample(None, caption, record.image_id, features)
        if self.wants_epoch:
            features["crop_theta"] = stored_view(self.config, row, view)
        sample = self.source[index]
        return dataclasses.replace(sample, features=features) if sample.pixel_values is not None else sample
