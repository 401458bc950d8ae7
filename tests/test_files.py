"""Atomic writes: a file or folder is either the old one or the complete new one, never half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmd2v2.files import atomic_folder, atomic_path, write_text_atomic


def test_atomic_path_publishes_on_success_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "vectors.npy"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]


def test_atomic_folder_replaces_the_folder_whole_or_not_at_all(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    with atomic_folder(folder) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(folder) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("killed")
    assert [p.name for p in folder.iterdir()] == ["a.txt"] and [p.name for p in tmp_path.iterdir()] == ["export"]
    with atomic_folder(folder) as tmp:
        (tmp / "b.txt").write_text("2")
    assert [p.name for p in folder.iterdir()] == ["b.txt"] and [p.name for p in tmp_path.iterdir()] == ["export"]
