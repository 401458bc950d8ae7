"""The procedural demo set: Karpathy layout, captions true of the drawn scenes, determinism, atomic reuse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmd2v2.data.demo_scenes import (
    COLOURS,
    NUMBERS,
    PLURALS,
    SCENE_VOCABULARY,
    SHAPES,
    SPLITS,
    Scene,
    SceneObject,
    generate_scene,
    generate_scenes,
    main,
    render,
    save_scene_images,
    write_demo_dataset,
)

COUNTS = {"train": 20, "val": 5, "test": 10}
OBJECT = r"(\w+) (\w+)"
DESCRIPTION = re.compile(rf"(?:a )?(small|large) {OBJECT} (?:at the|in the|at) ([a-z ]+)")
RELATION = re.compile(
    rf"the {OBJECT} is (left of|to the left of|right of|to the right of|above|below|larger than|smaller than) the {OBJECT}"
)
PLACES = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo set of 32×32 images."""
    return write_demo_dataset(
        tmp_path_factory.mktemp("demo") / "set", COUNTS["train"], COUNTS["val"], COUNTS["test"], 32
    )


def _described(caption: str) -> list[tuple[str, str, str, int, int]]:
    """(colour, shape, size, row, col) of each object a description caption names."""
    described = []
    for part in re.split(r" and (?=(?:a )?(?:small|large) )", caption):
        size, colour, shape, place = DESCRIPTION.fullmatch(part).groups()  # type: ignore[union-attr]
        described.append((colour, shape, size, *PLACES[place]))
    return described


def _facts(objects: tuple[SceneObject, ...]) -> list[tuple[str, str, str, int, int]]:
    return [(o.colour, o.shape, o.size, o.row, o.col) for o in objects]


def _relation_holds(caption: str, objects: tuple[SceneObject, ...]) -> bool:
    c1, s1, relation, c2, s2 = RELATION.fullmatch(caption).groups()  # type: ignore[union-attr]
    by_name = {o.name: o for o in objects}
    a, b = by_name.get(f"{c1} {s1}"), by_name.get(f"{c2} {s2}")
    if a is None or b is None:
        return False
    return {
        "left of": a.col < b.col,
        "to the left of": a.col < b.col,
        "right of": a.col > b.col,
        "to the right of": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
        "larger than": (a.size, b.size) == ("large", "small"),
        "smaller than": (a.size, b.size) == ("small", "large"),
    }[relation]


def _tally_holds(tally: str, labels: list[str]) -> bool:
    """'two circles and one square' against a list of labels, exactly and completely."""
    claimed = {}
    for item in tally.split(" and "):
        number, *words = item.split()
        if (number == "one") != (words[-1] in (*SHAPES, "shape")):  # singular exactly when one
            return False
        label = " ".join(words).removesuffix(" shape").removesuffix(" shapes")
        claimed[{plural: shape for shape, plural in PLURALS.items()}.get(label, label)] = NUMBERS.index(number)
    return claimed == {label: labels.count(label) for label in labels}


def _caption_holds(caption: str, scene: Scene) -> bool:
    """Whether a caption of any template is true of the scene."""
    objects = scene.objects
    if caption.split()[0] in ("a", "small", "large"):
        return set(_described(caption)) <= set(_facts(objects))
    if caption.startswith("the "):
        return _relation_holds(caption, objects)
    if caption.startswith("there "):
        verb, tally = caption.split(" ", 2)[1:]
        return verb == ("is" if tally.startswith("one ") else "are") and _tally_holds(
            tally, [o.colour for o in objects]
        )
    total, word, tally = caption.split(" ", 2)
    return word == "shapes" and NUMBERS.index(total) == len(objects) and _tally_holds(tally, [o.shape for o in objects])


def test_karpathy_layout_and_files(demo: Path) -> None:
    data = json.loads(demo.read_text())
    assert data["dataset"] == "demo" and demo.name == "dataset_demo.json"
    images = data["images"]
    assert [sum(entry["split"] == split for entry in images) for split in SPLITS] == [COUNTS[s] for s in SPLITS]
    assert [entry["imgid"] for entry in images] == list(range(len(images)))
    sentids = [s["sentid"] for entry in images for s in entry["sentences"]]
    assert len(sentids) == len(set(sentids)) == 5 * len(images)
    vocabulary = set(SCENE_VOCABULARY)
    for entry in images:
        index = entry["imgid"] - sum(COUNTS[s] for s in SPLITS[: SPLITS.index(entry["split"])])
        assert [s["raw"] for s in entry["sentences"]] == list(generate_scene(0, entry["split"], index).captions)
        assert entry["filepath"] == f"images/{entry['split']}" and entry["filename"] == f"{entry['imgid']:06d}.png"
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        assert len({s["raw"] for s in entry["sentences"]}) == 5
        for sentence in entry["sentences"]:
            assert sentence["imgid"] == entry["imgid"] and sentence["tokens"] == sentence["raw"].split()
            assert all(re.fullmatch(r"[a-z]+", t) and t in vocabulary for t in sentence["tokens"])
        with Image.open(demo.parent / entry["filepath"] / entry["filename"]) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)


def test_every_caption_is_true_of_its_scene() -> None:
    for split in SPLITS:
        for scene in generate_scenes(seed=3, split=split, count=150):
            objects = scene.objects
            assert 2 <= len(objects) <= 4 and len({(o.row, o.col) for o in objects}) == len(objects)
            assert len({o.name for o in objects}) == len(objects)  # "the red circle" names one object
            assert list(objects) == sorted(objects, key=lambda o: (o.row, o.col))
            full, relation, counts, partial, fifth = scene.captions
            assert _described(full) == _facts(objects)
            assert relation.startswith("the ") and " than " not in relation
            assert counts.startswith((f"{NUMBERS[len(objects)]} shapes ", "there ")) and partial.startswith("a ")
            assert len(_described(partial)) < len(objects)
            assert all(_caption_holds(caption, scene) for caption in scene.captions), scene.captions
            assert len(set(scene.captions)) == 5 and fifth != full
            assert max(len(caption.split()) for caption in scene.captions) <= 30  # fits 32 tokens with [CLS], [SEP]


def test_scenes_have_distractors_and_use_the_whole_vocabulary() -> None:
    scenes = generate_scenes(seed=0, split="test", count=500)
    shared = [
        len({o.colour for o in s.objects}) < len(s.objects) or len({o.shape for o in s.objects}) < len(s.objects)
        for s in scenes
    ]
    assert 0.4 < np.mean(shared) < 0.95
    used = {word for scene in scenes for caption in scene.captions for word in caption.split()}
    assert used == set(SCENE_VOCABULARY) and len(SCENE_VOCABULARY) < 150
    assert sorted(set(SCENE_VOCABULARY)) == SCENE_VOCABULARY


@pytest.mark.parametrize("image_size", [32, 64])
def test_objects_are_drawn_in_their_colour(image_size: int) -> None:
    palette = np.array(list(COLOURS.values()))
    for scene in generate_scenes(seed=1, split="train", count=60):
        pixels = np.asarray(render(scene, image_size)).astype(int)
        assert pixels.shape == (image_size, image_size, 3)
        for obj in scene.objects:
            x, y = obj.centre(image_size)
            nearest = np.abs(palette - pixels[int(y), int(x)]).sum(axis=1).argmin()
            assert list(COLOURS)[nearest] == obj.colour


def test_deterministic_and_independent_of_other_splits(tmp_path: Path) -> None:
    first = write_demo_dataset(tmp_path / "a", 4, 2, 3, 32, seed=1)
    second = write_demo_dataset(tmp_path / "b", 4, 2, 3, 32, seed=1)
    assert first.read_bytes() == second.read_bytes()
    for png in sorted((first.parent / "images").rglob("*.png")):
        assert png.read_bytes() == (second.parent / png.relative_to(first.parent)).read_bytes()
    assert write_demo_dataset(tmp_path / "c", 4, 2, 3, 32, seed=2).read_bytes() != first.read_bytes()
    assert generate_scene(1, "test", 2) == generate_scene(1, "test", 2) != generate_scene(1, "train", 2)
    more_train = json.loads(write_demo_dataset(tmp_path / "d", 9, 2, 3, 32, seed=1).read_text())["images"]
    test_captions = [[s["raw"] for s in e["sentences"]] for e in more_train if e["split"] == "test"]
    assert test_captions == [
        [s["raw"] for s in e["sentences"]] for e in json.loads(first.read_text())["images"] if e["split"] == "test"
    ]


def test_images_are_the_same_over_several_processes(tmp_path: Path) -> None:
    for name in ("serial", "parallel"):
        (tmp_path / name).mkdir()
    jobs = [("train", i, Path(f"{i}.png")) for i in range(5)] + [("unpaired_images", 3, Path("u3.png"))]
    save_scene_images([(split, i, tmp_path / "serial" / p) for split, i, p in jobs], 32, 7, workers=1)
    save_scene_images([(split, i, tmp_path / "parallel" / p) for split, i, p in jobs], 32, 7, workers=2)
    for _, _, name in jobs:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()


def test_reused_regenerated_and_atomic(tmp_path: Path) -> None:
    first = write_demo_dataset(tmp_path / "a", 4, 2, 3, 32, seed=1)
    mtimes = {p: p.stat().st_mtime_ns for p in first.parent.rglob("*")}
    assert write_demo_dataset(tmp_path / "a", 4, 2, 3, 32, seed=1) == first
    assert {p: p.stat().st_mtime_ns for p in first.parent.rglob("*")} == mtimes
    write_demo_dataset(tmp_path / "a", 5, 2, 3, 32, seed=1)
    assert len(json.loads(first.read_text())["images"]) == 10
    assert len(list((tmp_path / "a" / "images" / "train").iterdir())) == 5
    write_demo_dataset(tmp_path / "a", 5, 2, 3, 48, seed=1)
    with Image.open(tmp_path / "a" / "images" / "val" / "000005.png") as image:
        assert image.size == (48, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary folders left behind
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        write_demo_dataset(tmp_path / "other", 4, 2, 3, 32)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="image_size"):
        write_demo_dataset(tmp_path / "tiny", 4, 2, 3, image_size=8)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(tmp_path / "cli"), "--num-train", "3", "--num-val", "1", "--num-test", "2", "--image-size", "32"])
    json_path = Path(capsys.readouterr().out.strip())
    assert json_path == tmp_path / "cli" / "dataset_demo.json"
    assert len(json.loads(json_path.read_text())["images"]) == 6
