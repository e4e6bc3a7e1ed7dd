"""Image–text retrieval on COCO/Flickr-style data: R@1/5/10, text→image and image→text.

Accepted sources:
- a Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr30k.json`): `{"images": [{"filepath"
  (COCO only), "filename", "split", "sentences": [{"raw", "tokens"}, …]}, …]}`; the images of one
  split (default `test`: COCO 5k, Flickr30k 1k) with their first five sentences (a few COCO images have
  more; those extra sentences are counted in the notes), image paths under `images_root`;
- a CSV with an image column (`filepath`, `image_path`, `image` or `filename`) and either `captions`,
  a Python-list string of captions per image (NegBench's retrieval files), or `caption`, one caption
  per row (rows of the same image are grouped); a `split` column, if present, selects `split`;
- a folder holding exactly one such JSON or CSV (images then default to that folder).

A caption that is missing, empty or not text is skipped and counted in the task's notes; an image
left with no caption is left out of the set (counted too).

Public surface: `read_retrieval(source, images_root=None, split="test", max_items=None, name="retrieval")`,
`read_retrieval_csv(...)`, `read_karpathy_json(...)`, `CAPTIONS_PER_IMAGE`.
"""

from __future__ import annotations

from pathlib import Path

from eval.files import image_loader, resolve_image
from eval.items import RetrievalSet, TaskData
from omninegclip.common.cli import UserError
from omninegclip.common.formats import parse_list_cell, read_csv, read_json
from omninegclip.common.skips import SkipLog

CAPTIONS_PER_IMAGE = 5
IMAGE_COLUMNS = ["filepath", "image_path", "image", "filename"]


class _RetrievalBuilder:
    """Collects (image, its captions) pairs into a `TaskData` with a `RetrievalSet`; one image key per file."""

    def __init__(self, name: str, max_images: int | None):
        self.task = TaskData(name=name, retrieval=RetrievalSet(images=[], texts=[], text_image=[]))
        self.image_index: dict[str, int] = {}
        self.max_images = max_images

    def full(self) -> bool:
        return self.max_images is not None and len(self.image_index) >= self.max_images

    def add(self, image_path: Path, captions: list[str | None], where: str, skips: SkipLog) -> None:
        """The image and its captions; empty captions (None) were counted already; an image with
        no caption at all is left out (and counted) unless it is in the set already."""
        captions = [caption for caption in captions if caption is not None]
        key = str(image_path)
        if not captions and key not in self.image_index:
            skips.skip("image_without_caption", where)
            return
        if key not in self.image_index:
            self.image_index[key] = len(self.task.retrieval.images)
            self.task.retrieval.images.append(key)
            self.task.images[key] = image_loader(image_path)
        for caption in captions:
            self.task.retrieval.texts.append(caption)
            self.task.retrieval.text_image.append(self.image_index[key])


def read_karpathy_json(
    path: str | Path,
    images_root: str | Path | None = None,
    split: str = "test",
    max_items: int | None = None,
    name: str = "retrieval",
) -> TaskData:
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: expected a Karpathy-split JSON with an 'images' list")
    root = Path(images_root) if images_root is not None else path.parent
    builder, skips = _RetrievalBuilder(name, max_items), SkipLog()
    for index, entry in enumerate(data["images"]):
        where = f"{path}, images[{index}]"
        if not isinstance(entry, dict) or "filename" not in entry or "sentences" not in entry:
            raise UserError(f"{where}: expected an object with 'filename', 'split' and 'sentences'")
        if entry.get("split") != split:
            continue
        if builder.full():
            break
        sentences = entry["sentences"]
        if not isinstance(sentences, list):
            raise UserError(f"{where}: 'sentences' must be a list, got {type(sentences).__name__}")
        if not sentences:
            skips.skip("image_without_caption", where)  # left out, counted, like an image whose captions are all empty
            continue
        captions = []
        for number, sentence in enumerate(sentences[:CAPTIONS_PER_IMAGE]):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                raw = " ".join(sentence["tokens"])
            captions.append(skips.text(raw, f"{where}, sentences[{number}]", "caption"))
        if len(sentences) > CAPTIONS_PER_IMAGE:
            skips.skip("beyond_captions_per_image", where, len(sentences) - CAPTIONS_PER_IMAGE)
        folder, filename = entry.get("filepath", ""), entry["filename"]
        if not isinstance(folder, str) or not isinstance(filename, str):
            raise UserError(f"{where}: 'filepath' and 'filename' must be strings, got {folder!r} and {filename!r}")
        builder.add(resolve_image(str(Path(folder) / filename), root, where), captions, where, skips)
    if not builder.image_index:
        raise UserError(
            f"{path}: no image has split {split!r}"
            + (f" with a usable caption ({skips.describe()})" if skips else "")
            + "; choose another with --retrieval_split"
        )
    builder.task.notes = skips.describe()
    return builder.task


def _parse_caption_list(value: str, where: str, skips: SkipLog) -> list[str | None]:
    captions = parse_list_cell(value)
    if not captions:
        raise UserError(f"{where}: column 'captions' must be a non-empty Python list of strings, got {value[:80]!r}")
    return [skips.text(caption, where, "caption") for caption in captions]


def read_retrieval_csv(
    path: str | Path,
    images_root: str | Path | None = None,
    split: str = "test",
    max_items: int | None = None,
    name: str = "retrieval",
) -> TaskData:
    path = Path(path)
    header, rows = read_csv(path, [IMAGE_COLUMNS, ["captions", "caption"]])
    image_column = next(column for column in IMAGE_COLUMNS if column in header)
    builder, skips = _RetrievalBuilder(name, max_items), SkipLog()
    resolved: dict[str, Path] = {}  # caption-per-row files name each image several times
    for line, row in rows:
        where = f"{path}, line {line}"
        if "split" in header and row["split"] != split:
            continue
        reference = row[image_column]
        if reference not in resolved:
            if builder.full():
                continue
            resolved[reference] = resolve_image(reference, images_root, where)
        image_path = resolved[reference]
        if "captions" in header:
            captions = _parse_caption_list(row["captions"], where, skips)
        else:
            captions = [skips.text(row["caption"], where, "caption")]
        builder.add(image_path, captions, where, skips)
    if not builder.image_index:
        raise UserError(
            f"{path}: no rows"
            + (f" with split {split!r}" if "split" in header else "")
            + (f" with a usable caption ({skips.describe()})" if skips else "")
        )
    builder.task.notes = skips.describe()
    return builder.task


def read_retrieval(
    source: str | Path,
    images_root: str | Path | None = None,
    split: str = "test",
    max_items: int | None = None,
    name: str = "retrieval",
) -> TaskData:
    source = Path(source)
    if source.is_dir():
        candidates = sorted(source.glob("*.json")) + sorted(source.glob("*.csv"))
        if len(candidates) != 1:
            raise UserError(
                f"--retrieval {source}: expected exactly one Karpathy JSON or CSV in the folder, "
                f"found {[c.name for c in candidates]}"
            )
        return read_retrieval(
            candidates[0], images_root if images_root is not None else source, split, max_items, name
        )
    if source.suffix.lower() == ".json":
        return read_karpathy_json(source, images_root, split, max_items, name)
    if source.suffix.lower() == ".csv":
        return read_retrieval_csv(source, images_root, split, max_items, name)
    raise UserError(f"--retrieval {source}: expected a Karpathy-split .json, a .csv, or a folder holding one")
