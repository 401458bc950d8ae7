"""`mmd2v2 pretrain`: data2vec 2.0 pretraining of one unimodal encoder under DeepSpeed, exported as a Hugging Face
folder (`<output_dir>/model/`) that `model.image.pretrained`, `model.text.pretrained` and `teacher.pretrained` load."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mmd2v2.config import ConfigError, EncoderConfig, config_to_dict, dump_config, read_yaml
from mmd2v2.data.demo_scenes import write_demo_unpaired
from mmd2v2.data.pairs import ResumableBatchSampler
from mmd2v2.data.preprocessing import ImageFiles, ImagePreprocessor, collate_images
from mmd2v2.data.tokenization import build_word_tokenizer, load_tokenizer
from mmd2v2.files import atomic_folder
from mmd2v2.models.unimodal import load_hf_config, load_hf_model
from mmd2v2.pretrain.config import PretrainConfig
from mmd2v2.pretrain.data import CaptionCorpus, image_files, read_captions
from mmd2v2.pretrain.data2vec2 import Data2Vec2Student, EMATeacher, ema_decay_at, ema_update
from mmd2v2.pretrain.masking import inverse_block_mask, span_mask
from mmd2v2.runtime.checkpoint import latest_complete_tag, load_checkpoint, save_checkpoint
from mmd2v2.runtime.engine import create_engine, ensure_distributed_env
from mmd2v2.runtime.metrics import MetricWindow
from mmd2v2.runtime.precision import resolved_precision
from mmd2v2.runtime.random_state import restore_rng_state, rng_state, seed_everything

MODEL_DIR = "model"  # the exported HF folder inside the run folder
RESULT_FILE = "pretrain.json"  # written into the exported folder: the config fingerprint, steps, counts, time
RUN_ONLY_KEYS = {
    "trainer": ("output_dir", "log_every", "checkpoint_every", "keep_checkpoints", "progress_bar", "num_workers")
}  # keys that do not change what a run computes


def union_across_ranks(items: set[int]) -> set[int]:
    """The union of every rank's `items` (each rank skips the bad files of its own share of the data)."""
    gathered: list[list[int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, sorted(items))
    return set().union(*(part or [] for part in gathered))


def config_fingerprint(config: PretrainConfig) -> str:
    """SHA-256 of the settings that decide the pretrained weights (not logging, paths of the run folder, workers)."""
    data = config_to_dict(config)
    for section, keys in RUN_ONLY_KEYS.items():
        for key in keys:
            data[section].pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """The dotted key of the first value that differs between two nested dicts (None when equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if prefix == "trainer." and key in RUN_ONLY_KEYS["trainer"]:
                continue
            found = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if old == new else prefix.rstrip(".")


def check_run_folder(config: PretrainConfig, output_dir: Path, resume: bool) -> bool:
    """True when `output_dir` already holds this pretraining, finished; refuse a folder of another config or an
    unfinished run without --resume, naming why."""
    saved = output_dir / "config.yaml"
    if saved.is_file():
        difference = first_difference(read_yaml(saved.read_text()), config_to_dict(config))
        if difference:
            raise ConfigError(
                f"'{output_dir}' holds a pretraining run with another config (key '{difference}' differs): "
                "use another --output-dir or delete the folder"
            )
    result = output_dir / MODEL_DIR / RESULT_FILE
    if result.is_file() and json.loads(result.read_text()).get("config_sha256") == config_fingerprint(config):
        return True
    if not resume and latest_complete_tag(output_dir) is not None:
        raise ConfigError(
            f"'{output_dir}' holds an unfinished pretraining run: pass --resume to continue it, "
            "or delete the folder to start again"
        )
    return False


@dataclasses.dataclass
class PretrainData:
    """What the loop reads: image files or tokenised captions, and the tokenizer (text)."""

    images: list[Path] | None
    corpus: CaptionCorpus | None
    tokenizer: PreTrainedTokenizerBase | None

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.corpus.texts)  # type: ignore[union-attr]


def prepare_data(config: PretrainConfig) -> PretrainData:
    """Write the demo's unpaired data when asked (rank 0; the others wait), then list images or read captions."""
    data = config.data
    if data.demo_unpaired:
        if dist.get_rank() == 0:
            write_demo_unpaired(
                data.demo_dir, data.demo_num_images, data.demo_num_captions, data.demo_image_size, data.demo_seed
            )
        dist.barrier()
    if config.model.modality == "image":
        return PretrainData(image_files(data.images or Path(data.demo_dir) / "images"), None, None)
    corpus = read_captions(data.texts or Path(data.demo_dir) / "captions.txt")
    source = data.tokenizer or config.model.pretrained
    tokenizer = (
        load_tokenizer(source) if source else build_word_tokenizer([w for t in corpus.texts for w in t.lower().split()])
    )
    return PretrainData(None, corpus, tokenizer)


def build_encoder(config: PretrainConfig, data: PretrainData) -> PreTrainedModel:
    """The encoder to pretrain: the pretrained folder, or a random init of the family sized to the tokenizer."""
    settings = dict(config.model.config)
    if config.model.modality == "text" and config.model.pretrained is None:
        assert data.tokenizer is not None
        settings.update(vocab_size=len(data.tokenizer), pad_token_id=data.tokenizer.pad_token_id)
    if config.model.modality == "image" and config.model.pretrained is None:
        settings.setdefault("image_size", config.data.image_size)
    family = config.model.resolved_family
    if config.model.modality == "image" and family != "data2vec2-vision":
        raise ConfigError(
            f"config key 'model.family': image pretraining runs on 'data2vec2-vision' (its patches can be "
            f"dropped by the mask), got '{family}'"
        )
    encoder = load_hf_model(
        EncoderConfig(family=family, pretrained=config.model.pretrained, config=settings),
        config.model.modality,
        "model",
    )
    assert isinstance(encoder, PreTrainedModel)
    return encoder


def collate_image_files(items: list[tuple[Tensor | None, int]]) -> tuple[Tensor | None, list[int]]:
    """The decodable images of a micro-batch, stacked uint8, and the positions of the files that did not decode."""
    pixels, _ = collate_images(items)
    return pixels, [index for image, index in items if image is None]


class TextBatches:
    """Tokenised caption micro-batches in the sampler's order, with each row's maskable (non-special) positions."""

    def __init__(self, corpus: CaptionCorpus, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.corpus, self.tokenizer, self.max_length = corpus, tokenizer, max_length

    def __call__(self, indices: list[int]) -> dict[str, Tensor]:
        """Token ids, attention mask and maskable positions of the captions at `indices`."""
        tokens = self.tokenizer(
            [self.corpus.texts[i] for i in indices],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        maskable = tokens["attention_mask"].bool() & ~tokens["special_tokens_mask"].bool()
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"], "maskable": maskable}


def make_loader(
    config: PretrainConfig, data: PretrainData, preprocess: ImagePreprocessor, start: int, total: int
) -> DataLoader:
    """Micro-batches for steps `start`..`total` of this rank, in the order an uninterrupted run reads them."""
    sampler = ResumableBatchSampler(
        len(data),
        config.trainer.micro_batch_size,
        1,
        dist.get_world_size(),
        dist.get_rank(),
        config.trainer.seed,
        start,
        total,
    )
    generator = torch.Generator().manual_seed(config.trainer.seed)  # the loader leaves the global RNG alone (resume)
    if data.images is not None:
        return DataLoader(
            ImageFiles(data.images, preprocess),
            batch_sampler=sampler,
            collate_fn=collate_image_files,
            num_workers=config.trainer.num_workers,
            pin_memory=torch.cuda.is_available(),
            generator=generator,
        )
    assert data.corpus is not None and data.tokenizer is not None
    texts = TextBatches(data.corpus, data.tokenizer, config.data.max_text_length)
    return DataLoader(
        list(range(len(data))),
        batch_sampler=sampler,
        collate_fn=texts,
        num_workers=config.trainer.num_workers,
        generator=generator,
    )


def student_batch(
    config: PretrainConfig,
    batch: Any,
    teacher: EMATeacher,
    preprocess: ImagePreprocessor,
    device: torch.device,
    dtype: torch.dtype,
    rng: np.random.Generator,
) -> tuple[dict[str, Tensor], int, list[int]]:
    """The engine's inputs for one micro-batch: teacher targets of the whole inputs, then `clone_batch` masked copies;
    also the number of samples and (images) the positions of the files that did not decode."""
    clone, objective = config.objective.clone_batch, config.objective
    if config.model.modality == "image":
        pixels, failed = batch
        if pixels is None:
            return {}, 0, failed
        pixels = preprocess.normalize(pixels.to(device, non_blocking=True))
        targets, cls_target = teacher.targets(pixels)
        grid = int(targets.shape[1] ** 0.5)
        mask = inverse_block_mask(
            len(pixels) * clone, grid, targets.shape[1] // grid, objective.mask_prob, objective.mask_length, rng
        ).to(device)
        inputs = {
            "inputs": pixels.to(dtype).repeat_interleave(clone, 0),
            "mask": mask,
            "targets": targets.repeat_interleave(clone, 0),
            "cls_target": cls_target.repeat_interleave(clone, 0),
        }
        return inputs, len(pixels), failed
    ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    targets = ids if objective.kind == "mlm" else teacher.targets(ids, attention)[0]
    maskable = batch["maskable"].repeat_interleave(clone, 0)
    mask = span_mask(maskable, objective.mask_prob, objective.mask_length, rng).to(device)
    inputs = {
        "inputs": ids.repeat_interleave(clone, 0),
        "mask": mask,
        "targets": targets.repeat_interleave(clone, 0),
        "attention_mask": attention.repeat_interleave(clone, 0),
    }
    return inputs, len(ids), []


def export_model(
    encoder: PreTrainedModel, config: PretrainConfig, data: PretrainData, output_dir: Path, result: dict[str, Any]
) -> Path:
    """Write the pretrained encoder as an HF folder (+ tokenizer or image preprocessing, + pretrain.json), atomically."""
    final = output_dir / MODEL_DIR
    with atomic_folder(final) as tmp:
        encoder = encoder.float()
        encoder.save_pretrained(tmp)
        if data.tokenizer is not None:
            data.tokenizer.save_pretrained(tmp)
        if config.model.modality == "image":
            size = int(encoder.config.image_size)
            processor = {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "size": {"height": size, "width": size},
                "resample": 3,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": list(config.data.image_mean),
                "image_std": list(config.data.image_std),
            }
            (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
        (tmp / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return final


def pretrain(config: PretrainConfig, output_dir: str | Path, resume: bool = False) -> Path:
    """Pretrain one encoder with data2vec 2.0 and export it; returns the exported folder. A folder that already holds
    this run, finished, is returned as it is (pretraining is paid once)."""
    output_dir = Path(output_dir)
    config = dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, output_dir=str(output_dir)))
    ensure_distributed_env()
    rank = dist.get_rank()
    if check_run_folder(config, output_dir, resume):
        if rank == 0:
            print(f"already pretrained with this config: {output_dir / MODEL_DIR} (delete it to pretrain again)")
        return output_dir / MODEL_DIR
    if config.model.pretrained is not None:  # a missing folder or one of another family: refused before reading data
        load_hf_config(
            EncoderConfig(family=config.model.resolved_family, pretrained=config.model.pretrained),
            config.model.modality,
            "model",
        )
    seed_everything(config.trainer.seed)
    data = prepare_data(config)
    preprocess = ImagePreprocessor(config.data.image_size, config.data.image_mean, config.data.image_std)
    encoder = build_encoder(config, data)
    teacher = EMATeacher(encoder, config.model.modality, config.objective)
    student = Data2Vec2Student(encoder, config.model.modality, config.objective)
    total = config.trainer.max_steps
    engine = create_engine(student, config, total)
    device, dtype = engine.device, next(engine.module.parameters()).dtype
    teacher.to(device)
    bf16 = resolved_precision(config.deepspeed.precision) == "bf16"

    step, bad_files = 0, set()
    tag = latest_complete_tag(output_dir) if resume else None
    if tag is not None:
        state = load_checkpoint(engine, output_dir, tag)
        step, bad_files = int(state["step"]), set(state.get("bad_files", []))
        teacher.model.load_state_dict(state["ema"])
        restore_rng_state(state["rng"])
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, output_dir / "config.yaml")
        what = (
            f"{len(data)} image files"
            if data.images is not None
            else f"{len(data)} captions ({data.corpus.dropped} lines dropped: empty or not UTF-8)"
        )  # type: ignore[union-attr]
        print(
            f"pretraining a {config.model.modality} encoder ({sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M "
            f"parameters) with {'data2vec 2.0' if config.objective.kind == 'data2vec2' else 'masked-token prediction'} on {what}"
            + (f"; resuming from {tag}" if tag else "")
        )

    writer = SummaryWriter(str(output_dir / "tb")) if rank == 0 else None
    window, started = MetricWindow(), time.perf_counter()
    bar = tqdm(
        total=total, initial=step, desc="pretrain", unit="step", disable=rank != 0 or not config.trainer.progress_bar
    )
    engine.train()
    for batch in make_loader(config, data, preprocess, step, total):
        rng = np.random.default_rng([config.trainer.seed, step, rank])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            inputs, count, positions = student_batch(config, batch, teacher, preprocess, device, dtype, rng)
        bad_files.update(positions)
        if count == 0:
            raise ConfigError(
                f"config key 'data.images': no file of a whole batch decodes as an image "
                f"(e.g. '{data.images[positions[0]]}')"
            )  # type: ignore[index]
        terms = engine(**inputs)
        engine.backward(terms["loss"])
        engine.step()
        step = engine.global_steps
        decay = ema_decay_at(step, config.objective)
        if config.objective.kind == "data2vec2":
            ema_update(teacher.model, engine.module.encoder, decay)
        window.add(terms)
        bar.update(1)
        if step % config.trainer.log_every == 0 or step == total:
            means = window.means()
            bar.set_postfix(loss=f"{means['loss']:.4f}")
            if writer is not None:
                record = {"step": step, **means, "lr": engine.get_lr()[0], "ema_decay": decay}
                with (output_dir / "train_log.jsonl").open("a") as log:
                    log.write(json.dumps(record) + "\n")
                for key, value in record.items():
                    if key != "step":
                        writer.add_scalar(f"pretrain/{key}", value, step)
        if step % config.trainer.checkpoint_every == 0 or step == total:
            bad_files = union_across_ranks(bad_files)
            save_checkpoint(
                engine,
                output_dir,
                step,
                {
                    "step": step,
                    "rng": rng_state(),
                    "bad_files": sorted(bad_files),
                    "ema": {k: v.cpu() for k, v in teacher.model.state_dict().items()},
                },
                config.trainer.keep_checkpoints,
            )
    bar.close()
    if writer is not None:
        writer.close()
    final = output_dir / MODEL_DIR
    bad_files = union_across_ranks(bad_files)
    if rank == 0:
        skipped = [str(data.images[i]) for i in sorted(bad_files)] if data.images is not None else []
        result = {
            "config_sha256": config_fingerprint(config),
            "steps": step,
            "modality": config.model.modality,
            "family": config.model.resolved_family,
            "seconds": round(time.perf_counter() - started, 1),
            "skipped_files": len(skipped),
            "first_skipped": skipped[:20],
            "dropped_lines": data.corpus.dropped if data.corpus else 0,
        }
        export_model(engine.module.encoder, config, data, output_dir, result)
        print(
            f"pretrained {step} steps in {result['seconds'] / 60:.1f} min; skipped files (not decodable as images): "
            f"{len(skipped)}{' e.g. ' + skipped[0] if skipped else ''}; exported: {final}"
        )
    dist.barrier()
    return final
