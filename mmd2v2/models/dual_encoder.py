"""The MM-D2V2 student: image and text encoders feeding one shared transformer and a common embedding space."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmd2v2.config import ConfigError, ModelConfig
from mmd2v2.models.shared import LayerScale, SharedTransformer
from mmd2v2.models.unimodal import UnimodalEncoder

IMAGE, TEXT = 0, 1  # rows of the modality embedding


class ModalityOutput(NamedTuple):
    """What the student produces for one modality."""

    embedding: Tensor  # (B, embed_dim) L2-normalised retrieval embedding
    distill: Tensor | None  # (B, teacher_dim) regression-head output for distillation, if a teacher is set


def centred(tokens: Tensor, key_padding: Tensor | None) -> Tensor:
    """Tokens (B, T, W) minus each row's mean over its real tokens (padding, where `key_padding` is True, excluded).

    Frozen encoders' outputs share a large component across tokens and inputs; carried in the shared blocks'
    residual stream it makes every CLS nearly the same vector, and the shared blocks learn slowly (measured on the
    pretrained demo, docs/benchmarks.md)."""
    weight = torch.ones_like(tokens[..., :1]) if key_padding is None else (~key_padding).unsqueeze(-1).to(tokens.dtype)
    return tokens - (tokens * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1)


class DualEncoder(nn.Module):
    """Dual encoder with a shared top: encode_images / encode_texts give L2-normalised embeddings.

    For users of its tokens: image_tokens / text_tokens (the shared blocks' per-token outputs, whose CLS `embed`
    maps to the embedding), image_inputs / text_inputs and shared_outputs (the same in two steps, for a sequence of
    one's own), `width` and `embed_dim`.
    """

    def __init__(self, cfg: ModelConfig, teacher_dim: int | None = None) -> None:
        super().__init__()
        self.image_encoder = UnimodalEncoder(cfg.image, "image", "model.image")
        self.text_encoder = UnimodalEncoder(cfg.text, "text", "model.text")
        width = cfg.shared.width
        self.image_in = (
            nn.Linear(self.image_encoder.width, width) if self.image_encoder.width != width else nn.Identity()
        )
        self.text_in = nn.Linear(self.text_encoder.width, width) if self.text_encoder.width != width else nn.Identity()
        self.modality_embedding = nn.Parameter(torch.randn(2, width) * 0.02) if cfg.modality_embeddings else None
        self.modality_scale = LayerScale(width, cfg.modality_layer_scale_init) if cfg.modality_embeddings else None
        self.shared = SharedTransformer(cfg.shared)
        self.center_tokens = cfg.center_tokens
        if not cfg.projection and cfg.embed_dim != width:
            raise ConfigError(
                f"model.embed_dim: got {cfg.embed_dim}, but without model.projection the embedding is the "
                f"shared CLS of model.shared.width {width}"
            )
        if teacher_dim and not cfg.distill_head and teacher_dim != width:
            raise ConfigError(
                f"model.distill_head: false distils the shared CLS (model.shared.width {width}) itself, "
                f"but the teacher's CLS has {teacher_dim} dims"
            )
        # retrieval: normalize(projection(cls)); distillation: distill_head(cls). Either may be the identity.
        self.projection = nn.Linear(width, cfg.embed_dim, bias=False) if cfg.projection else nn.Identity()
        self.distill_head = (
            (nn.Sequential(nn.LayerNorm(width), nn.Linear(width, teacher_dim)) if cfg.distill_head else nn.Identity())
            if teacher_dim
            else None
        )

    def add_modality(self, tokens: Tensor, modality: int) -> Tensor:
        """Tokens (B, T, width) plus the LayerScale-scaled embedding of their modality (0 image, 1 text), as the
        shared blocks expect them (unchanged without modality embeddings)."""
        if self.modality_embedding is None or self.modality_scale is None:
            return tokens
        return tokens + self.modality_scale(self.modality_embedding[modality])

    def image_sequence_length(self, image_size: int) -> int:
        """Length of the image encoder's output sequence (CLS + patches) for square images of `image_size` pixels."""
        weight = next(self.image_encoder.parameters())
        with torch.inference_mode():
            probe = torch.zeros(1, 3, image_size, image_size, dtype=weight.dtype, device=weight.device)
            return int(self.image_encoder(probe).shape[1])

    @property
    def width(self) -> int:
        """Width of the shared blocks' tokens."""
        return int(self.shared.norm.normalized_shape[0])

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings."""
        return self.projection.out_features if isinstance(self.projection, nn.Linear) else self.width

    def _shared_input(self, tokens: Tensor, modality: int, key_padding: Tensor | None) -> Tensor:
        """One modality's tokens (B, T, width) as the shared blocks take them: centred (with model.center_tokens),
        plus the modality embedding."""
        if self.center_tokens:
            tokens = centred(tokens, key_padding)
        return self.add_modality(tokens, modality)

    def _shared_cls(self, tokens: Tensor, modality: int, key_padding: Tensor | None) -> Tensor:
        """Shared blocks over one modality's tokens; returns the CLS output (B, width)."""
        return self.shared(self._shared_input(tokens, modality, key_padding), key_padding)[:, 0]

    def image_inputs(self, pixel_values: Tensor) -> Tensor:
        """Image tokens (B, 1 + P, width) as the shared blocks take them: the image encoder's output in the shared
        width, centred (with model.center_tokens), plus the image modality embedding."""
        return self._shared_input(self.image_in(self.image_encoder(pixel_values)), IMAGE, None)

    def text_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Text tokens (B, L, width) as the shared blocks take them (as `image_inputs`), and the key padding
        (B, L), True at padding."""
        padding = attention_mask == 0
        hidden = self.text_in(self.text_encoder(input_ids, attention_mask))
        return self._shared_input(hidden, TEXT, padding), padding

    def shared_outputs(self, tokens: Tensor, key_padding: Tensor | None) -> Tensor:
        """The shared blocks' per-token outputs (B, T, width) over `tokens` (one modality's or a joint sequence)."""
        return self.shared(tokens, key_padding)

    def image_tokens(self, pixel_values: Tensor) -> Tensor:
        """The shared blocks' per-token outputs for images (B, 1 + P, width); `embed` of row 0 is the embedding."""
        return self.shared_outputs(self.image_inputs(pixel_values), None)

    def text_tokens(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The shared blocks' per-token outputs for texts (B, L, width) and the key padding (B, L), True at padding;
        `embed` of row 0 is the embedding."""
        tokens, padding = self.text_inputs(input_ids, attention_mask)
        return self.shared_outputs(tokens, padding), padding

    def embed(self, tokens: Tensor) -> Tensor:
        """Shared-block outputs (..., width) in the embedding space, L2-normalised (..., embed_dim)."""
        return F.normalize(self.projection(tokens), dim=-1)

    def resize_text_vocabulary(self, size: int) -> None:
        """Give the text encoder `size` token embeddings (new rows initialised by transformers)."""
        self.text_encoder.resize_vocabulary(size)

    def _output(self, cls: Tensor, with_distill: bool) -> ModalityOutput:
        embedding = self.embed(cls)
        distill = self.distill_head(cls) if with_distill and self.distill_head is not None else None
        return ModalityOutput(embedding, distill)

    def image_forward(
        self, pixel_values: Tensor, with_distill: bool = True, encoded: Tensor | None = None
    ) -> ModalityOutput:
        """Embedding (and distillation output) for a batch of images (B, 3, H, W), or for the image encoder's
        output `encoded` (B, T, width) when it comes from the feature cache."""
        hidden = self.image_encoder(pixel_values) if encoded is None else encoded
        return self._output(self._shared_cls(self.image_in(hidden), IMAGE, None), with_distill)

    def text_forward(
        self, input_ids: Tensor, attention_mask: Tensor, with_distill: bool = True, encoded: Tensor | None = None
    ) -> ModalityOutput:
        """Embedding (and distillation output) for a batch of token ids (B, L) with their attention mask, or for
        the text encoder's cached output `encoded` (B, L, width)."""
        hidden = self.text_encoder(input_ids, attention_mask) if encoded is None else encoded
        return self._output(self._shared_cls(self.text_in(hidden), TEXT, attention_mask == 0), with_distill)

    def enable_activation_checkpointing(self) -> list[str]:
        """Recompute activations in backward for the shared blocks and the trainable HF encoders that support it;
        returns the names of the parts that will."""
        self.shared.checkpointing = True
        parts = ["shared"]
        for name, encoder in (("image_encoder", self.image_encoder), ("text_encoder", self.text_encoder)):
            model = encoder.model
            if not encoder.fully_frozen and getattr(model, "supports_gradient_checkpointing", False):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                parts.append(name)
        return parts

    def compile_parts(self) -> None:
        """torch.compile the encoders and the shared transformer in place (the losses stay eager)."""
        for module in (self.image_encoder.model, self.text_encoder.model, self.shared):
            module.compile(dynamic=None)

    @torch.no_grad()
    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """L2-normalised image embeddings (B, embed_dim)."""
        return self.image_forward(pixel_values, with_distill=False).embedding

    @torch.no_grad()
    def encode_texts(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """L2-normalised text embeddings (B, embed_dim)."""
        return self.text_forward(input_ids, attention_mask, with_distill=False).embedding
