"""The contrastive and distillation losses see the global batch: 2 ranks (gloo, CPU) = 1 process on the same batch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mmd2v2.config import LossConfig
from mmd2v2.losses.contrastive import excluded_columns
from mmd2v2.losses.distributed import INVALID
from mmd2v2.losses.objective import MMD2V2Objective
from mmd2v2.models.dual_encoder import ModalityOutput

GLOBAL, FEATURES, EMBED, TEACHER = 8, 6, 8, 5
KD_KINDS = ("contrastive", "mse")  # InfoNCE against gathered teacher vectors + bank, and plain regression
IDS = torch.tensor([0, 1, 1, 2, 3, 4, 4, 5])  # captions of the same image on one rank and across ranks


def _global_batch(step: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(100 + step)
    return (
        torch.randn(GLOBAL, FEATURES, generator=generator),
        torch.randn(GLOBAL, FEATURES, generator=generator),
        torch.randn(GLOBAL, TEACHER, generator=generator),
        IDS + 10 * step,
    )


def _train(rank: int, world: int, init_file: str, out: str) -> None:
    """Per distillation kind: two SGD steps of a linear 'student' under the full objective (banks on); saves the
    losses and gradients."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {kind: _steps(rank, world, kind) for kind in KD_KINDS}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def _steps(rank: int, world: int, kd_kind: str) -> dict[str, list[torch.Tensor]]:
    torch.manual_seed(0)
    image_net, text_net = nn.Linear(FEATURES, EMBED + TEACHER), nn.Linear(FEATURES, EMBED + TEACHER)
    objective = MMD2V2Objective(
        LossConfig(kd_kind=kd_kind, contrastive_memory_bank=32, kd_bank_size=32), EMBED, TEACHER
    )
    parameters = [*image_net.parameters(), *text_net.parameters(), *objective.parameters()]
    local = GLOBAL // world
    rows = slice(rank * local, (rank + 1) * local)
    record: dict[str, list[torch.Tensor]] = {"loss": [], "grads": []}
    for step in range(2):  # the second step also contrasts against the banks filled by the first
        images, texts, teacher, ids = (t[rows] for t in _global_batch(step))
        out_i, out_t = image_net(images), text_net(texts)
        image = ModalityOutput(nn.functional.normalize(out_i[:, :EMBED], dim=-1), out_i[:, EMBED:])
        text = ModalityOutput(nn.functional.normalize(out_t[:, :EMBED], dim=-1), out_t[:, EMBED:])
        loss = objective(image, text, teacher, ids, batch_size=local)["loss"]
        for p in parameters:
            p.grad = None
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in parameters])
        for tensor in (loss_sum := loss.detach().clone(), grads):  # what data-parallel engines do: average
            dist.all_reduce(tensor)
            tensor /= world
        record["loss"].append(loss_sum)
        record["grads"].append(grads)
        with torch.no_grad():
            for p, g in zip(parameters, torch.split(grads, [p.numel() for p in parameters])):
                p -= 0.5 * g.view_as(p)
    return record


def test_two_ranks_give_the_single_process_loss_and_gradients(tmp_path: Path) -> None:
    results = {}
    for world in (1, 2):
        out = tmp_path / f"world{world}.pt"
        mp.spawn(_train, args=(world, str(tmp_path / f"init{world}"), str(out)), nprocs=world, join=True)
        results[world] = torch.load(out, weights_only=True)
    for kind in KD_KINDS:
        one, two = results[1][kind], results[2][kind]
        for step in range(2):
            torch.testing.assert_close(two["loss"][step], one["loss"][step], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(two["grads"][step], one["grads"][step], rtol=1e-4, atol=1e-6)
        assert one["grads"][1].abs().sum() > 0


def test_padding_rows_are_never_candidates_and_the_own_pair_is_the_target() -> None:
    queries = torch.tensor([3, 5])
    keys = torch.tensor([9, 3, 5, 3, INVALID, INVALID])  # this rank's rows at offset 1, another view of image 3 at 3
    assert excluded_columns(queries, keys, offset=1).tolist() == [
        [False, False, False, True, True, True],
        [False, False, False, False, True, True],
    ]
    assert excluded_columns(queries, torch.tensor([3, -1]), offset=None).tolist() == [[True, False], [False, False]]
