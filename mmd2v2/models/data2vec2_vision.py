"""Data2Vec 2.0 image encoder as a Hugging Face model: ViT patch embeddings feeding post-LayerNorm blocks.

fairseq's data2vec 2.0 image models (`layer_norm_first=False`) normalise *after* each residual sum, as BERT
does, while every HF vision transformer (ViT, BEiT, Data2VecVision) normalises before: no HF class computes
them. This class does, with BERT's layer names, so `convert_d2v2` fills both it and Data2VecText the same way.
Importing this module registers model type `data2vec2-vision` with `AutoConfig`/`AutoModel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput

from mmd2v2.errors import UserError


def sincos_positions(width: int, grid: int) -> Tensor:
    """(1, grid², width) fixed 2-D sine-cosine positions (first half of the channels: column, second: row), the
    table data2vec 2.0 and MAE use; a random-init model starts from it, a converted one loads its own copy."""
    if width % 4:
        raise UserError(f"hidden_size: 2-D sine-cosine positions need a multiple of 4, got {width}")
    frequencies = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    parts = []
    for coordinate in (cols.flatten(), rows.flatten()):
        angles = coordinate[:, None] * frequencies[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float().unsqueeze(0)


class Data2Vec2VisionConfig(PretrainedConfig):
    """Shape of a Data2Vec 2.0 image encoder (no dropout: the image recipes train without it)."""

    model_type = "data2vec2-vision"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02


class Data2Vec2VisionEmbeddings(nn.Module):
    """Patch projection + fixed positions, then a CLS token (which gets no position), then a LayerNorm."""

    def __init__(self, config: Data2Vec2VisionConfig) -> None:
        super().__init__()
        grid = config.image_size // config.patch_size
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.register_buffer("position_embeddings", torch.zeros(1, grid * grid, config.hidden_size))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def positions(self, height: int, width: int) -> Tensor:
        """The stored position grid, bicubically resized to a (height, width) patch grid when it differs."""
        grid = int(self.position_embeddings.shape[1] ** 0.5)
        if (height, width) == (grid, grid):
            return self.position_embeddings
        table = self.position_embeddings.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(height, width), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).flatten(1, 2)

    def forward(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        """(B, 3, H, W) pixels → (B, 1 + patches, width) normalised tokens."""
        patches = self.patch_embeddings.projection(pixel_values)
        height, width = patches.shape[-2:]
        tokens = patches.flatten(2).transpose(1, 2)
        if not interpolate_pos_encoding and tokens.shape[1] != self.position_embeddings.shape[1]:
            raise ValueError(
                f"pixel_values: {tuple(pixel_values.shape[-2:])} images make {tokens.shape[1]} patches, the "
                f"model has {self.position_embeddings.shape[1]} positions (pass interpolate_pos_encoding=True)"
            )
        tokens = tokens + self.positions(height, width).to(tokens.dtype)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        return self.LayerNorm(tokens)


class Data2Vec2SelfAttention(nn.Module):
    """Multi-head self-attention with q, k and v biases."""

    def __init__(self, config: Data2Vec2VisionConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, width) → attended values (B, T, width), before the output projection."""
        batch, length, width = hidden.shape
        q, k, v = (
            proj(hidden).view(batch, length, self.heads, -1).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)


class Data2Vec2Output(nn.Module):
    """A projection whose output is added to the residual and then normalised (post-LN)."""

    def __init__(self, fan_in: int, config: Data2Vec2VisionConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(fan_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        """LayerNorm(residual + dense(hidden))."""
        return self.LayerNorm(residual + self.dense(hidden))


class Data2Vec2Attention(nn.Module):
    """Self-attention followed by its post-LN output."""

    def __init__(self, config: Data2Vec2VisionConfig) -> None:
        super().__init__()
        self.self = Data2Vec2SelfAttention(config)
        self.output = Data2Vec2Output(config.hidden_size, config)

    def forward(self, hidden: Tensor) -> Tensor:
        """LayerNorm(x + attention(x))."""
        return self.output(self.self(hidden), hidden)


class Data2Vec2Layer(nn.Module):
    """One post-LN block: x = LN(x + attn(x)); x = LN(x + mlp(x)) (fairseq's AltBlock with layer_norm_first=False)."""

    def __init__(self, config: Data2Vec2VisionConfig) -> None:
        super().__init__()
        self.attention = Data2Vec2Attention(config)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = Data2Vec2Output(config.intermediate_size, config)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, width) → (B, T, width)."""
        hidden = self.attention(hidden)
        return self.output(F.gelu(self.intermediate.dense(hidden)), hidden)


class Data2Vec2VisionModel(PreTrainedModel):
    """Data2Vec 2.0 image encoder; `last_hidden_state` is the output of the last block (there is no final norm)."""

    config_class = Data2Vec2VisionConfig
    base_model_prefix = "data2vec2_vision"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: Data2Vec2VisionConfig) -> None:
        super().__init__(config)
        self.embeddings = Data2Vec2VisionEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Data2Vec2Layer(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """HF's default init, plus a random CLS token and the fixed sine-cosine position table."""
        super()._init_weights(module)
        if isinstance(module, Data2Vec2VisionEmbeddings):
            init.normal_(module.cls_token, std=self.config.initializer_range)
            grid = int(module.position_embeddings.shape[1] ** 0.5)
            init.copy_(module.position_embeddings, sincos_positions(module.position_embeddings.shape[-1], grid))

    def forward(
        self, pixel_values: Tensor, interpolate_pos_encoding: bool = False, output_hidden_states: bool = False
    ) -> BaseModelOutput:
        """Encode (B, 3, H, W) pixels; hidden_states (when asked) holds the embeddings and every block's output."""
        hidden = self.embeddings(pixel_values.to(self.embeddings.cls_token.dtype), interpolate_pos_encoding)
        states = [hidden]
        for layer in self.encoder.layer:
            hidden = layer(hidden)
            states.append(hidden)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=tuple(states) if output_hidden_states else None)


AutoConfig.register(Data2Vec2VisionConfig.model_type, Data2Vec2VisionConfig, exist_ok=True)
AutoModel.register(Data2Vec2VisionConfig, Data2Vec2VisionModel, exist_ok=True)
