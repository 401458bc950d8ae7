"""The Python API (mmd2v2.load, mmd2v2.open_index) and the README's example of it, run on a tiny model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmd2v2
from mmd2v2.cli import main
from mmd2v2.models.exported import load_export
from mmd2v2.retrieval.encode import encode_image_files, encode_texts

ROOT = Path(__file__).parent.parent
CAPTIONS = ["large red circle at top left", "small blue square at bottom right", "green cross"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paths the README example reads: a tiny export in runs/demo/export, images, an index of them."""
    from test_index import _export

    root = tmp_path_factory.mktemp("workspace")
    _export(root / "runs" / "demo" / "export")
    images = root / "data" / "demo" / "images" / "test"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for number in range(6200, 6206):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{number:06d}.png")
    export = str(root / "runs" / "demo" / "export")
    assert (
        main(["index", "build", "--ckpt", export, "--images", str(images), "--out", str(root / "runs" / "demo-index")])
        == 0
    )
    return root


def _image_paths(workspace: Path) -> list[Path]:
    return sorted((workspace / "data" / "demo" / "images" / "test").iterdir())


def test_readme_example_runs(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API\n") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    monkeypatch.chdir(workspace)
    capsys.readouterr()
    exec(compile(code.group(1), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "(2, 8) (2, 8)"
    assert len([line for line in lines if "'kind': 'image'" in line]) == 3  # three hits of the index's images


def test_embeddings_are_normalised_and_paths_give_what_pil_images_give(workspace: Path) -> None:
    model = mmd2v2.load(workspace / "runs" / "demo" / "export")
    paths = _image_paths(workspace)
    images = model.encode_images(paths, batch_size=4)
    texts = model.encode_texts(CAPTIONS)
    assert model.embed_dim == 8
    assert images.shape == (6, 8) and texts.shape == (3, 8)
    assert images.dtype == texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    pil = [Image.open(path) for path in paths]
    np.testing.assert_array_equal(model.encode_images(pil, batch_size=4), images)
    np.testing.assert_allclose(model.encode_images(str(paths[1])), images[1:2], atol=1e-6)  # one image, as a str
    np.testing.assert_allclose(model.encode_texts(CAPTIONS[0]), texts[:1], atol=1e-6)
    assert model.encode_texts([]).shape == (0, 8)
    assert model.preprocess(pil[0]).shape == (3, 32, 32)
    assert model.tokenizer(CAPTIONS[:1])["input_ids"]


def test_the_cli_encoders_give_the_same_vectors(workspace: Path) -> None:
    export = workspace / "runs" / "demo" / "export"
    model, bundle = mmd2v2.load(export), load_export(export)
    paths = _image_paths(workspace)
    cli_images, kept = encode_image_files(bundle, paths, batch_size=4)
    assert kept == list(range(len(paths)))
    np.testing.assert_allclose(model.encode_images(paths), cli_images, atol=1e-6)
    np.testing.assert_allclose(model.encode_texts(CAPTIONS), encode_texts(bundle, CAPTIONS).numpy(), atol=1e-6)


def test_a_run_folder_loads_its_export(workspace: Path) -> None:
    run, export = mmd2v2.load(workspace / "runs" / "demo"), mmd2v2.load(str(workspace / "runs" / "demo" / "export"))
    assert run.folder == export.folder
    np.testing.assert_array_equal(run.encode_texts(CAPTIONS), export.encode_texts(CAPTIONS))


def test_missing_folders_and_files_are_one_line_errors(workspace: Path, tmp_path: Path) -> None:
    for call in (lambda: mmd2v2.load(tmp_path / "nowhere"), lambda: mmd2v2.open_index(tmp_path / "nowhere")):
        with pytest.raises(FileNotFoundError) as error:
            call()
        assert str(tmp_path / "nowhere") in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="'.*nowhere.png' does not exist"):
        mmd2v2.load(workspace / "runs" / "demo").encode_images([tmp_path / "nowhere.png"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png' is not a readable image"):
        mmd2v2.load(workspace / "runs" / "demo").encode_images([tmp_path / "broken.png"])


def test_index_search_by_text_image_and_vector(workspace: Path) -> None:
    model = mmd2v2.load(workspace / "runs" / "demo")
    index = mmd2v2.open_index(workspace / "runs" / "demo-index", model=model)
    assert len(index) == 6 and index.model is model
    by_text = index.search(CAPTIONS[0], k=4)
    by_vector = index.search(model.encode_texts(CAPTIONS[0])[0], k=4)
    assert [h.id for h in by_text] == [h.id for h in by_vector]
    assert [h.score for h in by_text] == pytest.approx([h.score for h in by_vector], abs=1e-6)
    assert by_text[0].score >= by_text[-1].score and by_text[0].row["kind"] == "image"
    path = _image_paths(workspace)[2]
    for query in (Image.open(path), path):
        first = index.search(query, k=1)[0]
        assert Path(first.row["path"]).name == path.name and first.score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match=r"query vector has shape \(3,\)"):
        index.search([0.0, 1.0, 0.0])
    default = mmd2v2.open_index(workspace / "runs" / "demo-index")  # the checkpoint the index was built with
    assert default.model.folder == model.folder
    assert [h.id for h in default.search(CAPTIONS[0], k=4)] == [h.id for h in by_text]
