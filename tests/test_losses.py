"""Losses against hand-worked values: InfoNCE with same-image masking, memory banks, distillation."""

from __future__ import annotations

import math

import pytest
import torch

from mmd2v2.losses import ContrastiveDistillation, ContrastiveLoss, FeatureQueue, regression_distillation


def ce(logits: list[float], target: int) -> float:
    """Cross-entropy of one row, by hand."""
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_infonce_hand_example() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    out = ContrastiveLoss(init_temperature=0.5)(image, text, torch.tensor([0, 1]))
    # scale 1/T = 2; image→text logits [[2, 1.2], [0, 1.6]], text→image [[2, 0], [1.2, 1.6]]
    i2t = (ce([2, 1.2], 0) + ce([0, 1.6], 1)) / 2
    t2i = (ce([2, 0], 0) + ce([1.2, 1.6], 1)) / 2
    assert out["contrastive_i2t"].item() == pytest.approx(i2t, rel=1e-6)
    assert out["contrastive_t2i"].item() == pytest.approx(t2i, rel=1e-6)
    assert out["contrastive"].item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    assert out["logit_scale"].item() == pytest.approx(2.0)


def test_captions_of_the_same_image_are_not_negatives() -> None:
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1: the same image, two captions
    text = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    ids = torch.tensor([0, 0, 1])
    loss = ContrastiveLoss(init_temperature=1.0)(image, text, ids)
    # image→text rows: [1, .8, 0] target 0 without column 1; [1, .8, 0] target 1 without column 0; [0, .6, 1] target 2
    i2t = (ce([1, 0], 0) + ce([0.8, 0], 0) + ce([0, 0.6, 1], 2)) / 3
    # text→image rows: [1, 1, 0] target 0 without col 1; [.8, .8, .6] target 1 without col 0; [0, 0, 1] target 2
    t2i = (ce([1, 0], 0) + ce([0.8, 0.6], 0) + ce([0, 0, 1], 2)) / 3
    assert loss["contrastive"].item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    naive = ContrastiveLoss(init_temperature=1.0)(image, text, torch.tensor([0, 1, 2]))
    assert naive["contrastive"].item() > loss["contrastive"].item() + 0.1


def test_temperature_is_learnable_and_clamped() -> None:
    image, text, ids = torch.eye(3), torch.eye(3), torch.arange(3)
    loss = ContrastiveLoss(init_temperature=0.07)
    assert loss(image, text, ids)["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    loss(image, torch.roll(text, 1, 0), ids)["contrastive"].backward()
    assert loss.log_logit_scale.grad is not None and loss.log_logit_scale.grad.abs().item() > 0
    assert ContrastiveLoss(init_temperature=0.001)(image, text, ids)["logit_scale"].item() == pytest.approx(100.0)
    frozen = ContrastiveLoss(learnable_temperature=False)
    out = frozen(image.requires_grad_(), text, ids)
    out["contrastive"].backward()
    assert not frozen.log_logit_scale.requires_grad and frozen.log_logit_scale.grad is None
    assert set(out) == {"contrastive", "contrastive_i2t", "contrastive_t2i", "logit_scale"}


def _reference_bank_loss(
    queries: torch.Tensor, keys: torch.Tensor, key_ids: list[int], row_ids: list[int], scale: float
) -> float:
    """Mean CE by explicit loops: row i's candidates are key i plus every key of another image."""
    total = 0.0
    for i, query in enumerate(queries):
        columns = [j for j in range(len(keys)) if j == i or key_ids[j] != row_ids[i]]
        logits = [scale * float(query @ keys[j]) for j in columns]
        total += ce(logits, columns.index(i))
    return total / len(queries)


def test_contrastive_memory_bank_adds_past_negatives_except_same_image() -> None:
    torch.manual_seed(0)
    loss = ContrastiveLoss(init_temperature=0.5, memory_bank_size=8, embed_dim=4)
    first = (
        torch.nn.functional.normalize(torch.randn(2, 4), dim=-1),
        torch.nn.functional.normalize(torch.randn(2, 4), dim=-1),
    )
    loss(first[0], first[1], torch.tensor([0, 1]))
    assert loss.image_bank is not None and loss.text_bank is not None
    queued_text, queued_ids = loss.text_bank.contents()
    assert torch.equal(queued_text, first[1]) and queued_ids.tolist() == [0, 1]
    assert torch.equal(loss.image_bank.contents()[0], first[0])
    image, text = (torch.nn.functional.normalize(torch.randn(2, 4), dim=-1) for _ in range(2))
    out = loss(image, text, torch.tensor([1, 2]))
    texts = torch.cat([text, first[1]])
    images = torch.cat([image, first[0]])
    i2t = _reference_bank_loss(image, texts, [1, 2, 0, 1], [1, 2], 2.0)
    t2i = _reference_bank_loss(text, images, [1, 2, 0, 1], [1, 2], 2.0)
    assert out["contrastive_i2t"].item() == pytest.approx(i2t, rel=1e-5)
    assert out["contrastive_t2i"].item() == pytest.approx(t2i, rel=1e-5)
    assert int(loss.text_bank.count) == 4


def test_feature_queue_fills_wraps_and_round_trips() -> None:
    queue = FeatureQueue(size=4, dim=2)
    assert queue.contents()[0].shape == (0, 2)  # never random initial rows
    queue.enqueue(torch.tensor([[1.0, 1], [2, 2], [3, 3]], dtype=torch.float64), torch.tensor([10, 20, 30]))
    features, labels = queue.contents()
    assert features.shape == (3, 2) and features.dtype == torch.float32 and labels.shape == (3,)
    assert features[:, 0].tolist() == [1, 2, 3] and labels.tolist() == [10, 20, 30]
    queue.enqueue(torch.tensor([[4.0, 4], [5, 5]]), torch.tensor([40, 50]))  # 5 overwrites the oldest (1)
    features, labels = queue.contents()
    assert features[:, 0].tolist() == [5, 2, 3, 4] and labels.tolist() == [50, 20, 30, 40]
    queue.enqueue(torch.arange(12.0).view(6, 2))  # bigger than the queue: its last 4 rows are kept
    assert sorted(queue.contents()[0][:, 0].tolist()) == [4, 6, 8, 10]
    assert queue.contents()[1].tolist() == [-1, -1, -1, -1]
    copy = FeatureQueue(size=4, dim=2)
    copy.load_state_dict(queue.state_dict())
    assert torch.equal(copy.contents()[0], queue.contents()[0]) and int(copy.ptr) == int(queue.ptr)
    assert torch.equal(copy.contents()[1], queue.contents()[1]) and int(copy.count) == 4


def test_feature_queue_stays_float32_when_the_module_is_cast() -> None:
    queue = FeatureQueue(size=2, dim=2).bfloat16()
    queue.enqueue(torch.tensor([[0.5, 0.0]], dtype=torch.bfloat16))
    assert queue.features.dtype == torch.float32 and queue.labels.dtype == torch.long
    queue.enqueue(torch.tensor([[1.0 + 2**-12, 0.0]]))
    assert queue.contents()[0][1, 0].item() == 1.0 + 2**-12


def test_regression_distillation_kinds() -> None:
    student, target = torch.tensor([[1.0, 2.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    assert regression_distillation(student, target, "mse").item() == pytest.approx((1 + 4 + 1 + 1) / 4)
    assert regression_distillation(student, target, "l1").item() == pytest.approx((1 + 2 + 1 + 1) / 4)
    unit = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert regression_distillation(unit, torch.tensor([[0.0, 1.0], [2.0, 2.0]]), "cosine").item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="distillation kind 'huber' is unknown"):
        regression_distillation(student, target, "huber")
    with pytest.raises(ValueError, match=r"student \(2, 2\) vs teacher \(2, 3\)"):
        regression_distillation(student, torch.zeros(2, 3))


def test_contrastive_distillation_against_teacher_bank() -> None:
    kd = ContrastiveDistillation(teacher_dim=2, bank_size=4, init_temperature=1.0)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    student_image = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    student_text = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert int(kd.bank.count) == 0
    out = kd(student_image, student_text, teacher, torch.tensor([0, 1]))
    kd_image = (ce([1, 0], 0) + ce([1, 0], 1)) / 2
    kd_text = (ce([0, 1], 0) + ce([0, 1], 1)) / 2
    assert out["kd_image"].item() == pytest.approx(kd_image, rel=1e-6)
    assert out["kd"].item() == pytest.approx(0.5 * kd_image + 0.5 * kd_text, rel=1e-6)
    assert int(kd.bank.count) == 2
    # second step: image 1 again and a new image 2; the bank's entry for image 1 is excluded for row 0
    teacher2 = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    out2 = kd(
        torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.6, 0.8]]), teacher2, torch.tensor([1, 2])
    )
    keys = torch.cat([teacher2, teacher])
    image_ref = _reference_bank_loss(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), keys, [1, 2, 0, 1], [1, 2], 1.0)
    text_ref = _reference_bank_loss(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), keys, [1, 2, 0, 1], [1, 2], 1.0)
    assert out2["kd_image"].item() == pytest.approx(image_ref, rel=1e-6)
    assert out2["kd_text"].item() == pytest.approx(text_ref, rel=1e-6)
    assert ContrastiveDistillation(2, 4, init_temperature=1e-4)(teacher, teacher, teacher, torch.tensor([0, 1]))[
        "kd_logit_scale"
    ].item() == pytest.approx(100.0)


def test_contrastive_distillation_masks_duplicate_images_and_trains_only_the_student_side() -> None:
    kd = ContrastiveDistillation(teacher_dim=2, bank_size=8, init_temperature=0.5)
    teacher = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0]], requires_grad=True)  # rows 1 and 2: the same image
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    out = kd(student, student, teacher, torch.tensor([0, 1, 1]))
    # scale 2, keys [1, 0], [0, 1], [0, 1]: row 0 keeps all; row 1 drops column 2, row 2 column 1
    r = 2 / math.sqrt(2)
    expected = (ce([2, 0, 0], 0) + ce([0, 2], 1) + ce([r, r], 1)) / 3
    assert out["kd_image"].item() == pytest.approx(expected, rel=1e-6)
    assert out["kd"].item() == pytest.approx(expected, rel=1e-6)
    assert out["kd_logit_scale"].item() == pytest.approx(2.0) and not out["kd_logit_scale"].requires_grad
    out["kd"].backward()
    assert teacher.grad is None and student.grad is not None
    assert kd.log_logit_scale.grad is not None and kd.log_logit_scale.grad.abs().item() > 0
    assert kd.bank.contents()[1].tolist() == [0, 1, 1]


@pytest.mark.parametrize("kind", ["mse", "l1", "cosine", "contrastive"])
def test_objective_kd_is_the_mean_of_the_image_and_text_terms(kind: str) -> None:
    from mmd2v2.config import LossConfig
    from mmd2v2.losses.objective import MMD2V2Objective
    from mmd2v2.models.dual_encoder import ModalityOutput

    # one definition for every kind: kd = ½ (image term + text term), and the total adds kd_weight × kd
    objective = MMD2V2Objective(
        LossConfig(contrastive_weight=0.0, kd_kind=kind, kd_weight=3.0, kd_init_temperature=1.0),
        embed_dim=2,
        teacher_dim=2,
    )
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = ModalityOutput(torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    text = ModalityOutput(torch.zeros(2, 2), torch.tensor([[0.0, 2.0], [0.0, 1.0]]))
    out = objective(image, text, teacher, torch.tensor([0, 1]))
    by_hand = {  # image rows vs teacher: [0, 0] and [1, 1] apart; text rows: [1, 2] and [0, 0]
        "mse": ((0 + 0 + 1 + 1) / 4, (1 + 4 + 0 + 0) / 4),
        "l1": ((0 + 0 + 1 + 1) / 4, (1 + 2 + 0 + 0) / 4),
        "cosine": ((0 + 1) / 2, (1 + 0) / 2),
        "contrastive": ((ce([1, 0], 0) + ce([1, 0], 1)) / 2, (ce([0, 1], 0) + ce([0, 1], 1)) / 2),
    }[kind]
    assert out["kd_image"].item() == pytest.approx(by_hand[0], rel=1e-6)
    assert out["kd_text"].item() == pytest.approx(by_hand[1], rel=1e-6)
    assert out["kd"].item() == pytest.approx((by_hand[0] + by_hand[1]) / 2, rel=1e-6)
    assert out["loss"].item() == pytest.approx(3.0 * (by_hand[0] + by_hand[1]) / 2, rel=1e-6)


def test_objective_refuses_distillation_without_a_teacher() -> None:
    from mmd2v2.config import LossConfig
    from mmd2v2.losses.objective import MMD2V2Objective

    with pytest.raises(ValueError, match=r"loss.kd_weight is 0.5 but there is no teacher \(teacher.enabled: false\)"):
        MMD2V2Objective(LossConfig(kd_weight=0.5), embed_dim=2, teacher_dim=None)
    assert MMD2V2Objective(LossConfig(kd_weight=0.0), embed_dim=2, teacher_dim=None).contrastive is not None
