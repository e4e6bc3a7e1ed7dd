"""One reader per published source, each turning its files into the same `Source` of `SourceItem`s.

A reader checks the published schema (a missing key is a `UserError` naming the file, the entry and
the key), finds each image on disk (or in the dataset, or at a URL), and says what it knows about
each caption: the objects present, and any negation the source itself ships. Images are not opened
here: the builder opens each one once, when it writes it. Nothing is lost silently: every caption
read becomes an item or a counted skip (`Source.skips`, an `omninegclip.common.skips.SkipLog`: by
reason, with the first places of each).

Public surface:
- `ImageRef`, `GivenNegation`, `SourceItem`, `Source`: what a reader returns; `ImageRef.read_bytes()`
  gives the encoded image, None when the file is missing, or raises `ImageUnavailable(reason)`;
- `read_coco(captions, instances, images, captions_per_image=1, num_proc=1)`: COCO 2017 `captions_*.json` +
  `instances_*.json` + image folder; present objects from the instance annotations (exhaustive).
  Only the keys it uses are kept while the JSON is parsed (COCO's polygons are dropped as they
  are read). An image id listed twice with two different files, and an `image_id` whose type
  differs from the `images` ids ("1" against 1), are errors naming the file and key;
  `check_captions_per_image(n)`: n >= 0 (0: all), else an error naming the flag;
- `read_captions_dataset(dataset, ...)`: any image–caption dataset (a `save_to_disk` folder, an image
  folder with `metadata.jsonl`/`metadata.csv`, a JSON/JSONL/CSV/TSV/Parquet file, or a Hub id); present
  objects found in the captions through the vocabulary (not exhaustive). JSON, JSON Lines and CSV are
  read here (not by `datasets`), so a malformed row is reported by its line and a caption is never
  coerced to or from another type. Images may be file paths or http(s) URLs (see `fetch_image`);
- `fetch_image(url, cache_dir, timeout=10.0, max_bytes=20_000_000) -> Path`: one image downloaded into
  `cache_dir` under a name made from a hash of the URL (never the URL's own name), with a total time
  limit and a size limit; `ImageUnavailable` when it cannot be had;
- `read_ccneg(annotations, images, eval_size=40000)`: CoN-CLIP's `ccneg_preprocessed.pt` (presence
  triples; the last `eval_size` items are the evaluation split), parsed by
  `omninegclip.common.formats.read_ccneg_file` (the reader `eval/` uses too). `images` is the CC-Neg
  root: images are looked for as `formats.ccneg_image_candidates` lists them;
- `read_negationclip(annotations, images, instances=None)`: NegationCLIP's COCO-format JSON whose
  annotations carry `caption` and `updated_caption` (absence triples);
- `read_negbench(table, images=None, negated_captions_per_row=1, downloads=None)`: NegBench's CC12M-NegCap
  or CC12M-NegMCQ table (CSV or Parquet, told apart by its columns: `NEGCAP_COLUMNS`, `NEGMCQ_COLUMNS`),
  read in batches; `check_negated_captions_per_row(n)`;
- `infer_absent_object(caption, updated_caption)`: which object an absence rewrite negated;
- `read_coco_objects(instances)`: image id -> {category: total box area}, from a COCO instances file.

Formats, as the authors' released code reads them (CC-Neg's, shared with `eval/`, is described in
`omninegclip.common.formats`; JSON and CSV files are read by its `read_json` and `read_csv`):
- NegationCLIP (github.com/parkquasar/NegationCLIP, `src/data_generation.py`): COCO's
  `captions_train2014.json` with `info`, `licenses`, `images` kept and `annotations` reduced to the
  rewritten ones, each with an added `updated_caption`; the negated object is not stored.
- NegBench (github.com/m1k2zoo/negbench, `synthetic_datasets/finetuning/`): CC12M-NegCap is
  `generate_negative_captions.py`'s output (`filepath, caption, extracted_objects, negative_objects,
  negative_captions`, lists as `str(list)`; each negated caption negates one object drawn from
  `negative_objects`, which `filter_negative_objects.py` checked absent); CC12M-NegMCQ is `create_mcq.py`'s
  (`correct_answer, caption_0..caption_3, correct_answer_template, image_path`) after `paraphrase_captions.py`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from omninegclip.building.parallel import fork_map
from omninegclip.building.rewrite import absence_problem
from omninegclip.building.vocabulary import (
    NEGATION_CUES,
    canonical_category,
    detect_objects,
    find_mentions,
    has_negation_cue,
    mentions,
)
from omninegclip.common.cli import UserError
from omninegclip.common.formats import (
    CCNEG_EVAL_SIZE,
    ccneg_image_candidates,
    describe_value,
    parse_list_cell,
    read_ccneg_file,
    read_csv,
    read_json,
    require,
    require_list,
)
from omninegclip.common.skips import SkipLog, text_skip

SPLITS = ("train", "validation", "test")
TRAIN_OR_VALIDATION = "trainval"  # a source split the builder divides into train and validation by image hash
BEYOND_CAPTIONS_PER_IMAGE = (
    "beyond_captions_per_image"  # a caption not selected (--captions_per_image): counted, not lost
)
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


class ImageUnavailable(Exception):
    """An image that cannot be had; `reason` is the skip reason the builder counts ("image_download_timeout", ...)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class ImageRef:
    """Where an image is: a file, or a function that returns its encoded bytes (datasets, URLs)."""

    name: str  # file name (or URL) as the source names it: shown in messages, kept as the image's `path`
    path: Path | None = None
    read: Callable[[], bytes | None] | None = None

    def read_bytes(self) -> bytes | None:
        """The encoded image, or None when the file is missing; raises `ImageUnavailable` otherwise."""
        if self.read is not None:
            return self.read()
        if self.path is None or not self.path.is_file():
            return None
        try:
            return self.path.read_bytes()
        except OSError as error:
            raise ImageUnavailable("image_unreadable", f"{self.path}: {error.strerror or error}") from None


@dataclass(frozen=True)
class GivenNegation:
    """A negated caption the source ships (CC-Neg's negative prompt, NegationCLIP's updated caption, NegBench's)."""

    text: str
    obj: str | None  # the negated (presence) or absent (absence) object; None when it cannot be told
    rewrite: str  # where it came from: "ccneg", "negationclip", "negcap", "negmcq"
    affirmed: str | None = None  # an absence negation's affirmed twin, where the source ships one (NegMCQ)


@dataclass(slots=True)
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
    skips: SkipLog = field(default_factory=SkipLog)  # captions the reader could not use, by reason, with places


def _check_dir(path: Path | str, flag: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder (the {flag} folder of images)")
    return path


_COCO_CAPTIONS_SCHEMA = "COCO captions: images[{id, file_name, width, height}], annotations[{image_id, caption}]"
_COCO_INSTANCES_SCHEMA = (
    "COCO instances: images[...], annotations[{image_id, category_id, bbox}], categories[{id, name, supercategory}]"
)


def _require_id(container: object, key: str, path: Path, where: str, schema: str) -> int | str:
    """An id (an integer or a string: what COCO-style files use)."""
    value = require(container, key, path, where, schema)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(
            f"{path}: '{key}' in {where} is {describe_value(value)}, expected an integer or a string id ({schema})"
        )
    return value


# The keys the COCO-format readers use; every other key is dropped while the file is parsed (the
# polygons alone make up most of an instances file: 3 GB of Python objects for train2017's).
_COCO_KEYS = frozenset(
    {
        "images",
        "annotations",
        "categories",
        "id",
        "file_name",
        "image_id",
        "caption",
        "category_id",
        "bbox",
        "name",
        "updated_caption",
    }
)


def _coco_images(data: object, path: Path, schema: str) -> dict[object, str]:
    """Image id -> file name. An id listed twice with the same file name is harmless (nothing is
    lost); with two different file names it is an error (one of the two images would be dropped)."""
    file_names, first_index = {}, {}
    for index, image in enumerate(require_list(data, "images", path, "the top level", schema)):
        image_id = _require_id(image, "id", path, f"images[{index}]", schema)
        file_name = require(image, "file_name", path, f"images[{index}]", schema)
        if not isinstance(file_name, str) or not file_name.strip():
            raise UserError(
                f"{path}: 'file_name' in images[{index}] is {describe_value(file_name)}, "
                f"expected a file name ({schema})"
            )
        if image_id in file_names and file_names[image_id] != file_name:
            raise UserError(
                f"{path}: images[{index}] repeats id {image_id!r} of images[{first_index[image_id]}] "
                f"with another file ({file_name!r}, not {file_names[image_id]!r}); image ids must be unique"
            )
        file_names[image_id] = file_name
        first_index.setdefault(image_id, index)
    return file_names


def _check_id_type(image_id: object, known: dict, path: Path, where: str, known_what: str) -> None:
    """An id that is not among `known` but whose string / integer twin is: say the types differ
    (`image_id` "1" against `id` 1), instead of counting every caption as one of an unknown image."""
    twin = (
        str(image_id)
        if isinstance(image_id, int)
        else int(image_id)
        if isinstance(image_id, str) and image_id.strip().isdigit()
        else None
    )
    if twin is not None and twin in known:
        kind = lambda value: f"the string {value!r}" if isinstance(value, str) else f"the integer {value!r}"  # noqa: E731
        raise UserError(
            f"{path}: 'image_id' in {where} is {kind(image_id)} but {known_what} has the id as {kind(twin)}; "
            "the types differ (use integers in both, or strings in both)"
        )


def _box_area(bbox: object, path: Path, where: str) -> float:
    """Area of a COCO `bbox` [x, y, width, height]; 0 when the annotation has none (crowd regions may not)."""
    if bbox is None or bbox == []:
        return 0.0
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        raise UserError(f"{path}: 'bbox' in {where} is {describe_value(bbox)}, expected [x, y, width, height] numbers")
    return max(float(bbox[2]), 0.0) * max(float(bbox[3]), 0.0)


def read_coco_objects(instances: Path | str) -> tuple[dict[object, dict[str, float]], dict[object, str]]:
    """From a COCO instances file: image id -> {category name: total box area}, and the image file names."""
    path = Path(instances)
    data = read_json(path, "a COCO instances_*.json file", keep=_COCO_KEYS)
    file_names = _coco_images(data, path, _COCO_INSTANCES_SCHEMA)
    names = {}
    for index, category in enumerate(require_list(data, "categories", path, "the top level", _COCO_INSTANCES_SCHEMA)):
        category_id = _require_id(category, "id", path, f"categories[{index}]", _COCO_INSTANCES_SCHEMA)
        name = require(category, "name", path, f"categories[{index}]", _COCO_INSTANCES_SCHEMA)
        if not isinstance(name, str) or not name.strip():
            raise UserError(
                f"{path}: 'name' in categories[{index}] is {describe_value(name)}, expected a category name"
            )
        names[category_id] = canonical_category(name) or " ".join(name.lower().split())
    areas: dict[object, dict[str, float]] = {image_id: {} for image_id in file_names}
    for index, annotation in enumerate(
        require_list(data, "annotations", path, "the top level", _COCO_INSTANCES_SCHEMA)
    ):
        where = f"annotations[{index}]"
        image_id = _require_id(annotation, "image_id", path, where, _COCO_INSTANCES_SCHEMA)
        category_id = _require_id(annotation, "category_id", path, where, _COCO_INSTANCES_SCHEMA)
        if category_id not in names:
            raise UserError(f"{path}: {where} has category_id {category_id!r}, which no entry of 'categories' defines")
        area = _box_area(annotation.get("bbox"), path, where)
        if image_id not in areas:
            _check_id_type(image_id, areas, path, where, "its 'images' list")
        objects = areas.setdefault(image_id, {})
        objects[names[category_id]] = objects.get(names[category_id], 0.0) + area
    return areas, file_names


_NAMING_CHUNK = 1024  # images whose captions one worker task reads


def _objects_named(images: list[tuple[object, list[str]]], num_proc: int | None) -> list[tuple[str, ...]]:
    """For each (image, captions): the objects its captions name (`detect_objects`), in workers."""

    def chunk(index: int) -> list[tuple[str, ...]]:
        return [
            tuple(sorted({obj for caption in captions for obj in detect_objects(caption)}))
            for _, captions in images[index * _NAMING_CHUNK : (index + 1) * _NAMING_CHUNK]
        ]

    return [named for part in fork_map(chunk, -(-len(images) // _NAMING_CHUNK), num_proc, 2) for named in part]


def _sort_key(value: object) -> tuple[str, object]:
    """Orders ids of mixed types (annotation ids may be numbers or strings, or missing)."""
    return (
        (type(value).__name__, value)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool)
        else ("~", repr(value))
    )


def _select_captions(captions: list[tuple[object, str]], captions_per_image: int) -> list[str]:
    ordered = [caption for _, caption in sorted(captions, key=lambda pair: _sort_key(pair[0]))]
    return ordered if captions_per_image <= 0 else ordered[:captions_per_image]


def _known_captions(
    data: object, path: Path, schema: str, file_names: dict, skips: SkipLog, keys: tuple[str, ...] = ()
) -> Iterator[tuple[int, str, dict, object, str]]:
    """(index, where, annotation, image id, stripped caption) of each COCO-format caption annotation
    (`image_id`, `caption` and `keys` required) whose image `file_names` lists and whose caption is
    text; the others are counted in `skips` (`caption_of_unknown_image`, `text_skip`'s reasons)."""
    for index, annotation in enumerate(require_list(data, "annotations", path, "the top level", schema)):
        where = f"annotations[{index}]"
        image_id = _require_id(annotation, "image_id", path, where, schema)
        caption = require(annotation, "caption", path, where, schema)
        for key in keys:
            require(annotation, key, path, where, schema)
        if image_id not in file_names:
            _check_id_type(image_id, file_names, path, where, "its 'images' list")
            skips.skip("caption_of_unknown_image", f"{path.name} {where} (image_id {image_id!r})")
        elif skips.text(caption, f"{path.name} {where}") is not None:
            yield index, where, annotation, image_id, caption.strip()


def check_captions_per_image(value: int) -> int:
    if value < 0:
        raise UserError(f"--captions_per_image {value} must be 0 (all of an image's captions) or more")
    return value


def read_coco(
    captions: Path | str,
    instances: Path | str,
    images: Path | str,
    captions_per_image: int = 1,
    num_proc: int | None = 1,
) -> Source:
    """COCO captions with present objects from the instance annotations (`captions_per_image` 0: all);
    the objects the captions name are found in `num_proc` worker processes (None: the cores)."""
    captions_path = Path(captions)
    check_captions_per_image(captions_per_image)
    images_dir = _check_dir(images, "--images")
    data = read_json(captions_path, "a COCO captions_*.json file", keep=_COCO_KEYS)
    file_names = _coco_images(data, captions_path, _COCO_CAPTIONS_SCHEMA)
    areas, _ = read_coco_objects(instances)
    source = Source(
        name="coco",
        description="MS-COCO captions; present objects from COCO's instance annotations (80 categories, exhaustive).",
        license="cc-by-4.0",
        items=[],
        object_sets=[tuple(sorted(objects)) for objects in areas.values()],
        exhaustive_objects=True,
        files=[str(captions_path), str(instances), str(images_dir)],
    )
    by_image: dict[object, list[tuple[object, str, str]]] = defaultdict(list)
    for index, where, annotation, image_id, caption in _known_captions(
        data, captions_path, _COCO_CAPTIONS_SCHEMA, file_names, source.skips
    ):
        by_image[image_id].append((annotation.get("id", index), caption, where))
    del data  # only what by_image and file_names hold is needed from here on
    chosen = []  # (image id, its selected captions)
    for image_id in sorted(by_image, key=_sort_key):
        if image_id not in areas:  # a captions file paired with another split's instances file
            _check_id_type(image_id, areas, captions_path, by_image[image_id][0][2], Path(instances).name)
            source.skips.skip(
                "image_not_in_instances",
                f"{captions_path.name} {by_image[image_id][0][2]} (image_id {image_id!r})",
                len(by_image[image_id]),
            )
            continue
        selected = _select_captions([(key, caption) for key, caption, _ in by_image[image_id]], captions_per_image)
        if len(selected) < len(by_image[image_id]):
            source.skips.skip(BEYOND_CAPTIONS_PER_IMAGE, count=len(by_image[image_id]) - len(selected))
        chosen.append((image_id, selected))
    named = _objects_named(chosen, num_proc)
    for (image_id, selected), mentioned in zip(chosen, named):
        objects = areas[image_id]
        # One ImageRef, objects tuple and salience dict per image, shared by its captions (memory).
        image, present = ImageRef(file_names[image_id], images_dir / file_names[image_id]), tuple(sorted(objects))
        for caption in selected:
            source.items.append(
                SourceItem(
                    image_id=str(image_id),
                    image=image,
                    caption=caption,
                    present_objects=present,
                    source_index=len(source.items),
                    also_mentioned=mentioned,
                    salience=objects,
                )
            )
    return source


# ------------------------------------------------------------------------------------ images by URL

DOWNLOAD_TIMEOUT = 10.0  # seconds, for the whole download of one image
MAX_IMAGE_BYTES = 20_000_000
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (never to file:// or ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise ImageUnavailable(
                "image_download_failed", f"{req.full_url}: redirected to {newurl}, which is not an http(s) URL"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _cache_file(url: str, cache_dir: Path) -> Path:
    """The cache file of a URL: a hash of the whole URL plus a plain extension (so '../' in it goes nowhere)."""
    suffix = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
        suffix = ""
    return cache_dir / (hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:40] + suffix)


def fetch_image(
    url: str, cache_dir: Path | str, timeout: float = DOWNLOAD_TIMEOUT, max_bytes: int = MAX_IMAGE_BYTES
) -> Path:
    """Download an http(s) image into `cache_dir` (once: a cached file is reused) and return its path.

    Gives up after `timeout` seconds in total (a server that trickles bytes too) and beyond `max_bytes`;
    the file is written under a temporary name and renamed when complete, so a partial download is
    never taken for an image. Raises `ImageUnavailable` with the reason ("image_url_not_http",
    "image_download_timeout", "image_download_too_large", "image_download_failed").
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ImageUnavailable("image_url_not_http", f"{url}: only http:// and https:// image URLs are fetched")
    cache = Path(cache_dir).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    target = _cache_file(url, cache)
    if target.parent != cache:  # by construction; checked because this is the one place files are written
        raise ImageUnavailable("image_download_failed", f"{url}: refusing to write outside {cache}")
    if target.is_file():
        return target
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": "omninegclip-data-builder"})
    data = bytearray()
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length", "")
            if length.strip().isdigit() and int(length) > max_bytes:
                raise ImageUnavailable(
                    "image_download_too_large", f"{url}: {int(length)} bytes, more than the {max_bytes} allowed"
                )
            while True:
                if time.monotonic() > deadline:
                    raise ImageUnavailable("image_download_timeout", f"{url}: not complete after {timeout:g} s")
                chunk = response.read1(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > max_bytes:
                    raise ImageUnavailable(
                        "image_download_too_large", f"{url}: more than the {max_bytes} bytes allowed"
                    )
    except ImageUnavailable:
        raise
    except urllib.error.HTTPError as error:
        raise ImageUnavailable("image_download_failed", f"{url}: HTTP {error.code} {error.reason}") from None
    except (TimeoutError, socket.timeout) as error:
        raise ImageUnavailable("image_download_timeout", f"{url}: no answer within {timeout:g} s ({error})") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, (TimeoutError, socket.timeout)):
            raise ImageUnavailable("image_download_timeout", f"{url}: no answer within {timeout:g} s") from None
        raise ImageUnavailable("image_download_failed", f"{url}: {error.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise ImageUnavailable("image_download_failed", f"{url}: {type(error).__name__}: {error}") from None
    partial = target.with_name(f"{target.name}.part-{os.getpid()}")
    try:
        partial.write_bytes(bytes(data))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


@dataclass(frozen=True)
class ImageDownloads:
    """How images given as URLs are fetched (`fetch_image`'s settings); no cache folder: URLs are skipped."""

    cache_dir: Path | None = None
    timeout: float = DOWNLOAD_TIMEOUT
    max_bytes: int = MAX_IMAGE_BYTES

    def __post_init__(self):
        if not self.timeout > 0:
            raise UserError(f"--download_timeout {self.timeout} must be > 0 seconds")
        if self.max_bytes < 1:
            raise UserError(f"--max_image_bytes {self.max_bytes} must be at least 1")

    def reader(self, url: str) -> Callable[[], bytes]:
        def read() -> bytes:
            if self.cache_dir is None:
                raise ImageUnavailable(
                    "image_url_without_cache", f"{url}: images given as URLs need a download folder"
                )
            return fetch_image(url, self.cache_dir, self.timeout, self.max_bytes).read_bytes()

        return read


def _is_url(value: str) -> bool:
    return bool(_URL_SCHEME.match(value))


def _image_ref(value: object, fallback_name: str, base_dir: Path | None, downloads: ImageDownloads) -> ImageRef:
    """The image a cell names: a file path (relative to `base_dir`), an http(s) URL, or nothing."""
    if isinstance(value, str) and value.strip():
        value = value.strip()
        if _is_url(value):
            return ImageRef(value, read=downloads.reader(value))
        file = Path(value) if base_dir is None or Path(value).is_absolute() else base_dir / value
        return ImageRef(Path(value).name, path=file)
    return ImageRef(fallback_name)


# ------------------------------------------------------------------------------- image-caption data


@dataclass(frozen=True)
class _Row:
    where: str  # "line 3" / "record 2" / "row 7": for messages
    caption: object
    image_id: object
    image: ImageRef


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); expected {what}") from None


def _json_records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) of a JSON file (a list of objects, or an object of equal-length columns) or JSON Lines."""
    text = _read_text(path, "JSON or JSON Lines records")
    if path.suffix.lower() != ".jsonl" and text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":  # JSON Lines in a .json file read as one value and then more
                raise UserError(
                    f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
                ) from None
        else:
            return _records_of(data, path)
    records = []
    for number, line in enumerate(text.split("\n"), start=1):  # only "\n" ends a line (a JSON string may hold U+2028)
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(
                f"{path}: line {number} is not valid JSON ({error.msg}, column {error.colno}); "
                "a JSON Lines file holds one object per line"
            ) from None
        if not isinstance(value, dict):
            raise UserError(
                f"{path}: line {number} is {describe_value(value)}, expected an object (one record per line)"
            )
        records.append((f"line {number}", value))
    return records


def _records_of(data: object, path: Path) -> list[tuple[str, dict]]:
    if isinstance(data, list):
        for index, record in enumerate(data):
            if not isinstance(record, dict):
                raise UserError(f"{path}: record {index} is {describe_value(record)}, expected an object of columns")
        return [(f"record {index}", record) for index, record in enumerate(data)]
    if isinstance(data, dict) and data and all(isinstance(column, list) for column in data.values()):
        lengths = {name: len(column) for name, column in data.items()}
        if len(set(lengths.values())) > 1:
            raise UserError(f"{path}: the columns have different lengths {lengths}; expected equal-length columns")
        count = next(iter(lengths.values()))
        return [(f"row {index}", {name: column[index] for name, column in data.items()}) for index in range(count)]
    if isinstance(data, dict):
        return [("record 0", data)]
    raise UserError(
        f"{path}: the file holds {describe_value(data)}; expected a list of objects, JSON Lines, "
        "or an object of columns"
    )


_FILE_LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def _metadata_files(folder: Path) -> list[tuple[str | None, Path]]:
    """An image folder's metadata files: one at the top (no split), else one per split sub-folder."""
    for name in _METADATA_FILES:
        if (folder / name).is_file():
            return [(None, folder / name)]
    found = []
    for sub in sorted(path for path in folder.iterdir() if path.is_dir()):
        files = [sub / name for name in _METADATA_FILES if (sub / name).is_file()]
        if files:
            found.append((sub.name, files[0]))
    return found


def _loader_of(dataset: str, loader: str) -> str:
    path = Path(dataset)
    if loader != "auto":
        return loader
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "disk"
        return "imagefolder"
    if path.is_file():
        if path.suffix.lower() not in _FILE_LOADERS:
            raise UserError(f"{path}: cannot tell how to read a '{path.suffix}' file; pass --loader json|csv|parquet")
        return _FILE_LOADERS[path.suffix.lower()]
    if path.suffix or dataset.startswith((".", "/", "~")) or dataset.count("/") > 1:
        raise UserError(
            f"{dataset}: no such file or folder (expected a save_to_disk folder, an image folder, "
            "a JSON/CSV/Parquet file or a Hub id)"
        )
    return "hub"


def _load_hf_dataset(dataset: str, loader: str, cache_dir: str | None):
    """A save_to_disk folder, a Parquet file, an image folder without a JSON/CSV metadata file, or a Hub id.
    (datasets 5.x runs no dataset scripts: there is no remote code to trust.)"""
    import datasets

    path = Path(dataset)
    try:
        if loader == "disk":
            return datasets.load_from_disk(str(path))
        if loader == "imagefolder":
            return datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir)
        if loader == "parquet":
            return datasets.load_dataset("parquet", data_files=str(path), cache_dir=cache_dir)
        if loader == "hub":
            return datasets.load_dataset(dataset, cache_dir=cache_dir)
    except Exception as error:  # the datasets library's errors name the problem; add which input it was
        detail = " ".join(str(error).split()) or type(error).__name__
        raise UserError(f"{dataset}: could not be loaded as a '{loader}' dataset: {detail}") from None
    raise UserError(f"--loader {loader!r} is not one of auto, disk, imagefolder, json, csv, parquet, hub")


def _splits_of(loaded, split: str | None, dataset: str) -> list[tuple[str | None, str, object]]:
    """(builder split or None for "divide by hash", the split's own name, part); `loaded` maps split names to parts."""
    names = list(loaded)
    if split is not None:
        if split not in loaded:
            raise UserError(f"{dataset}: has no split {split!r} (--split); it has {names}")
        return [(None, split, loaded[split])]
    if len(names) == 1:
        return [(None, names[0], loaded[names[0]])]
    unknown = [name for name in names if name not in _SPLIT_ALIASES]
    if unknown:
        raise UserError(
            f"{dataset}: splits {unknown} are not train/validation/test; choose one with --split (it has {names})"
        )
    mapped = {_SPLIT_ALIASES[name]: name for name in names}
    pairs = []
    for name in names:
        target = _SPLIT_ALIASES[name]
        if target == "train" and "validation" not in mapped:
            target = TRAIN_OR_VALIDATION
        pairs.append((target, name, loaded[name]))
    return pairs


def _check_columns(found: list[str], where: str, columns: dict[str, str | None]) -> None:
    for flag, column in columns.items():
        if column is not None and column not in found:
            raise UserError(f"{where}: has no column {column!r} ({flag}); its columns are {found}")


def _file_rows(
    records: list[tuple[str, dict]],
    file: Path,
    columns: dict[str, str | None],
    base_dir: Path,
    downloads: ImageDownloads,
    from_csv: bool,
) -> list[_Row]:
    if not records:
        return []
    _check_columns(list(dict.fromkeys(key for _, record in records for key in record)), str(file), columns)
    image_column, caption_column, image_id_column = (
        columns["--image_column"],
        columns["--caption_column"],
        columns["--image_id_column"],
    )
    rows = []
    for where, record in records:
        caption = record.get(caption_column)
        if from_csv and isinstance(caption, str):
            caption = parse_list_cell(caption) or caption
        image_id = record.get(image_id_column) if image_id_column else None
        rows.append(
            _Row(
                f"{file.name} {where}",
                caption,
                image_id,
                _image_ref(record.get(image_column), where.replace(" ", "-"), base_dir, downloads),
            )
        )
    return rows


def _dataset_image_reader(
    dataset, column: str, index: int, base_dir: Path | None, downloads: ImageDownloads
) -> Callable[[], bytes | None]:
    def read() -> bytes | None:
        value = dataset[index][column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        return (
            _image_ref(value, "", base_dir, downloads).read_bytes()
            if isinstance(value, str) and value.strip()
            else None
        )

    return read


def _dataset_rows(
    part, name: str, split_name: str, columns: dict[str, str | None], base_dir: Path | None, downloads: ImageDownloads
) -> list[_Row]:
    import datasets
    import pyarrow.compute as pc

    _check_columns(part.column_names, name, columns)
    image_column, caption_column, image_id_column = (
        columns["--image_column"],
        columns["--caption_column"],
        columns["--image_id_column"],
    )
    if isinstance(part.features[image_column], datasets.Image):
        part = part.cast_column(image_column, datasets.Image(decode=False))
        paths = pc.struct_field(part.with_format("arrow")[image_column], "path").to_pylist()
    else:
        paths = [
            value if isinstance(value, str) else None for value in part.with_format("arrow")[image_column].to_pylist()
        ]
    captions = part.with_format("arrow")[caption_column].to_pylist()
    ids = part.with_format("arrow")[image_id_column].to_pylist() if image_id_column else [None] * len(part)
    rows = []
    for index in range(len(part)):
        path = paths[index]
        image_name = (
            (path.strip() if _is_url(path.strip()) else Path(path).name)
            if isinstance(path, str) and path.strip()
            else f"row-{index}"
        )
        image = ImageRef(image_name, read=_dataset_image_reader(part, image_column, index, base_dir, downloads))
        rows.append(_Row(f"split {split_name!r} row {index}", captions[index], ids[index], image))
    return rows


def _caption_texts(value: object, skips: SkipLog, where: str) -> list[str]:
    """The usable captions of a cell (a string or a list of strings); the others counted in `skips`."""
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        skips.skip("missing_caption", where)
    return [text.strip() for text in values if skips.text(text, where) is not None]


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
    downloads: ImageDownloads | None = None,
) -> Source:
    """Captions without annotations: objects are those the image's captions name (COCO vocabulary).

    Every caption read becomes an item or a counted skip: `missing_caption`, `caption_not_text` (a
    number, an object, ...), `empty_caption`, `beyond_captions_per_image`. Image cells are file paths
    (relative to `images_dir`, else the data file's folder), http(s) URLs (fetched by `downloads`) or
    the `datasets` Image feature. The image id is `image_id_column`'s value, else the image file's
    name (the whole URL for a URL), else the row's place.
    """
    from tqdm.auto import tqdm

    check_captions_per_image(captions_per_image)
    if images_dir is not None:
        _check_dir(images_dir, "--images_dir")
    columns = {
        "--image_column": image_column,
        "--caption_column": caption_column,
        "--image_id_column": image_id_column,
    }
    parts = _caption_rows(dataset, loader, split, columns, images_dir, cache_dir, downloads or ImageDownloads())
    rows = []  # (split, image id, captions, image)
    source = Source(
        name="captions",
        description=f"Image–caption dataset `{dataset}`; objects are those its captions name "
        "(COCO vocabulary with synonyms), so an 'absent' object is one no caption of the image names.",
        license="other",
        items=[],
        object_sets=[],
        exhaustive_objects=False,
        files=[dataset],
    )
    for split_name, part_rows in parts:
        for row in tqdm(part_rows, desc=f"reading {split_name or 'captions'}", disable=not progress, leave=False):
            texts = _caption_texts(row.caption, source.skips, f"{row.where} (column {caption_column!r})")
            if not texts:
                continue
            image_id = str(row.image_id) if row.image_id is not None else row.image.name
            rows.append((split_name, image_id, texts, row.image))
    named_by_image: dict[str, set[str]] = defaultdict(set)
    for _, image_id, texts, _ in rows:
        for text in texts:
            named_by_image[image_id].update(detect_objects(text))
    for split_name, image_id, texts, image in rows:
        present = tuple(sorted(named_by_image[image_id]))
        selected = texts if captions_per_image <= 0 else texts[:captions_per_image]
        if len(selected) < len(texts):
            source.skips.skip(BEYOND_CAPTIONS_PER_IMAGE, count=len(texts) - len(selected))
        for caption in selected:
            source.items.append(
                SourceItem(
                    image_id=image_id,
                    image=image,
                    caption=caption,
                    present_objects=present,
                    source_index=len(source.items),
                    split=split_name,
                    also_mentioned=present,
                )
            )
    source.object_sets = [tuple(sorted(objects)) for objects in named_by_image.values()]
    return source


def _caption_rows(
    dataset: str,
    loader: str,
    split: str | None,
    columns: dict[str, str | None],
    images_dir: str | Path | None,
    cache_dir: str | None,
    downloads: ImageDownloads,
) -> list[tuple[str | None, list[_Row]]]:
    """(builder split, rows) of each split of an image-caption dataset; `columns` maps flags to column names."""
    path = Path(dataset)
    kind = _loader_of(dataset, loader)
    parts: list[tuple[str | None, list[_Row]]] = []
    if kind in ("json", "csv") or (kind == "imagefolder" and path.is_dir() and _metadata_files(path)):
        if kind == "imagefolder":
            files = {(name or "train"): file for name, file in _metadata_files(path)}
        else:
            if not path.is_file():
                raise UserError(f"{dataset}: no such file (--loader {kind})")
            files = {"train": path}
        for name, _, file in _splits_of(files, split, dataset):
            as_csv = kind == "csv" or (kind == "imagefolder" and file.suffix.lower() == ".csv")
            records = [(f"line {line}", row) for line, row in read_csv(file)[1]] if as_csv else _json_records(file)
            flags = dict(columns)
            image_column = columns["--image_column"]
            if (
                kind == "imagefolder"
                and records
                and image_column not in records[0][1]
                and "file_name" in records[0][1]
            ):
                flags["--image_column"] = (
                    "file_name"  # the image folder convention (datasets' imagefolder calls it "image")
                )
            base_dir = Path(images_dir) if images_dir else file.parent
            parts.append((name, _file_rows(records, file, flags, base_dir, downloads, from_csv=as_csv)))
    else:
        import datasets

        loaded = _load_hf_dataset(dataset, kind, cache_dir)
        named = {"train": loaded} if isinstance(loaded, datasets.Dataset) else loaded
        # Relative image paths start from the data file's folder, or the save_to_disk folder itself
        # (where this builder's own output keeps its images/).
        base_dir = (
            Path(images_dir) if images_dir else (path.parent if path.is_file() else path if kind == "disk" else None)
        )
        for name, part_name, part in _splits_of(named, split, dataset):
            parts.append((name, _dataset_rows(part, dataset, part_name, columns, base_dir, downloads)))
    return parts


def _as_object_name(value: object) -> str | None:
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    if not isinstance(value, str) or not value.strip() or value.strip().lower() == "none":
        return None
    return canonical_category(value) or " ".join(value.lower().split())


def read_ccneg(annotations: Path | str, images: Path | str, eval_size: int = CCNEG_EVAL_SIZE) -> Source:
    """CC-Neg presence triples; the last `eval_size` items form the test split, the rest train/validation."""
    path = Path(annotations)
    images_dir = _check_dir(images, "--images")
    entries = read_ccneg_file(path)
    if eval_size < 0 or eval_size > len(entries):
        raise UserError(f"--eval_size {eval_size} must be between 0 and the {len(entries)} items in {path}")
    first_eval = len(entries) - eval_size
    source = Source(
        name="ccneg",
        description=f"CC-Neg (CoN-CLIP, WACV 2025): CC3M images with LLM-negated captions; "
        f"the last {eval_size} items are the published evaluation split (here: test).",
        license="other",
        items=[],
        object_sets=[],
        exhaustive_objects=False,
        files=[str(path), str(images_dir)],
    )
    for entry in entries:
        caption = source.skips.text(entry.caption, f"{entry.where}['json']['caption']")
        if caption is None:
            continue
        caption = caption.strip()
        image_id, candidates = ccneg_image_candidates(entry.image_path, images_dir)
        file = next((candidate for candidate in candidates if candidate.is_file()), candidates[0])
        chosen, negative, given_skip = _ccneg_negation(caption, entry)
        present = tuple(sorted(set(detect_objects(caption)) | ({chosen} if chosen else set())))
        source.object_sets.append(present)
        source.items.append(
            SourceItem(
                image_id=image_id,
                image=ImageRef(image_id, file),
                caption=caption,
                present_objects=present,
                source_index=entry.index,
                split="test" if entry.index >= first_eval else TRAIN_OR_VALIDATION,
                also_mentioned=present,
                presence=GivenNegation(negative, chosen, "ccneg") if given_skip is None else None,
                presence_skip=given_skip,
            )
        )
    return source


def _ccneg_negation(caption: str, entry) -> tuple[str | None, str, str | None]:
    """(negated object, negative prompt without commas, why it cannot be used or None) of a CC-Neg entry."""
    chosen = _as_object_name(entry.chosen_object)
    negative = entry.negative.replace(",", "").strip() if isinstance(entry.negative, str) else ""
    if chosen is None and negative:
        # No chosen object recorded: the object the negative prompt negates and the caption names.
        named = set(detect_objects(caption))
        chosen = next((m.category for m in find_mentions(negative) if m.negated and m.category in named), None)
    if negative and chosen:
        return chosen, negative, None
    if negative:
        return chosen, negative, "ccneg_no_negated_object"
    return (
        chosen,
        negative,
        "ccneg_negative_prompt_not_text"
        if text_skip(entry.negative) == "caption_not_text"
        else "ccneg_empty_negative_prompt",
    )


_STOPWORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "any",
        "some",
        "of",
        "in",
        "on",
        "at",
        "to",
        "with",
        "and",
        "or",
        "is",
        "are",
        "be",
        "there",
        "here",
        "around",
        "nearby",
        "visible",
        "present",
        "seen",
        "in sight",
        "anywhere",
        "one",
        "its",
        "his",
        "her",
        "their",
        "this",
        "that",
        "it",
        "image",
        "picture",
        "photo",
        "scene",
        "background",
        "foreground",
        "sight",
        "view",
        "frame",
    }
)


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


_NEGATIONCLIP_SCHEMA = (
    "NegationCLIP: COCO captions JSON, images[{id, file_name}], annotations[{image_id, caption, updated_caption}]"
)


def read_negationclip(annotations: Path | str, images: Path | str, instances: Path | str | None = None) -> Source:
    """NegationCLIP absence triples; present objects from COCO instances if given, else from the captions."""
    path = Path(annotations)
    images_dir = _check_dir(images, "--images")
    data = read_json(path, "NegationCLIP's COCO-format captions JSON with 'updated_caption'", keep=_COCO_KEYS)
    file_names = _coco_images(data, path, _NEGATIONCLIP_SCHEMA)
    areas = read_coco_objects(instances)[0] if instances else None
    source = Source(
        name="negationclip",
        description="NegationCLIP (ICCV 2025): COCO captions rewritten by an LLM to state that a plausible "
        "object, checked absent by a VLM, is not there; the negated object is recovered from the rewrite.",
        license="other",
        items=[],
        object_sets=[],
        exhaustive_objects=areas is not None,
        files=[str(path), str(images_dir)] + ([str(instances)] if instances else []),
    )
    entries = []
    for _, _, annotation, image_id, caption in _known_captions(
        data, path, _NEGATIONCLIP_SCHEMA, file_names, source.skips, ("updated_caption",)
    ):
        updated = annotation["updated_caption"]
        entries.append((image_id, caption, updated.strip() if isinstance(updated, str) else ""))
    named_by_image: dict[object, set[str]] = defaultdict(set)
    for image_id, caption, _ in entries:
        named_by_image[image_id].update(detect_objects(caption))
    for index, (image_id, caption, updated) in enumerate(entries):
        if areas is not None:
            present = tuple(sorted(areas.get(image_id, {})))
        else:
            present = tuple(sorted(named_by_image[image_id]))
        absent = infer_absent_object(caption, updated) if updated else None
        given_skip = (
            None
            if updated and absent
            else ("negationclip_absent_object_not_found" if updated else "negationclip_empty_updated_caption")
        )
        source.items.append(
            SourceItem(
                image_id=str(image_id),
                image=ImageRef(file_names[image_id], images_dir / file_names[image_id]),
                caption=caption,
                present_objects=present,
                source_index=index,
                also_mentioned=tuple(sorted(named_by_image[image_id])),
                salience=dict(areas.get(image_id, {})) if areas is not None else {},
                absence=GivenNegation(updated, absent, "negationclip") if given_skip is None else None,
                absence_skip=given_skip,
            )
        )
    source.object_sets = [
        tuple(sorted(objects)) for objects in (areas.values() if areas is not None else named_by_image.values())
    ]
    return source


# ------------------------------------------------------------------------------------------ NegBench

NEGCAP_COLUMNS = ("filepath", "caption", "extracted_objects", "negative_objects", "negative_captions")
NEGMCQ_COLUMNS = (
    "image_path",
    "correct_answer",
    "caption_0",
    "caption_1",
    "caption_2",
    "caption_3",
    "correct_answer_template",
)
NEGMCQ_TEMPLATES = ("positive", "modified_positive", "hybrid", "negative")
NEGMCQ_AFFIRMS = "This image features {x}."  # NegBench's own single-object affirmation (create_mcq.py)
BEYOND_NEGATED_CAPTIONS_PER_ROW = "beyond_negated_captions_per_row"  # not selected (--negated_captions_per_row)
_TABLE_BATCH_BYTES = 8 << 20  # bytes of CSV (or rows of Parquet, below) read per batch
_TABLE_BATCH_ROWS = 65536
# Words of the MCQ options' frames ("This image features ...", "There is no ... in this image"), never an object.
_FRAME_WORDS = (
    _STOPWORDS
    | NEGATION_CUES
    | {
        "but",
        "does",
        "do",
        "doesn",
        "t",
        "yet",
        "also",
        "only",
        "features",
        "feature",
        "featured",
        "featuring",
        "shows",
        "show",
        "shown",
        "showing",
        "contains",
        "contain",
        "containing",
        "includes",
        "include",
        "included",
        "including",
        "depicts",
        "depict",
        "depicted",
        "has",
        "have",
        "displays",
        "display",
        "can",
        "found",
        "lacks",
        "lack",
        "missing",
        "absent",
        "while",
        "though",
        "although",
        "however",
        "instead",
    }
)


def _content_words(text: str) -> list[str]:
    return [word for word in re.findall(r"[a-z0-9]+", text.lower()) if word not in _FRAME_WORDS]


def _table_layout(path: Path, header: list[str]) -> str:
    """ "negcap" or "negmcq", from the table's columns; else an error naming both layouts."""
    for layout, columns in (("negcap", NEGCAP_COLUMNS), ("negmcq", NEGMCQ_COLUMNS)):
        if all(column in header for column in columns):
            return layout
    missing = {
        name: [column for column in columns if column not in header]
        for name, columns in (("CC12M-NegCap", NEGCAP_COLUMNS), ("CC12M-NegMCQ", NEGMCQ_COLUMNS))
    }
    raise UserError(
        f"{path}: is neither NegBench layout: it has the columns {header}; CC12M-NegCap needs {list(NEGCAP_COLUMNS)} "
        f"(missing {missing['CC12M-NegCap']}), CC12M-NegMCQ needs {list(NEGMCQ_COLUMNS)} "
        f"(missing {missing['CC12M-NegMCQ']})"
    )


def _table_batches(path: Path) -> tuple[str, Iterator[tuple[int, dict[str, list]]]]:
    """(layout, batches of (first row number, {column: values})) of a NegBench table, read in batches
    (pyarrow's streaming CSV reader, or Parquet row groups): a table of tens of millions of rows is never
    held at once. CSV cells are read as text, as NegBench writes them (lists as Python literals)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UserError(f"{path}: no such file (--table: a CC12M-NegCap or CC12M-NegMCQ table, .csv or .parquet)")
    if path.suffix.lower() == ".parquet":
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"{path}: not a Parquet file ({error})") from None
        layout = _table_layout(path, parquet.schema_arrow.names)
        columns = list(NEGCAP_COLUMNS if layout == "negcap" else NEGMCQ_COLUMNS)
        batches = (batch for batch in parquet.iter_batches(batch_size=_TABLE_BATCH_ROWS, columns=columns))
    elif path.suffix.lower() in (".csv", ".tsv"):
        header, rows = read_csv(path, what="a CC12M-NegCap or CC12M-NegMCQ table with a header row")
        rows.close()  # the header only (checked as every CSV is): the rows are read by pyarrow, in batches
        layout = _table_layout(path, header)
        columns = list(NEGCAP_COLUMNS if layout == "negcap" else NEGMCQ_COLUMNS)
        try:
            batches = pa_csv.open_csv(
                path,
                read_options=pa_csv.ReadOptions(block_size=_TABLE_BATCH_BYTES),
                parse_options=pa_csv.ParseOptions(
                    delimiter="\t" if path.suffix.lower() == ".tsv" else ",", newlines_in_values=True
                ),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=columns,
                    column_types=dict.fromkeys(header, pa.string()),
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"{path}: cannot be read as CSV ({' '.join(str(error).split())})") from None
    else:
        raise UserError(f"{path}: cannot tell how to read a '{path.suffix}' file; expected .csv or .parquet")

    def numbered() -> Iterator[tuple[int, dict[str, list]]]:
        first = 0
        try:
            for batch in batches:
                yield first, {name: batch.column(name).to_pylist() for name in columns}
                first += batch.num_rows
        except (pa.ArrowException, OSError) as error:
            raise UserError(
                f"{path}: not a valid table after row {first - 1} ({' '.join(str(error).split())[:300]})"
            ) from None

    return layout, numbered()


def _list_cell(value: object, skips: SkipLog, where: str, column: str) -> list | None:
    """The list a NegBench cell holds (a Python literal, as NegBench's `str(list)` writes it, or a
    Parquet list); None, counted as `<column>_not_a_list`, when it holds none."""
    parsed = value if isinstance(value, list) else parse_list_cell(value) if isinstance(value, str) else None
    if parsed is None:
        skips.skip(f"{column}_not_a_list", f"{where} (column {column!r})")
    return parsed


def _object_names(values: list) -> tuple[str, ...]:
    """NegBench's object lists as the builder's object names (COCO category, else the words lowercased)."""
    return tuple(
        dict.fromkeys(
            canonical_category(value) or " ".join(value.lower().split())
            for value in values
            if isinstance(value, str) and value.strip()
        )
    )


def _named_absent_object(text: str, caption: str, absent: tuple[str, ...]) -> str | None:
    """Which of the row's absent objects a NegCap negated caption negates: NegBench writes each one for
    a single object it draws from `negative_objects` and stores no link; the one named under a
    negation cue, else the one named that the caption does not name."""
    named = find_mentions(text, absent)
    negated = next((mention.category for mention in named if mention.negated), None)
    if negated is not None or not named:  # the caption is read only when no negation cue says which
        return negated
    return next((mention.category for mention in named if not mentions(caption, mention.category)), None)


def _mcq_roles(options: list[str], correct: int) -> tuple[str, str, str, str] | None:
    """(present object A, absent object N, the false "does not feature A", the false "features N") of an
    MCQ row, or None when its options are not NegBench's. create_mcq.py writes, beside the right answer,
    "features N, but not A", "features N" and "does not feature A" (paraphrased in the final release):
    "features N" is the wrong option without a negation cue; of the two with one, "features N, but not A"
    shares N's words and "does not feature A" shares none. The objects are the words those share."""
    wrong = [text for index, text in enumerate(options) if index != correct]
    affirmed = [text for text in wrong if not has_negation_cue(text)]
    negating = [text for text in wrong if has_negation_cue(text)]
    if len(affirmed) != 1 or len(negating) != 2:
        return None
    affirmed_words = set(_content_words(affirmed[0]))
    overlaps = [len(affirmed_words & set(_content_words(text))) for text in negating]
    if sorted(overlaps)[0] != 0 or sorted(overlaps)[1] == 0:
        return None
    both, presence = (negating[0], negating[1]) if overlaps[0] else (negating[1], negating[0])
    both_words = set(_content_words(both))
    absent = " ".join(word for word in _content_words(affirmed[0]) if word in both_words)
    present = " ".join(word for word in _content_words(presence) if word in both_words)
    if not absent or not present:
        return None
    return present, absent, presence, affirmed[0]


@dataclass
class _NegBenchReader:
    """Turns the rows of one NegBench table into `SourceItem`s (the layout's `negcap` / `negmcq` method)."""

    path: Path
    base_dir: Path
    downloads: ImageDownloads
    negated_captions_per_row: int
    source: Source
    images: dict[str, ImageRef] = field(default_factory=dict)  # one ImageRef per image (memory)

    def image(self, value: object, row: int) -> tuple[str, ImageRef]:
        if isinstance(value, str) and value.strip() in self.images:
            return value.strip(), self.images[value.strip()]
        image = _image_ref(value, f"row-{row}", self.base_dir, self.downloads)
        image_id = value.strip() if isinstance(value, str) and value.strip() else image.name
        if isinstance(value, str) and value.strip():
            self.images[image_id] = image
        return image_id, image

    def where(self, row: int) -> str:
        return f"{self.path.name} row {row}"

    def negcap(self, row: int, cells: dict) -> None:
        skips, where = self.source.skips, self.where(row)
        caption = skips.text(cells["caption"], f"{where} (column 'caption')")
        lists = [_list_cell(cells[column], skips, where, column) for column in NEGCAP_COLUMNS[2:]]
        if caption is None or any(value is None for value in lists):
            return
        caption = caption.strip()
        present, absent, negated_captions = _object_names(lists[0]), _object_names(lists[1]), lists[2]
        if not negated_captions:
            skips.skip("no_negated_caption", f"{where} (column 'negative_captions')")
            return
        texts = [
            (number, text.strip())
            for number, text in enumerate(negated_captions)
            if skips.text(text, f"{where} (column 'negative_captions'[{number}])", "negated_caption") is not None
        ]
        image_id, image = self.image(cells["filepath"], row)
        kept = 0
        for position, (number, text) in enumerate(texts):
            if kept == self.negated_captions_per_row > 0:  # the first usable ones are kept (0: all)
                skips.skip(BEYOND_NEGATED_CAPTIONS_PER_ROW, count=len(texts) - position)
                break
            obj = _named_absent_object(text, caption, absent)
            if obj is None:
                skips.skip(
                    "negated_caption_names_no_negative_object", f"{where} (column 'negative_captions'[{number}])"
                )
                continue
            # Usable means passing the quality gate: a row keeps its first negated captions that pass.
            problem = absence_problem(caption, text, obj, present)
            if problem is not None:
                skips.skip(f"quality_gate:{problem}", f"{where} (column 'negative_captions'[{number}])")
                continue
            self.source.items.append(
                SourceItem(
                    image_id=image_id,
                    image=image,
                    caption=caption,
                    present_objects=present,
                    source_index=len(self.source.items),
                    also_mentioned=present,
                    absence=GivenNegation(text, obj, "negcap"),
                )
            )
            kept += 1

    def negmcq(self, row: int, cells: dict) -> None:
        skips, where = self.source.skips, self.where(row)
        correct = cells["correct_answer"]
        if isinstance(correct, str) and correct.strip().lstrip("-").isdigit():
            correct = int(correct)
        if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct <= 3:
            raise UserError(
                f"{self.path}: row {row}, column 'correct_answer' is {describe_value(cells['correct_answer'])}, "
                "expected the index of the right option, 0 to 3"
            )
        template = cells["correct_answer_template"]
        if template not in NEGMCQ_TEMPLATES:
            raise UserError(
                f"{self.path}: row {row}, column 'correct_answer_template' is {describe_value(template)}, "
                f"expected one of {list(NEGMCQ_TEMPLATES)} (NegBench's create_mcq.py templates)"
            )
        options = [
            skips.text(cells[f"caption_{index}"], f"{where} (column 'caption_{index}')", "option")
            for index in range(4)
        ]
        if any(option is None for option in options):
            return
        options = [option.strip() for option in options]
        roles = _mcq_roles(options, correct)
        if roles is None:
            skips.skip("negmcq_options_not_recognised", f"{where} (columns 'caption_0'..'caption_3')")
            return
        present, absent, presence_text, affirmed_text = roles
        right = options[correct]
        affirmation = template in ("positive", "modified_positive")
        image_id, image = self.image(cells["image_path"], row)
        self.source.items.append(
            SourceItem(
                image_id=image_id,
                image=image,
                caption=right if affirmation else NEGMCQ_AFFIRMS.format(x=present),
                present_objects=(present,),
                source_index=len(self.source.items),
                also_mentioned=(present,),
                presence=GivenNegation(presence_text, present, "negmcq"),
                absence=None if affirmation else GivenNegation(right, absent, "negmcq", affirmed=affirmed_text),
            )
        )


def check_negated_captions_per_row(value: int) -> int:
    if value < 0:
        raise UserError(f"--negated_captions_per_row {value} must be 0 (all of a row's) or more")
    return value


def read_negbench(
    table: Path | str,
    images: Path | str | None = None,
    negated_captions_per_row: int = 1,
    downloads: ImageDownloads | None = None,
    progress: bool = True,
) -> Source:
    """NegBench's fine-tuning data, CC12M-NegCap or CC12M-NegMCQ (told apart by the table's columns),
    read in batches; image paths relative to `images` (default: the table's folder), or http(s) URLs.

    CC12M-NegCap: one item per negated caption of a row, the first `negated_captions_per_row` that name one
    of its negative objects (0: all; the others counted), an absence negation of the absent object it
    names. CC12M-NegMCQ: one item per row, its presence negation the option "does not feature A", and for
    the hybrid and negative templates its absence negation the right answer (with "features N" as the
    affirmed twin)."""
    from tqdm.auto import tqdm

    path = Path(table)
    check_negated_captions_per_row(negated_captions_per_row)
    base_dir = _check_dir(images, "--images") if images is not None else path.parent
    layout, batches = _table_batches(path)
    name = {"negcap": "CC12M-NegCap", "negmcq": "CC12M-NegMCQ"}[layout]
    source = Source(
        name="negbench",
        description=f"NegBench's {name} (CVPR 2025): CC12M images, "
        + (
            "captions with LLM-written negated captions, each negating one object an open-vocabulary detector "
            "found absent."
            if layout == "negcap"
            else "multiple-choice statements built from the objects a caption names and objects found absent."
        ),
        license="other",
        items=[],
        object_sets=[],
        exhaustive_objects=False,
        files=[str(path)] + ([str(images)] if images is not None else []),
    )
    reader = _NegBenchReader(path, base_dir, downloads or ImageDownloads(), negated_captions_per_row, source)
    read_row = reader.negcap if layout == "negcap" else reader.negmcq
    with tqdm(desc=f"reading {name}", unit=" rows", disable=not progress, leave=False) as bar:
        for first, columns in batches:
            names = list(columns)
            for offset, values in enumerate(zip(*columns.values())):
                read_row(first + offset, dict(zip(names, values)))
            bar.update(len(columns[names[0]]))
    return source
