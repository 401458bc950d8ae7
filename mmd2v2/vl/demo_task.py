"""The VL demo: questions and statements about the procedural demo scenes, written in the real task formats.

Each image (a scene of mmd2v2.data.demo_scenes) gets three VQA-style questions drawn from five templates with a
closed answer set (colour, shape, count, position, yes/no) and three SNLI-VE-style statements, one per label:
entailment (true of the scene), contradiction (false of it), neutral (a property no image can show). Files are VQA
v2 questions/annotations JSON and SNLI-VE JSON lines, so the demo goes through the same loaders as real data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from mmd2v2.data.demo_scenes import (
    COLOURS,
    NUMBERS,
    PLACES,
    PLURALS,
    SHAPES,
    Scene,
    SceneObject,
    generate_scene,
    render,
)
from mmd2v2.files import replace_folder

DEMO_VERSION = 2
SPLITS = ("train", "val")
NUMBER_ANSWERS = ("0", "1", "2", "3", "4")
UNOBSERVABLE = ("heavy", "made of wood", "very old", "warm", "expensive", "brand new")
QUESTIONS_PER_IMAGE = 3


def _place(obj: SceneObject) -> str:
    return PLACES[obj.row][obj.col]


def demo_questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Three (question, answer) pairs about `scene`, from different templates."""
    objects = list(scene.objects)
    pick = objects[int(rng.integers(len(objects)))]
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    present = {(o.colour, o.shape) for o in objects}
    if rng.random() < 0.5:
        asked = pick.colour, pick.shape
    else:
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        asked = absent[int(rng.integers(len(absent)))]
    templates = [
        (f"what color is the {pick.shape} at the {_place(pick)}", pick.colour),
        (f"what shape is at the {_place(pick)}", pick.shape),
        (f"how many {colour} shapes are there", str(sum(o.colour == colour for o in objects))),
        (f"how many {PLURALS[shape]} are there", str(sum(o.shape == shape for o in objects))),
        (f"where is the {pick.colour} {pick.shape}", _place(pick)),
        (f"is there a {asked[0]} {asked[1]}", "yes" if asked in present else "no"),
    ]
    order = rng.permutation(len(templates))[:QUESTIONS_PER_IMAGE]
    return [templates[i] for i in sorted(order)]


def _there_are(count: int, shape: str) -> str:
    return f"there is one {shape}" if count == 1 else f"there are {NUMBERS[count]} {PLURALS[shape]}"


def demo_statements(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(statement, label) for entailment, contradiction and neutral, about `scene`."""
    objects = list(scene.objects)
    pick = objects[int(rng.integers(len(objects)))]
    present = {(o.colour, o.shape) for o in objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    other_cells = [p for row in PLACES for p in row if p not in {_place(o) for o in objects}]
    count_shape = str(rng.choice(SHAPES))
    count = sum(o.shape == count_shape for o in objects)
    wrong = int(rng.choice([n for n in range(5) if n != count]))
    missing = absent[int(rng.integers(len(absent)))]
    true_options = [f"there is a {pick.colour} {pick.shape}", f"the {pick.colour} {pick.shape} is at the {_place(pick)}",
                    _there_are(count, count_shape), scene.captions[1]]
    false_options = [f"there is a {missing[0]} {missing[1]}",
                     f"the {pick.colour} {pick.shape} is at the {other_cells[int(rng.integers(len(other_cells)))]}",
                     _there_are(wrong, count_shape)]
    neutral = f"the {pick.colour} {pick.shape} is {UNOBSERVABLE[int(rng.integers(len(UNOBSERVABLE)))]}"
    return [(true_options[int(rng.integers(len(true_options)))], "entailment"),
            (false_options[int(rng.integers(len(false_options)))], "contradiction"), (neutral, "neutral")]


def _write_split(folder: Path, split: str, count: int, seed: int, image_size: int) -> None:
    (folder / "images" / split).mkdir(parents=True)
    questions, annotations, statements = [], [], []
    rng = np.random.default_rng([seed, 17, SPLITS.index(split)])
    for index in range(count):
        scene = generate_scene(seed + 1000, split, index)  # other scenes than the retrieval demo's
        render(scene, image_size).save(folder / "images" / split / f"{index:06d}.png", compress_level=1)
        for number, (question, answer) in enumerate(demo_questions(scene, rng)):
            qid = index * 10 + number
            questions.append({"image_id": index, "question": question, "question_id": qid})
            annotations.append({"question_id": qid, "image_id": index, "question_type": " ".join(question.split()[:2]),
                                "answer_type": "other", "multiple_choice_answer": answer,
                                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1}
                                            for k in range(10)]})
        for number, (statement, label) in enumerate(demo_statements(scene, rng)):
            statements.append({"Flickr30K_ID": f"{index:06d}", "pairID": f"{index:06d}#{number}",
                               "sentence1": scene.captions[0], "sentence2": statement, "gold_label": label})
    (folder / "vqa").mkdir(exist_ok=True)
    (folder / "snli_ve").mkdir(exist_ok=True)
    (folder / "vqa" / f"questions_{split}.json").write_text(json.dumps(
        {"task_type": "Open-Ended", "data_type": "demo", "data_subtype": split, "questions": questions}))
    (folder / "vqa" / f"annotations_{split}.json").write_text(json.dumps(
        {"data_type": "demo", "data_subtype": split, "annotations": annotations}))
    with (folder / "snli_ve" / f"snli_ve_{split}.jsonl").open("w") as out:
        out.writelines(json.dumps(record) + "\n" for record in statements)


def write_vl_demo(root: str | Path, num_train: int = 1500, num_val: int = 300, image_size: int = 64,
                  seed: int = 0) -> Path:
    """Write the VL demo into `root` (reused when written with the same settings); returns `root`."""
    root = Path(root)
    manifest = {"version": DEMO_VERSION, "num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}
    manifest_path = root / "vl_demo_manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return root
    if root.exists() and any(root.iterdir()) and not manifest_path.is_file():
        raise ValueError(f"'{root}' is not empty and holds no VL demo: refusing to replace it")
    tmp = root.with_name(f".{root.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split, count in zip(SPLITS, (num_train, num_val), strict=True):
        _write_split(tmp, split, count, seed, image_size)
    (tmp / "vl_demo_manifest.json").write_text(json.dumps(manifest))
    replace_folder(tmp, root)
    return root

