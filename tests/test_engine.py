"""DeepSpeed set-up details that users feel: a single CPU process compiles nothing it does not use."""

from __future__ import annotations

from deepspeed.comm.torch import build_shm_op

from mmd2v2.runtime.engine import skip_shared_memory_kernels


def test_single_cpu_process_does_not_build_the_shared_memory_all_reduce() -> None:
    skip_shared_memory_kernels()
    assert build_shm_op() is None  # DeepSpeed's own builder now declines (no ninja run on a fresh machine)
