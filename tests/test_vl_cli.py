"""The VL path through `mmd2v2 vl ...` on tiny models: train (MD, MAD) and evaluate on the demo task and on
fixtures in the official formats, run a protocol into a table, and fail on bad input with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT, TINY_VISION
from transformers import BertConfig, BertModel
from vl_files import vcr_record, vqa_annotation, write_image, write_jsonl, write_vqa

from mmd2v2.cli import main
from mmd2v2.config import Config, DataConfig, EncoderConfig, ModelConfig, SharedConfig
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.models.dual_encoder import DualEncoder
from mmd2v2.models.exported import load_export, save_export
from mmd2v2.vl.demo_task import write_vl_demo

WORDS = [
    "what",
    "color",
    "shape",
    "how",
    "many",
    "where",
    "is",
    "there",
    "a",
    "the",
    "at",
    "of",
    "are",
    "to",
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "cyan",
    "square",
    "circle",
    "triangle",
    "cross",
    "squares",
    "circles",
    "triangles",
    "crosses",
    "shapes",
    "one",
    "two",
    "three",
    "four",
    "heavy",
    "made",
    "wood",
    "very",
    "old",
    "warm",
    "expensive",
    "brand",
    "new",
    "large",
    "small",
    "above",
    "below",
    "doing",
    "why",
    "person1",
    "person2",
    "dog3",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    build_word_tokenizer(WORDS).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny (untrained) mmd2v2 export: the student's start and a dual-encoder teacher."""
    tokenizer = build_word_tokenizer(WORDS)
    text = dict(TINY_TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model_cfg = ModelConfig(
        image=EncoderConfig(family="vit", config=TINY_VISION, num_blocks=2),
        text=EncoderConfig(family="bert", config=text, num_blocks=2),
        shared=SharedConfig(depth=1, width=32, heads=2),
        embed_dim=16,
    )
    config = Config(model=model_cfg, data=DataConfig(image_size=32))
    folder = tmp_path_factory.mktemp("export") / "export"
    save_export(DualEncoder(model_cfg), config, tokenizer, ImagePreprocessor(32, [0.5] * 3, [0.25] * 3), folder, {})
    return folder


@pytest.fixture(scope="module")
def bert_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT text teacher folder with its own tokenizer."""
    folder = tmp_path_factory.mktemp("bert")
    tokenizer = build_word_tokenizer(WORDS)
    BertModel(BertConfig(**dict(TINY_TEXT, hidden_size=24, vocab_size=len(tokenizer)))).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vl_demo(tmp_path_factory.mktemp("vl_demo"), num_train=40, num_val=12, image_size=32)


def _demo_vqa(root: Path) -> list[str]:
    return [
        "task.name=vqa",
        f"task.train.records={root}/vqa/questions_train.json",
        f"task.train.annotations={root}/vqa/annotations_train.json",
        f"task.train.image_root={root}/images",
        f"task.val.records={root}/vqa/questions_val.json",
        f"task.val.annotations={root}/vqa/annotations_val.json",
        f"task.val.image_root={root}/images",
        'task.image_pattern="{subtype}/{image_id:06d}.png"',
        "task.min_answer_count=1",
    ]


def _demo_snli_ve(root: Path) -> list[str]:
    return [
        "task.name=snli_ve",
        f"task.train.records={root}/snli_ve/snli_ve_train.jsonl",
        f"task.train.image_root={root}/images/train",
        f"task.val.records={root}/snli_ve/snli_ve_val.jsonl",
        f"task.val.image_root={root}/images/val",
        'task.image_pattern="{image_id}.png"',
    ]


def _demo_vcr(root: Path) -> list[str]:
    return [
        "task.name=vcr",
        f"task.train.records={root}/vcr/train.jsonl",
        f"task.train.image_root={root}/images",
        f"task.val.records={root}/vcr/val.jsonl",
        f"task.val.image_root={root}/images",
    ]


def _trainer(**extra: object) -> list[str]:
    values = {
        "trainer.batch_size": 8,
        "trainer.eval_batch_size": 16,
        "trainer.max_steps": 3,
        "trainer.log_every": 1,
        "trainer.progress_bar": False,
        "trainer.device": "cpu",  # these tests compare exact numbers: on the CPU whatever the machine has
        "optim.lr": 1e-3,
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def _log(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_mad_trains_on_the_demo_vqa_task_and_the_saved_model_evaluates_the_same(
    demo: Path, export_dir: Path, bert_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "mad"
    args = [
        "vl",
        "train",
        "--output-dir",
        str(run),
        *_demo_vqa(demo),
        f"student.init_from={export_dir}",
        "teachers.vision.kind=mmd2v2",
        f"teachers.vision.pretrained={export_dir}",
        "teachers.text.kind=hf",
        "teachers.text.family=bert",
        f"teachers.text.pretrained={bert_teacher}",
        "distill.vision=true",
        "distill.text=true",
        "distill.token_selection=adaptive",
        "distill.confidence_weighting=true",
        "adaptive.enabled=true",
        "adaptive.epochs=0.1",
        *_trainer(),
    ]
    assert main(args) == 0
    log = _log(run)
    assert [r["stage"] for r in log] == ["adapt", "adapt", "task", "task", "task"]
    assert {"mlm", "itm", "distill_vision", "distill_text"} <= set(log[0])
    assert {"task", "distill_vision", "distill_text", "distill_words", "distilled_fraction", "loss"} <= set(log[-1])
    assert list((run / "tb").glob("events.out.tfevents.*")) and (run / "config.yaml").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_questions"] == 36 and 0 <= metrics["vqa_accuracy"] <= 100 and metrics["train_examples"] == 120
    assert load_export(run / "model" / "backbone").model is not None  # the finetuned backbone is an mmd2v2 export
    capsys.readouterr()
    assert main(["vl", "eval", "--run", str(run), "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["vqa_accuracy"] == pytest.approx(metrics["vqa_accuracy"])
    assert "vqa_accuracy" in capsys.readouterr().out


def test_demo_vqa_task_loss_falls_with_a_random_init_student(demo: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "random"
    model = {
        "student.model.image.family": "vit",
        "student.model.image.config": json.dumps(TINY_VISION),
        "student.model.text.family": "bert",
        "student.model.text.config": json.dumps(TINY_TEXT),
        "student.model.shared.width": 32,
        "student.model.shared.heads": 2,
        "student.model.embed_dim": 16,
        "student.image_size": 32,
        "student.tokenizer": str(tokenizer_dir),
    }
    assert (
        main(
            [
                "vl",
                "train",
                "--output-dir",
                str(run),
                *_demo_vqa(demo),
                *_trainer(**model, **{"trainer.max_steps": 40, "trainer.log_every": 10, "optim.lr": 2e-3}),
            ]
        )
        == 0
    )
    losses = [r["task"] for r in _log(run)]
    assert losses[-1] < 0.5 * losses[0]


def test_protocol_runs_zero_shot_low_shot_seeds_and_full_into_a_table_and_reuses_finished_runs(
    demo: Path, export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "protocol"
    args = [
        "vl",
        "protocol",
        "--output-dir",
        str(out),
        *_demo_snli_ve(demo),
        f"student.init_from={export_dir}",
        "teachers.vision.kind=mmd2v2",
        f"teachers.vision.pretrained={export_dir}",
        "teachers.text.kind=mmd2v2",
        f"teachers.text.pretrained={export_dir}",
        "protocol.settings=[zero_shot, low_shot, full]",
        "protocol.shots=[2]",
        "protocol.methods=[baseline, md_ts_cw]",
        "protocol.seeds=[0, 1, 2, 3]",
        "protocol.low_shot_max_steps=2",
        *_trainer(**{"trainer.max_steps": "null", "trainer.epochs": 0.2}),
    ]
    assert main(args) == 0
    report = json.loads((out / "protocol.json").read_text())
    assert report["columns"] == ["zero-shot", "2/category", "full"]
    low_shot = [r for r in report["runs"] if r["setting"] == "2/category"]
    assert len(low_shot) == 8 and {r["seed"] for r in low_shot} == {0, 1, 2, 3}
    assert {r["metrics"]["train_examples"] for r in low_shot} == {6}  # 3 classes x 2 images x the class's statement
    assert report["train_examples"] == {"2/category": [6, 6, 6, 6], "full": [120]}
    assert [r["metrics"]["train_examples"] for r in report["runs"] if r["setting"] == "full"] == [120, 120]
    cell = report["results"]["md_ts_cw"]["2/category"]
    values = [r["metrics"]["accuracy"] for r in low_shot if r["method"] == "md_ts_cw"]
    assert cell["n"] == 4 and cell["mean"] == pytest.approx(sum(values) / 4)
    table = (out / "protocol.md").read_text()
    assert "| zero-shot (dual encoder) |" in table and "| md_ts_cw |" in table and "n=4" in table
    assert (
        "| 2/category (6 pairs) | full (120 pairs) |" in table
        and "training pairs per run: 2/category: 6; full: 120" in table
    )

    # run again (as after an interruption): every finished run is reused, not retrained
    capsys.readouterr()
    assert main([*args, "trainer.progress_bar=true"]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 10
    assert json.loads((out / "protocol.json").read_text())["results"] == report["results"]
    from mmd2v2.vl.config import load_vl_config
    from mmd2v2.vl.protocols import finished_run

    run = out / "runs" / "baseline_full_seed0"
    same = load_vl_config(run / "config.yaml", [])
    assert finished_run(run, same) is not None
    assert finished_run(run, load_vl_config(run / "config.yaml", ["optim.lr=0.5"])) is None
    (run / "metrics.json").unlink()  # an interrupted run has no metrics.json
    assert finished_run(run, same) is None


def test_demo_vcr_protocol_zero_shot_and_mad_with_confidence_weighting_over_the_choices(
    demo: Path, export_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "protocol"
    args = [
        "vl",
        "protocol",
        "--output-dir",
        str(out),
        *_demo_vcr(demo),
        f"student.init_from={export_dir}",
        "teachers.vision.kind=mmd2v2",
        f"teachers.vision.pretrained={export_dir}",
        "teachers.text.kind=mmd2v2",
        f"teachers.text.pretrained={export_dir}",
        "protocol.settings=[zero_shot, low_shot]",
        "protocol.shots=[2]",
        "protocol.methods=[mad]",
        "protocol.seeds=[0, 1, 2, 3]",
        "protocol.low_shot_max_steps=2",
        "adaptive.epochs=0.05",
        *_trainer(**{"trainer.max_steps": "null"}),
    ]
    assert main(args) == 0
    report = json.loads((out / "protocol.json").read_text())
    assert report["columns"] == ["zero-shot", "2/category"]
    zero_shot = next(r["metrics"] for r in report["runs"] if r["setting"] == "zero_shot")
    assert zero_shot["num_questions"] == 12 and 0 <= zero_shot["q2ar"] <= min(zero_shot["q2a"], zero_shot["qa2r"])
    low_shot = [r for r in report["runs"] if r["setting"] == "2/category"]
    assert {r["metrics"]["train_examples"] for r in low_shot} == {8}  # 2 categories x 2 questions x (Q->A, QA->R)
    log = _log(out / "runs" / "mad_2_per_category_seed0")
    assert {"adapt", "task"} == {r["stage"] for r in log} and "distilled_fraction" in log[-1]


def test_vcr_fixture_trains_with_hf_teachers_and_reports_q2a_qa2r_q2ar(
    export_dir: Path, bert_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    choices = [
        [["doing", "a", "dance", "."], [[0], "is", "sad"], ["the", [2], "is", "red"], ["nothing"]],
        [["because", [1], "is", "here"], ["it", "is", "late"], [[0, 1], "are", "old"], ["why", "not"]],
    ]
    records = [
        vcr_record(
            f"a{i}", f"movie/{i}.jpg", ["What", "is", [i % 2], "doing", "?"], choices[0], choices[1], i % 4, (i + 1) % 4
        )
        for i in range(12)
    ]
    for i in range(12):
        write_image(tmp_path / "images" / "movie" / f"{i}.jpg", i)
    train, val = write_jsonl(tmp_path / "train.jsonl", records), write_jsonl(tmp_path / "val.jsonl", records[:6])
    run = tmp_path / "vcr"
    args = [
        "vl",
        "train",
        "--output-dir",
        str(run),
        "task.name=vcr",
        f"task.train.records={train}",
        f"task.train.image_root={tmp_path / 'images'}",
        f"task.val.records={val}",
        f"task.val.image_root={tmp_path / 'images'}",
        f"student.init_from={export_dir}",
        "teachers.vision.kind=hf",
        "teachers.vision.family=beit",
        "teachers.vision.config=" + json.dumps(dict(TINY_VISION, hidden_size=24)),
        "teachers.text.kind=hf",
        f"teachers.text.pretrained={bert_teacher}",
        "distill.vision=true",
        "distill.text=true",
        "distill.token_selection=random",
        *_trainer(),
    ]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_questions"] == 6 and metrics["train_examples"] == 24
    assert {"q2a", "qa2r", "q2ar"} <= set(metrics) and metrics["q2ar"] <= min(metrics["q2a"], metrics["qa2r"])
    assert "distill_words" in _log(run)[-1]
    assert main(["vl", "eval", "--run", str(run)]) == 0 and f"q2ar: {metrics['q2ar']:.2f}" in capsys.readouterr().out


def test_vqa_fixture_in_coco_layout_trains(export_dir: Path, tmp_path: Path) -> None:
    questions = [{"image_id": i % 4, "question": "what color is the square", "question_id": i} for i in range(8)]
    annotations = [vqa_annotation(i, i % 4, [["red", "green", "blue", "yellow"][i % 4]] * 10) for i in range(8)]
    q, a = write_vqa(tmp_path, "train2014", questions, annotations)
    run = tmp_path / "run"
    args = [
        "vl",
        "train",
        "--output-dir",
        str(run),
        f"task.train.records={q}",
        f"task.train.annotations={a}",
        f"task.train.image_root={tmp_path / 'train2014'}",
        f"task.val.records={q}",
        f"task.val.annotations={a}",
        f"task.val.image_root={tmp_path / 'train2014'}",
        "task.min_answer_count=1",
        f"student.init_from={export_dir}",
        *_trainer(),
    ]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_questions"] == 8 and json.loads((run / "model" / "task.json").read_text())["classes"] == [
        "blue",
        "green",
        "red",
        "yellow",
    ]


@pytest.mark.parametrize(
    ("records", "extra", "message"),
    [
        (
            [vcr_record("x7", "m/1.jpg", ["Is", [9], "ok", "?"], [["a"]] * 4, [["r"]] * 4, 0, 0)],
            [],
            "train.jsonl: line 1 (annot_id x7): refers to object 9, the record has 3 objects",
        ),
        ([], ["distill.num_tokenz=2"], "unknown config key 'distill.num_tokenz'"),
        (
            [],
            ["distill.vision=true"],
            "config keys 'distill.vision' and 'teachers.vision.kind': distill.vision=True "
            "needs a vision teacher, but teachers.vision.kind is none",
        ),
        ([], ["trainer.batch_size=1"], "task: no batch with two or more decodable examples"),
    ],
)
def test_bad_input_stops_with_one_line(
    records: list[object],
    extra: list[str],
    message: str,
    export_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_image(tmp_path / "m" / "1.jpg", 0)
    good = vcr_record("g", "m/1.jpg", ["Is", [0], "ok", "?"], [["a"]] * 4, [["r"]] * 4, 0, 0)
    path = write_jsonl(tmp_path / "train.jsonl", records or [good, good])
    args = [
        "vl",
        "train",
        "--output-dir",
        str(tmp_path / "r"),
        "task.name=vcr",
        f"task.train.records={path}",
        f"task.val.records={path}",
        f"student.init_from={export_dir}",
        *_trainer(),
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["train", "protocol"])
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["teachers.vision.kind=hf", "distill.vision=true", "distill.confidence_weighting=true"],
            "config keys 'distill.confidence_weighting' and 'teachers.zero_shot': confidence weighting needs zero-shot logits",
        ),
        (
            ["teachers.text.kind=hf", "distill.token_selection=adaptive"],
            "config keys 'distill.token_selection' and 'teachers.vision.kind'",
        ),
    ],
)
def test_a_teacher_that_cannot_serve_a_feature_is_refused_before_any_data_is_read(
    command: str, extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.jsonl"
    args = [
        "vl",
        command,
        "--output-dir",
        str(tmp_path / "r"),
        "task.name=vcr",
        f"task.train.records={missing}",
        f"task.val.records={missing}",
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_the_protocol_refuses_a_method_preset_its_teachers_cannot_serve_before_any_data_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.json"
    args = [
        "vl",
        "protocol",
        "--output-dir",
        str(tmp_path / "r"),
        f"task.train.records={missing}",
        f"task.val.records={missing}",
        "teachers.vision.kind=hf",
        "teachers.text.kind=hf",
        "protocol.methods=[baseline, mad]",
    ]  # mad switches confidence weighting on: no teacher gives logits
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'distill.confidence_weighting' and 'teachers.zero_shot'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_demo_data_command_writes_the_three_tasks_in_the_official_formats(tmp_path: Path) -> None:
    root = tmp_path / "vl_demo"
    assert main(["vl", "demo-data", str(root), "--num-train", "6", "--num-val", "2", "--image-size", "32"]) == 0
    from mmd2v2.vl.config import vl_config_from_dict
    from mmd2v2.vl.tasks import load_task

    vqa = load_task(vl_config_from_dict({}, [*_demo_vqa(root)]).task)
    assert len(vqa.train.examples) == 18 and len(vqa.val.examples) == 6 and vqa.train.skipped == {}
    assert all(e.image.is_file() and len(e.answers) == 10 for e in vqa.train.examples)
    ve = load_task(vl_config_from_dict({}, _demo_snli_ve(root)).task)
    assert [e.label for e in ve.train.examples] == [0, 2, 1] * 6  # one statement per label and image
    vcr = load_task(vl_config_from_dict({}, _demo_vcr(root)).task)
    assert len(vcr.train.examples) == 12 and len(vcr.val.examples) == 4 and vcr.train.skipped == {}
    assert [e.mode for e in vcr.train.examples[:2]] == ["q2a", "qa2r"] and all(
        e.image.is_file() for e in vcr.train.examples
    )
    assert {e.group for e in vcr.train.examples} <= {"activity", "scene"}  # "what color ..." and "where is ..."
    assert main(["vl", "demo-data", str(root), "--num-train", "6", "--num-val", "2", "--image-size", "32"]) == 0


def test_an_interrupted_run_resumes_to_the_same_model_as_an_uninterrupted_one(
    demo: Path, export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    from mmd2v2.vl.config import load_vl_config
    from mmd2v2.vl.objective import VLObjective
    from mmd2v2.vl.train import train_vl

    settings = [
        *_demo_vqa(demo),
        f"student.init_from={export_dir}",
        "teachers.vision.kind=mmd2v2",
        f"teachers.vision.pretrained={export_dir}",
        "teachers.text.kind=mmd2v2",
        f"teachers.text.pretrained={export_dir}",
        "distill.vision=true",
        "distill.text=true",
        "distill.token_selection=random",
        "adaptive.enabled=true",
        "adaptive.epochs=0.1",  # 2 adapt steps
        "trainer.checkpoint_every=3",
        *_trainer(**{"trainer.max_steps": 5}),
    ]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["vl", "train", "--output-dir", str(whole), *settings]) == 0
    assert not (whole / "resume").exists()  # a finished run keeps its model, not its training state

    task_step, calls = VLObjective.task_step, []

    def dies_at_the_fourth_task_step(self: VLObjective, batch: object) -> object:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return task_step(self, batch)

    monkeypatch.setattr(VLObjective, "task_step", dies_at_the_fourth_task_step)
    with pytest.raises(RuntimeError, match="killed"):
        train_vl(load_vl_config(None, settings), parts)
    monkeypatch.setattr(VLObjective, "task_step", task_step)
    assert (parts / "resume").is_dir() and not (parts / "metrics.json").exists()
    capsys.readouterr()
    assert main(["vl", "train", "--output-dir", str(parts), "--resume", *settings]) == 0
    assert "resuming stage 'task' at step 1 (step 3 of the run)" in capsys.readouterr().out
    for name in ("backbone/model.safetensors", "head.safetensors"):
        a, b = load_file(str(whole / "model" / name)), load_file(str(parts / "model" / name))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
    assert [r["step"] for r in _log(parts)] == [1, 2, 3, 4, 5, 4, 5, 6, 7]  # steps 4-5 were lost and redone
    assert json.loads((parts / "metrics.json").read_text())["vqa_accuracy"] == pytest.approx(
        json.loads((whole / "metrics.json").read_text())["vqa_accuracy"]
    )

    other = ["vl", "train", "--output-dir", str(parts), "--resume", *settings, "optim.lr=0.5"]
    (parts / "resume").mkdir()
    assert main(other) == 2 and "trains something else" in capsys.readouterr().err


def test_loader_workers_train_the_same_model(demo: Path, export_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    runs = {}
    for workers in (0, 2):
        runs[workers] = tmp_path / f"workers{workers}"
        assert (
            main(
                [
                    "vl",
                    "train",
                    "--output-dir",
                    str(runs[workers]),
                    *_demo_snli_ve(demo),
                    f"student.init_from={export_dir}",
                    f"trainer.num_workers={workers}",
                    *_trainer(),
                ]
            )
            == 0
        )
    a, b = (load_file(str(runs[w] / "model" / "head.safetensors")) for w in (0, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        json.loads((runs[0] / "metrics.json").read_text())["accuracy"]
        == json.loads((runs[2] / "metrics.json").read_text())["accuracy"]
    )


def test_bf16_autocast_trains_close_to_fp32_and_auto_means_fp32_on_the_cpu(
    demo: Path, export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmd2v2.vl.train import uses_bf16

    assert not uses_bf16("cpu", "auto") and uses_bf16("cpu", "bf16") and not uses_bf16("cuda", "fp32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert uses_bf16("cuda", "auto")
    monkeypatch.undo()
    logs = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        assert (
            main(
                [
                    "vl",
                    "train",
                    "--output-dir",
                    str(run),
                    *_demo_vqa(demo),
                    f"student.init_from={export_dir}",
                    "teachers.vision.kind=hf",
                    "teachers.vision.family=beit",
                    "teachers.vision.config=" + json.dumps(dict(TINY_VISION, hidden_size=24)),
                    "distill.vision=true",
                    f"trainer.precision={precision}",
                    *_trainer(),
                ]
            )
            == 0
        )
        logs[precision] = _log(run)
        assert 0 <= json.loads((run / "metrics.json").read_text())["vqa_accuracy"] <= 100
    for key in ("task", "distill_vision"):
        assert logs["bf16"][0][key] == pytest.approx(logs["fp32"][0][key], rel=0.05)
    assert logs["bf16"][0]["task"] != logs["fp32"][0]["task"]  # bf16 really ran
