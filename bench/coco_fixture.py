"""A COCO-format fixture for benchmarks: realistic JPEGs and captions/instances annotations.

    python -m bench.coco_fixture --out runs/coco_fixture --images 1000
    python -m bench.coco_fixture --out runs/coco_full --images 500 --full_size_annotations

Images: 640x480 (a few other COCO shapes mixed in) drawn as smooth low-frequency colour fields,
fine grain and a few filled shapes, JPEG quality 90, so that they compress like COCO's photographs
(COCO train2017 averages about 160 KB an image; these come out near 100-150 KiB, the mean is
printed and returned). Annotations: `captions_train2017.json` (5 captions an image, built from the
image's objects) and `instances_train2017.json` (about 7 boxes an image, COCO's 80 categories with
their real ids, polygons in `segmentation` as COCO has them).

`--full_size_annotations` writes annotation files of COCO train2017's size (118,287 images, 591,435
captions (5 each), about 850,000 instances; 74 MB + 280 MB of JSON, the real ones 92 + 448 MB) whose
first `--images` entries name the real image files (the rest name files that are not there: a build
with `--max_rows` reads only the first ones, and the annotation loading is measured at full size).
The files are written entry by entry (little memory), and reused when `out/fixture.json` records the
same settings.

Public surface: `make_fixture(out, images, seed=0, full_size_annotations=False) -> FixtureInfo`,
`jpeg_of(index, seed) -> bytes`, `COCO_CATEGORIES`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COCO_TRAIN2017 = {"images": 118_287, "captions": 591_753, "instances": 860_001}  # the real files' counts
BOXES_PER_IMAGE = 7.3  # COCO train2017: 860,001 instances over 118,287 images
CAPTIONS_PER_IMAGE = 5
_SHAPES = [(640, 480)] * 6 + [(480, 640), (640, 427), (500, 375), (640, 512)]
COCO_CATEGORIES = {
    1: "person",
    2: "bicycle",
    3: "car",
    4: "motorcycle",
    5: "airplane",
    6: "bus",
    7: "train",
    8: "truck",
    9: "boat",
    10: "traffic light",
    11: "fire hydrant",
    13: "stop sign",
    14: "parking meter",
    15: "bench",
    16: "bird",
    17: "cat",
    18: "dog",
    19: "horse",
    20: "sheep",
    21: "cow",
    22: "elephant",
    23: "bear",
    24: "zebra",
    25: "giraffe",
    27: "backpack",
    28: "umbrella",
    31: "handbag",
    32: "tie",
    33: "suitcase",
    34: "frisbee",
    35: "skis",
    36: "snowboard",
    37: "sports ball",
    38: "kite",
    39: "baseball bat",
    40: "baseball glove",
    41: "skateboard",
    42: "surfboard",
    43: "tennis racket",
    44: "bottle",
    46: "wine glass",
    47: "cup",
    48: "fork",
    49: "knife",
    50: "spoon",
    51: "bowl",
    52: "banana",
    53: "apple",
    54: "sandwich",
    55: "orange",
    56: "broccoli",
    57: "carrot",
    58: "hot dog",
    59: "pizza",
    60: "donut",
    61: "cake",
    62: "chair",
    63: "couch",
    64: "potted plant",
    65: "bed",
    67: "dining table",
    70: "toilet",
    72: "tv",
    73: "laptop",
    74: "mouse",
    75: "remote",
    76: "keyboard",
    77: "cell phone",
    78: "microwave",
    79: "oven",
    80: "toaster",
    81: "sink",
    82: "refrigerator",
    84: "book",
    85: "clock",
    86: "vase",
    87: "scissors",
    88: "teddy bear",
    89: "hair drier",
    90: "toothbrush",
}
_TEMPLATES = (
    "A {a} next to a {b}.",
    "A photo of a {a} and a {b} in a room.",
    "Two {a}s near a {b} on a sunny day.",
    "A {a} sitting beside a {b}.",
    "Someone looking at a {a} with a {b} in the background.",
)


@dataclass
class FixtureInfo:
    images: int  # image files written
    annotated_images: int  # images the annotation files list
    captions: int
    instances: int
    mean_image_bytes: float
    image_bytes: int  # all image files together
    captions_file: str
    instances_file: str
    images_dir: str


def jpeg_of(index: int, seed: int = 0, quality: int = 90) -> bytes:
    """One photograph-like JPEG: smooth colour field + grain + filled shapes, COCO-sized."""
    rng = np.random.default_rng([seed, index])
    width, height = _SHAPES[index % len(_SHAPES)]
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    field = Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(30, width // 2)), y0 + int(rng.integers(30, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    field = field.filter(ImageFilter.GaussianBlur(1.2))
    pixels = np.asarray(field, dtype=np.int16)
    grain = rng.normal(0.0, 10.0, size=(height, width, 1)) + rng.normal(0.0, 5.0, size=(height, width, 3))
    pixels = np.clip(pixels + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _objects(rng: random.Random) -> list[int]:
    ids = list(COCO_CATEGORIES)
    return [rng.choice(ids) for _ in range(max(1, round(rng.gauss(BOXES_PER_IMAGE, 2))))]


def make_fixture(
    out: Path | str, images: int, seed: int = 0, full_size_annotations: bool = False, progress: bool = True
) -> FixtureInfo:
    """Write `images` JPEGs into out/train2017 and the two annotation files into out/annotations."""
    out = Path(out)
    image_dir, annotation_dir = out / "train2017", out / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    annotation_dir.mkdir(parents=True, exist_ok=True)
    total_bytes = 0
    for index in range(images):
        path = image_dir / f"{index + 1:012d}.jpg"
        if not path.is_file():
            path.write_bytes(jpeg_of(index, seed))
        total_bytes += path.stat().st_size
        if progress and (index + 1) % 500 == 0:
            print(f"  {index + 1}/{images} images", file=sys.stderr)
    annotated = COCO_TRAIN2017["images"] if full_size_annotations else images
    stamp = out / "fixture.json"
    settings = {"images": images, "annotated_images": annotated, "seed": seed, "version": 1}
    if stamp.is_file() and json.loads(stamp.read_text()).get("settings") == settings:  # made before: reused
        return FixtureInfo(
            **{
                **json.loads(stamp.read_text())["info"],
                "image_bytes": total_bytes,
                "mean_image_bytes": total_bytes / images,
            }
        )
    info = {"description": "Omni-NegCLIP benchmark fixture (COCO format)", "version": "1.0", "year": 2017}
    licenses = [{"url": "", "id": 1, "name": "fixture"}]
    categories = [{"supercategory": "thing", "id": cid, "name": name} for cid, name in COCO_CATEGORIES.items()]
    captions_file, instances_file = (
        annotation_dir / "captions_train2017.json",
        annotation_dir / "instances_train2017.json",
    )
    counts = {"captions": 0, "instances": 0}
    # Written entry by entry (a full-size instances file would take gigabytes as Python objects).
    with captions_file.open("w") as caps, instances_file.open("w") as inst:
        for handle in (caps, inst):
            handle.write(f'{{"info": {json.dumps(info)}, "licenses": {json.dumps(licenses)}, "images": [')
        for index, entry in enumerate(_image_entries(annotated)):
            for handle in (caps, inst):
                handle.write((", " if index else "") + json.dumps(entry))
        caps.write('], "annotations": [')
        inst.write(f'], "categories": {json.dumps(categories)}, "annotations": [')
        rng = random.Random(seed)
        for image in _image_entries(annotated):
            objects = _objects(rng)
            names = [COCO_CATEGORIES[category] for category in objects]
            for n in range(CAPTIONS_PER_IMAGE):
                counts["captions"] += 1
                caps.write(
                    (", " if counts["captions"] > 1 else "")
                    + json.dumps(
                        {
                            "image_id": image["id"],
                            "id": counts["captions"],
                            "caption": _TEMPLATES[n].format(a=names[n % len(names)], b=names[(n + 1) % len(names)]),
                        }
                    )
                )
            width, height = image["width"], image["height"]
            for category in objects:
                counts["instances"] += 1
                x, y = rng.uniform(0, width - 50), rng.uniform(0, height - 50)
                w, h = rng.uniform(10, width - x), rng.uniform(10, height - y)
                polygon = [
                    round(v, 2)
                    for k in range(12)
                    for v in (x + w * (0.5 + 0.5 * math.cos(k)), y + h * (0.5 + 0.5 * math.sin(k)))
                ]
                inst.write(
                    (", " if counts["instances"] > 1 else "")
                    + json.dumps(
                        {
                            "segmentation": [polygon],
                            "area": round(w * h * 0.7, 2),
                            "iscrowd": 0,
                            "image_id": image["id"],
                            "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                            "category_id": category,
                            "id": counts["instances"],
                        }
                    )
                )
        for handle in (caps, inst):
            handle.write("]}")
    info = FixtureInfo(
        images=images,
        annotated_images=annotated,
        captions=counts["captions"],
        instances=counts["instances"],
        mean_image_bytes=total_bytes / max(images, 1),
        image_bytes=total_bytes,
        captions_file=str(captions_file),
        instances_file=str(instances_file),
        images_dir=str(image_dir),
    )
    stamp.write_text(json.dumps({"settings": settings, "info": asdict(info)}))
    return info


def _image_entries(count: int):
    for index in range(count):
        width, height = _SHAPES[index % len(_SHAPES)]
        yield {
            "license": 1,
            "file_name": f"{index + 1:012d}.jpg",
            "coco_url": "",
            "height": height,
            "width": width,
            "date_captured": "2013-11-14 11:18:45",
            "flickr_url": "",
            "id": index + 1,
        }


def main(argv: list[str] | None = None) -> FixtureInfo:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", required=True, help="Folder to write train2017/ and annotations/ into (image files are reused)."
    )
    parser.add_argument("--images", type=int, default=1000, help="Image files to write.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--full_size_annotations", action="store_true", help="Annotation files of COCO train2017's size."
    )
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images {args.images} must be at least 1")
    info = make_fixture(args.out, args.images, seed=args.seed, full_size_annotations=args.full_size_annotations)
    print(json.dumps(asdict(info), indent=2))
    print(f"mean JPEG size: {info.mean_image_bytes / 1024:.1f} KiB over {info.images} images")
    return info


if __name__ == "__main__":
    main()
