"""The frozen self-supervised image teacher (BEiT-2 by default; any HF image family, or a timm ViT-style model
with the `timm` extra) whose CLS (or mean patch token, `target: mean_patches`) is the distillation target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmd2v2.config import ConfigError, EncoderConfig, TeacherConfig
from mmd2v2.models.unimodal import TIMM, load_hf_model


class ImageTeacher(nn.Module):
    """A frozen image model: always in eval mode, never receives gradients, returns its target vector (the CLS
    after or before the final norm, or the mean of the last output's patch tokens)."""

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__()
        encoder_cfg = EncoderConfig(family=cfg.family, pretrained=cfg.pretrained, config=cfg.config)
        self.target = cfg.target
        self.model: nn.Module
        if cfg.family == TIMM:
            from mmd2v2.models.timm_encoder import load_timm_model  # timm is an optional extra

            # pre_norm drops timm's final norm (forward_features then ends at the last block); the others keep it
            self.model, _ = load_timm_model(encoder_cfg, "image", "teacher", keep_head_norms=cfg.target != "pre_norm")
            if getattr(self.model, "cls_token", None) is None:
                raise ConfigError("teacher.config.name: this timm model has no CLS token to distil towards")
            self.width, self.image_size = int(self.model.num_features), int(self.model.patch_embed.img_size[0])
        else:
            self.model = load_hf_model(encoder_cfg, "image", "teacher")
            self.width, self.image_size = int(self.model.config.hidden_size), int(self.model.config.image_size)
        self.autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 for bf16 runs on GPUs
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def dim(self) -> int:
        """Size of the teacher's CLS vector."""
        return self.width

    def train(self, mode: bool = True) -> ImageTeacher:
        """The teacher ignores train mode (its drop-path and dropout must stay off)."""
        return super().train(False)

    def _target(self, pixel_values: Tensor) -> Tensor:
        if not hasattr(self.model, "config"):  # timm: its final norm was kept or dropped per target at load time
            tokens = self.model.forward_features(pixel_values)
            prefix = int(getattr(self.model, "num_prefix_tokens", 1))  # CLS (+ register tokens)
        else:
            output = self.model(pixel_values=pixel_values, output_hidden_states=self.target == "pre_norm")
            tokens = output.hidden_states[-1] if self.target == "pre_norm" else output.last_hidden_state
            prefix = 1
        return tokens[:, prefix:].mean(1) if self.target == "mean_patches" else tokens[:, 0]

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Teacher target (B, dim): the CLS after or before the final LayerNorm, or the mean patch token. Runs under
        inference mode (no autograd bookkeeping) and, when `autocast_dtype` is set on a GPU, in that precision;
        returns float32."""
        with (
            torch.inference_mode(),
            torch.autocast(
                pixel_values.device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None and pixel_values.is_cuda,
            ),
        ):
            pixel_values = pixel_values.to(next(self.model.parameters()).dtype)  # the engine may feed bf16
            size = self.image_size
            if pixel_values.shape[-1] != size or pixel_values.shape[-2] != size:
                pixel_values = F.interpolate(pixel_values, size=(size, size), mode="bicubic", align_corners=False)
            target = self._target(pixel_values)
        return target.float().clone()  # cloned outside inference mode: an ordinary tensor the loss may save
