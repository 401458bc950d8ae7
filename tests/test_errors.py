"""UserError separates bad input from bugs: one `error:` line and exit 2 for the first, a traceback for the rest."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_index import _export

from mmd2v2 import cli
from mmd2v2.config import ConfigError
from mmd2v2.data.images import open_rgb
from mmd2v2.errors import ImageDecodeError, MissingExtraError, MissingFileError, UserError
from mmd2v2.models.exported import load_export, resolve_export
from mmd2v2.vl.tasks.base import BadRecordError

ROOT = Path(__file__).resolve().parents[1]


def test_error_types_keep_the_bases_callers_catch() -> None:
    assert issubclass(UserError, ValueError)
    assert issubclass(ConfigError, UserError) and issubclass(BadRecordError, UserError)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(MissingExtraError, ImportError)


def test_guarded_turns_a_user_error_into_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def bad_input(args: argparse.Namespace) -> int:
        raise MissingFileError("--ckpt: '/nowhere' is not a folder")

    monkeypatch.setattr(cli, "run_eval", bad_input)
    assert cli.main(["eval", "--ckpt", "/nowhere"]) == 2
    assert capsys.readouterr().err == "error: --ckpt: '/nowhere' is not a folder\n"


def test_guarded_lets_a_bug_escape_with_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_invariant(args: argparse.Namespace) -> int:
        raise ValueError("internal: shapes differ")

    monkeypatch.setattr(cli, "run_eval", broken_invariant)
    with pytest.raises(ValueError, match="internal: shapes differ"):
        cli.main(["eval", "--ckpt", "/nowhere"])
    monkeypatch.setattr(cli, "run_eval", lambda args: {}["missing"])
    with pytest.raises(KeyError):
        cli.main(["eval", "--ckpt", "/nowhere"])


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("errors") / "run" / "export")


def test_truncated_weights_are_one_line_naming_the_file(export: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(export, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    run = subprocess.run(
        [sys.executable, "eval/retrieval.py", "--ckpt", str(damaged), "--device", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"error: {weights}: damaged") and run.stderr.count("\n") == 1


def test_a_config_that_is_not_yaml_is_one_line_naming_the_file(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(export, damaged)
    (damaged / "config.yaml").write_text("model: [unclosed\n")
    assert cli.main(["eval", "--ckpt", str(damaged)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {damaged / 'config.yaml'}: damaged")


def test_resolve_export_takes_a_run_or_an_export_folder_and_names_anything_else(export: Path, tmp_path: Path) -> None:
    assert resolve_export(export) == export and resolve_export(export.parent) == export
    with pytest.raises(MissingFileError, match=f"--ckpt: '{tmp_path / 'nope'}' is not a folder"):
        resolve_export(tmp_path / "nope")
    with pytest.raises(MissingFileError, match="student.init_from: .* neither an mmd2v2 export nor a run folder"):
        resolve_export(tmp_path, "student.init_from")
    assert load_export(resolve_export(export.parent)).metadata["step"] == 0


def test_open_rgb_names_the_file_and_the_reason(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=f"'{empty}' is not a readable image \\(not an image format") as caught:
        open_rgb(empty)
    assert caught.value.reason == "not an image format PIL can read"
    with pytest.raises(FileNotFoundError, match="--image: 'missing.png' does not exist"):
        open_rgb("missing.png", "--image: 'missing.png'")
