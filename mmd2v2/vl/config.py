"""Typed configuration of VL finetuning (task, student, teachers, distillation, adaptive finetuning, protocol).

Same conventions as `mmd2v2.config`: dataclass sections with defaults in code, YAML and `key.sub=value`
overrides, an unknown key or a value of the wrong type raises `ConfigError` naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmd2v2.config import (
    ConfigError,
    ModelConfig,
    OptimConfig,
    config_to_dict,
    load_typed_config,
    typed_config_from_dict,
)


@dataclass
class SplitFiles:
    """The files of one split: records (VQA questions JSON, SNLI-VE / VCR jsonl), VQA annotations, image folder."""

    records: str | None = None
    annotations: str | None = None  # VQA only: the annotations JSON (answers)
    image_root: str | None = None  # default: the records file's folder


@dataclass
class TaskConfig:
    """Which VL task and where its data is."""

    name: str = "vqa"  # a registered task (mmd2v2.vl.tasks): vqa, snli_ve, vcr
    train: SplitFiles = field(default_factory=SplitFiles)
    val: SplitFiles = field(default_factory=SplitFiles)
    image_pattern: str = ""  # "" = the task's standard file names; fields {image_id} and (VQA) {subtype}
    min_answer_count: int = 9  # VQA: answers that are the majority answer of at least this many training questions
    max_answers: int = 3129  # VQA: at most this many answers (most frequent first)
    max_text_length: int = 64
    on_bad_record: Literal["error", "skip"] = "error"  # malformed record: stop naming it, or skip and count
    cache_images: bool = True  # keep decoded training images in memory across epochs (small sets; no loader workers)


@dataclass
class StudentConfig:
    """The VL student: an MM-D2V2 model run over the joined text+image sequence, with a task head on the CLS."""

    init_from: str | None = None  # mmd2v2 export folder (or run folder with export/); None = random init from `model`
    model: ModelConfig = field(default_factory=ModelConfig)  # used only for random init
    tokenizer: str | None = None  # random init: HF tokenizer folder; None = word-level over the task's texts
    image_size: int = 224  # random init only: input size (an export brings its own preprocessing)
    head_hidden_ratio: float = 2.0  # task head: LayerNorm, Linear(width, ratio*width), GELU, Linear(., outputs)


@dataclass
class TeacherSpec:
    """One frozen teacher: none, a Hugging Face encoder (CLIP too), or an mmd2v2 dual-encoder export."""

    kind: Literal["none", "hf", "mmd2v2"] = "none"
    # hf: clip (CLIP-V / CLIP-T of a CLIPModel folder), or a family of mmd2v2.models.unimodal (vit, beit, bert,
    # roberta, auto, ...; timm for images)
    family: str = "beit"
    pretrained: str | None = None  # hf: model folder or hub id; mmd2v2: export folder (or run folder)
    config: dict[str, Any] = field(default_factory=dict)  # hf: config kwargs for random init (tests)
    tokenizer: str | None = None  # hf text teacher: tokenizer folder (default: pretrained)
    target: Literal["post_norm", "pre_norm"] = "post_norm"  # hf image teacher: CLS after / before the final norm


@dataclass
class TeachersConfig:
    """The vision and the text teacher, chosen independently, and the dual encoder giving zero-shot logits."""

    vision: TeacherSpec = field(default_factory=TeacherSpec)
    text: TeacherSpec = field(default_factory=lambda: TeacherSpec(family="bert"))
    # zero-shot logits (confidence weighting, the zero-shot protocol): an mmd2v2 export or a CLIP folder (hf, clip);
    # kind none = the vision or text teacher that is one
    zero_shot: TeacherSpec = field(default_factory=lambda: TeacherSpec(family="clip"))
    zero_shot_logit_scale: float = 100.0  # logits = scale * cosine (100 = trained CLIP's exp(logit_scale))
    zero_shot_prompt: Literal["ia", "iqa"] = (
        "ia"  # VCR: image vs answer / rationale alone (IA / IR), or with the question
    )


@dataclass
class DistillConfig:
    """Multimodal distillation (MD) and its adaptive parts (MAD): each switch is a column of Table S3."""

    vision: bool = False  # L_dv: teacher image token vs the student's first visual token
    text: bool = False  # L_dt: teacher text CLS vs the student's text CLS
    weight: float = 0.05  # w in L = L_task + w * (L_dv + L_dt [+ L'_dt])
    l1: Literal["mean", "sum"] = "mean"  # L1 over feature dimensions: mean (w independent of width) or the paper's sum
    token_selection: Literal["none", "adaptive", "random"] = "none"  # L'_dt over the top-m words (or m random ones)
    num_tokens: int = 2  # m
    keyword_ngram: int = 3  # YAKE's largest n-gram
    confidence_weighting: bool = False  # distil an instance only where r = max p_teacher / max p_student > 1


@dataclass
class AdaptiveConfig:
    """Adaptive finetuning: a first stage with image-text matching, masked language modelling and plain MD."""

    enabled: bool = False
    epochs: float = 1.0
    full_data: bool = True  # stage 1 on the full training split even when stage 2 is low-shot
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    mlm_probability: float = 0.15
    distill: bool = True  # add L_dv + L_dt (weighted by distill.weight) in stage 1


DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def resolved_device(device: str) -> str:
    """trainer.device as a torch device: `auto` is cuda when torch sees a CUDA GPU, else cpu; cpu, cuda, cuda:N stay."""
    if device == "auto":
        import torch  # here: reading and checking configs needs no torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if not DEVICE.fullmatch(device):
        raise ConfigError(f"config key 'trainer.device': got '{device}', expected auto, cpu, cuda or cuda:N")
    return device


@dataclass
class VLTrainerConfig:
    """Length of training, batches, logging."""

    output_dir: str = "runs/vl"
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32
    eval_batch_size: int = 64
    seed: int = 0
    log_every: int = 10
    progress_bar: bool = True
    device: str = "auto"  # auto: cuda when torch sees a CUDA GPU, else cpu (resolved on load); cpu, cuda, cuda:N
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA GPUs that have it, else fp32
    num_workers: int = 0  # loader processes decoding images and tokenising (training, evaluation, zero-shot)
    checkpoint_every: int | None = (
        2000  # optimizer steps between saves of RUN/resume/ (`vl train --resume`); None: never
    )

    def __post_init__(self) -> None:
        self.device = resolved_device(self.device)


@dataclass
class ProtocolConfig:
    """Which protocol settings, methods and seeds `mmd2v2 vl protocol` runs."""

    settings: list[str] = field(default_factory=lambda: ["zero_shot", "low_shot", "full"])
    shots: list[int] = field(default_factory=lambda: [100, 1000])  # low-shot sizes (per category / class / type)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    methods: list[str] = field(default_factory=lambda: ["baseline", "md", "mad"])  # presets of mmd2v2.vl.methods
    low_shot_max_steps: int | None = None  # optimizer steps of a low-shot run; None = trainer.epochs
    full_seeds: int = 1  # full-data runs use the first k seeds
    questions_per_image: int = 2  # VQA low-shot: questions of the type kept per sampled image
    hypotheses_per_image: int = 5  # SNLI-VE low-shot: hypotheses of the class kept per sampled image
    zero_shot_model: str | None = None  # dual-encoder export for zero-shot; None = an mmd2v2 teacher or init_from


@dataclass
class VLConfig:
    """The whole resolved configuration of a VL finetuning run."""

    task: TaskConfig = field(default_factory=TaskConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, warmup_fraction=0.1))
    trainer: VLTrainerConfig = field(default_factory=VLTrainerConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)

    def __post_init__(self) -> None:
        from mmd2v2.vl.tasks import get_task  # here, not above: the task modules import this one

        try:
            get_task(self.task.name)
        except ValueError as error:
            raise ConfigError(f"config key 'task.name': {error}") from None
        if self.distill.num_tokens < 1:
            raise ConfigError(f"config key 'distill.num_tokens': got {self.distill.num_tokens}, expected >= 1")
        if not 0 < self.adaptive.mlm_probability < 1:
            raise ConfigError(
                f"config key 'adaptive.mlm_probability': got {self.adaptive.mlm_probability}, expected (0, 1)"
            )
        for setting in self.protocol.settings:
            if setting not in ("zero_shot", "low_shot", "full"):
                raise ConfigError(
                    f"config key 'protocol.settings': got '{setting}', expected zero_shot, low_shot or full"
                )
        check_teachers(self)


def gives_logits(spec: TeacherSpec) -> bool:
    """Whether a teacher is a dual encoder with zero-shot logits: an mmd2v2 export, or CLIP (kind hf, family clip)."""
    return spec.kind == "mmd2v2" or (spec.kind == "hf" and spec.family == "clip")


def logits_teacher(teachers: TeachersConfig) -> tuple[str, TeacherSpec] | None:
    """The key and spec of the dual encoder giving zero-shot logits: teachers.zero_shot, else the vision or text
    teacher that is one."""
    candidates = (
        [("teachers.zero_shot", teachers.zero_shot)]
        if teachers.zero_shot.kind != "none"
        else [("teachers.vision", teachers.vision), ("teachers.text", teachers.text)]
    )
    return next(((key, spec) for key, spec in candidates if gives_logits(spec)), None)


def needed_teachers(distill: DistillConfig) -> tuple[bool, bool]:
    """Whether the switched-on distillation needs the vision teacher and the text teacher."""
    selection = distill.token_selection
    return distill.vision or selection == "adaptive", distill.text or selection != "none"


def check_teachers(cfg: VLConfig) -> None:
    """Refuse, in one line naming both keys, a switched-on feature that no configured teacher can serve."""
    distill, teachers = cfg.distill, cfg.teachers
    if teachers.zero_shot.kind != "none" and not gives_logits(teachers.zero_shot):
        raise ConfigError(
            f"config key 'teachers.zero_shot.family': got '{teachers.zero_shot.family}' with kind hf; "
            "zero-shot logits need family clip (or kind mmd2v2)"
        )
    needs = [
        ("distill.vision", distill.vision, "teachers.vision"),
        ("distill.token_selection", distill.token_selection == "adaptive", "teachers.vision"),
        ("distill.text", distill.text, "teachers.text"),
        ("distill.token_selection", distill.token_selection != "none", "teachers.text"),
    ]
    for feature, on, teacher in needs:
        if on and getattr(teachers, teacher.split(".")[1]).kind == "none":
            value = getattr(distill, feature.split(".")[1])
            raise ConfigError(
                f"config keys '{feature}' and '{teacher}.kind': {feature}={value} needs a "
                f"{teacher.split('.')[1]} teacher, but {teacher}.kind is none"
            )
    if distill.confidence_weighting and logits_teacher(teachers) is None:
        raise ConfigError(
            "config keys 'distill.confidence_weighting' and 'teachers.zero_shot': confidence weighting "
            "needs zero-shot logits, but no teacher gives them (set teachers.zero_shot to an mmd2v2 "
            "export or a CLIP folder: kind hf, family clip)"
        )


def vl_config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> VLConfig:
    """Build a VLConfig from a nested mapping plus `key.sub=value` overrides."""
    return typed_config_from_dict(VLConfig, data, overrides)


def load_vl_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> VLConfig:
    """Load a VL YAML config (defaults when `path` is None) and apply overrides."""
    return load_typed_config(VLConfig, path, overrides)


# settings that name a run (its folder) or do not change what it trains: two runs that differ only here are the same
_NOT_COMPARED = {
    "trainer": ("output_dir", "progress_bar", "log_every", "eval_batch_size", "checkpoint_every", "num_workers"),
    "protocol": ("settings", "shots", "seeds", "methods", "full_seeds"),
}


def _compared(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        section: (
            {k: v for k, v in values.items() if k not in _NOT_COMPARED.get(section, ())}
            if isinstance(values, dict)
            else values
        )
        for section, values in settings.items()
    }


def same_run_settings(path: str | Path, config: VLConfig) -> bool:
    """Whether the config.yaml at `path` (a run folder's) trains what `config` trains; False when it is unreadable."""
    try:
        return _compared(yaml.safe_load(Path(path).read_text())) == _compared(config_to_dict(config))
    except (OSError, yaml.YAMLError, AttributeError):
        return False
