"""Third-party checkpoints are read for conversion without running code stored in their pickles."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmd2v2.models.checkpoint_reader import PickledObject, read_checkpoint


class RunsACommand:
    """Unpickling this with plain pickle would run `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_training_checkpoint_objects_become_inert_and_tensors_survive(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    weights = {"w": torch.randn(2, 3), "p": torch.nn.Parameter(torch.ones(2)), "h": torch.zeros(4, dtype=torch.float16)}
    torch.save(
        {
            "model": weights,
            "cfg": {"model": {"num_heads": 2, "eps": 1e-6}},
            "args": argparse.Namespace(lr=1.0),
            "extra_state": {"meter": np.float64(3.0), "array": np.zeros(3)},
            "payload": RunsACommand(marker),
        },
        tmp_path / "fairseq.pt",
    )
    loaded = read_checkpoint(tmp_path / "fairseq.pt")
    assert not marker.exists()  # os.system was never called
    assert isinstance(loaded["payload"], PickledObject) and isinstance(loaded["args"], PickledObject)
    assert loaded["cfg"] == {"model": {"num_heads": 2, "eps": 1e-6}}
    for name, tensor in weights.items():
        assert torch.equal(loaded["model"][name], tensor.detach()) and loaded["model"][name].dtype == tensor.dtype


def test_plain_state_dicts_safetensors_and_bad_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.save({"a": torch.ones(2)}, tmp_path / "plain.pt")
    save_file({"b": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_checkpoint(tmp_path / "plain.pt")["a"], torch.ones(2))
    assert torch.equal(read_checkpoint(tmp_path / "w.safetensors")["b"], torch.zeros(3))
    with pytest.raises(FileNotFoundError, match="--checkpoint: '.*missing.pt' does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt' is not a readable torch checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, expected a dict"):
        read_checkpoint(tmp_path / "list.pt")
