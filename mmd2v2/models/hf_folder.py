"""Write a converted checkpoint as a Hugging Face model folder, checked to load completely, published atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel

from mmd2v2.errors import UserError
from mmd2v2.files import atomic_folder


def write_hf_folder(
    config: PretrainedConfig,
    model_class: type[PreTrainedModel],
    state: dict[str, Tensor],
    out: Path,
    load_kwargs: dict[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write config.json + model.safetensors (+ whatever `extra` adds) under a temporary name, check that
    `model_class` loads every tensor from it (nothing missing, unexpected or mis-shaped), then rename it to `out`."""
    from safetensors.torch import save_file

    with atomic_folder(out, "converting") as tmp:
        config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        if extra is not None:
            extra(tmp)
        _, info = model_class.from_pretrained(tmp, output_loading_info=True, **(load_kwargs or {}))
        problems = [
            (kind, key)
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
            for key in sorted(map(str, info.get(kind) or []))
            if "relative_position_index" not in key
        ]
        if problems:
            kind, key = problems[0]
            raise UserError(
                f"checkpoint: converted {model_class.__name__} has {len(problems)} "
                f"{kind.replace('_', ' ')} (first: {key})"
            )
    return out
