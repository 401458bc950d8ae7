"""Typed configuration: dataclass sections with defaults, YAML overrides and `key.sub=value` overrides.

Every key is checked: a misspelled or unknown key, or a value of the wrong type, raises
`ConfigError` with one line naming the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from mmd2v2.errors import ConfigError
from mmd2v2.files import write_text_atomic


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but `1e-3` and `5E+4` read as floats, as in YAML 1.2 (PyYAML needs a dot)."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


T = TypeVar("T")


def read_yaml(text: str) -> Any:
    """Parse YAML text the way every mmd2v2 config is read."""
    return yaml.load(text, Loader=_ConfigLoader)


@dataclass
class EncoderConfig:
    """A unimodal encoder: a Hugging Face model family truncated to its first `num_blocks` blocks."""

    family: str = "vit"
    pretrained: str | None = None  # local folder (save_pretrained layout) or hub id; None = random init
    config: dict[str, Any] = field(default_factory=dict)  # HF config kwargs for random init
    num_blocks: int | None = None  # keep the first N blocks; None = all
    freeze: bool = False  # freeze the whole encoder (embeddings and blocks) ...
    unfreeze_top: int = 0  # ... except its top k blocks


@dataclass
class SharedConfig:
    """The shared, randomly initialised transformer that both modalities pass through."""

    depth: int = 1
    width: int = 768
    heads: int = 12
    mlp_ratio: float = 4.0
    layer_scale_init: float | None = None  # None = no LayerScale
    dropout: float = 0.0


@dataclass
class ModelConfig:
    """The MM-D2V2 student: two unimodal encoders, a shared transformer and output heads."""

    image: EncoderConfig = field(default_factory=lambda: EncoderConfig(family="data2vec-vision"))
    text: EncoderConfig = field(default_factory=lambda: EncoderConfig(family="data2vec-text"))
    shared: SharedConfig = field(default_factory=SharedConfig)
    embed_dim: int = 768  # retrieval embedding size (projection of the shared CLS; = shared.width without projection)
    projection: bool = True  # linear map of the CLS to embed_dim (only the contrastive loss trains it); false: the CLS
    distill_head: bool = True  # LayerNorm + linear head (training only) whose output is distilled; false: the CLS is
    modality_embeddings: bool = True  # learnable per-modality embedding added before the shared blocks
    modality_layer_scale_init: float = 1e-5
    center_tokens: bool = False  # subtract each input's mean token from the encoder output before the shared blocks


@dataclass
class TeacherConfig:
    """The frozen self-supervised image teacher whose CLS is the distillation target."""

    enabled: bool = True
    family: str = "beit"
    pretrained: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # CLS after / before the final LayerNorm, or the mean of the last output's patch tokens (data2vec 2.0 trains its
    # image CLS only weakly and pools the patches for downstream tasks)
    target: Literal["post_norm", "pre_norm", "mean_patches"] = "post_norm"


@dataclass
class SourceConfig:
    """One training source of `data.sources` (docs/formats.md describes each kind's files)."""

    kind: Literal["karpathy", "table", "hf", "webdataset"] = "karpathy"
    path: str | list[str] = ""  # JSON / table file / load_from_disk folder or hub name / shard pattern or list
    image_root: str | None = None  # folder relative image paths are resolved against
    split: str = "train"  # karpathy: split ('train' includes 'restval'); hf: split of a DatasetDict
    image_column: str = "image"  # table: path-or-URL column; hf: Image() column
    caption_column: str = "caption"  # table/hf: caption column; webdataset: caption field of the .json
    caption_key: Literal["txt", "json"] = "txt"  # webdataset: caption file extension
    image_keys: list[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])  # webdataset: tried in order
    img2dataset_dir: str | None = None  # table with URLs: img2dataset output folder holding the downloads
    weight: float = 1.0  # share of the mixture (normalised over the sources)


def _check_sources(sources: list[SourceConfig]) -> None:
    """Refuse source entries whose values cannot work, naming `data.sources[i].key`."""
    for index, source in enumerate(sources):
        key = f"data.sources[{index}]"
        if not source.path:
            raise ConfigError(f"config key '{key}.path': must be set (a file, folder or shard pattern)")
        if isinstance(source.path, list) and source.kind != "webdataset":
            raise ConfigError(f"config key '{key}.path': a list of paths is only for kind webdataset")
        if not source.weight > 0:
            raise ConfigError(f"config key '{key}.weight': got {source.weight}, expected a number > 0")
        if not source.image_keys:
            raise ConfigError(f"config key '{key}.image_keys': expected at least one extension")


@dataclass
class DataConfig:
    """Where the training and evaluation pairs come from and how they are preprocessed."""

    sources: list[SourceConfig] = field(default_factory=list)  # training sources; empty = karpathy_json or demo
    karpathy_json: str | None = None  # COCO/Flickr30K-style split file; None with demo=true
    image_root: str | None = None  # defaults to the JSON's folder (+ '/images' for the demo)
    demo: bool = False  # generate the procedural demo set into demo_dir first
    demo_dir: str = "data/demo"
    demo_num_train: int = 6000
    demo_num_val: int = 200
    demo_num_test: int = 500
    demo_seed: int = 0
    tokenizer: str | None = None  # HF tokenizer folder/id; None = the text encoder's, or built from the demo vocabulary
    image_size: int | None = None  # None = the image encoder's own (preprocessor config), else 224
    image_mean: list[float] | None = None  # None = the image encoder's own, else ImageNet's
    image_std: list[float] | None = None  # None = the image encoder's own, else ImageNet's
    max_text_length: int = 64
    num_workers: int | Literal["auto"] = (
        "auto"  # loader processes per rank; auto: none on a CPU, else the rank's cores - 1 (<= 16)
    )
    fast_decode: bool = (
        True  # JPEGs decoded at reduced DCT scale, resized by torch; false: every pixel, PIL (old pixels)
    )
    random_crop_scale: list[float] | None = None  # training augmentation, e.g. [0.9, 1.0]: random resized crop
    hflip_prob: float = 0.0  # training augmentation: left-right flip (captions saying left/right would then lie)

    def __post_init__(self) -> None:
        _check_sources(self.sources)
        crop = self.random_crop_scale
        if crop is not None and not (len(crop) == 2 and 0 < crop[0] <= crop[1] <= 1):
            raise ConfigError(
                f"config key 'data.random_crop_scale': got {crop}, expected [low, high] with 0 < low <= high <= 1"
            )
        if not 0 <= self.hflip_prob <= 1:
            raise ConfigError(f"config key 'data.hflip_prob': got {self.hflip_prob}, expected a probability in [0, 1]")


@dataclass
class LossConfig:
    """Contrastive image-text loss plus distillation towards the teacher's CLS."""

    contrastive_weight: float = 1.0
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    learnable_temperature: bool = True
    contrastive_memory_bank: int = 0  # past embeddings as extra negatives; unstable in the thesis, off
    kd_weight: float = 1.0  # weight of kd = ½ (image term + text term), for every kd_kind
    kd_kind: Literal["mse", "l1", "cosine", "contrastive"] = "mse"
    kd_bank_size: int = 65536  # teacher CLS memory bank for kd_kind=contrastive
    kd_init_temperature: float = 0.07


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.0
    fused: bool | None = None  # torch's fused AdamW kernel; None: on GPUs
    encoder_lr_scale: float = 1.0  # lr multiplier of the unimodal (image and text) encoders; 1 = the shared lr
    layer_decay: float = 1.0  # layer-wise lr decay inside those encoders, embeddings lowest (BEiT/data2vec fine-tuning)

    def __post_init__(self) -> None:
        if self.encoder_lr_scale < 0:
            raise ConfigError(f"config key 'optim.encoder_lr_scale': got {self.encoder_lr_scale}, expected >= 0")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"config key 'optim.layer_decay': got {self.layer_decay}, expected a number in (0, 1]")


@dataclass
class DeepSpeedConfig:
    """The DeepSpeed engine: ZeRO stage, precision, accumulation, and raw extra keys."""

    zero_stage: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPUs that have it, else fp32
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # merged last into the DeepSpeed JSON


@dataclass
class TrainerConfig:
    """Length of training, batch size, logging and checkpointing."""

    output_dir: str = "runs/default"
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    micro_batch_size: int = 64  # per process
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500  # optimizer steps; a final checkpoint is always written
    keep_checkpoints: int = 2
    progress_bar: bool = True
    init_from: str | None = None  # exported model (folder) whose weights start the student: finetuning
    compile: bool = False  # torch.compile the encoders and the shared transformer
    activation_checkpointing: bool = (
        False  # recompute trainable blocks' activations in backward: less memory, ~30% more compute
    )


@dataclass
class CacheConfig:
    """Outputs of the frozen networks computed once (`mmd2v2 cache`) and read by training instead of recomputed."""

    dir: str | None = "auto"  # a folder; "auto": <output_dir>/feature_cache where it pays off and is safe; None: off
    encoders: bool = False  # also store the output sequences of fully frozen encoders (fp16, large: tokens × width)
    views: int = 0  # with training augmentation: augmented views stored per image (epoch e reads view e % views)
    rows_per_shard: int = 4096  # images (or pairs) per memory-mapped shard file
    batch_size: int = 64  # images per forward while building


@dataclass
class EvalConfig:
    """Retrieval evaluation after training."""

    split: str = "test"
    karpathy_json: str | None = (
        None  # split file to evaluate on; None = data.karpathy_json, a karpathy source, or the demo
    )
    image_root: str | None = None  # defaults to the JSON's folder
    batch_size: int = 128
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])


@dataclass
class Config:
    """The whole resolved configuration of a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Return `value` converted to `annotation`'s type, or raise ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _check_value(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"config key '{key}': unexpected value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"config key '{key}': got {value!r}, expected one of {list(allowed)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': got {value!r}, expected a list")
        (item_type,) = typing.get_args(annotation)
        return [_check_value(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': got {value!r}, expected a mapping")
        return dict(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, str, bool):
        if isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"config key '{key}': got {value!r}, expected {annotation.__name__}")
    if annotation is float:
        raise ConfigError(f"config key '{key}': got {value!r}, expected a number")
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': got {value!r}, expected a mapping")
        return _build(annotation, value, f"{key}.")
    raise ConfigError(f"config key '{key}': unsupported type {annotation}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from `data`, refusing unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'root'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (expected one of: {', '.join(names)})")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            default = getattr(cls(), key)
            merged = _merge(dataclasses.asdict(default), value, full)
            kwargs[key] = _build(annotation, merged, f"{full}.")
        else:
            kwargs[key] = _check_value(value, annotation, full)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: Any, key: str) -> dict[str, Any]:
    """Recursively merge mapping `update` onto `base`."""
    if not isinstance(update, dict):
        raise ConfigError(f"config section '{key}': expected a mapping, got {update!r}")
    merged = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict) and k not in ("config", "extra"):
            merged[k] = _merge(merged[k], v, f"{key}.{k}")
        else:
            merged[k] = v
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split a `key.sub=value` argument into its key path and YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected key.sub=value")
    try:
        return key.split("."), read_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"override '{text}': the value is not valid YAML ({problem}; quote it)") from None


def typed_config_from_dict(cls: type[T], data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build the config dataclass `cls` from a nested mapping plus `key.sub=value` overrides."""
    data = _merge({}, data or {}, "root")
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return _build(cls, data, "")


def load_typed_config(cls: type[T], path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load a YAML file into the config dataclass `cls` (its defaults when `path` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            data = read_yaml(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file '{path}' is not valid YAML: {error}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}': expected a mapping at the top level")
    return typed_config_from_dict(cls, data, overrides)


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from a nested mapping plus `key.sub=value` overrides."""
    return typed_config_from_dict(Config, data, overrides)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config file (or the defaults when `path` is None) and apply overrides."""
    return load_typed_config(Config, path, overrides)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A resolved config (Config, the VL config: any dataclass config) as plain nested dicts (for YAML/JSON dumps)."""
    return dataclasses.asdict(config)


def dump_config(config: Any, path: str | Path) -> None:
    """Write a resolved config (any dataclass config) as YAML (temporary file, then rename)."""
    write_text_atomic(Path(path), yaml.safe_dump(config_to_dict(config), sort_keys=False))
