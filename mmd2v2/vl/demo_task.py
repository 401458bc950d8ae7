"""The VL demo: questions and statements about the procedural demo scenes, written in the real task formats.

Each image (a scene of mmd2v2.data.demo_scenes) gets three VQA-style questions drawn from five templates with a
closed answer set (colour, shape, count, position, yes/no), three SNLI-VE-style statements, one per label:
entailment (true of the scene), contradiction (false of it), neutral (a property no image can show), and one
VCR-style multiple-choice question about one object (its colour, or where it is) with four answers and four
rationales (one fact about the object true of the image: its size, where it is against another object, how many
shapes share its colour). Files are VQA v2 questions/annotations JSON, SNLI-VE JSON lines and VCR JSON lines
(objects named by their shape, referred to by index), so the demo goes through the same loaders as real data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
from mmd2v2.errors import ExistingFileError
from mmd2v2.files import atomic_folder

DEMO_VERSION = 3
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
    true_options = [
        f"there is a {pick.colour} {pick.shape}",
        f"the {pick.colour} {pick.shape} is at the {_place(pick)}",
        _there_are(count, count_shape),
        scene.captions[1],
    ]
    false_options = [
        f"there is a {missing[0]} {missing[1]}",
        f"the {pick.colour} {pick.shape} is at the {other_cells[int(rng.integers(len(other_cells)))]}",
        _there_are(wrong, count_shape),
    ]
    neutral = f"the {pick.colour} {pick.shape} is {UNOBSERVABLE[int(rng.integers(len(UNOBSERVABLE)))]}"
    return [
        (true_options[int(rng.integers(len(true_options)))], "entailment"),
        (false_options[int(rng.integers(len(false_options)))], "contradiction"),
        (neutral, "neutral"),
    ]


def _place_words(row: int, col: int) -> list[str]:
    return ["in", "the", "center"] if (row, col) == (1, 1) else ["at", "the", *PLACES[row][col].split()]


def _object_facts(scene: Scene, k: int) -> tuple[list[list[Any]], list[list[Any]]]:
    """True and false facts about object `k` as VCR token lists ([k] refers to the object): size, position
    against each other object, and how many shapes share its colour."""
    obj = scene.objects[k]
    true: list[list[Any]] = [[[k], "is", obj.size]]
    false: list[list[Any]] = [[[k], "is", next(s for s in ("small", "large") if s != obj.size)]]
    for j, other in enumerate(scene.objects):
        if j == k:
            continue
        sides = {"left": obj.col < other.col, "right": obj.col > other.col}
        levels = {"above": obj.row < other.row, "below": obj.row > other.row}
        for side, holds in sides.items():
            (true if holds else false).append([[k], "is", "to", "the", side, "of", [j]])
        for level, holds in levels.items():
            (true if holds else false).append([[k], "is", level, [j]])
    same_colour = sum(o.colour == obj.colour for o in scene.objects)
    for count in range(1, 5):
        fact = (
            [[k], "is", "the", "only", obj.colour, "shape"]
            if count == 1
            else [[k], "is", "one", "of", NUMBERS[count], obj.colour, "shapes"]
        )
        (true if count == same_colour else false).append(fact)
    return true, false


def _with_right_choice(right: list[Any], wrong: list[list[Any]], rng: np.random.Generator) -> tuple[list[Any], int]:
    """Four choices: `right` and three of `wrong`, shuffled; returns them and the right one's index."""
    picked = [wrong[int(i)] for i in rng.choice(len(wrong), size=3, replace=False)]
    label = int(rng.integers(4))
    return picked[:label] + [right] + picked[label:], label


def demo_vcr_record(scene: Scene, rng: np.random.Generator, split: str, index: int) -> dict[str, Any]:
    """One VCR-format record about `scene`: the colour of an object given its place, or the place of an object
    given its colour; four answers and four rationales (facts about the object), one of each right."""
    k = int(rng.integers(len(scene.objects)))
    obj = scene.objects[k]
    if rng.random() < 0.5:
        question = ["what", "color", "is", [k], *_place_words(obj.row, obj.col), "?"]
        wrong_colours = [c for c in COLOURS if c != obj.colour]
        answers, answer_label = _with_right_choice(
            [[k], "is", obj.colour], [[[k], "is", c] for c in wrong_colours], rng
        )
    else:
        question = ["where", "is", "the", obj.colour, [k], "?"]
        cells = [(r, c) for r in range(3) for c in range(3) if (r, c) != (obj.row, obj.col)]
        answers, answer_label = _with_right_choice(
            [[k], "is", *_place_words(obj.row, obj.col)], [[[k], "is", *_place_words(r, c)] for r, c in cells], rng
        )
    true, false = _object_facts(scene, k)
    rationales, rationale_label = _with_right_choice(true[int(rng.integers(len(true)))], false, rng)
    image = f"{split}/{index:06d}.png"
    return {
        "movie": "demo_scenes",
        "objects": [o.shape for o in scene.objects],
        "img_fn": image,
        "metadata_fn": image.replace(".png", ".json"),
        "question": question,
        "answer_choices": answers,
        "rationale_choices": rationales,
        "answer_label": answer_label,
        "rationale_label": rationale_label,
        "annot_id": f"{split}-{index}",
        "question_number": 0,
        "img_id": f"{split}-{index}",
        "match_fold": split,
    }


def _write_split(folder: Path, split: str, count: int, seed: int, image_size: int) -> None:
    (folder / "images" / split).mkdir(parents=True)
    questions, annotations, statements, vcr_records = [], [], [], []
    rng = np.random.default_rng([seed, 17, SPLITS.index(split)])
    vcr_rng = np.random.default_rng([seed, 23, SPLITS.index(split)])  # its own stream: VQA/SNLI-VE draws unchanged
    for index in range(count):
        scene = generate_scene(seed + 1000, split, index)  # other scenes than the retrieval demo's
        render(scene, image_size).save(folder / "images" / split / f"{index:06d}.png", compress_level=1)
        for number, (question, answer) in enumerate(demo_questions(scene, rng)):
            qid = index * 10 + number
            questions.append({"image_id": index, "question": question, "question_id": qid})
            annotations.append(
                {
                    "question_id": qid,
                    "image_id": index,
                    "question_type": " ".join(question.split()[:2]),
                    "answer_type": "other",
                    "multiple_choice_answer": answer,
                    "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
                }
            )
        for number, (statement, label) in enumerate(demo_statements(scene, rng)):
            statements.append(
                {
                    "Flickr30K_ID": f"{index:06d}",
                    "pairID": f"{index:06d}#{number}",
                    "sentence1": scene.captions[0],
                    "sentence2": statement,
                    "gold_label": label,
                }
            )
        vcr_records.append(demo_vcr_record(scene, vcr_rng, split, index))
    (folder / "vqa").mkdir(exist_ok=True)
    (folder / "snli_ve").mkdir(exist_ok=True)
    (folder / "vcr").mkdir(exist_ok=True)
    (folder / "vqa" / f"questions_{split}.json").write_text(
        json.dumps({"task_type": "Open-Ended", "data_type": "demo", "data_subtype": split, "questions": questions})
    )
    (folder / "vqa" / f"annotations_{split}.json").write_text(
        json.dumps({"data_type": "demo", "data_subtype": split, "annotations": annotations})
    )
    with (folder / "snli_ve" / f"snli_ve_{split}.jsonl").open("w") as out:
        out.writelines(json.dumps(record) + "\n" for record in statements)
    with (folder / "vcr" / f"{split}.jsonl").open("w") as out:
        out.writelines(json.dumps(record) + "\n" for record in vcr_records)


def write_vl_demo(
    root: str | Path, num_train: int = 1500, num_val: int = 300, image_size: int = 64, seed: int = 0
) -> Path:
    """Write the VL demo into `root` (reused when written with the same settings); returns `root`."""
    root = Path(root)
    manifest = {
        "version": DEMO_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
    }
    manifest_path = root / "vl_demo_manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return root
    if root.exists() and any(root.iterdir()) and not manifest_path.is_file():
        raise ExistingFileError(f"'{root}' is not empty and holds no VL demo: refusing to replace it")
    with atomic_folder(root) as tmp:
        for split, count in zip(SPLITS, (num_train, num_val), strict=True):
            _write_split(tmp, split, count, seed, image_size)
        (tmp / "vl_demo_manifest.json").write_text(json.dumps(manifest))
    return root
