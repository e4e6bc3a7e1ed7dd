"""A fixture in NegBench's fine-tuning layouts: a CC12M-NegCap (or CC12M-NegMCQ) table and its JPEGs.

    python -m bench.negbench_fixture --out /tmp/negcap --rows 1000000 --images 2000
    python -m bench.negbench_fixture --out /tmp/negmcq --rows 1000000 --images 2000 --layout negmcq

Tables, as NegBench's pipeline (synthetic_datasets/finetuning/ of github.com/m1k2zoo/negbench) writes them
with pandas' `to_csv(index=False)`:
- CC12M-NegCap, `cc12m_images_captioned_llama3.1_neg_captions.csv`: `filepath, caption, extracted_objects,
  negative_objects, negative_captions`; the three lists are Python literals (`str(list)`): the objects the
  caption names, 1-5 objects a detector found absent, and NegBench's M = 3 negated captions, each negating one
  absent object drawn from `negative_objects` (with replacement when there are fewer than 3), half of them
  affirmation first ("..., but no fountain is present."), half negation first ("There is no fountain in ...");
  one row in 20 has 2 (NegBench drops an empty LLM output), and some use words that are no negation cue
  ("lacks", "devoid of"), as NegBench's own prompt examples do;
- CC12M-NegMCQ, `cc12m_mcq_captions_llama3.1_rephrased.csv`: `correct_answer, caption_0, caption_1,
  caption_2, caption_3, correct_answer_template, image_path`: create_mcq.py's four options (the right one of
  the template positive / modified_positive / hybrid / negative, and "features N, but not A", "features N",
  "does not feature A"), shuffled, then reworded as the paraphrase step does (a few phrasings per form).

Rows share images as a web crawl does: row i shows image i mod `--images` (CC12M: about one row per image;
here many). Images: `images/<8 digits>.jpg`, PIL-drawn scenes (sky, ground, sun, houses, trees, grain),
300-640 px on each side, JPEG quality 88. Image paths in the table are relative to its folder. The same
arguments give the same bytes.

Public surface: `make_fixture(out, rows, images, seed=0, layout="negcap", progress=True) -> FixtureInfo`,
`scene_jpeg(index, seed=0) -> bytes`, `TABLE_FILES`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from omninegclip.building.sources import NEGCAP_COLUMNS, NEGMCQ_COLUMNS

TABLE_FILES = {
    "negcap": "cc12m_images_captioned_llama3.1_neg_captions.csv",
    "negmcq": "cc12m_mcq_captions_llama3.1_rephrased.csv",
}
NEGCAP_HEADER = list(NEGCAP_COLUMNS)
# The columns the reader needs, in the order NegBench's create_mcq.py writes them (the image path last).
NEGMCQ_HEADER = [column for column in NEGMCQ_COLUMNS if column != "image_path"] + ["image_path"]
NEGATED_CAPTIONS = 3  # NegBench's M
IMAGE_SIDES = (300, 640)

# Scenes and the objects they may hold (COCO categories and other nouns, as CC12M's captions name them).
_SCENES = {
    "park": ["bench", "tree", "dog", "person", "bicycle", "fountain", "kite", "bird", "playground", "lamp post"],
    "kitchen": ["oven", "sink", "refrigerator", "bowl", "cup", "knife", "microwave", "kettle", "cutting board"],
    "street": ["car", "bus", "traffic light", "person", "bicycle", "truck", "stop sign", "shop", "tree"],
    "beach": ["umbrella", "surfboard", "boat", "person", "bird", "towel", "sandcastle", "palm tree"],
    "living room": ["couch", "tv", "chair", "potted plant", "clock", "book", "lamp", "rug", "cat"],
    "office": ["laptop", "chair", "keyboard", "mouse", "book", "cup", "desk lamp", "whiteboard"],
}
_ADJECTIVES = ["quiet", "busy", "sunny", "cozy", "small", "bright", "old", "modern", "crowded", "peaceful"]
_CAPTIONS = [
    "{An_adj} {scene} with {a0} and {a1}.",
    "{A0} next to {a1} in {an_adj} {scene}",
    "{an_adj} {scene} where {a0} sits near {a1}",
    "Photo of {a_scene} showing {a0}, {a1} and {a2}.",
    "{A0} in the {scene} on {an_adj} day",
]
_AFFIRMATION_FIRST = [
    "{caption}, but no {n} is present.",
    "{caption}, but there is no {n}.",
    "{caption}, though there isn't {an} in sight.",
    "{caption}, with no {n} to be found.",
    "{caption}, lacking {an}.",
    "{caption}, but lacks {an}.",  # "lacks" is no negation cue for the builder: a counted skip, as in the real data
]
_NEGATION_FIRST = [
    "No {n} is present in this {scene}, which has {a0}.",
    "There is no {n} in the {scene}, but {a0} is there.",
    "While there is no {n}, the {scene} has {a0}.",
    "No {n} can be seen, though {a0} stands in the {scene}.",
    "The {scene} is devoid of {ns}, yet {a0} is there.",  # "devoid of": no cue either
]
# create_mcq.py's forms, and a few rewordings of each as the paraphrase step writes them.
_MCQ_FORMS = {
    "positive": ["This image features {A} and {B}.", "This image shows {a} and {b}.", "{A_} and {b} appear here."],
    "modified_positive": ["This image features {A}.", "This image shows {a}.", "{A_} is shown in this image."],
    "hybrid": [
        "This image features {A}, but not {N}.",
        "This image contains {a} but no {N}.",
        "This image shows {a}, but no {N} is present.",
    ],
    "negative": ["This image does not feature {N}.", "There is no {N} included in this image.", "No {N} appears."],
    "wrong_both": [
        "This image features {N}, but not {A}.",
        "This image shows {n}, but there is no {A}.",
        "This image contains {n} and no {A}.",
    ],
    "wrong_absent": ["This image features {N}.", "This image shows {n}.", "{N_} is shown in this image."],
    "wrong_present": ["This image does not feature {A}.", "There is no {A} in this image.", "No {A} is visible."],
}


@dataclass
class FixtureInfo:
    layout: str
    table: str
    rows: int
    images: int
    seed: int
    table_bytes: int
    image_bytes: int
    mean_image_kib: float


def _an(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


_IRREGULAR_PLURALS = {"mouse": "mice", "knife": "knives", "person": "people"}


def _plural(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def scene_jpeg(index: int, seed: int = 0) -> bytes:
    """One scene: a sky and ground gradient, a sun, houses, trees, people as blobs, and grain; 300-640 px a side."""
    rng = np.random.default_rng([seed, index])
    width, height = (int(side) for side in rng.integers(IMAGE_SIDES[0], IMAGE_SIDES[1] + 1, size=2))
    horizon = int(height * rng.uniform(0.45, 0.7))
    sky, ground = rng.integers(90, 256, 3), rng.integers(20, 170, 3)
    rows = np.empty((height, 3))
    rows[:horizon] = sky * np.linspace(0.75, 1.0, horizon)[:, None]
    rows[horizon:] = ground * np.linspace(1.0, 0.6, height - horizon)[:, None]
    image = Image.fromarray(np.repeat(rows[:, None, :], width, axis=1).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    sun = int(rng.integers(20, 45))
    sun_x, sun_y = int(rng.integers(sun, width - sun)), int(rng.integers(sun, max(sun + 1, horizon - sun)))
    draw.ellipse([sun_x - sun, sun_y - sun, sun_x + sun, sun_y + sun], fill=(255, 230, int(rng.integers(60, 160))))
    for _ in range(int(rng.integers(1, 5))):  # houses: a wall and a roof
        x, w, h = int(rng.integers(0, width - 60)), int(rng.integers(50, 130)), int(rng.integers(40, 110))
        wall = tuple(int(c) for c in rng.integers(80, 230, 3))
        draw.rectangle([x, horizon - h, x + w, horizon], fill=wall)
        draw.polygon(
            [(x - 8, horizon - h), (x + w + 8, horizon - h), (x + w // 2, horizon - h - h // 2)], fill=(120, 40, 30)
        )
    for _ in range(int(rng.integers(1, 7))):  # trees: a trunk and a crown
        x, size = int(rng.integers(10, width - 10)), int(rng.integers(15, 45))
        base = int(rng.integers(horizon, height))
        draw.rectangle([x - 3, base - 2 * size, x + 3, base], fill=(90, 60, 30))
        draw.ellipse([x - size, base - 3 * size, x + size, base - size], fill=(30, int(rng.integers(90, 170)), 40))
    for _ in range(int(rng.integers(0, 4))):  # people, animals: small blobs on the ground
        x, y = int(rng.integers(10, width - 10)), int(rng.integers(horizon, height - 5))
        draw.ellipse([x - 6, y - 20, x + 6, y], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(0.8))
    grain = rng.normal(0.0, 6.0, size=(height, width, 1))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _image_objects(index: int, seed: int) -> tuple[str, list[str], list[str]]:
    """The scene of an image, 2-4 objects it holds and 1-5 plausible objects it does not."""
    rng = random.Random(f"{seed}|objects|{index}")
    scene = rng.choice(sorted(_SCENES))
    candidates = list(_SCENES[scene])
    rng.shuffle(candidates)
    count = rng.randint(2, 4)
    absent = candidates[count : count + rng.randint(1, 5)]  # what the detector found absent, of NegBench's 5
    return scene, candidates[:count], absent or [rng.choice(_SCENES[rng.choice(sorted(_SCENES))])]


def _negcap_row(rng: random.Random, path: str, scene: str, present: list[str], absent: list[str]) -> list[str]:
    objects = rng.sample(present, len(present))
    names = {f"a{i}": _an(obj) for i, obj in enumerate(objects)}
    form = rng.choice([form for form in _CAPTIONS if len(objects) > 2 or "{a2}" not in form])
    an_adj = _an(rng.choice(_ADJECTIVES))
    caption = form.format(
        an_adj=an_adj,
        An_adj=an_adj.capitalize(),
        scene=scene,
        a_scene=_an(scene),
        A0=_an(objects[0]).capitalize(),
        **names,
    )
    if len(absent) < NEGATED_CAPTIONS:
        drawn = rng.choices(absent, k=NEGATED_CAPTIONS)
    else:
        drawn = rng.sample(absent, NEGATED_CAPTIONS)
    negated = []
    for obj in drawn:
        phrasing = rng.choice(_AFFIRMATION_FIRST if rng.random() < 0.5 else _NEGATION_FIRST)
        negated.append(
            phrasing.format(
                caption=caption.rstrip("."),
                n=obj,
                an=_an(obj),
                ns=_plural(obj),
                scene=scene,
                a0=_an(objects[0]),
            )
        )
    if rng.random() < 0.05:
        negated.pop()  # an empty LLM output, dropped by NegBench
    named = [obj for i, obj in enumerate(objects) if f"{{a{i}}}" in form or (i == 0 and "{A0}" in form)]
    return [path, caption, str(named), str(absent), str(negated)]  # extracted_objects: those the caption names


def _negmcq_row(rng: random.Random, path: str, present: list[str], absent: list[str]) -> list[str]:
    """create_mcq.py's row: A (and B) present, N absent, the right option of the drawn template, three wrong ones."""
    a, b = rng.sample(present, 2)
    n = rng.choice(absent)
    template = rng.choice(["positive", "negative", "hybrid"])
    names = {
        "A": a,
        "B": b,
        "N": n,
        "a": _an(a),
        "b": _an(b),
        "n": _an(n),
        "A_": _an(a).capitalize(),
        "N_": _an(n).capitalize(),
    }
    options = [
        rng.choice(_MCQ_FORMS[form]).format(**names)
        for form in (template, "wrong_both", "wrong_absent", "wrong_present")
    ]
    right = options[0]
    rng.shuffle(options)
    return [str(options.index(right)), *options, template, path]


def make_fixture(
    out: Path | str, rows: int, images: int, seed: int = 0, layout: str = "negcap", progress: bool = True
) -> FixtureInfo:
    """Write `images` JPEGs into out/images and the `layout` table of `rows` rows into out/<TABLE_FILES[layout]>."""
    if layout not in TABLE_FILES:
        raise ValueError(f"layout {layout!r} is not one of {sorted(TABLE_FILES)}")
    if rows < 1 or images < 1:
        raise ValueError(f"--rows {rows} and --images {images} must be at least 1")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    image_bytes = 0
    for index in range(images):
        path = out / "images" / f"{index:08d}.jpg"
        path.write_bytes(scene_jpeg(index, seed))
        image_bytes += path.stat().st_size
        if progress and (index + 1) % 500 == 0:
            print(f"  images: {index + 1}/{images}", file=sys.stderr)
    objects = [_image_objects(index, seed) for index in range(images)]
    rng = random.Random(f"{seed}|{layout}|rows")
    table = out / TABLE_FILES[layout]
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")  # pandas' to_csv: minimal quoting, "\n"
        writer.writerow(NEGCAP_HEADER if layout == "negcap" else NEGMCQ_HEADER)
        for row in range(rows):
            scene, present, absent = objects[row % images]
            path = f"images/{row % images:08d}.jpg"
            if layout == "negcap":
                writer.writerow(_negcap_row(rng, path, scene, present, absent))
            else:
                writer.writerow(_negmcq_row(rng, path, present, absent))
            if progress and (row + 1) % 200_000 == 0:
                print(f"  rows: {row + 1}/{rows}", file=sys.stderr)
    info = FixtureInfo(
        layout=layout,
        table=table.name,
        rows=rows,
        images=images,
        seed=seed,
        table_bytes=table.stat().st_size,
        image_bytes=image_bytes,
        mean_image_kib=round(image_bytes / images / 1024, 1),
    )
    (out / "fixture.json").write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    return info


def main(argv: list[str] | None = None) -> FixtureInfo:
    parser = argparse.ArgumentParser(prog="python -m bench.negbench_fixture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Folder to write the table and images/ into.")
    parser.add_argument("--rows", type=int, default=1000, help="Table rows. Default: %(default)s.")
    parser.add_argument(
        "--images", type=int, default=100, help="Distinct images the rows share. Default: %(default)s."
    )
    parser.add_argument("--layout", choices=sorted(TABLE_FILES), default="negcap", help="Which NegBench table.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of every choice. Default: %(default)s.")
    parser.add_argument("--no_progress", action="store_true", help="No progress lines.")
    args = parser.parse_args(argv)
    info = make_fixture(args.out, args.rows, args.images, args.seed, args.layout, progress=not args.no_progress)
    print(json.dumps(asdict(info)))
    return info


if __name__ == "__main__":
    main()
