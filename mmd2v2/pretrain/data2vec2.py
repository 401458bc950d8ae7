"""The data2vec 2.0 objective: a masked student regresses contextualised targets of its own EMA teacher.

Per sample, the teacher (an exponential moving average of the student) encodes the whole input once; the target at
each position is the average of the teacher's top K block outputs (each block's feed-forward output before its
residual sum, instance-normalised per channel over the positions). The student sees `clone_batch` differently masked
copies of the sample (images: only the visible patches; text: masked tokens' embeddings zeroed), a light
convolutional decoder fills in every position, and the loss is the squared error at the masked positions, summed
over channels and scaled by 1/sqrt(width). Images also regress the student's CLS towards a whole-image target: the un-normalised top-K average's mean over the
patches, centred over the batch and layer-normalised (the instance-normalised targets themselves average to zero over
the patches, and without centring the mean is nearly the same vector for every image).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmd2v2.models.data2vec2_vision import Data2Vec2VisionModel
from mmd2v2.models.unimodal import block_list
from mmd2v2.pretrain.config import Data2Vec2Config


def ema_decay_at(step: int, cfg: Data2Vec2Config) -> float:
    """Teacher decay after `step` updates: linear from ema_decay to ema_end_decay over ema_anneal_end_step."""
    if step >= cfg.ema_anneal_end_step:
        return cfg.ema_end_decay
    return cfg.ema_decay + (cfg.ema_end_decay - cfg.ema_decay) * step / max(1, cfg.ema_anneal_end_step)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher ← decay · teacher + (1 − decay) · student, parameter by parameter (buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


@contextmanager
def feed_forward_outputs(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect each block's feed-forward output (`layer.output.dense`, before the residual sum) during a forward."""
    outputs: list[Tensor] = []
    hooks = [
        layer.output.dense.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for layer in block_list(model)
    ]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


def instance_norm(x: Tensor, valid: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise (B, T, C) per sample and channel over the positions where `valid` (B, T) is True (all if None)."""
    if valid is None:
        return F.instance_norm(x.transpose(1, 2).float(), eps=eps).transpose(1, 2)
    weight = valid.unsqueeze(-1).float()
    count = weight.sum(1, keepdim=True).clamp_min(1)
    mean = (x.float() * weight).sum(1, keepdim=True) / count
    var = (((x.float() - mean) ** 2) * weight).sum(1, keepdim=True) / count
    return (x.float() - mean) / torch.sqrt(var + eps) * weight


def average_top_k(layer_outputs: list[Tensor], k: int, normalise: bool, valid: Tensor | None = None) -> Tensor:
    """The data2vec target: the mean of the top `k` layer outputs, each instance-normalised first when asked."""
    top = layer_outputs[-k:]
    if normalise:
        top = [instance_norm(y, valid) for y in top]
    return sum(y.float() for y in top) / len(top)


def regression_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Squared error summed over channels and scaled by 1/sqrt(channels), per row: (..., C) → (...)."""
    return ((prediction.float() - target.float()) ** 2).sum(-1) / math.sqrt(prediction.shape[-1])


class ConvDecoder(nn.Module):
    """fairseq's light data2vec 2.0 decoder: (grouped conv → LayerNorm without affine → GELU) × layers with residual
    sums after the first, then a linear map back to the encoder width. 2-D over a patch grid, or 1-D over tokens."""

    def __init__(self, width: int, cfg: Data2Vec2Config, dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.dims, self.residual = dims, cfg.decoder_residual
        self.convs = nn.ModuleList(
            conv(
                width if i == 0 else cfg.decoder_dim,
                cfg.decoder_dim,
                cfg.decoder_kernel,
                padding=cfg.decoder_kernel // 2,
                groups=math.gcd(cfg.decoder_groups, width if i == 0 else cfg.decoder_dim),
            )
            for i in range(cfg.decoder_layers)
        )
        self.proj = nn.Linear(cfg.decoder_dim, width)

    def forward(self, tokens: Tensor, grid: tuple[int, ...]) -> Tensor:
        """(B, T, width) tokens laid out on `grid` (T = product of grid) → (B, T, width) predictions."""
        batch, length, width = tokens.shape
        x = tokens.transpose(1, 2).reshape(batch, width, *grid)
        for index, conv in enumerate(self.convs):
            y = conv(x)
            y = F.gelu(F.layer_norm(y.movedim(1, -1), (y.shape[1],)).movedim(-1, 1))
            x = y + x if self.residual and index > 0 else y
        return self.proj(x.reshape(batch, x.shape[1], length).transpose(1, 2))


class Data2Vec2Student(nn.Module):
    """What the optimizer trains: the encoder and its decoder (or, for `kind: mlm`, a language-model head); forward
    returns the loss terms of one batch."""

    def __init__(self, encoder: nn.Module, modality: str, cfg: Data2Vec2Config) -> None:
        super().__init__()
        self.encoder, self.modality, self.cfg = encoder, modality, cfg
        self.width = int(encoder.config.hidden_size)
        if cfg.kind == "mlm":  # RoBERTa's head: dense, GELU, LayerNorm, vocabulary logits
            self.lm_head = nn.Sequential(
                nn.Linear(self.width, self.width),
                nn.GELU(),
                nn.LayerNorm(self.width),
                nn.Linear(self.width, int(encoder.config.vocab_size)),
            )
        else:
            self.decoder = ConvDecoder(self.width, cfg, 2 if modality == "image" else 1)

    def forward(
        self,
        inputs: Tensor,
        mask: Tensor,
        targets: Tensor,
        attention_mask: Tensor | None = None,
        cls_target: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms for student inputs (B·clone, ...) with masks (B·clone, T) and teacher targets (B·clone, T, C)."""
        if self.modality == "image":
            encoded, grid = self._encode_visible_patches(inputs, mask)
            decoder_in = torch.empty(mask.shape + (self.width,), dtype=encoded.dtype, device=encoded.device)
            decoder_in[mask] = torch.randn_like(decoder_in[mask]) * self.cfg.mask_noise_std
            decoder_in[~mask] = encoded[:, 1:].reshape(-1, self.width)
        else:
            embeds = self.encoder.embeddings.word_embeddings(inputs) * (~mask).unsqueeze(-1).to(self.encoder.dtype)
            encoded = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
            if self.cfg.kind == "mlm":  # the masked tokens' ids are the targets
                loss = F.cross_entropy(self.lm_head(encoded[mask]).float(), inputs[mask])
                return {"mlm": loss, "loss": loss}
            decoder_in, grid = encoded, (inputs.shape[1],)
        predictions = self.decoder(decoder_in, grid)
        terms = {"regression": regression_loss(predictions[mask], targets[mask]).mean()}
        if cls_target is not None and self.cfg.cls_loss > 0:
            terms["cls"] = regression_loss(encoded[:, 0], cls_target).mean()
        terms["loss"] = terms["regression"] + self.cfg.cls_loss * terms.get("cls", terms["regression"].new_zeros(()))
        return terms

    def _encode_visible_patches(self, pixels: Tensor, mask: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Run the image encoder on the CLS token and the unmasked patches only: (B, 1 + visible, width)."""
        model = self.encoder
        assert isinstance(model, Data2Vec2VisionModel)
        embeddings = model.embeddings
        patches = embeddings.patch_embeddings.projection(pixels.to(embeddings.cls_token.dtype))
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2) + embeddings.positions(*grid).to(patches.dtype)
        visible = tokens[~mask].reshape(tokens.shape[0], -1, self.width)
        hidden = embeddings.LayerNorm(torch.cat([embeddings.cls_token.expand(len(tokens), -1, -1), visible], dim=1))
        for layer in model.encoder.layer:
            hidden = layer(hidden)
        return hidden, grid


class EMATeacher(nn.Module):
    """The frozen moving average of the student encoder; computes the data2vec targets of whole inputs."""

    def __init__(self, encoder: nn.Module, modality: str, cfg: Data2Vec2Config) -> None:
        super().__init__()
        self.model = copy.deepcopy(encoder).float().requires_grad_(False).eval()
        self.modality, self.cfg = modality, cfg

    def train(self, mode: bool = True) -> EMATeacher:
        """The teacher always stays in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def targets(self, inputs: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(B, T, C) targets (image: the patches, without CLS; text: every token, zero at padding) and, for images,
        the CLS target (B, C)."""
        k = min(self.cfg.average_top_k_layers, len(block_list(self.model)))
        with feed_forward_outputs(self.model) as outputs:
            if self.modality == "image":
                self.model(pixel_values=inputs)
            else:
                self.model(input_ids=inputs, attention_mask=attention_mask)
        if self.modality == "image":
            patches = [y[:, 1:] for y in outputs]
            target = average_top_k(patches, k, self.cfg.instance_norm_target_layer)
            # instance-normalised targets average to zero over the patches, so the CLS target is the raw top-K average's
            # mean over the patches, centred over the batch (what all images share says nothing of one) and layer-normalised
            raw_mean = average_top_k(patches, k, normalise=False).mean(1)
            return target, F.layer_norm(raw_mean - raw_mean.mean(0, keepdim=True), raw_mean.shape[-1:])
        valid = attention_mask.bool() if attention_mask is not None else None
        return average_top_k(outputs, k, self.cfg.instance_norm_target_layer, valid), None
