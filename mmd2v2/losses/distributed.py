"""The global batch across data-parallel ranks: each rank's rows gathered (with gradients) in rank order.

Every rank pads its micro-batch to the configured size (a batch that lost undecodable samples is shorter), so
the gather has a fixed shape and needs no size exchange; padded rows carry the INVALID id and are never used as
candidates. A rank's queries are its own rows, at `offset = rank × size` in the gathered keys. Each rank's loss is
the mean over its own queries; the engine's gradient averaging then gives exactly the gradient of the global mean.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor

INVALID = -2  # id of a padding row (real image ids are >= 0; -1 marks unlabelled bank entries)


def data_parallel_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(rows: Tensor, size: int) -> Tensor:
    """All ranks' rows (each padded with zeros to `size`), concatenated in rank order; gradients reach their owner."""
    _, world = data_parallel_world()
    if world == 1:
        return rows
    padded = F.pad(rows, (0, 0, 0, size - len(rows))) if len(rows) < size else rows
    return torch.cat(dist_fn.all_gather(padded), dim=0)


def gather_ids(ids: Tensor, size: int) -> tuple[Tensor, int]:
    """All ranks' ids (padding rows = INVALID) and the offset of this rank's rows among them."""
    rank, world = data_parallel_world()
    if world == 1:
        return ids, 0
    padded = F.pad(ids, (0, size - len(ids)), value=INVALID) if len(ids) < size else ids
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat(gathered), rank * size
