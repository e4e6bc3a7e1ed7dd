"""One reader per published source, each turning its files into the same `Source` of `SourceItem`s.

A reader checks the published schema (a missing key is a `UserError` naming the file, the entry and
the key), finds each image on disk (or in the dataset), and says what it knows about each caption:
the objects present, and any negation the source itself ships. Images are not opened here: the
builder opens each one once, when it writes it.

Public surface:
- `ImageRef`, `GivenNegation`, `SourceItem`, `Source`: what a reader returns;
- `read_coco(captions, instances, images, captions_per_image=1)`: COCO 2017 `captions_*.json` +
  `instances_*.json` + image folder; present objects from the instance annotations (exhaustive);
- `read_captions_dataset(dataset, ...)`: any image–caption dataset (a `save_to_disk` folder, an image
  folder with `metadata.jsonl`/`metadata.csv`, a JSON/JSONL/CSV/Parquet file, or a Hub id); present
  objects found in the captions through the vocabulary (not exhaustive);
- `read_ccneg(annotations, images, eval_size=40000)`: CoN-CLIP's `ccneg_preprocessed.pt` (presence
  triples; the last `eval_size` items are the evaluation split), loaded with `weights_only=True`;
- `read_negationclip(annotations, images, instances=None)`: NegationCLIP's COCO-format JSON whose
  annotations carry `caption` and `updated_caption` (absence triples);
- `infer_absent_object(caption, updated_caption)`: which object an absence rewrite negated;
- `read_coco_objects(instances)`: image id -> {category: total box area}, from a COCO instances file.

Formats, as the authors' released code reads them:
- CC-Neg (github.com/jaisidhsingh/CoN-CLIP, `src/data/finetuning_datasets.py`): a dict with
  `image_paths` (absolute paths under `/workspace/datasets/cc3m/`, e.g.
  `.../cc3m_subset_images_extracted_final/x.jpg`, replaced there by the local CC-Neg root) and
  `annotations`, a parallel list of dicts: `annotations[i]["json"]["caption"]` the true caption,
  `annotations[i]["sop_data"]["negative-prompt"]` the negated caption (commas removed before use),
  `["sop_data"]["sop_chosen_object"]` the negated object, `["sop_data"]["sop_decomposition"]` the
  subject/object/predicate parse; an optional `num_ops` index. Train = all but the last 40,000.
- NegationCLIP (github.com/parkquasar/NegationCLIP, `src/data_generation.py`): COCO's
  `captions_train2014.json` with `info`, `licenses`, `images` kept and `annotations` reduced to the
  rewritten ones, each with an added `updated_caption`; the negated object is not stored.
"""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omninegclip.cli import UserError
from omninegclip.vocabulary import NEGATION_CUES, canonical_category, detect_objects, find_mentions, mentions

CCNEG_PATH_PREFIX = "/workspace/datasets/cc3m/"
SPLITS = ("train", "validation", "test")
TRAIN_OR_VALIDATION = "trainval"  # a source split the builder divides into train and validation by image hash
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class ImageRef:
    """Where an image is: a file, or a function that returns its encoded bytes (datasets)."""

    name: str  # file name as the source names it: shown in messages, kept as the image's `path`
    path: Path | None = None
    read: Callable[[], bytes | None] | None = None

    def read_bytes(self) -> bytes | None:
        """The encoded image, or None when the file is missing."""
        if self.read is not None:
            return self.read()
        if self.path is None or not self.path.is_file():
            return None
        return self.path.read_bytes()


@dataclass(frozen=True)
class GivenNegation:
    """A negated caption the source ships (CC-Neg's negative prompt, NegationCLIP's updated caption)."""

    text: str
    obj: str | None  # the negated (presence) or absent (absence) object; None when it cannot be told
    rewrite: str  # where it came from: "ccneg", "negationclip"


@dataclass
class SourceItem:
    image_id: str
    image: ImageRef
    caption: str
    present_objects: tuple[str, ...]  # objects known to be in the image
    source_index: int  # position in the source, for tracing a row back
    split: str | None = None  # "train"/"validation"/"test", TRAIN_OR_VALIDATION, or None: by image hash
    also_mentioned: tuple[str, ...] = ()  # objects other captions of the same image name (never "absent")
    salience: dict[str, float] = field(default_factory=dict)  # object -> area: the most visible is negated first
    presence: GivenNegation | None = None
    absence: GivenNegation | None = None
    presence_skip: str | None = None  # why a presence negation the source should ship is missing
    absence_skip: str | None = None  # likewise for an absence negation


@dataclass
class Source:
    name: str
    description: str  # for the dataset card
    license: str
    items: list[SourceItem]
    object_sets: list[tuple[str, ...]]  # objects of each image of the whole source (co-occurrence statistics)
    exhaustive_objects: bool  # True when every object in an image is known (annotations), not only the named ones
    files: list[str] = field(default_factory=list)
    skips: Counter = field(default_factory=Counter)  # items the reader could not use, by reason


def _load_json(path: Path, what: str) -> object:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected {what})")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); expected {what}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; expected {what}") from None


def _require(container: object, key: str, path: Path, where: str, schema: str) -> object:
    if not isinstance(container, dict):
        raise UserError(f"{path}: {where} is a {type(container).__name__}, expected an object ({schema})")
    if key not in container:
        raise UserError(f"{path}: {where} has no '{key}' key ({schema})")
    return container[key]


def _require_list(container: object, key: str, path: Path, where: str, schema: str) -> list:
    value = _require(container, key, path, where, schema)
    if not isinstance(value, list):
        raise UserError(f"{path}: '{key}' in {where} is a {type(value).__name__}, expected a list ({schema})")
    return value


def _check_dir(path: Path | str, flag: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder (the {flag} folder of images)")
    return path


_COCO_CAPTIONS_SCHEMA = "COCO captions: images[{id, file_name, width, height}], annotations[{image_id, caption}]"
_COCO_INSTANCES_SCHEMA = "COCO instances: images[...], annotations[{image_id, category_id, bbox}], categories[{id, name, supercategory}]"


def _coco_images(data: object, path: Path, schema: str) -> dict[object, str]:
    file_names = {}
    for index, image in enumerate(_require_list(data, "images", path, "the top level", schema)):
        image_id = _require(image, "id", path, f"images[{index}]", schema)
        file_names[image_id] = str(_require(image, "file_name", path, f"images[{index}]", schema))
    return file_names


def read_coco_objects(instances: Path | str) -> tuple[dict[object, dict[str, float]], dict[object, str]]:
    """From a COCO instances file: image id -> {category name: total box area}, and the image file names."""
    path = Path(instances)
    data = _load_json(path, "a COCO instances_*.json file")
    file_names = _coco_images(data, path, _COCO_INSTANCES_SCHEMA)
    names = {}
    for index, category in enumerate(_require_list(data, "categories", path, "the top level", _COCO_INSTANCES_SCHEMA)):
        category_id = _require(category, "id", path, f"categories[{index}]", _COCO_INSTANCES_SCHEMA)
        name = str(_require(category, "name", path, f"categories[{index}]", _COCO_INSTANCES_SCHEMA))
        names[category_id] = canonical_category(name) or " ".join(name.lower().split())
    areas: dict[object, dict[str, float]] = {image_id: {} for image_id in file_names}
    for index, annotation in enumerate(_require_list(data, "annotations", path, "the top level", _COCO_INSTANCES_SCHEMA)):
        where = f"annotations[{index}]"
        image_id = _require(annotation, "image_id", path, where, _COCO_INSTANCES_SCHEMA)
        category_id = _require(annotation, "category_id", path, where, _COCO_INSTANCES_SCHEMA)
        if category_id not in names:
            raise UserError(f"{path}: {where} has category_id {category_id!r}, which no entry of 'categories' defines")
        bbox = annotation.get("bbox") or [0, 0, 0, 0]
        area = float(bbox[2]) * float(bbox[3]) if isinstance(bbox, list) and len(bbox) == 4 else 0.0
        objects = areas.setdefault(image_id, {})
        objects[names[category_id]] = objects.get(names[category_id], 0.0) + area
    return areas, file_names


def _select_captions(captions: list[tuple[object, str]], captions_per_image: int) -> list[str]:
    ordered = [caption for _, caption in sorted(captions, key=lambda pair: (str(type(pair[0])), pair[0]))]
    return ordered if captions_per_image <= 0 else ordered[:captions_per_image]


def read_coco(captions: Path | str, instances: Path | str, images: Path | str, captions_per_image: int = 1) -> Source:
    """COCO captions with present objects from the instance annotations (`captions_per_image` <= 0: all)."""
    captions_path = Path(captions)
    images_dir = _check_dir(images, "--images")
    data = _load_json(captions_path, "a COCO captions_*.json file")
    file_names = _coco_images(data, captions_path, _COCO_CAPTIONS_SCHEMA)
    areas, _ = read_coco_objects(instances)
    skips: Counter = Counter()
    by_image: dict[object, list[tuple[object, str]]] = defaultdict(list)
    for index, annotation in enumerate(_require_list(data, "annotations", captions_path, "the top level", _COCO_CAPTIONS_SCHEMA)):
        where = f"annotations[{index}]"
        image_id = _require(annotation, "image_id", captions_path, where, _COCO_CAPTIONS_SCHEMA)
        caption = _require(annotation, "caption", captions_path, where, _COCO_CAPTIONS_SCHEMA)
        if image_id not in file_names:
            skips["caption_of_unknown_image"] += 1
        elif not isinstance(caption, str) or not caption.strip():
            skips["empty_caption"] += 1
        else:
            by_image[image_id].append((annotation.get("id", index), caption.strip()))
    items = []
    for image_id in sorted(by_image, key=lambda key: (str(type(key)), key)):
        if image_id not in areas:  # a captions file paired with another split's instances file
            skips["image_not_in_instances"] += len(by_image[image_id])
            continue
        objects = areas[image_id]
        selected = _select_captions(by_image[image_id], captions_per_image)
        mentioned = sorted({obj for caption in selected for obj in detect_objects(caption)})
        for caption in selected:
            items.append(SourceItem(
                image_id=str(image_id), image=ImageRef(file_names[image_id], images_dir / file_names[image_id]),
                caption=caption, present_objects=tuple(sorted(objects)), source_index=len(items),
                also_mentioned=tuple(mentioned), salience=dict(objects),
            ))
    return Source(
        name="coco",
        description="MS-COCO captions; present objects from COCO's instance annotations (80 categories, exhaustive).",
        license="cc-by-4.0", items=items, object_sets=[tuple(sorted(objects)) for objects in areas.values()],
        exhaustive_objects=True, files=[str(captions_path), str(instances), str(images_dir)], skips=skips,
    )


def _load_hf_dataset(dataset: str, loader: str, cache_dir: str | None):
    import datasets

    path = Path(dataset)
    if loader == "auto":
        if path.is_dir():
            loader = "disk" if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file() else "imagefolder"
        elif path.is_file():
            loader = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}.get(path.suffix.lower(), "")
            if not loader:
                raise UserError(f"{path}: cannot tell how to read a '{path.suffix}' file; pass --loader json|csv|parquet")
        elif path.suffix or dataset.startswith((".", "/", "~")) or dataset.count("/") > 1:
            raise UserError(f"{dataset}: no such file or folder (expected a save_to_disk folder, an image folder, a JSON/CSV/Parquet file or a Hub id)")
        else:
            loader = "hub"
    try:
        if loader == "disk":
            return datasets.load_from_disk(str(path))
        if loader == "imagefolder":
            return datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir)
        if loader in ("json", "csv", "parquet"):
            options = {"delimiter": "\t"} if loader == "csv" and path.suffix.lower() == ".tsv" else {}
            return datasets.load_dataset(loader, data_files=str(path), cache_dir=cache_dir, **options)
        if loader == "hub":
            return datasets.load_dataset(dataset, cache_dir=cache_dir)
    except UserError:
        raise
    except Exception as error:  # the datasets library's errors name the problem; add which input it was
        raise UserError(f"{dataset}: could not be loaded as a '{loader}' dataset: {error}") from None
    raise UserError(f"--loader {loader!r} is not one of auto, disk, imagefolder, json, csv, parquet, hub")


def _splits_of(loaded, split: str | None, dataset: str) -> list[tuple[str | None, object]]:
    """(builder split or None for "divide by hash", Dataset) pairs."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return [(None, loaded)]
    names = list(loaded)
    if split is not None:
        if split not in loaded:
            raise UserError(f"{dataset}: has no split {split!r} (--split); it has {names}")
        return [(None, loaded[split])]
    if len(names) == 1:
        return [(None, loaded[names[0]])]
    unknown = [name for name in names if name not in _SPLIT_ALIASES]
    if unknown:
        raise UserError(f"{dataset}: splits {unknown} are not train/validation/test; choose one with --split (it has {names})")
    mapped = {_SPLIT_ALIASES[name]: name for name in names}
    pairs = []
    for name in names:
        target = _SPLIT_ALIASES[name]
        if target == "train" and "validation" not in mapped:
            target = TRAIN_OR_VALIDATION
        pairs.append((target, loaded[name]))
    return pairs


def _image_reader(dataset, column: str, index: int, base_dir: Path | None) -> Callable[[], bytes | None]:
    def read() -> bytes | None:
        value = dataset[index][column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        if isinstance(value, str) and value:
            file = Path(value) if base_dir is None or Path(value).is_absolute() else base_dir / value
            return file.read_bytes() if file.is_file() else None
        return None

    return read


def read_captions_dataset(
    dataset: str,
    loader: str = "auto",
    split: str | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    image_id_column: str | None = None,
    images_dir: str | Path | None = None,
    captions_per_image: int = 1,
    cache_dir: str | None = None,
    progress: bool = True,
) -> Source:
    """Captions without annotations: objects are those the image's captions name (COCO vocabulary)."""
    import datasets
    import pyarrow.compute as pc
    from tqdm.auto import tqdm

    loaded = _load_hf_dataset(dataset, loader, cache_dir)
    path = Path(dataset)
    base_dir = Path(images_dir) if images_dir else (path.parent if path.is_file() else None)
    rows = []  # (split, image_id, captions, image ref, source row)
    skips: Counter = Counter()
    for split_name, part in _splits_of(loaded, split, dataset):
        for column, flag in ((image_column, "--image_column"), (caption_column, "--caption_column"), (image_id_column, "--image_id_column")):
            if column is not None and column not in part.column_names:
                raise UserError(f"{dataset}: has no column {column!r} ({flag}); its columns are {part.column_names}")
        if isinstance(part.features[image_column], datasets.Image):
            part = part.cast_column(image_column, datasets.Image(decode=False))
            paths = pc.struct_field(part.with_format("arrow")[image_column], "path").to_pylist()
        else:
            paths = [value if isinstance(value, str) else None for value in part.with_format("arrow")[image_column].to_pylist()]
        captions = part.with_format("arrow")[caption_column].to_pylist()
        ids = part.with_format("arrow")[image_id_column].to_pylist() if image_id_column else [None] * len(part)
        for index in tqdm(range(len(part)), desc=f"reading {split_name or 'captions'}", disable=not progress, leave=False):
            value = captions[index]
            texts = [value] if isinstance(value, str) else value if isinstance(value, list) else None
            if texts is None or not all(isinstance(text, str) for text in texts):
                skips["caption_not_text"] += 1
                continue
            texts = [text.strip() for text in texts if text.strip()]
            if not texts:
                skips["empty_caption"] += 1
                continue
            name = Path(paths[index]).name if paths[index] else f"{split_name or 'row'}-{index}"
            image_id = str(ids[index]) if ids[index] is not None else name
            rows.append((split_name, image_id, texts, ImageRef(name, read=_image_reader(part, image_column, index, base_dir))))
    named_by_image: dict[str, set[str]] = defaultdict(set)
    for _, image_id, texts, _ in rows:
        for text in texts:
            named_by_image[image_id].update(detect_objects(text))
    items = []
    for split_name, image_id, texts, image in rows:
        present = tuple(sorted(named_by_image[image_id]))
        for caption in texts if captions_per_image <= 0 else texts[:captions_per_image]:
            items.append(SourceItem(
                image_id=image_id, image=image, caption=caption, present_objects=present,
                source_index=len(items), split=split_name, also_mentioned=present,
            ))
    return Source(
        name="captions",
        description=f"Image–caption dataset `{dataset}`; objects are those its captions name (COCO vocabulary with synonyms), "
        "so an 'absent' object is one no caption of the image names.",
        license="other", items=items, object_sets=[tuple(sorted(objects)) for objects in named_by_image.values()],
        exhaustive_objects=False, files=[dataset], skips=skips,
    )


def _load_torch_safely(path: Path) -> object:
    import torch

    if not path.is_file():
        raise UserError(f"{path}: no such file (expected CoN-CLIP's ccneg_preprocessed.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe is None:
            raise UserError(f"{path}: not a readable torch.save file (torch.load(weights_only=True) could not parse it)") from None
        raise UserError(
            f"{path}: refused: loading it needs arbitrary unpickling of {unsafe.group(1)}, which could run code. "
            "The released CC-Neg file holds only lists, dicts, strings and numbers; check that this is that file."
        ) from None
    except Exception as error:
        raise UserError(f"{path}: not a readable torch.save file ({type(error).__name__}: {error})") from None


_CCNEG_SCHEMA = "CC-Neg: {image_paths: [...], annotations: [{json: {caption}, sop_data: {negative-prompt, sop_chosen_object}}]}"


def _resolve_ccneg_image(raw_path: str, images_dir: Path) -> tuple[str, Path]:
    """(image id, local file) for a path as stored in ccneg_preprocessed.pt."""
    relative = raw_path[len(CCNEG_PATH_PREFIX) :] if raw_path.startswith(CCNEG_PATH_PREFIX) else raw_path.lstrip("/")
    parts = Path(relative).parts
    candidates = [images_dir / relative, images_dir / Path(*parts[-2:]) if len(parts) >= 2 else None, images_dir / Path(relative).name]
    found = next((candidate for candidate in candidates if candidate is not None and candidate.is_file()), candidates[0])
    return relative, found


def _as_object_name(value: object) -> str | None:
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    if not isinstance(value, str) or not value.strip() or value.strip().lower() == "none":
        return None
    return canonical_category(value) or " ".join(value.lower().split())


def read_ccneg(annotations: Path | str, images: Path | str, eval_size: int = 40000) -> Source:
    """CC-Neg presence triples; the last `eval_size` items form the test split, the rest train/validation."""
    path = Path(annotations)
    images_dir = _check_dir(images, "--images")
    data = _load_torch_safely(path)
    image_paths = _require_list(data, "image_paths", path, "the top level", _CCNEG_SCHEMA)
    entries = _require_list(data, "annotations", path, "the top level", _CCNEG_SCHEMA)
    if len(image_paths) != len(entries):
        raise UserError(f"{path}: 'image_paths' has {len(image_paths)} entries but 'annotations' has {len(entries)}; they must be parallel lists")
    if eval_size < 0 or eval_size > len(entries):
        raise UserError(f"--eval_size {eval_size} must be between 0 and the {len(entries)} items in {path}")
    first_eval = len(entries) - eval_size
    items = []
    object_sets = []
    for index, (raw_path, entry) in enumerate(zip(image_paths, entries)):
        where = f"annotations[{index}]"
        caption = _require(_require(entry, "json", path, where, _CCNEG_SCHEMA), "caption", path, f"{where}['json']", _CCNEG_SCHEMA)
        sop = _require(entry, "sop_data", path, where, _CCNEG_SCHEMA)
        negative = _require(sop, "negative-prompt", path, f"{where}['sop_data']", _CCNEG_SCHEMA)
        if not isinstance(raw_path, str):
            raise UserError(f"{path}: image_paths[{index}] is a {type(raw_path).__name__}, expected a string path")
        image_id, file = _resolve_ccneg_image(raw_path, images_dir)
        caption = caption.strip() if isinstance(caption, str) else ""
        chosen = _as_object_name(sop.get("sop_chosen_object"))
        negative = negative.replace(",", "").strip() if isinstance(negative, str) else ""
        if chosen is None and negative:
            # No chosen object recorded: the object the negative prompt negates and the caption names.
            named = set(detect_objects(caption))
            chosen = next((m.category for m in find_mentions(negative) if m.negated and m.category in named), None)
        present = tuple(sorted(set(detect_objects(caption)) | ({chosen} if chosen else set())))
        object_sets.append(present)
        given_skip = None if negative and chosen else ("ccneg_no_negated_object" if negative else "ccneg_empty_negative_prompt")
        items.append(SourceItem(
            image_id=image_id, image=ImageRef(image_id, file), caption=caption, present_objects=present,
            source_index=index, split="test" if index >= first_eval else TRAIN_OR_VALIDATION, also_mentioned=present,
            presence=GivenNegation(negative, chosen, "ccneg") if given_skip is None else None, presence_skip=given_skip,
        ))
    return Source(
        name="ccneg",
        description=f"CC-Neg (CoN-CLIP, WACV 2025): CC3M images with LLM-negated captions; the last {eval_size} items are "
        "the published evaluation split (here: test).",
        license="other", items=items, object_sets=object_sets, exhaustive_objects=False, files=[str(path), str(images_dir)],
    )


_STOPWORDS = frozenset({
    "a", "an", "the", "any", "some", "of", "in", "on", "at", "to", "with", "and", "or", "is", "are", "be", "there", "here",
    "around", "nearby", "visible", "present", "seen", "in sight", "anywhere", "one", "its", "his", "her", "their", "this", "that",
    "it", "image", "picture", "photo", "scene", "background", "foreground", "sight", "view", "frame",
})


def infer_absent_object(caption: str, updated_caption: str) -> str | None:
    """The object an absence rewrite added under a negation ("... with no tree" -> "tree"); None if unclear.

    A COCO category the rewrite names under a negation and the caption does not is preferred;
    otherwise the last content word of the first new phrase that follows a new negation cue.
    """
    if not isinstance(caption, str) or not isinstance(updated_caption, str):
        return None
    for mention in find_mentions(updated_caption):
        if mention.negated and not mentions(caption, mention.category):
            return mention.category
    original = Counter(re.findall(r"\w+|n't", caption.lower()))
    tokens = re.findall(r"\w+|n't", updated_caption.lower())
    new = []
    for token in tokens:
        if original[token] > 0:
            original[token] -= 1
            new.append((token, False))
        else:
            new.append((token, True))
    for position, (token, is_new) in enumerate(new):
        if not (is_new and token in NEGATION_CUES):
            continue
        run = []
        for follower, follower_is_new in new[position + 1 :]:
            if follower in NEGATION_CUES or not (follower_is_new or follower in _STOPWORDS):
                break  # ("a", "the", "any" may be shared with the caption without ending the phrase)
            run.append(follower)
        content = [word for word in run if word not in _STOPWORDS and not word.endswith("ing") and not word.isdigit()]
        if content:
            return content[-1]
    return None


_NEGATIONCLIP_SCHEMA = "NegationCLIP: COCO captions JSON, images[{id, file_name}], annotations[{image_id, caption, updated_caption}]"


def read_negationclip(annotations: Path | str, images: Path | str, instances: Path | str | None = None) -> Source:
    """NegationCLIP absence triples; present objects from COCO instances if given, else from the captions."""
    path = Path(annotations)
    images_dir = _check_dir(images, "--images")
    data = _load_json(path, "NegationCLIP's COCO-format captions JSON with 'updated_caption'")
    file_names = _coco_images(data, path, _NEGATIONCLIP_SCHEMA)
    areas = read_coco_objects(instances)[0] if instances else None
    skips: Counter = Counter()
    entries = []
    for index, annotation in enumerate(_require_list(data, "annotations", path, "the top level", _NEGATIONCLIP_SCHEMA)):
        where = f"annotations[{index}]"
        image_id = _require(annotation, "image_id", path, where, _NEGATIONCLIP_SCHEMA)
        caption = _require(annotation, "caption", path, where, _NEGATIONCLIP_SCHEMA)
        updated = _require(annotation, "updated_caption", path, where, _NEGATIONCLIP_SCHEMA)
        if image_id not in file_names:
            skips["caption_of_unknown_image"] += 1
        elif not isinstance(caption, str) or not caption.strip():
            skips["empty_caption"] += 1
        else:
            entries.append((image_id, caption.strip(), updated.strip() if isinstance(updated, str) else ""))
    named_by_image: dict[object, set[str]] = defaultdict(set)
    for image_id, caption, _ in entries:
        named_by_image[image_id].update(detect_objects(caption))
    items = []
    for index, (image_id, caption, updated) in enumerate(entries):
        if areas is not None:
            present = tuple(sorted(areas.get(image_id, {})))
        else:
            present = tuple(sorted(named_by_image[image_id]))
        absent = infer_absent_object(caption, updated) if updated else None
        given_skip = None if updated and absent else ("negationclip_absent_object_not_found" if updated else "negationclip_empty_updated_caption")
        items.append(SourceItem(
            image_id=str(image_id), image=ImageRef(file_names[image_id], images_dir / file_names[image_id]), caption=caption,
            present_objects=present, source_index=index, also_mentioned=tuple(sorted(named_by_image[image_id])),
            salience=dict(areas.get(image_id, {})) if areas is not None else {},
            absence=GivenNegation(updated, absent, "negationclip") if given_skip is None else None, absence_skip=given_skip,
        ))
    object_sets = [tuple(sorted(objects)) for objects in (areas.values() if areas is not None else named_by_image.values())]
    return Source(
        name="negationclip",
        description="NegationCLIP (ICCV 2025): COCO captions rewritten by an LLM to state that a plausible object, checked "
        "absent by a VLM, is not there; the negated object is recovered from the rewrite.",
        license="other", items=items, object_sets=object_sets, exhaustive_objects=areas is not None,
        files=[str(path), str(images_dir)] + ([str(instances)] if instances else []), skips=skips,
    )

