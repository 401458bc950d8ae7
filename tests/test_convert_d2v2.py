"""fairseq Data2Vec 2.0 checkpoints → HF folders: the converted encoders compute what fairseq's blocks compute.

The fixtures are tiny `data2vec_multi` state dicts with fairseq's key names and shapes (prenet blocks in the
image encoder's context_encoder, the EMA copy, decoders); the reference forward below follows fairseq's equations
directly on those tensors (post-LN AltBlocks, CLS without a position, pad-aware learned text positions).
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mmd2v2.config import EncoderConfig
from mmd2v2.models.convert_d2v2 import convert_image, convert_text, write_image_folder, write_text_folder
from mmd2v2.models.unimodal import UnimodalEncoder

ROOT = Path(__file__).parent.parent
WIDTH, HEADS, PATCH, SIZE, VOCAB, POSITIONS = 32, 2, 8, 32, 20, 18
IMAGE, TEXT = "modality_encoders.IMAGE", "modality_encoders.TEXT"


def _block(prefix: str) -> dict[str, Tensor]:
    shapes = {
        "norm1.weight": (WIDTH,),
        "norm1.bias": (WIDTH,),
        "attn.qkv.weight": (3 * WIDTH, WIDTH),
        "attn.qkv.bias": (3 * WIDTH,),
        "attn.proj.weight": (WIDTH, WIDTH),
        "attn.proj.bias": (WIDTH,),
        "norm2.weight": (WIDTH,),
        "norm2.bias": (WIDTH,),
        "mlp.fc1.weight": (4 * WIDTH, WIDTH),
        "mlp.fc1.bias": (4 * WIDTH,),
        "mlp.fc2.weight": (WIDTH, 4 * WIDTH),
        "mlp.fc2.bias": (WIDTH,),
    }
    return {
        f"{prefix}.{k}": (
            1.0 + 0.1 * torch.randn(s) if k.startswith("norm") and k.endswith("weight") else 0.2 * torch.randn(s)
        )
        for k, s in shapes.items()
    }


def image_checkpoint(prenet: int = 1, depth: int = 2) -> dict[str, object]:
    """A data2vec 2.0 image pretraining checkpoint as fairseq saves it (config, model with EMA, meters)."""
    torch.manual_seed(0)
    grid = SIZE // PATCH
    state: dict[str, object] = {
        f"{IMAGE}.local_encoder.proj.weight": 0.2 * torch.randn(WIDTH, 3, PATCH, PATCH),
        f"{IMAGE}.local_encoder.proj.bias": 0.1 * torch.randn(WIDTH),
        f"{IMAGE}.fixed_positional_encoder.positions": torch.randn(1, grid * grid, WIDTH),
        f"{IMAGE}.extra_tokens": torch.randn(1, 1, WIDTH),
        f"{IMAGE}.context_encoder.norm.weight": 1 + 0.1 * torch.randn(WIDTH),
        f"{IMAGE}.context_encoder.norm.bias": 0.1 * torch.randn(WIDTH),
        f"{IMAGE}.decoder.blocks.0.0.weight": torch.randn(WIDTH, 2, 3, 3),
        f"{IMAGE}.decoder.proj.weight": torch.randn(WIDTH, WIDTH),
        "_ema": {"blocks.0.norm1.weight": torch.randn(WIDTH)},
    }
    for i in range(prenet):
        state.update(_block(f"{IMAGE}.context_encoder.blocks.{i}"))
    for i in range(depth):
        state.update(_block(f"blocks.{i}"))
    cfg = {
        "model": {
            "_name": "data2vec_multi",
            "depth": depth,
            "num_heads": HEADS,
            "norm_eps": 1e-6,
            "layer_norm_first": False,
            "modalities": {"image": {"prenet_depth": prenet, "num_extra_tokens": 1}},
        }
    }
    return {"model": state, "cfg": cfg, "extra_state": {"previous_training_time": np.float64(12.5)}}


def text_checkpoint(depth: int = 2) -> dict[str, object]:
    """A data2vec 2.0 text checkpoint (RoBERTa dictionary: <s>=0, <pad>=1, </s>=2)."""
    torch.manual_seed(1)
    state: dict[str, object] = {
        f"{TEXT}.local_encoder.embed_tokens.weight": torch.randn(VOCAB, WIDTH),
        f"{TEXT}.local_encoder.embed_positions.weight": torch.randn(POSITIONS, WIDTH),
        f"{TEXT}.local_encoder.layernorm_embedding.weight": 1 + 0.1 * torch.randn(WIDTH),
        f"{TEXT}.local_encoder.layernorm_embedding.bias": 0.1 * torch.randn(WIDTH),
        f"{TEXT}.decoder.proj.0.weight": torch.randn(WIDTH, WIDTH),
    }
    for i in range(depth):
        state.update(_block(f"blocks.{i}"))
    return {"model": state, "cfg": {"model": {"depth": depth, "num_heads": HEADS, "norm_eps": 1e-5}}}


def _attention(x: Tensor, s: dict[str, Tensor], p: str, pad: Tensor | None) -> Tensor:
    batch, length, _ = x.shape
    q, k, v = (
        (x @ s[f"{p}.attn.qkv.weight"].T + s[f"{p}.attn.qkv.bias"])
        .reshape(batch, length, 3, HEADS, -1)
        .permute(2, 0, 3, 1, 4)
    )
    scores = (q * (WIDTH // HEADS) ** -0.5) @ k.transpose(-2, -1)
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, WIDTH)
    return mixed @ s[f"{p}.attn.proj.weight"].T + s[f"{p}.attn.proj.bias"]


def _alt_block(x: Tensor, s: dict[str, Tensor], p: str, eps: float, pad: Tensor | None = None) -> Tensor:
    """fairseq AltBlock with layer_norm_first=False: x = norm1(x + attn(x)); x = norm2(x + mlp(x))."""
    x = F.layer_norm(x + _attention(x, s, p, pad), (WIDTH,), s[f"{p}.norm1.weight"], s[f"{p}.norm1.bias"], eps)
    hidden = (
        F.gelu(x @ s[f"{p}.mlp.fc1.weight"].T + s[f"{p}.mlp.fc1.bias"]) @ s[f"{p}.mlp.fc2.weight"].T
        + s[f"{p}.mlp.fc2.bias"]
    )
    return F.layer_norm(x + hidden, (WIDTH,), s[f"{p}.norm2.weight"], s[f"{p}.norm2.bias"], eps)


def fairseq_image_forward(s: dict[str, Tensor], pixels: Tensor, blocks: list[str]) -> Tensor:
    patches = F.conv2d(
        pixels, s[f"{IMAGE}.local_encoder.proj.weight"], s[f"{IMAGE}.local_encoder.proj.bias"], stride=PATCH
    )
    x = patches.flatten(2).transpose(1, 2) + s[f"{IMAGE}.fixed_positional_encoder.positions"]
    x = torch.cat([s[f"{IMAGE}.extra_tokens"].expand(len(x), -1, -1), x], dim=1)
    x = F.layer_norm(
        x, (WIDTH,), s[f"{IMAGE}.context_encoder.norm.weight"], s[f"{IMAGE}.context_encoder.norm.bias"], 1e-6
    )
    for p in blocks:
        x = _alt_block(x, s, p, 1e-6)
    return x


def fairseq_text_forward(s: dict[str, Tensor], ids: Tensor) -> Tensor:
    pad = ids.eq(1)
    positions = torch.cumsum(~pad, dim=1) * ~pad + 1  # fairseq make_positions with padding_idx 1
    x = (
        s[f"{TEXT}.local_encoder.embed_tokens.weight"][ids]
        + s[f"{TEXT}.local_encoder.embed_positions.weight"][positions]
    )
    x = F.layer_norm(
        x,
        (WIDTH,),
        s[f"{TEXT}.local_encoder.layernorm_embedding.weight"],
        s[f"{TEXT}.local_encoder.layernorm_embedding.bias"],
        1e-5,
    )
    for p in ("blocks.0", "blocks.1"):
        x = _alt_block(x, s, p, 1e-5, pad)
    return x


def roberta_tokenizer(folder: Path) -> Path:
    """A tiny byte-level BPE tokenizer with RoBERTa's special ids, saved like a hub tokenizer."""
    from transformers import RobertaTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate("abcdeĠ")}, "<mask>": 10}
    RobertaTokenizerFast(vocab=vocab, merges=[]).save_pretrained(folder)
    return folder


def test_image_encoder_matches_fairseq_forward_and_loads_truncated(tmp_path: Path) -> None:
    checkpoint = image_checkpoint()
    config, state = convert_image(checkpoint)
    assert (config.num_hidden_layers, config.num_attention_heads, config.image_size, config.patch_size) == (
        3,
        HEADS,
        SIZE,
        PATCH,
    )
    folder = write_image_folder(config, state, tmp_path / "d2v2_image")
    fairseq = checkpoint["model"]
    pixels = torch.randn(2, 3, SIZE, SIZE)
    order = [f"{IMAGE}.context_encoder.blocks.0", "blocks.0", "blocks.1"]  # prenet blocks run first
    with torch.no_grad():
        for blocks in (2, 3):
            encoder = UnimodalEncoder(
                EncoderConfig(family="data2vec2-vision", pretrained=str(folder), num_blocks=blocks),
                "image",
                "model.image",
            ).eval()
            torch.testing.assert_close(
                encoder(pixels), fairseq_image_forward(fairseq, pixels, order[:blocks]), rtol=1e-4, atol=1e-4
            )
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.485, 0.456, 0.406] and processor["resample"] == 3
    assert not list(tmp_path.glob(".d2v2_image*"))


def test_text_encoder_matches_fairseq_forward_with_padding(tmp_path: Path) -> None:
    checkpoint = text_checkpoint()
    config, state = convert_text(checkpoint)
    folder = write_text_folder(config, state, tmp_path / "d2v2_text", str(roberta_tokenizer(tmp_path / "tok")))
    ids = torch.tensor([[0, 5, 9, 7, 2, 1, 1], [0, 4, 6, 8, 9, 5, 2]])
    with torch.no_grad():
        encoder = UnimodalEncoder(
            EncoderConfig(family="data2vec-text", pretrained=str(folder)), "text", "model.text"
        ).eval()
        output = encoder(ids, ids.ne(1).long())
    reference = fairseq_text_forward(checkpoint["model"], ids)
    keep = ids.ne(1)
    torch.testing.assert_close(output[keep], reference[keep], rtol=1e-4, atol=1e-4)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder)("ab")["input_ids"][0] == 0  # the tokenizer travels with the weights


def test_script_converts_both_modalities_and_reports_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = runpy.run_path(str(ROOT / "scripts" / "convert_d2v2.py"))["main"]
    torch.save(image_checkpoint(), tmp_path / "image.pt")
    torch.save(text_checkpoint(), tmp_path / "text.pt")
    assert main(["--checkpoint", str(tmp_path / "image.pt"), "--out", str(tmp_path / "img")]) == 0
    assert "data2vec 2.0 image, 3 blocks, width 32, 2 heads, image 32, patch 8" in capsys.readouterr().out
    assert main(["--checkpoint", str(tmp_path / "text.pt"), "--out", str(tmp_path / "txt")]) == 2
    assert "--tokenizer: required for text" in capsys.readouterr().err
    tokenizer = str(roberta_tokenizer(tmp_path / "tok"))
    assert (
        main(["--checkpoint", str(tmp_path / "text.pt"), "--out", str(tmp_path / "txt"), "--tokenizer", tokenizer]) == 0
    )
    assert (tmp_path / "txt" / "tokenizer.json").is_file()
    assert main(["--checkpoint", str(tmp_path / "image.pt"), "--modality", "text", "--out", str(tmp_path / "x")]) == 2
    assert "holds image encoders, not text" in capsys.readouterr().err and not (tmp_path / "x").exists()


def _edited(edit: str) -> dict[str, object]:
    checkpoint = image_checkpoint()
    state, settings = checkpoint["model"], checkpoint["cfg"]["model"]
    if edit == "pre_ln":
        settings["layer_norm_first"] = True
    elif edit == "bare":
        return dict(state)
    elif edit == "two_extra_tokens":
        state[f"{IMAGE}.extra_tokens"] = torch.randn(1, 2, WIDTH)
    elif edit == "alibi":
        state[f"{IMAGE}.alibi_scale"] = torch.ones(1, 1, 1, 1, 1)
    elif edit == "no_qkv_bias":
        del state["blocks.1.attn.qkv.bias"]
    elif edit == "stray":
        state[f"{IMAGE}.local_encoder.extra.weight"] = torch.ones(2)
    elif edit == "not_d2v2":
        return {"model": {"encoder.weight": torch.ones(2)}}
    return checkpoint


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("pre_ln", "pre-LayerNorm model"),
        ("bare", "no model.num_heads in its config .* pass --num-heads"),
        ("two_extra_tokens", r"extra_tokens' has shape \(1, 2, 32\), expected \(1, 1, 32\)"),
        ("alibi", "uses ALiBi attention biases"),
        ("no_qkv_bias", "'blocks.1' has no attn.qkv.bias"),
        ("stray", "unexpected tensor 'modality_encoders.IMAGE.local_encoder.extra.weight'"),
        ("not_d2v2", "no 'modality_encoders.\\*' tensors"),
    ],
)
def test_unsupported_checkpoints_get_one_line_errors(edit: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        convert_image(_edited(edit))
    assert convert_image(_edited("bare"), num_heads=4)[0].num_attention_heads == 4
