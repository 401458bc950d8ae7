"""Tolerant image decoding shared by every reader: a file (or upload) in, an RGB image or an ImageDecodeError out.

Callers keep their own policy for a bad image (skip and count, HTTP 4xx, a one-line CLI error); this module only
decodes and says which file failed and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from mmd2v2.errors import ImageDecodeError, MissingImageError

# what PIL raises for a missing, truncated, corrupt or oversized image
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_reason(error: BaseException) -> str:
    """A short reason for a failed decode, without the file name."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image format PIL can read"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def open_rgb(source: str | Path | BinaryIO, name: str | None = None, draft_size: int | None = None) -> Image.Image:
    """Decode an image file or stream fully into an RGB image.

    `name` labels it in the error (default: the path); `draft_size` lets JPEG decode at a reduced scale that stays
    >= draft_size on each side. A missing or undecodable image raises ImageDecodeError naming it and the reason."""
    label = name or f"'{source}'"
    try:
        with Image.open(source) as image:
            if draft_size is not None:
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
    except DECODE_ERRORS as error:
        reason = decode_reason(error)
        failure = (
            MissingImageError(f"{label} does not exist")
            if isinstance(error, FileNotFoundError)
            else ImageDecodeError(f"{label} is not a readable image ({reason})")
        )
        failure.reason = reason
        raise failure from None


def undecodable_reason(source: str | Path) -> str:
    """Why `source` is not a readable image, for reports on files a loader skipped (it is decoded once more)."""
    try:
        open_rgb(source)
    except ImageDecodeError as error:
        return error.reason
    return "decoded when tried again"
