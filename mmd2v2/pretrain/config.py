"""Typed configuration of `mmd2v2 pretrain`: one unimodal encoder, its data and the data2vec 2.0 objective.

Defaults follow fairseq's data2vec 2.0 *image* recipe (base_images_only_task) where one exists; text runs and the demo
override them in their YAML files, each value marked there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmd2v2.config import ConfigError, DeepSpeedConfig, OptimConfig, load_typed_config

DEFAULT_FAMILY = {"image": "data2vec2-vision", "text": "data2vec-text"}


@dataclass
class PretrainModelConfig:
    """The encoder being pretrained: random init from `config`, or continued from a `pretrained` HF folder."""

    modality: Literal["image", "text"] = "image"
    family: str | None = None  # None: data2vec2-vision (image) / data2vec-text (text), the layouts the converter writes
    pretrained: str | None = None  # continue pretraining this folder (a converted checkpoint or an earlier run)
    config: dict[str, Any] = field(default_factory=dict)  # HF config kwargs (random init, or overrides)

    @property
    def resolved_family(self) -> str:
        """The family name with the modality's default filled in."""
        return self.family or DEFAULT_FAMILY[self.modality]


@dataclass
class Data2Vec2Config:
    """The data2vec 2.0 objective (fairseq's names): masked student, EMA teacher, averaged top-K targets, decoder;
    or, for text, plain masked-token prediction (`kind: mlm`: the same masks, a language-model head, no teacher)."""

    kind: Literal["data2vec2", "mlm"] = "data2vec2"
    mask_prob: float = 0.8  # share of patches / tokens the student does not see
    mask_length: int = 3  # image: side of the visible blocks (inverse block masking); text: span length
    inverse_mask: bool = True  # image: sample the visible blocks, mask the rest
    clone_batch: int = 16  # masks per sample sharing one teacher pass
    average_top_k_layers: int = 10  # the target averages the teacher's top K block outputs
    instance_norm_target_layer: bool = True  # each block output normalised per channel over tokens before averaging
    cls_loss: float = 0.01  # image: weight of the student CLS regressing the mean target
    ema_decay: float = 0.9998  # teacher EMA decay at step 0 ...
    ema_end_decay: float = 0.99999  # ... annealed linearly to this ...
    ema_anneal_end_step: int = 100000  # ... at this step
    decoder_dim: int = 768
    decoder_kernel: int = 3
    decoder_layers: int = 6
    decoder_groups: int = 16
    decoder_residual: bool = True
    mask_noise_std: float = 0.01  # image decoder input at masked positions: N(0, std)

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise ConfigError(f"config key 'objective.mask_prob': got {self.mask_prob}, expected a number in (0, 1)")
        for key in ("mask_length", "clone_batch", "average_top_k_layers", "decoder_layers", "decoder_kernel"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'objective.{key}': got {getattr(self, key)}, expected an integer >= 1")
        if not 0 <= self.ema_decay <= self.ema_end_decay <= 1:
            raise ConfigError(
                f"config key 'objective.ema_decay': got {self.ema_decay} -> {self.ema_end_decay}, "
                "expected 0 <= ema_decay <= ema_end_decay <= 1"
            )


@dataclass
class PretrainDataConfig:
    """Unpaired training data: a folder of images or a text file of captions (one per line)."""

    images: str | None = None  # folder searched recursively; files that do not decode are skipped and counted
    texts: str | None = (
        None  # UTF-8 text file, one caption per line; empty or undecodable lines are skipped and counted
    )
    demo_unpaired: bool = False  # write the demo's unpaired images and captions into demo_dir first
    demo_dir: str = "data/demo_unpaired"
    demo_num_images: int = 30000
    demo_num_captions: int = 30000
    demo_seed: int = 0
    demo_image_size: int = 64  # the unpaired demo images' size (as the paired demo's)
    tokenizer: str | None = None  # HF tokenizer; None: the pretrained folder's, else word-level over the corpus
    image_size: int = 224
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    max_text_length: int = 64


@dataclass
class PretrainTrainerConfig:
    """Length, batch size, logging and checkpointing of a pretraining run."""

    output_dir: str = "runs/pretrain"
    max_steps: int = 1000
    micro_batch_size: int = 64  # samples per process (each cloned `objective.clone_batch` times for the student)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    progress_bar: bool = True
    num_workers: int = 0  # decoding processes


@dataclass
class PretrainConfig:
    """The whole resolved configuration of a pretraining run."""

    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    objective: Data2Vec2Config = field(default_factory=Data2Vec2Config)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=[0.9, 0.95], weight_decay=0.05))
    deepspeed: DeepSpeedConfig = field(default_factory=lambda: DeepSpeedConfig(gradient_clipping=4.0))
    trainer: PretrainTrainerConfig = field(default_factory=PretrainTrainerConfig)


def load_pretrain_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Load a pretraining YAML (defaults in code when `path` is None) and apply `key.sub=value` overrides."""
    config = load_typed_config(PretrainConfig, path, overrides)
    if config.objective.kind == "mlm" and config.model.modality != "text":
        raise ConfigError("config key 'objective.kind': mlm predicts tokens, it needs model.modality text")
    for key in ("encoder_lr_scale", "layer_decay"):
        if getattr(config.optim, key) != 1.0:
            raise ConfigError(
                f"config key 'optim.{key}': scales the dual encoder's encoders when fine-tuning, not pretraining"
            )
    needed = "images" if config.model.modality == "image" else "texts"
    if getattr(config.data, needed) is None and not config.data.demo_unpaired:
        raise ConfigError(
            f"config key 'data.{needed}': must be set for model.modality {config.model.modality} "
            "(or data.demo_unpaired: true)"
        )
    return config
