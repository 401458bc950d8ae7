"""Test-only: let a torchvision whose compiled ops cannot load (a CUDA build beside a CPU torch) be imported.

The only torchvision for torch 2.13 on this machine's registry is a CUDA build; with the CPU torch its `_C`
library fails to load and its import then stops at the fake-kernel registration of `torchvision::nms`.
Declaring the two operator schemas it expects lets it import (image transforms work; detection ops do not).
The project never imports this: only the timm tests do, before anything imports torchvision.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_LIBRARIES: list[torch.library.Library] = []  # keeps the schema definitions registered


def register_missing_torchvision_ops() -> None:
    """Declare torchvision::nms and ::qnms when torchvision is installed but its compiled ops do not load."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None or _LIBRARIES:
        return
    try:
        for library in Path(spec.origin).parent.glob("_C*.so"):
            torch.ops.load_library(str(library))
        return
    except OSError:
        pass
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARIES.append(library)
