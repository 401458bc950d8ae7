"""data2vec 2.0 maths against hand-computed references: masks, top-K targets, instance norm, loss, EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmd2v2.models.data2vec2_vision import Data2Vec2VisionConfig, Data2Vec2VisionModel
from mmd2v2.pretrain.config import Data2Vec2Config
from mmd2v2.pretrain.data2vec2 import (
    Data2Vec2Student,
    EMATeacher,
    average_top_k,
    ema_decay_at,
    ema_update,
    feed_forward_outputs,
    instance_norm,
    regression_loss,
)
from mmd2v2.pretrain.masking import inverse_block_mask, span_mask


def test_inverse_block_mask_keeps_exactly_the_share_and_shows_blocks() -> None:
    rng = np.random.default_rng(0)
    masks = inverse_block_mask(50, 6, 6, mask_prob=0.75, block=2, rng=rng)
    assert masks.shape == (50, 36) and masks.dtype == torch.bool
    assert (masks.sum(1) == 27).all()  # round(0.25 * 36) = 9 visible in every sample
    # visible patches come from 2x2 blocks: most visible patches have a visible 4-neighbour
    grid = (~masks).reshape(50, 6, 6).numpy()
    lonely = 0
    for sample in grid:
        for r, c in zip(*np.nonzero(sample), strict=True):
            neighbours = [
                sample[rr, cc]
                for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
                if 0 <= rr < 6 and 0 <= cc < 6
            ]
            lonely += not any(neighbours)
    assert lonely < 0.2 * grid.sum()


def test_inverse_block_mask_is_reproducible_from_the_seed() -> None:
    a = inverse_block_mask(4, 4, 4, 0.8, 2, np.random.default_rng(7))
    b = inverse_block_mask(4, 4, 4, 0.8, 2, np.random.default_rng(7))
    assert torch.equal(a, b) and (a.sum(1) == 13).all()  # round(0.2 * 16) = 3 visible


def test_span_mask_masks_only_valid_positions() -> None:
    valid = torch.tensor(
        [
            [False, True, True, True, True, True, True, True, True, True, True, False],
            [False, True, True, True, False, False, False, False, False, False, False, False],
        ]
    )
    mask = span_mask(valid, 0.5, 1, np.random.default_rng(0))
    assert not (mask & ~valid).any()
    assert mask[0].sum() == 5 and mask[1].sum() == 2  # round(0.5 * 10), round(0.5 * 3)


def test_instance_norm_and_top_k_average_by_hand() -> None:
    # one sample, three positions, one channel: values 1, 2, 3 -> mean 2, variance 2/3
    y = torch.tensor([[[1.0], [2.0], [3.0]]])
    expected = (y - 2) / math.sqrt(2 / 3 + 1e-5)
    assert torch.allclose(instance_norm(y), expected, atol=1e-6)
    # with the last position invalid: values 1, 2 -> mean 1.5, variance 0.25; padding is zero
    valid = torch.tensor([[True, True, False]])
    masked = instance_norm(y, valid)
    assert torch.allclose(masked[0, :2, 0], torch.tensor([-0.5, 0.5]) / math.sqrt(0.25 + 1e-5), atol=1e-6)
    assert masked[0, 2, 0] == 0
    # top-2 average of three layers without normalisation: mean of the last two
    layers = [torch.full((1, 3, 1), v) for v in (10.0, 2.0, 4.0)]
    assert torch.allclose(average_top_k(layers, 2, normalise=False), torch.full((1, 3, 1), 3.0))
    # normalised: each layer normalised first (constant layers become zeros)
    assert torch.allclose(average_top_k([y, 2 * y], 2, normalise=True), expected, atol=1e-5)


def test_regression_loss_sums_channels_and_scales_by_root_width() -> None:
    prediction = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    target = torch.zeros(1, 4)
    assert regression_loss(prediction, target).item() == pytest.approx((1 + 4 + 9 + 16) / 2)


def test_ema_decay_schedule_and_update() -> None:
    cfg = Data2Vec2Config(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10)
    assert ema_decay_at(0, cfg) == pytest.approx(0.9)
    assert ema_decay_at(5, cfg) == pytest.approx(0.945)
    assert ema_decay_at(50, cfg) == pytest.approx(0.99)
    teacher, student = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
    ema_update(teacher, student, 0.75)
    assert teacher.weight.item() == pytest.approx(0.75 * 1 + 0.25 * 3)


def _tiny_image_encoder() -> Data2Vec2VisionModel:
    torch.manual_seed(0)
    return Data2Vec2VisionModel(
        Data2Vec2VisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )


def test_teacher_targets_are_the_averaged_normalised_feed_forward_outputs() -> None:
    encoder = _tiny_image_encoder()
    cfg = Data2Vec2Config(average_top_k_layers=2)
    teacher = EMATeacher(encoder, "image", cfg)
    pixels = torch.randn(2, 3, 32, 32)
    target, cls_target = teacher.targets(pixels)
    # by hand: run each block, recompute its FFN output before the residual sum
    hidden = encoder.embeddings(pixels)
    ffn = []
    for layer in encoder.encoder.layer:
        attended = layer.attention(hidden)
        ffn.append(layer.output.dense(torch.nn.functional.gelu(layer.intermediate.dense(attended)))[:, 1:])
        hidden = layer(hidden)
    normed = [
        (y - y.mean(1, keepdim=True)) / torch.sqrt(y.var(1, unbiased=False, keepdim=True) + 1e-5) for y in ffn[-2:]
    ]
    assert torch.allclose(target, (normed[0] + normed[1]) / 2, atol=1e-4)
    raw = ((ffn[-2] + ffn[-1]) / 2).mean(1)
    assert torch.allclose(cls_target, torch.nn.functional.layer_norm(raw - raw.mean(0), (32,)), atol=1e-4)
    with feed_forward_outputs(encoder) as outputs:
        encoder(pixel_values=pixels)
    assert len(outputs) == 3


def test_student_loss_is_the_regression_at_masked_patches_plus_cls() -> None:
    encoder = _tiny_image_encoder()
    cfg = Data2Vec2Config(decoder_dim=16, decoder_layers=2, decoder_groups=4, cls_loss=0.5, mask_prob=0.75)
    student = Data2Vec2Student(encoder, "image", cfg)
    pixels = torch.randn(2, 3, 32, 32)
    mask = inverse_block_mask(2, 4, 4, 0.75, 2, np.random.default_rng(0))
    targets, cls = torch.randn(2, 16, 32), torch.randn(2, 32)
    terms = student(pixels, mask, targets, cls_target=cls)
    assert terms["loss"].item() == pytest.approx(terms["regression"].item() + 0.5 * terms["cls"].item(), rel=1e-5)
    terms["loss"].backward()
    assert encoder.embeddings.patch_embeddings.projection.weight.grad is not None
    # the student never sees the masked patches: changing them leaves its CLS and the loss unchanged
    torch.manual_seed(1)
    first = student(pixels, mask, targets, cls_target=cls)["cls"]
    changed = pixels.clone()
    patch = int(mask[0].nonzero()[0])
    row, col = divmod(patch, 4)
    changed[0, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] += 5
    torch.manual_seed(1)
    assert torch.allclose(student(changed, mask, targets, cls_target=cls)["cls"], first)


def test_mlm_objective_is_cross_entropy_of_the_masked_tokens() -> None:
    from transformers import Data2VecTextConfig, Data2VecTextModel

    torch.manual_seed(0)
    encoder = Data2VecTextModel(
        Data2VecTextConfig(
            vocab_size=20,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        add_pooling_layer=False,
    )
    student = Data2Vec2Student(encoder, "text", Data2Vec2Config(kind="mlm"))
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    mask = torch.tensor([[False, True, False, True, False]])
    terms = student(ids, mask, ids, attention_mask=torch.ones_like(ids))
    # by hand: zero the masked tokens' word embeddings, encode, score the masked positions
    embeds = encoder.embeddings.word_embeddings(ids) * (~mask).unsqueeze(-1)
    hidden = encoder(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).last_hidden_state
    expected = torch.nn.functional.cross_entropy(student.lm_head(hidden[mask]), ids[mask])
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
