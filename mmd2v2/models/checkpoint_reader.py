"""Read third-party checkpoints (.pt/.pth/.safetensors) for conversion without running code stored in them.

Plain state dicts load with `torch.load(weights_only=True)`. Training checkpoints of other frameworks (fairseq's
hold its config, meters and numpy scalars) pickle objects that `weights_only` refuses; those are read by an
unpickler that rebuilds tensors and builtin containers and turns every other pickled class into an inert stand-in
whose constructor and state setter do nothing, so no function named by the file is ever called.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

import torch

from mmd2v2.errors import DamagedFileError, MissingFileError

TENSOR_REBUILDERS = {
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Size"),
    ("torch", "device"),
    ("collections", "OrderedDict"),
}
SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "bytearray", "range"}


class PickledObject:
    """Stands in for an object of a class this reader does not trust; keeps nothing and runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def __setstate__(self, state: Any) -> None:
        del state


def _stand_in(module: str, name: str) -> type:
    """A fresh PickledObject subclass named after the refused global (for messages and debugging)."""
    return type(name, (PickledObject,), {"__module__": f"refused.{module}"})


def _trusted_global(module: str, name: str) -> Any | None:
    """The object for a global a tensor checkpoint legitimately needs, or None."""
    if module == "torch._utils" and name.startswith("_rebuild"):
        return getattr(torch._utils, name, None)
    if (module, name) in TENSOR_REBUILDERS:
        return getattr(__import__(module, fromlist=[name]), name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module == "builtins" and name in SAFE_BUILTINS:
        return __builtins__[name] if isinstance(__builtins__, dict) else getattr(__builtins__, name)
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Tensors and containers as usual; any other global becomes an inert PickledObject subclass."""

    def find_class(self, module: str, name: str) -> Any:
        trusted = _trusted_global(module, name)
        return trusted if trusted is not None else _stand_in(module, name)


RESTRICTED_PICKLE = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler, load=pickle.load, __name__="restricted_pickle"
)


def read_checkpoint(path: Path, option: str = "--checkpoint") -> dict[str, Any]:
    """A .safetensors file or a torch checkpoint as a dict, loaded without running pickled code."""
    if not path.is_file():
        raise MissingFileError(f"{option}: '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # objects beyond tensors: read them as inert stand-ins
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE)
        except Exception as error:  # noqa: BLE001 - any failure to parse the file becomes one line
            raise DamagedFileError(
                f"{option}: '{path}' is not a readable torch checkpoint ({str(error).splitlines()[0][:160]})"
            ) from None
    except Exception as error:  # noqa: BLE001
        raise DamagedFileError(
            f"{option}: '{path}' is not a readable torch checkpoint ({str(error).splitlines()[0][:160]})"
        ) from None
    if not isinstance(loaded, dict):
        raise DamagedFileError(
            f"{option}: '{path}' holds a {type(loaded).__name__}, expected a dict of tensors or a training checkpoint"
        )
    return loaded
