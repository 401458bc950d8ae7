"""The embedded demo dataset: procedural scenes of coloured shapes with five different true captions each.

Each image holds 2–4 objects in distinct cells of a 3×3 grid (small jitter), each with a colour
(6), a shape (5) and a size (2), on a noisy dark background. Scenes often contain distractors: an
object sharing the shape or the colour of another, so matching a bag of words fails and colour
must be bound to the right shape and place. The five captions come from different templates:

1. a full description of every object in reading order, with size and position;
2. a spatial relation between two objects ("the red circle is left of the blue square");
3. shape counts ("three shapes two circles and one square");
4. one object with its size and position ("a small blue square at the bottom right");
5. colour counts, or a second relation.

Partial captions (2, 4, 5) fit several images, so text→image retrieval cannot saturate; image→text
needs binding, positions and counts right. The set is written in the Karpathy-split JSON that COCO
and Flickr30K use, so the demo goes through the same loader as real data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 2
COLOURS = {"red": (220, 45, 45), "green": (45, 185, 70), "blue": (55, 95, 235), "yellow": (235, 215, 45),
           "purple": (160, 70, 210), "orange": (245, 140, 30)}
SHAPES = ("square", "circle", "triangle", "cross", "diamond")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses", "diamond": "diamonds"}
SIZES = ("small", "large")
ROWS = ("top", "", "bottom")
COLUMNS = ("left", "", "right")
NUMBERS = ("zero", "one", "two", "three", "four")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: attributes, grid cell (row, col) and pixel centre."""

    colour: str
    shape: str
    size: str
    row: int
    col: int
    cx: float
    cy: float

    @property
    def name(self) -> str:
        """'red circle'."""
        return f"{self.colour} {self.shape}"

    @property
    def position(self) -> str:
        """'top left', 'top', 'center', ..."""
        words = [w for w in (ROWS[self.row], COLUMNS[self.col]) if w]
        return " ".join(words) or "center"


def _sample_objects(rng: np.random.Generator, image_size: int) -> list[SceneObject]:
    count = int(rng.integers(2, 5))
    cells = rng.choice(9, size=count, replace=False)
    cell = image_size / 3
    objects: list[SceneObject] = []
    names: set[str] = set()
    for index, flat in enumerate(cells):
        row, col = divmod(int(flat), 3)
        while True:
            colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
            if index and rng.random() < 0.6:  # distractor: share the shape or the colour of an earlier object
                other = objects[int(rng.integers(len(objects)))]
                shape, colour = (other.shape, colour) if rng.random() < 0.5 else (shape, other.colour)
            if f"{colour} {shape}" not in names:
                break
        names.add(f"{colour} {shape}")
        jitter = rng.uniform(-0.08, 0.08, size=2) * cell
        objects.append(SceneObject(colour, shape, str(rng.choice(SIZES)), row, col,
                                   float((col + 0.5) * cell + jitter[0]), float((row + 0.5) * cell + jitter[1])))
    return objects


def _draw(objects: list[SceneObject], image_size: int, rng: np.random.Generator) -> Image.Image:
    background = int(rng.integers(25, 80))
    noise = rng.integers(-10, 11, size=(image_size, image_size, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        r = image_size / 3 * (0.2 if obj.size == "small" else 0.4)
        x, y, fill = obj.cx, obj.cy, COLOURS[obj.colour]
        if obj.shape == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        elif obj.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
        else:
            w = r / 2.5
            draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
            draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    return image


def _relation(a: SceneObject, b: SceneObject, rng: np.random.Generator) -> str:
    options = []
    if a.col != b.col:
        options.append("left of" if a.col < b.col else "right of")
    if a.row != b.row:
        options.append("above" if a.row < b.row else "below")
    return f"the {a.name} is {options[int(rng.integers(len(options)))]} the {b.name}"


def _tally(labels: list[str]) -> list[tuple[str, int]]:
    """Distinct labels in first-seen order with their counts."""
    return [(label, labels.count(label)) for label in dict.fromkeys(labels)]


def _join(parts: list[str]) -> str:
    return " and ".join(parts)


def captions_for(objects: list[SceneObject], rng: np.random.Generator) -> list[str]:
    """Five different true captions of a scene, one per template (see the module docstring)."""
    ordered = sorted(objects, key=lambda o: (o.row, o.col))
    full = " and ".join(f"a {o.size} {o.name} at the {o.position}" for o in ordered)
    a, b = (objects[i] for i in rng.choice(len(objects), size=2, replace=False))
    shape_counts = _join([f"{NUMBERS[n]} {PLURALS[s] if n > 1 else s}" for s, n in _tally([o.shape for o in ordered])])
    shapes = f"{NUMBERS[len(objects)]} shapes {shape_counts}"
    single = objects[int(rng.integers(len(objects)))]
    partial = f"a {single.size} {single.name} at the {single.position}"
    if rng.random() < 0.5:
        fifth = "there is " + _join([f"{NUMBERS[n]} {c} {'shapes' if n > 1 else 'shape'}" for c, n in _tally([o.colour for o in ordered])])
    else:
        pairs = [(x, y) for x in objects for y in objects if x is not y and {x, y} != {a, b}]
        c, d = pairs[int(rng.integers(len(pairs)))] if pairs else (b, a)
        fifth = _relation(c, d, rng)
    captions = [full, _relation(a, b, rng), shapes, partial, fifth]
    if len(set(captions)) < 5:  # a 2-object scene can repeat a relation: describe the other object instead
        other = next(o for o in objects if o is not single)
        captions[4] = f"a {other.size} {other.name} at the {other.position}"
    return captions


SCENE_VOCABULARY: list[str] = sorted(
    {"a", "at", "the", "is", "of", "and", "there", "shapes", "shape", "left", "right", "above", "below", "top",
     "bottom", "center", *SIZES, *COLOURS, *SHAPES, *PLURALS.values(), *NUMBERS[1:]}
)


def generate_scene(seed: int, image_id: int, image_size: int) -> tuple[list[SceneObject], Image.Image, list[str]]:
    """The objects, picture and captions of one scene (deterministic in seed and image id)."""
    rng = np.random.default_rng([seed, image_id])
    objects = _sample_objects(rng, image_size)
    return objects, _draw(objects, image_size, rng), captions_for(objects, rng)


def _manifest(num_train: int, num_val: int, num_test: int, image_size: int, seed: int) -> dict[str, int]:
    return {"version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val, "num_test": num_test,
            "image_size": image_size, "seed": seed}


def write_demo_dataset(root: str | Path, num_train: int = 6000, num_val: int = 200, num_test: int = 500,
                       image_size: int = 64, seed: int = 0) -> Path:
    """Write (or reuse, if already written with the same settings) the demo set; returns its JSON path."""
    root = Path(root)
    manifest = _manifest(num_train, num_val, num_test, image_size, seed)
    json_path = root / "dataset_demo.json"
    manifest_path = root / "demo_manifest.json"
    if json_path.is_file() and manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return json_path
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    images, sentid = [], 0
    counts = dict(zip(SPLITS, (num_train, num_val, num_test), strict=True))
    image_id = 0
    for split in SPLITS:
        (tmp / "images" / split).mkdir(parents=True)
        for _ in range(counts[split]):
            _, picture, captions = generate_scene(seed, image_id, image_size)
            filename = f"{image_id:06d}.png"
            picture.save(tmp / "images" / split / filename)
            sentences = [{"raw": c, "tokens": c.split(), "imgid": image_id, "sentid": sentid + i} for i, c in enumerate(captions)]
            images.append({"filepath": f"images/{split}", "filename": filename, "imgid": image_id, "split": split,
                           "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
            sentid += len(sentences)
            image_id += 1
    (tmp / "dataset_demo.json").write_text(json.dumps({"dataset": "demo", "images": images}))
    (tmp / "demo_manifest.json").write_text(json.dumps(manifest))
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        root.rename(old)
        tmp.rename(root)
        shutil.rmtree(old)
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(root)
    return json_path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="write the procedural demo dataset")
    parser.add_argument("out", type=Path)
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    print(write_demo_dataset(a.out, a.num_train, a.num_val, a.num_test, a.image_size, a.seed))
