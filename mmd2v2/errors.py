"""The package's error types: `UserError` for input the user controls, everything else is a bug.

A `UserError` (bad config, bad records, a missing or damaged user file, a refusal, a missing optional extra)
carries a one-line message naming the file or key and what was expected; the command line prints it as
`error: ...` and exits 2. Any other exception is an internal failure and keeps its traceback.
`UserError` subclasses ValueError, and its subclasses add the standard base a caller would catch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(ValueError):
    """Input the user controls is wrong: the message says which and what was expected."""


class ConfigError(UserError):
    """A config value, key, file or override is invalid (the message names the key)."""


class BadRecordError(UserError):
    """A task record is malformed (the message names the file and the record)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (or is not the kind expected)."""


class ExistingFileError(UserError, FileExistsError):
    """Refused to overwrite a file or folder the user named."""


class BusyError(UserError, TimeoutError):
    """Another process holds what this one needs (e.g. a lock on an index folder)."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency (a pip extra) is not installed; the message says which to install."""


class DamagedFileError(UserError):
    """A file exists but cannot be read as what it should be (truncated, corrupt, wrong format)."""


class ImageDecodeError(UserError):
    """An image cannot be decoded: the message names the file and the reason, `reason` holds the reason alone."""

    reason: str = ""


class MissingImageError(ImageDecodeError, FileNotFoundError):
    """An image file that does not exist."""


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Within the block, any failure to parse `path` becomes a one-line DamagedFileError naming the file.

    Keep the block to the parsing call: everything raised in it is blamed on the file."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - whatever a parser raises on a damaged file, the file is to blame
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise DamagedFileError(f"{path}: damaged or not in the expected format ({reason})") from None
