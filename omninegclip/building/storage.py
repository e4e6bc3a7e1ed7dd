"""The images of a built dataset: each image checked (decoded once, without keeping it) and stored
ONCE as its original file under `images/<2 hex digits>/<name>.<ext>` of the output folder
(`store_images`, in worker processes), however many caption rows show it; and a built folder read
back with its `image` column decoded (`load_with_images`)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
from PIL import Image

from omninegclip.building.parallel import fork_map
from omninegclip.building.sources import ImageRef, ImageUnavailable, SourceItem
from omninegclip.common.safe_load import to_rgb

IMAGES_FOLDER = "images"  # inside the output folder: each image once, as a file (`image` holds its relative path)
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's own decompression-bomb threshold (about 89 million)


class _ImageTooLarge(Exception):
    pass


_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


def _checked_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[bytes, str, str | None]:
    """(bytes to store, their file extension, the original mode when it had to be converted to RGB);
    raises on a broken image, `_ImageTooLarge` (before decoding it) on one with more than `max_pixels` pixels.

    Every image is decoded (and dropped) to prove it can be: `Image.verify()` alone lets truncated
    files through. A JPEG is decoded in draft mode (its DCT scaled to 1/8 while decoding): every byte
    of the compressed stream is still read, so a truncated or corrupt file fails as in a full decode,
    at about half the cost. An RGB image is stored as it came, never re-encoded; any other mode is
    converted to RGB (transparency onto white) and stored as PNG.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked here, below
        image = Image.open(io.BytesIO(data))
    with image:
        if image.width * image.height > max_pixels:
            raise _ImageTooLarge(f"{image.width}x{image.height}")
        if image.mode == "RGB":
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            return data, _EXTENSIONS.get(image.format, ".img"), None
        image.load()
        mode = image.mode
        rgb = to_rgb(image)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue(), ".png", mode


_BROKEN_IMAGE = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


@dataclass(frozen=True)
class StoredImage:
    """What became of one image: `path` (relative to the output folder) when it was stored, else the skip `reason`."""

    path: str | None = None
    reason: str | None = None
    converted_from: str | None = None
    bytes_read: int = 0
    bytes_written: int = 0


def store_image(image: ImageRef, relative: str, root: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> StoredImage:
    """Read, check and write one image to `root / relative` + its extension (the folder is created)."""
    try:
        data = image.read_bytes()
    except ImageUnavailable as error:  # a download that failed, a file that cannot be read
        return StoredImage(reason=error.reason)
    if data is None:
        return StoredImage(reason="missing_image")
    try:
        stored, extension, converted_from = _checked_image(data, max_pixels)
    except (_ImageTooLarge, Image.DecompressionBombError):
        return StoredImage(reason="image_too_large")
    except _BROKEN_IMAGE:
        return StoredImage(reason="corrupt_image")
    path = relative + extension
    target = root / path
    if (
        not target.parent.is_dir()
    ):  # (store_images makes the folders beforehand: a failing mkdir costs more than a stat)
        target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(stored)
    return StoredImage(path=path, converted_from=converted_from, bytes_read=len(data), bytes_written=len(stored))


MIN_IMAGES_PER_WORKER = (
    16  # fewer images than this per worker are stored in this process (starting workers costs more)
)


def store_images(
    jobs: list[tuple[ImageRef, str]],
    root: Path,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    num_proc: int | None = None,
    progress: bool = False,
) -> list[StoredImage]:
    """`store_image` for each (image, relative path) of `jobs`, in `num_proc` worker processes
    (`fork_map`). Each worker reads, checks and writes its images itself and sends back only a
    `StoredImage`: memory stays about one image per worker, whatever the number of images."""
    for folder in sorted({(root / relative).parent for _, relative in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    return fork_map(
        lambda index: store_image(*jobs[index], root, max_pixels),
        len(jobs),
        num_proc,
        MIN_IMAGES_PER_WORKER,
        "checking and storing images",
        progress,
        "image",
    )


def image_key(item: SourceItem) -> tuple:
    """Rows with the same key show the same image: stored once."""
    return item.image_id, item.image.name, str(item.image.path) if item.image.path is not None else None


def relative_image_paths(keys: list[tuple]) -> list[str]:
    """`images/<2 hex digits>/<file stem>` (extension added when stored) for each key, unique (a
    second image of the same name gets "-2"); the two-digit folder (a hash of the image id and name)
    keeps folders under a few thousand files at COCO's scale."""
    used, paths = set(), []
    for key in keys:
        # From the id and name only, not the input's location: the same inputs elsewhere give the same bytes.
        digest = hashlib.sha256(json.dumps(key[:2], ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(key[1].rsplit("/", 1)[-1]).stem).strip("._-")[:100] or digest[:16]
        path, number = f"{IMAGES_FOLDER}/{digest[:2]}/{stem}", 1
        while path.lower() in used:  # also unique on case-insensitive file systems
            number += 1
            path = f"{IMAGES_FOLDER}/{digest[:2]}/{stem}-{number}"
        used.add(path.lower())
        paths.append(path)
    return paths


def load_with_images(folder: Path | str) -> datasets.DatasetDict:
    """A built dataset with its `image` column as a `datasets.Image` feature (decoded to PIL images
    on access), its relative paths resolved against `folder`. What `push_to_hub` uploads (the image
    bytes are then embedded in the Hub's Parquet files)."""
    folder = Path(folder).absolute()
    dataset_dict = datasets.load_from_disk(str(folder))
    for split, dataset in dataset_dict.items():
        if isinstance(dataset.features["image"], datasets.Image):
            continue  # built before images were stored as files
        features = datasets.Features({**dataset.features, "image": datasets.Image()})
        if not len(dataset):  # (an empty table cannot be cast)
            dataset_dict[split] = datasets.Dataset.from_dict(
                {name: [] for name in features}, features=features, split=dataset.split
            )
            continue
        resolved = dataset.map(
            lambda batch: {"image": [str(folder / path) if path else None for path in batch["image"]]},
            batched=True,
            keep_in_memory=True,
            desc=f"resolving the image paths of {split}",
        )
        dataset_dict[split] = resolved.cast(features)
    return dataset_dict
