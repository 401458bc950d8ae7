"""BEiT-2 checkpoints in timm/unilm layout → HF BeitModel folders the teacher loads (numbers vs timm: test_timm_encoder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmd2v2.config import TeacherConfig
from mmd2v2.models.convert_beit import convert_beit_state, write_beit_folder
from mmd2v2.models.teacher import ImageTeacher

ROOT = Path(__file__).parent.parent
WIDTH, HEADS, DEPTH, PATCH, SIZE = 32, 2, 2, 8, 32


def unilm_beitv2_state() -> dict[str, torch.Tensor]:
    """A tiny BEiT-2 pretraining checkpoint with the key names and shapes of the unilm/timm code."""
    torch.manual_seed(0)
    rows = (2 * (SIZE // PATCH) - 1) ** 2 + 3
    state = {
        "cls_token": torch.randn(1, 1, WIDTH),
        "mask_token": torch.randn(1, 1, WIDTH),
        "patch_embed.proj.weight": torch.randn(WIDTH, 3, PATCH, PATCH),
        "patch_embed.proj.bias": torch.randn(WIDTH),
        "norm.weight": torch.randn(WIDTH),
        "norm.bias": torch.randn(WIDTH),
        "lm_head.weight": torch.randn(64, WIDTH),
        "cls_pt_layers.0.attn.qkv.weight": torch.randn(3 * WIDTH, WIDTH),
    }
    for i in range(DEPTH):
        block = {
            "norm1.weight": (WIDTH,),
            "norm1.bias": (WIDTH,),
            "attn.qkv.weight": (3 * WIDTH, WIDTH),
            "attn.q_bias": (WIDTH,),
            "attn.v_bias": (WIDTH,),
            "attn.relative_position_bias_table": (rows, HEADS),
            "attn.proj.weight": (WIDTH, WIDTH),
            "attn.proj.bias": (WIDTH,),
            "gamma_1": (WIDTH,),
            "gamma_2": (WIDTH,),
            "norm2.weight": (WIDTH,),
            "norm2.bias": (WIDTH,),
            "mlp.fc1.weight": (4 * WIDTH, WIDTH),
            "mlp.fc1.bias": (4 * WIDTH,),
            "mlp.fc2.weight": (WIDTH, 4 * WIDTH),
            "mlp.fc2.bias": (WIDTH,),
        }
        state.update({f"blocks.{i}.{k}": torch.randn(shape) for k, shape in block.items()})
        state[f"blocks.{i}.attn.relative_position_index"] = torch.zeros(17, 17, dtype=torch.long)
    return state


def test_converted_folder_holds_every_weight_and_loads_as_the_teacher(tmp_path: Path) -> None:
    state = unilm_beitv2_state()
    config, converted = convert_beit_state({"model": state}, image_size=SIZE)
    assert config["num_hidden_layers"] == DEPTH and config["num_attention_heads"] == HEADS
    assert config["use_relative_position_bias"] and not config["use_absolute_position_embeddings"]
    folder = write_beit_folder(config, converted, tmp_path / "beitv2")
    written = load_file(str(folder / "model.safetensors"))
    q, k, v = state["blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(written["encoder.layer.1.attention.attention.key.weight"], k)
    assert torch.equal(written["encoder.layer.1.attention.attention.value.bias"], state["blocks.1.attn.v_bias"])
    assert torch.equal(written["encoder.layer.0.lambda_2"], state["blocks.0.gamma_2"])
    assert not any("lm_head" in n or "cls_pt" in n or "mask_token" in n for n in written)
    assert not list(tmp_path.glob(".beitv2*"))

    pixels = torch.randn(2, 3, SIZE, SIZE)
    post = ImageTeacher(TeacherConfig(family="beit", pretrained=str(folder), target="post_norm"))
    pre = ImageTeacher(TeacherConfig(family="beit", pretrained=str(folder), target="pre_norm"))
    post_cls, pre_cls = post(pixels), pre(pixels)
    norm = torch.nn.functional.layer_norm(pre_cls, (WIDTH,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    torch.testing.assert_close(post_cls, norm, atol=1e-5, rtol=1e-5)  # post_norm = the checkpoint's norm of pre_norm
    assert torch.equal(post.model.embeddings.cls_token, state["cls_token"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("blocks.0.attn.q_bias"), "missing 'blocks.0.attn.q_bias'"),
        (lambda s: s.pop("cls_token"), "missing 'cls_token'"),
        (
            lambda s: s.update({"blocks.1.attn.qkv.weight": torch.zeros(3, WIDTH)}),
            "'blocks.1.attn.qkv.weight' has shape (3, 32)",
        ),
        (lambda s: s.update({"decoder.weight": torch.zeros(2)}), "unexpected tensor 'decoder.weight'"),
    ],
)
def test_bad_checkpoints_get_one_line_errors(edit: object, message: str) -> None:
    state = unilm_beitv2_state()
    edit(state)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert_beit_state(state, image_size=SIZE)
    with pytest.raises(ValueError, match="image size 64 with patch 8 needs 228"):
        convert_beit_state(unilm_beitv2_state(), image_size=64)


def test_script_converts_a_torch_checkpoint_without_running_pickled_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy
    import sys

    checkpoint = tmp_path / "beitv2.pth"
    torch.save({"model": unilm_beitv2_state()}, checkpoint)
    script = str(ROOT / "scripts" / "convert_beit2.py")
    main = runpy.run_path(script)["main"]
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--image-size", str(SIZE)]) == 0
    assert (tmp_path / "out" / "config.json").is_file() and "2 blocks, width 32" in capsys.readouterr().out
    torch.save({"model": unilm_beitv2_state(), "args": Path("pickled object")}, tmp_path / "with_objects.pth")
    assert (
        main(
            [
                "--checkpoint",
                str(tmp_path / "with_objects.pth"),
                "--out",
                str(tmp_path / "objects"),
                "--image-size",
                str(SIZE),
            ]
        )
        == 0
    )
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(tmp_path / "broken.pth"), "--out", str(tmp_path / "broken")]) == 2
    assert "is not a readable torch checkpoint" in capsys.readouterr().err and not (tmp_path / "broken").exists()
    assert sys.modules.get("timm") is None  # the conversion needs no timm
