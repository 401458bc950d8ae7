"""mmd2v2: image-text retrieval from pretrained unimodal encoders (MM-D2V2).

The Python API (`mmd2v2.load`, `mmd2v2.open_index`, in mmd2v2/api.py) is imported on first use, so importing a
subpackage stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmd2v2.api import Index, Model, load, open_index

__version__ = "0.1.0"
__all__ = ["Index", "Model", "load", "open_index"]


def __getattr__(name: str) -> Any:
    """The API's names, imported from mmd2v2.api when first asked for."""
    if name in __all__:
        from mmd2v2 import api

        return getattr(api, name)
    raise AttributeError(f"module 'mmd2v2' has no attribute '{name}'")
