"""Webdataset shards for streaming runs: realistic JPEGs and the project's caption and negation fields.

    python -m bench.webdataset_fixture --out runs/wds --samples 1000 --shards 4
    python -m bench.webdataset_fixture --out runs/wds-bad --samples 64 --shards 2 --corrupt 3
    python train.py --streaming --dataset_name 'runs/wds/shard-*.tar' --image_column jpg --max_steps 100 ...

Each sample is `<key>.jpg` + `<key>.json` in `shard-00000.tar`, `shard-00001.tar`, …; the JSON holds
`caption`, `presence_negated` and `absence_negated` (the columns `data_builder.py` writes; "" where a
sample has no such negation: a field null in the first samples would be typed null by datasets) and
`objects` (the shapes drawn). Images: PIL-drawn scenes (a colour gradient, grain, and two or three
filled shapes whose colours and kinds make the captions) of varied sizes between `--min_side` and
`--max_side`, JPEG quality 90. The same settings give the same bytes (`--seed`). `--corrupt N`: N
samples spread over the shards get bytes that are not an image instead of their JPEG. `manifest.json`
lists the settings, each shard's keys in order and the corrupt keys.

Public surface: `write_shards(out, samples, shards, seed=0, corrupt=0, min_side=64, max_side=320) ->
ShardsInfo`, `sample(index, seed, min_side, max_side) -> (jpeg bytes, fields)`, `CORRUPT_BYTES`.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from omninegclip.building.shapes import COLOUR_RGB, THEMES

COLOURS = COLOUR_RGB  # the image world's colours and shapes
SHAPES = THEMES["geometry"]
CORRUPT_BYTES = b"this is not an image, it only has the name of one"


@dataclass
class ShardsInfo:
    out: str
    samples: int
    shards: list[str]
    keys: list[list[str]]
    corrupt: list[str]
    seed: int
    min_side: int
    max_side: int


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=colour)


def sample(index: int, seed: int = 0, min_side: int = 64, max_side: int = 320) -> tuple[bytes, dict]:
    """Sample `index`'s JPEG and its fields (caption, negations, objects); the same for the same arguments."""
    rng = random.Random(f"{seed}:{index}")
    width, height = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
    # A smooth two-colour gradient with grain, so that the JPEG compresses like a photograph, not a flat fill.
    start, end = (np.array(rng.choice(list(COLOURS.values())), dtype=np.float32) * 0.5 for _ in range(2))
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    pixels = start + (end - start) * ramp + np.zeros((height, 1, 1), dtype=np.float32)
    grain = np.random.default_rng(rng.randrange(2**32)).normal(0.0, 6.0, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    objects = []
    for colour, shape in rng.sample([(c, s) for c in COLOURS for s in SHAPES], rng.randint(2, 3)):
        side = rng.randint(max(4, min(width, height) // 5), max(5, min(width, height) // 2))
        left, top = rng.randint(0, width - side), rng.randint(0, height - side)
        _draw(draw, shape, (left, top, left + side, top + side), COLOURS[colour])
        objects.append(f"{colour} {shape}")
    drawn = set(objects)
    absent = rng.choice([f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in drawn])
    caption = "a " + " and a ".join(objects)
    fields = {
        "caption": caption,
        # Every fourth sample has no presence negation, every fifth no absence negation (not in the first ones).
        "presence_negated": "" if index % 4 == 3 else f"{caption.rsplit(' and a ', 1)[0]} and no {objects[-1]}",
        "absence_negated": "" if index % 5 == 4 else f"{caption} with no {absent}",
        "objects": objects,
    }
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), fields


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # no timestamps: the same bytes every time
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    out: str | Path,
    samples: int,
    shards: int,
    seed: int = 0,
    corrupt: int = 0,
    min_side: int = 64,
    max_side: int = 320,
) -> ShardsInfo:
    """`samples` samples in `shards` webdataset shards under `out` (consecutive samples per shard),
    `corrupt` of them with bytes that are not an image, and `manifest.json`."""
    if not 1 <= shards <= samples:
        raise ValueError(f"need 1 <= shards <= samples, got {shards} shards for {samples} samples")
    if not 0 <= corrupt <= samples:
        raise ValueError(f"--corrupt must be between 0 and the samples ({samples}), got {corrupt}")
    if not 8 <= min_side <= max_side:
        raise ValueError(f"need 8 <= min_side <= max_side, got {min_side}, {max_side}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bad = set(random.Random(f"{seed}:corrupt").sample(range(samples), corrupt))
    bounds = np.linspace(0, samples, shards + 1).astype(int)
    info = ShardsInfo(str(out), samples, [], [], [], seed, min_side, max_side)
    for shard, (first, last) in enumerate(zip(bounds[:-1], bounds[1:])):
        path = out / f"shard-{shard:05d}.tar"
        keys = []
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(int(first), int(last)):
                key = f"{index:08d}"
                jpeg, fields = sample(index, seed, min_side, max_side)
                _add(tar, f"{key}.jpg", CORRUPT_BYTES if index in bad else jpeg)
                _add(tar, f"{key}.json", json.dumps(fields).encode())
                keys.append(key)
                if index in bad:
                    info.corrupt.append(key)
        info.shards.append(path.name)
        info.keys.append(keys)
    (out / "manifest.json").write_text(json.dumps(asdict(info), indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> ShardsInfo:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Folder for the shards and manifest.json.")
    parser.add_argument("--samples", type=int, default=1000, help="Samples in all.")
    parser.add_argument("--shards", type=int, default=4, help="Shards they are split into.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corrupt", type=int, default=0, help="Samples whose image bytes are not an image.")
    parser.add_argument("--min_side", type=int, default=64, help="Smallest image side in pixels.")
    parser.add_argument("--max_side", type=int, default=320, help="Largest image side in pixels.")
    args = parser.parse_args(argv)
    try:
        info = write_shards(args.out, args.samples, args.shards, args.seed, args.corrupt, args.min_side, args.max_side)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {info.samples} samples in {len(info.shards)} shards to {info.out} ({len(info.corrupt)} corrupt)")
    return info


if __name__ == "__main__":
    main(sys.argv[1:])
