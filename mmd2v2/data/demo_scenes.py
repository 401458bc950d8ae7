"""The embedded demo dataset: procedural scenes of coloured shapes, each with five different true captions.

Scenes. Each image holds 2–4 objects in distinct cells of a 3×3 grid (with a little jitter, never
overlapping) on a grey background of varying tone with mild pixel noise. An object has a colour
(8), a shape (4), a size (small / large) and a slightly varied shade. Half of the objects after the
first are distractors: they share the shape *or* the colour of another object (never both, so "the
red circle" always names exactly one object). A bag of attributes therefore does not identify a
scene; colour must be bound to shape, and both to size and place.

Captions, one per template, all true of the scene, all different, at most 27 words:

1. every object in reading order: "large red circle at top left and small blue square at center";
2. a spatial relation between two objects: "the red circle is to the left of the blue square";
3. counts, of shapes or of colours: "three shapes two circles and one square" /
   "there are two red shapes and one blue shape";
4. one or two objects with size and place: "a small blue square at the bottom right";
5. the other kind of count, a second relation, or a size comparison ("the blue square is larger
   than the red circle").

Caption 1 identifies its image; the others are true of about 2–7 images of a 500-image split, so
even a perfect model has text→image R@1 of only about 60% (R@5 about 92%). A model ranks higher the
more of binding, place and counting it gets right. Scenes depend only on (seed, split, index), not
on the image size or the other splits' sizes, so the test split stays the same when the training
split grows. The set is written in the Karpathy-split JSON that COCO and Flickr30K use, so the demo
goes through the same loader as real data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

from mmd2v2.errors import ExistingFileError, UserError
from mmd2v2.files import replace_folder

T = TypeVar("T")
GENERATOR_VERSION = 3
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 175, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 135, 25),
    "white": (240, 240, 240),
    "cyan": (40, 200, 215),
}
SHAPES = ("square", "circle", "triangle", "cross")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
SIZES = ("small", "large")
OBJECT_COUNTS = {2: 0.25, 3: 0.4, 4: 0.35}  # how many objects a scene has, with probabilities
PARTIAL_PAIR = 0.8  # chance that caption 4 describes two objects (when the scene has three or more)
NUMBERS = ("zero", "one", "two", "three", "four")
PLACES = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))
SPLITS = ("train", "val", "test")
UNPAIRED_SPLITS = ("unpaired_images", "unpaired_captions")  # scenes of their own: never a paired or test scene
HALF_EXTENT = {"small": 0.22, "large": 0.38}  # half-width of an object, as a fraction of its grid cell
JITTER = 0.06  # largest centre offset, as a fraction of a cell: 0.38 + 0.06 < 0.5, so objects never overlap
SHADE = 12  # largest per-object shift of each colour channel
NOISE = 6  # largest per-pixel noise on each channel

SCENE_VOCABULARY: list[str] = sorted(
    {
        "a",
        "the",
        "and",
        "at",
        "in",
        "is",
        "to",
        "of",
        "than",
        "there",
        "are",
        "shape",
        "shapes",
        "left",
        "right",
        "top",
        "bottom",
        "center",
        "above",
        "below",
        "larger",
        "smaller",
        *SIZES,
        *COLOURS,
        *SHAPES,
        *PLURALS.values(),
        *NUMBERS[1:],
    }
)


@dataclass(frozen=True)
class SceneObject:
    """One object: colour, shape, size, grid cell (row, col) and centre offset within the cell (in cells)."""

    colour: str
    shape: str
    size: str
    row: int
    col: int
    dx: float
    dy: float

    @property
    def name(self) -> str:
        """Colour and shape, e.g. 'red circle' (unique within a scene)."""
        return f"{self.colour} {self.shape}"

    @property
    def place(self) -> str:
        """Where it is, e.g. 'at the top left' or 'in the center'."""
        return "in the center" if (self.row, self.col) == (1, 1) else f"at the {PLACES[self.row][self.col]}"

    def centre(self, image_size: int) -> tuple[float, float]:
        """Pixel centre (x, y) in an image of the given size."""
        cell = image_size / 3
        return (self.col + 0.5 + self.dx) * cell, (self.row + 0.5 + self.dy) * cell


@dataclass(frozen=True)
class Scene:
    """The objects (in reading order) of one image, its five captions and its drawing parameters."""

    objects: tuple[SceneObject, ...]
    captions: tuple[str, ...]
    background: int
    shades: tuple[tuple[int, int, int], ...]
    noise_seed: int


def _sample_objects(rng: np.random.Generator) -> list[SceneObject]:
    count = int(rng.choice(list(OBJECT_COUNTS), p=list(OBJECT_COUNTS.values())))
    cells = sorted(int(c) for c in rng.choice(9, size=count, replace=False))
    picked: list[tuple[str, str]] = []
    while len(picked) < count:
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        if picked and rng.random() < 0.5:  # distractor: reuse the shape or the colour of an earlier object
            other = picked[int(rng.integers(len(picked)))]
            colour, shape = (other[0], shape) if rng.random() < 0.5 else (colour, other[1])
        if (colour, shape) not in picked:
            picked.append((colour, shape))
    order = rng.permutation(count)  # distractors land anywhere, not only late in reading order
    jitter = rng.uniform(-JITTER, JITTER, size=(count, 2))
    sizes = rng.choice(SIZES, size=count)
    return [
        SceneObject(*picked[order[i]], str(sizes[i]), cell // 3, cell % 3, float(jitter[i, 0]), float(jitter[i, 1]))
        for i, cell in enumerate(cells)
    ]


def _pick(rng: np.random.Generator, options: list[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _relation(a: SceneObject, b: SceneObject, rng: np.random.Generator) -> str:
    options = []
    if a.col != b.col:
        side = "left" if a.col < b.col else "right"
        options += [f"{side} of", f"to the {side} of"]
    if a.row != b.row:
        options += ["above" if a.row < b.row else "below"] * 2
    return f"the {a.name} is {_pick(rng, options)} the {b.name}"


def _count(number: int, singular: str, plural: str) -> str:
    return f"{NUMBERS[number]} {singular if number == 1 else plural}"


def _tally(labels: list[str], order: tuple[str, ...] | list[str]) -> list[tuple[str, int]]:
    return [(label, labels.count(label)) for label in order if label in labels]


def _describe(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.name} {obj.place}"


def _captions(objects: list[SceneObject], rng: np.random.Generator) -> list[str]:
    full = " and ".join(f"{o.size} {o.name} at {PLACES[o.row][o.col]}" for o in objects)
    pairs = [(a, b) for a in objects for b in objects if a is not b]
    first_pair = _pick(rng, pairs)
    shapes = " and ".join(_count(n, s, PLURALS[s]) for s, n in _tally([o.shape for o in objects], SHAPES))
    colours = [_count(n, f"{c} shape", f"{c} shapes") for c, n in _tally([o.colour for o in objects], list(COLOURS))]
    counts = [
        f"{NUMBERS[len(objects)]} shapes {shapes}",
        f"there {'is' if colours[0].startswith('one ') else 'are'} {' and '.join(colours)}",
    ]
    if rng.random() < 0.5:
        counts.reverse()
    chosen = rng.permutation(len(objects))[: 2 if len(objects) > 2 and rng.random() < PARTIAL_PAIR else 1]
    partial = " and ".join(_describe(objects[i]) for i in chosen)
    kinds = [
        [counts[1]],
        [_relation(a, b, rng) for a, b in pairs if {a, b} != set(first_pair)],
        [
            f"the {a.name} is {'larger' if a.size == 'large' else 'smaller'} than the {b.name}"
            for a, b in pairs
            if a.size != b.size
        ],
    ]
    fifth = _pick(rng, _pick(rng, [kind for kind in kinds if kind]))  # the other count, a relation or a comparison
    return [full, _relation(*first_pair, rng), counts[0], partial, fifth]


def _shade(colour: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(v + rng.integers(-SHADE, SHADE + 1), 0, 255)) for v in colour)
    return r, g, b


def generate_scene(seed: int, split: str, index: int) -> Scene:
    """The scene at `index` of `split`; it depends only on (seed, split, index)."""
    rng = np.random.default_rng([seed, (*SPLITS, *UNPAIRED_SPLITS).index(split), index])
    objects = _sample_objects(rng)
    captions = _captions(objects, rng)
    background = int(rng.integers(60, 140))
    shades = tuple(_shade(COLOURS[o.colour], rng) for o in objects)
    return Scene(tuple(objects), tuple(captions), background, shades, int(rng.integers(2**31)))


def generate_scenes(seed: int, split: str, count: int) -> list[Scene]:
    """The first `count` scenes of `split`."""
    return [generate_scene(seed, split, index) for index in range(count)]


def render(scene: Scene, image_size: int) -> Image.Image:
    """Draw a scene as an RGB image of image_size × image_size pixels."""
    image = Image.new("RGB", (image_size, image_size), (scene.background,) * 3)
    draw = ImageDraw.Draw(image)
    for obj, fill in zip(scene.objects, scene.shades, strict=True):
        x, y = obj.centre(image_size)
        r = image_size / 3 * HALF_EXTENT[obj.size]
        if obj.shape == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        elif obj.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
        else:  # cross
            w = max(r / 3, 1.0)
            draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
            draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    noise = np.random.default_rng(scene.noise_seed).integers(-NOISE, NOISE + 1, size=(image_size, image_size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def _save_images(jobs: list[tuple[str, int, Path]], image_size: int, seed: int) -> list[Scene]:
    """Render and save the scenes (split, index, path) of one worker's share; returns them in job order."""
    scenes = []
    for split, index, path in jobs:
        scenes.append(generate_scene(seed, split, index))
        render(scenes[-1], image_size).save(path, compress_level=1)
    return scenes


def save_scene_images(
    jobs: list[tuple[str, int, Path]], image_size: int, seed: int, workers: int | None = None
) -> list[Scene]:
    """Render and save every scene (split, index, path) as PNG over `workers` processes (default: the machine's
    cores, at most 8, one per 500 scenes) and return the scenes in job order (their captions, for the caller): each
    scene depends only on (seed, split, index), so the files are the same however the work is split."""
    if workers is None:
        workers = min(8, os.cpu_count() or 1, len(jobs) // 500)
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        return _save_images(jobs, image_size, seed)
    scenes: list[Scene] = [None] * len(jobs)  # type: ignore[list-item]  # every slot is filled below
    with ProcessPoolExecutor(workers) as pool:
        shares = [jobs[w::workers] for w in range(workers)]
        for w, share in enumerate(pool.map(_save_images, shares, [image_size] * workers, [seed] * workers)):
            scenes[w::workers] = share
    return scenes


def _manifest(num_train: int, num_val: int, num_test: int, image_size: int, seed: int) -> dict[str, int]:
    return {
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "image_size": image_size,
        "seed": seed,
    }


def _write(folder: Path, counts: dict[str, int], image_size: int, seed: int) -> None:
    jobs: list[tuple[str, int, Path]] = []
    for split in SPLITS:
        (folder / "images" / split).mkdir(parents=True)
        first = len(jobs)  # image ids run on across the splits
        jobs.extend((split, i, folder / "images" / split / f"{first + i:06d}.png") for i in range(counts[split]))
    images: list[dict[str, object]] = []
    for image_id, ((split, _, path), scene) in enumerate(
        zip(jobs, save_scene_images(jobs, image_size, seed), strict=True)
    ):
        sentences = [
            {"raw": text, "tokens": text.split(), "imgid": image_id, "sentid": 5 * image_id + k}
            for k, text in enumerate(scene.captions)
        ]
        images.append(
            {
                "filepath": f"images/{split}",
                "filename": path.name,
                "imgid": image_id,
                "split": split,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            }
        )
    (folder / "dataset_demo.json").write_text(json.dumps({"dataset": "demo", "images": images}))


def _publish(root: Path, manifest: dict[str, int], write: Callable[[Path], None]) -> None:
    """Write a generated set with `write(tmp)` into a temporary sibling of `root`, then rename it into place; an
    existing `root` is replaced only if it is empty or holds an earlier generated set."""
    manifest_path = root / "demo_manifest.json"
    if root.exists() and any(root.iterdir()) and not manifest_path.is_file():
        raise ExistingFileError(f"'{root}' is not empty and holds no demo set: refusing to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the set is an ordinary folder
    try:
        write(tmp)
        (tmp / "demo_manifest.json").write_text(json.dumps(manifest))
        replace_folder(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_current(root: Path, manifest: dict[str, int], product: str) -> bool:
    manifest_path = root / "demo_manifest.json"
    return (root / product).exists() and manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest


def write_demo_unpaired(
    root: str | Path, num_images: int = 30000, num_captions: int = 30000, image_size: int = 64, seed: int = 0
) -> Path:
    """Write unpaired demo data for self-supervised pretraining into `root` (reused when already written with the same
    settings): `images/` with `num_images` scenes and `captions.txt` with `num_captions` captions (five per scene) of
    other scenes. Both come from random streams of their own, so no paired, validation or test scene is among them."""
    if min(num_images, num_captions) < 1 or image_size < 24:
        raise UserError(
            f"unpaired demo set: need num_images, num_captions >= 1 and image_size >= 24, got {num_images}, "
            f"{num_captions}, {image_size}"
        )
    root = Path(root)
    manifest = {
        "version": GENERATOR_VERSION,
        "kind": "unpaired",
        "num_images": num_images,
        "num_captions": num_captions,
        "image_size": image_size,
        "seed": seed,
    }

    def write(folder: Path) -> None:
        (folder / "images").mkdir()
        jobs = [("unpaired_images", i, folder / "images" / f"{i:06d}.png") for i in range(num_images)]
        save_scene_images(jobs, image_size, seed)
        lines: list[str] = []
        for index in range((num_captions + 4) // 5):
            lines.extend(generate_scene(seed, "unpaired_captions", index).captions)
        (folder / "captions.txt").write_text("\n".join(lines[:num_captions]) + "\n")

    if not _is_current(root, manifest, "captions.txt"):
        _publish(root, manifest, write)
    return root


def write_demo_dataset(
    root: str | Path,
    num_train: int = 6000,
    num_val: int = 200,
    num_test: int = 500,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the demo set into `root` (reused if already written with the same settings); returns its JSON path.

    Built in a temporary sibling folder and renamed into place, so `root` never holds a partial set.
    An existing `root` is replaced only if it is empty or holds an earlier demo set.
    """
    if min(num_train, num_val, num_test) < 0 or image_size < 24:
        raise UserError(
            f"demo set: need split sizes >= 0 and image_size >= 24, got {num_train}/{num_val}/{num_test}, {image_size}"
        )
    root = Path(root)
    manifest = _manifest(num_train, num_val, num_test, image_size, seed)
    if not _is_current(root, manifest, "dataset_demo.json"):
        counts = dict(zip(SPLITS, (num_train, num_val, num_test), strict=True))
        _publish(root, manifest, lambda folder: _write(folder, counts, image_size, seed))
    return root / "dataset_demo.json"


def main(argv: list[str] | None = None) -> None:
    """Command line: write the demo set into OUT_DIR and print the JSON path."""
    parser = argparse.ArgumentParser(description="write the procedural demo dataset (Karpathy-split JSON + PNGs)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_demo_dataset(args.out_dir, args.num_train, args.num_val, args.num_test, args.image_size, args.seed))


if __name__ == "__main__":
    main()
