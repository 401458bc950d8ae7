"""`mmd2v2 pretrain` end to end at toy size: image and text runs, bad files, resume, export → load → truncate → freeze."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmd2v2.config import EncoderConfig
from mmd2v2.data.demo_scenes import generate_scene, render
from mmd2v2.models.unimodal import UnimodalEncoder

ROOT = Path(__file__).parent.parent
TINY_IMAGE = [
    "model.config.image_size=32",
    "model.config.patch_size=8",
    "model.config.hidden_size=32",
    "model.config.num_hidden_layers=3",
    "model.config.num_attention_heads=2",
    "model.config.intermediate_size=64",
    "data.image_size=32",
    "objective.average_top_k_layers=2",
    "objective.decoder_dim=16",
    "objective.decoder_groups=4",
    "objective.clone_batch=2",
]
TINY_TEXT = [
    "model.config.hidden_size=32",
    "model.config.num_hidden_layers=3",
    "model.config.num_attention_heads=2",
    "model.config.intermediate_size=64",
    "objective.average_top_k_layers=2",
    "objective.decoder_dim=16",
    "objective.clone_batch=2",
]
STEPS = [
    "trainer.max_steps=4",
    "trainer.checkpoint_every=2",
    "trainer.micro_batch_size=8",
    "trainer.log_every=1",
    "trainer.progress_bar=false",
]


def _pretrain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmd2v2.cli", "pretrain", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 demo scenes as PNGs in two subfolders, plus a broken PNG, an empty file and a text file."""
    root = tmp_path_factory.mktemp("images")
    for index in range(24):
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(exist_ok=True)
        render(generate_scene(0, "unpaired_images", index), 32).save(folder / f"{index:03d}.png")
    (root / "a" / "broken.png").write_bytes((root / "a" / "001.png").read_bytes()[:60])
    (root / "b" / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    run = tmp_path_factory.mktemp("runs") / "image"
    result = _pretrain(
        "--config",
        "configs/pretrain_demo_image.yaml",
        "--output-dir",
        str(run),
        "data.demo_unpaired=false",
        f"data.images={image_folder}",
        *TINY_IMAGE,
        *STEPS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped files (not decodable as images): 3" in result.stdout
    return run


def test_image_run_writes_an_hf_folder_that_encoders_and_teachers_load(image_run: Path) -> None:
    model = image_run / "model"
    info = json.loads((model / "pretrain.json").read_text())
    assert info["steps"] == 4 and info["skipped_files"] == 3 and info["modality"] == "image"
    assert sorted(Path(p).name for p in info["first_skipped"]) == ["broken.png", "empty.jpg", "notes.txt"]
    assert json.loads((model / "preprocessor_config.json").read_text())["image_mean"] == [0.5, 0.5, 0.5]
    log = [json.loads(line) for line in (image_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and {"regression", "cls", "loss", "ema_decay"} <= set(log[0])
    assert list((image_run / "tb").glob("events.out.tfevents.*"))
    # load → truncate to 2 blocks → freeze all but the top one, as model.image.pretrained does
    encoder = UnimodalEncoder(
        EncoderConfig(family="data2vec2-vision", pretrained=str(model), num_blocks=2, freeze=True, unfreeze_top=1),
        "image",
        "model.image",
    )
    saved = load_file(model / "model.safetensors")
    loaded = encoder.model.state_dict()
    assert torch.equal(loaded["encoder.layer.1.output.dense.weight"], saved["encoder.layer.1.output.dense.weight"])
    assert "encoder.layer.2.output.dense.weight" not in loaded
    trainable = {n for n, p in encoder.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.1.") for n in trainable)
    assert encoder(torch.zeros(1, 3, 32, 32)).shape == (1, 17, 32)


def test_finished_run_is_reused_and_other_configs_are_refused(image_run: Path, image_folder: Path) -> None:
    args = [
        "--config",
        "configs/pretrain_demo_image.yaml",
        "--output-dir",
        str(image_run),
        "data.demo_unpaired=false",
        f"data.images={image_folder}",
        *TINY_IMAGE,
        *STEPS,
    ]
    again = _pretrain(*args)
    assert again.returncode == 0 and "already pretrained with this config" in again.stdout
    other = _pretrain(*args, "objective.mask_prob=0.5")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"error: '{image_run}' holds a pretraining run with another config (key 'objective.mask_prob' differs): "
        "use another --output-dir or delete the folder"
    ]


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    image_run: Path, image_folder: Path, tmp_path: Path
) -> None:
    run = tmp_path / "killed"
    shutil.copytree(image_run, run)
    shutil.rmtree(run / "checkpoints" / "step_00000004")  # as if killed after the step-2 checkpoint
    shutil.rmtree(run / "model")
    args = [
        "--config",
        "configs/pretrain_demo_image.yaml",
        "--output-dir",
        str(run),
        "data.demo_unpaired=false",
        f"data.images={image_folder}",
        *TINY_IMAGE,
        *STEPS,
    ]
    refused = _pretrain(*args)
    assert refused.returncode == 2 and "pass --resume to continue it" in refused.stderr
    resumed = _pretrain(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first, second = load_file(image_run / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_text_run_drops_bad_lines_and_saves_its_tokenizer(tmp_path: Path) -> None:
    captions = tmp_path / "captions.txt"
    lines = [c for i in range(8) for c in generate_scene(0, "unpaired_captions", i).captions]
    captions.write_bytes("\n".join(lines[:20]).encode() + b"\n\n\xff\xfe not utf-8\n" + "\n".join(lines[20:]).encode())
    run = tmp_path / "text"
    result = _pretrain(
        "--config",
        "configs/pretrain_demo_text.yaml",
        "--output-dir",
        str(run),
        "data.demo_unpaired=false",
        f"data.texts={captions}",
        *TINY_TEXT,
        *STEPS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "40 captions (2 lines dropped: empty or not UTF-8)" in result.stdout
    model = run / "model"
    assert json.loads((model / "pretrain.json").read_text())["dropped_lines"] == 2
    assert (model / "tokenizer.json").is_file()
    encoder = UnimodalEncoder(
        EncoderConfig(family="data2vec-text", pretrained=str(model), num_blocks=1, freeze=True), "text", "model.text"
    )
    assert encoder.fully_frozen and encoder(torch.tensor([[2, 5, 3]])).shape == (1, 3, 32)


def test_bad_model_folders_are_refused_in_one_line(image_run: Path, image_folder: Path, tmp_path: Path) -> None:
    common = [
        "--config",
        "configs/pretrain_demo_text.yaml",
        "--output-dir",
        str(tmp_path / "x"),
        "data.demo_unpaired=false",
        f"data.texts={ROOT / 'README.md'}",
        *STEPS,
    ]
    wrong = _pretrain(*common, f"model.pretrained={image_run / 'model'}")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "holds a 'data2vec2-vision' model, family 'data2vec-text' loads 'data2vec-text'" in wrong.stderr
    missing = _pretrain(*common, f"model.pretrained={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "nowhere" in missing.stderr
    no_folder = _pretrain(
        "--config",
        "configs/pretrain_demo_image.yaml",
        "--output-dir",
        str(tmp_path / "y"),
        "data.demo_unpaired=false",
        f"data.images={tmp_path / 'none'}",
        *STEPS,
    )
    assert no_folder.returncode == 2
    assert no_folder.stderr.strip() == f"error: config key 'data.images': '{tmp_path / 'none'}' is not a folder"


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("pretrain_*.yaml")))
def test_every_shipped_pretraining_config_starts(config: str, image_folder: Path, tmp_path: Path) -> None:
    """Each configs/pretrain_*.yaml pretrains 2 steps at toy size on its modality's data and exports."""
    modality = json.loads(_pretrain("--config", f"configs/{config}", "--dump-config").stdout)["model"]["modality"]
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(c for i in range(4) for c in generate_scene(0, "unpaired_captions", i).captions))
    data = [f"data.images={image_folder}"] if modality == "image" else [f"data.texts={captions}"]
    tiny = TINY_IMAGE if modality == "image" else TINY_TEXT
    result = _pretrain(
        "--config",
        f"configs/{config}",
        "--output-dir",
        str(tmp_path / "run"),
        "data.demo_unpaired=false",
        *data,
        *tiny,
        "trainer.max_steps=2",
        "trainer.micro_batch_size=4",
        "trainer.progress_bar=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun missing")
def test_two_processes_pretrain_one_model(image_folder: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node=2` (gloo on the CPU): each rank reads its share, rank 0 writes the one export."""
    run = tmp_path / "two"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "mmd2v2.cli", "pretrain"]
        + ["--config", "configs/pretrain_demo_image.yaml", "--output-dir", str(run), "data.demo_unpaired=false"]
        + [f"data.images={image_folder}", *TINY_IMAGE, *STEPS, "trainer.micro_batch_size=4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    info = json.loads((run / "model" / "pretrain.json").read_text())
    assert info["steps"] == 4 and info["skipped_files"] == 3
    encoder = UnimodalEncoder(
        EncoderConfig(family="data2vec2-vision", pretrained=str(run / "model"), num_blocks=3), "image", "model.image"
    )
    assert encoder(torch.zeros(1, 3, 32, 32)).shape == (1, 17, 32)
