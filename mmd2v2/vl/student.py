"""The VL student: MM-D2V2's encoders and shared blocks over the joined text+image sequence, with a task head.

Text tokens come first, so position 0 (the text CLS) is the joint CLS the task head reads; position T (the first
image token) is the student's visual token for distillation. Modality embeddings are added as in MM-D2V2, and the
shared blocks attend across both modalities.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from mmd2v2.config import Config, DataConfig
from mmd2v2.data.preprocessing import ImagePreprocessor, resolve_image_preprocessing
from mmd2v2.data.tokenization import extend_word_tokenizer, prepare_tokenizer, unknown_words
from mmd2v2.models.dual_encoder import DualEncoder
from mmd2v2.models.exported import load_export, resolve_export
from mmd2v2.vl.config import StudentConfig


@dataclass
class JointOutput:
    """The shared blocks' output over [text tokens; image tokens]."""

    tokens: Tensor  # (N, T + P, width)
    text_length: int  # T

    @property
    def cls(self) -> Tensor:
        """The joint (text) CLS, (N, width)."""
        return self.tokens[:, 0]

    @property
    def image_token(self) -> Tensor:
        """The student's first visual token, (N, width)."""
        return self.tokens[:, self.text_length]

    @property
    def text_tokens(self) -> Tensor:
        """The text positions, (N, T, width)."""
        return self.tokens[:, : self.text_length]


def _projection(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out))


class VLStudent(nn.Module):
    """MM-D2V2 backbone + task head, plus the heads that distillation and adaptive finetuning train."""

    def __init__(
        self,
        backbone: DualEncoder,
        num_outputs: int,
        head_hidden_ratio: float,
        vision_dim: int | None = None,
        text_dim: int | None = None,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        width = backbone.width
        hidden = max(1, int(width * head_hidden_ratio))
        self.head = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_outputs)
        )
        self.vision_head = _projection(width, vision_dim) if vision_dim else None
        self.text_head = _projection(width, text_dim) if text_dim else None
        self.mlm_head = _projection(width, vocab_size) if vocab_size else None
        self.itm_head = nn.Linear(width, 2) if vocab_size else None

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, image_index: Tensor
    ) -> JointOutput:
        """Encode B images once and N texts; text row i attends jointly with image `image_index[i]`.

        Each modality's tokens enter as the backbone's retrieval training fed them to the shared blocks: centred on
        their own where it was trained with model.center_tokens, else as they are."""
        backbone = self.backbone
        image = backbone.image_inputs(pixel_values)[image_index]
        text, text_padding = backbone.text_inputs(input_ids, attention_mask)
        padding = torch.cat([text_padding, torch.zeros(image.shape[:2], dtype=torch.bool, device=image.device)], 1)
        joint = backbone.shared_outputs(torch.cat([text, image.to(text.dtype)], 1), padding)
        return JointOutput(joint, input_ids.shape[1])

    def logits(self, output: JointOutput) -> Tensor:
        """Task head on the joint CLS: (N, num_outputs)."""
        return self.head(output.cls)


@dataclass
class StudentParts:
    """A freshly built student backbone with what it needs around it."""

    backbone: DualEncoder
    tokenizer: PreTrainedTokenizerBase
    preprocess: ImagePreprocessor
    config: Config  # the backbone's mmd2v2 config (saved with the finetuned backbone)


def build_backbone(cfg: StudentConfig, texts: list[str]) -> StudentParts:
    """Load the backbone from an mmd2v2 export (`init_from`), or build it randomly initialised from `cfg.model`."""
    if cfg.init_from is not None:
        bundle = load_export(resolve_export(cfg.init_from, "student.init_from"))
        tokenizer, new_words = bundle.tokenizer, unknown_words(bundle.tokenizer, texts)
        if new_words:  # a word-level (demo) vocabulary learns the task's words, e.g. the questions' "what", "how"
            tokenizer = extend_word_tokenizer(tokenizer, new_words)
            bundle.model.resize_text_vocabulary(len(tokenizer))
        return StudentParts(bundle.model.train(), tokenizer, bundle.preprocess, bundle.config)

    config = Config(model=cfg.model, data=DataConfig(tokenizer=cfg.tokenizer, image_size=cfg.image_size))
    tokenizer, config = prepare_tokenizer(config, texts)
    config = dataclasses.replace(config, teacher=dataclasses.replace(config.teacher, enabled=False))
    return StudentParts(DualEncoder(config.model), tokenizer, resolve_image_preprocessing(config), config)
