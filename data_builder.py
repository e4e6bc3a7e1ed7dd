"""Build (image, caption, presence-negated caption, absence-negated caption) datasets for Omni-NegCLIP.

    python data_builder.py coco --captions annotations/captions_train2017.json \\
        --instances annotations/instances_train2017.json --images train2017 --out data/coco-neg
    python data_builder.py captions --dataset flickr30k_folder --caption_column caption --out data/flickr-neg
    python data_builder.py ccneg --annotations ccneg_dataset/ccneg_preprocessed.pt --images ccneg_dataset --out data/ccneg
    python data_builder.py negationclip --annotations negationclip_captions_train2014.json --images train2014 --out data/negclip
    python data_builder.py shapes --out data/world           # the offline image world (omninegclip/building/shapes.py)

Common flags: --out DIR (required), --overwrite, --seed 0, --push_to_hub REPO_ID, --no_progress, --debug;
for the real sources also --validation_fraction 0.05, --test_fraction 0.05, --max_rows N,
--max_image_pixels N, --rewriter_model ID, --num_proc N (worker processes; default the cores).
`python data_builder.py SOURCE --help` lists each source's flags.

What it writes: a `datasets.DatasetDict` (train / validation / test, `save_to_disk`) with the contract
columns `CONTRACT_COLUMNS` (shared with train.py and eval/), plus `build_summary.json` (rows in, rows
out per split, skips by reason and where, the quality gate, texts longer than CLIP's 77 tokens,
examples, and the provenance: seed, library versions, git commit) and README.md (the dataset card).
Every source row ends up written or counted: rows in = rows out + the `row:` skips.

Images (the real sources): each image is stored ONCE, however many caption rows show it, as its
original file (never re-encoded; an image not in RGB is converted to an RGB PNG) under
`images/<2 hex digits>/<name>.<ext>` inside the output folder; the `image` column holds that path,
relative to the folder (`contract_features(image_files=True)`). `train.py --dataset_name FOLDER` and
`load_dataset(FOLDER)` read it as it is; `load_with_images(FOLDER)` gives the column as decoded
images, and `--push_to_hub` uploads that (each row with its image). The shapes world keeps its
images in the table (one row per scene).

Speed: the negations, the image checks and the quality gate run in `--num_proc` forked worker
processes (`omninegclip.building.parallel.fork_map`: each row is seeded by its index, so any number of workers writes the same
bytes). An image is checked by decoding it without keeping it, a JPEG in draft mode (1/8 scale:
every byte of its compressed stream is still read, so a truncated file fails as in a full decode);
workers write the image files themselves, so memory stays one image per worker.

Bad input: a bad flag, a missing file or folder, a malformed file or row is one error paragraph
naming the flag / file / row / column (exit status 2, no traceback unless --debug or
OMNINEGCLIP_DEBUG=1); a caption or image that cannot be used (empty, not text, corrupt, missing,
too large, a download that fails) is skipped and counted by reason in the summary.

The build goes into a hidden sibling folder and is renamed into place at the end: a killed build
leaves the previous output as it was, and the next build removes what it left. Same inputs and seed
give the same bytes. Rows of one image share a split: the source's own split where it has one, else
a stable hash of the image id.

Public surface: `CONTRACT_COLUMNS`, `contract_features(image_files=False)`, `IMAGES_FOLDER`, `BuildOptions`,
`build_from_source(source, options, cache_dir, out_dir=None)`, `load_with_images(folder)`,
`store_image(...)` / `store_images(...) -> list[StoredImage]`,
`quality_gate(dataset_dict, num_proc=1) -> dict`, `CONTEXT_LENGTH`, `TokenWindow` (what of a text CLIP's text
encoder reads), `over_context_length(dataset_dict) -> dict | None`, `write_atomically(out, overwrite, fill)`,
`recover_interrupted_builds(out) -> list[Path]`, `split_for(...)`, `push_to_hub(out, repo_id, card)`,
`main(argv) -> summary`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import random
import re
import shutil
import struct
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image

from omninegclip.building.cards import GENERATED_DATA_LICENSE, hub_dataset_card, render_dataset_card, save_to_disk_files
from omninegclip.building.parallel import fork_map
from omninegclip.building.rewrite import (
    LLMRewriter,
    Rewrite,
    absence_affirm,
    absence_negate,
    absence_problem,
    presence_negate,
    presence_problem,
)
from omninegclip.building.sources import (
    DOWNLOAD_TIMEOUT,
    MAX_IMAGE_BYTES,
    SPLITS,
    TRAIN_OR_VALIDATION,
    ImageDownloads,
    ImageRef,
    ImageUnavailable,
    Source,
    SourceItem,
    check_captions_per_image,
    read_captions_dataset,
    read_ccneg,
    read_coco,
    read_negationclip,
)
from omninegclip.building.vocabulary import CooccurrenceStats, detect_objects, find_mentions
from omninegclip.common.cli import UserError, run_cli
from omninegclip.common.clip import CONTEXT_LENGTH
from omninegclip.common.outputs import ensure_writable, is_alive
from omninegclip.common.provenance import provenance
from omninegclip.common.safe_load import to_rgb
from omninegclip.common.skips import SkipLog

CONTRACT_COLUMNS = (
    "image", "caption", "presence_negated", "absence_negated", "absence_affirmed", "present_objects", "negated_object",
    "absent_object", "presence_rewrite", "absence_rewrite", "source", "image_id",
)
GATE_COLUMNS = ("caption", "presence_negated", "absence_negated", "present_objects", "negated_object", "absent_object")
SUMMARY_FILE = "build_summary.json"
IMAGES_FOLDER = "images"  # inside the output folder: each image once, as a file (`image` holds its relative path)
CARD_FILE = "README.md"
INTERRUPTED_HINT = ("nothing was written to --out (a build replaces it only once complete, and the next build cleans up "
                    "what this one left); run the same command again")  # said on Ctrl-C by omninegclip.common.cli.run_cli
TEXT_COLUMNS = ("caption", "presence_negated", "absence_negated", "absence_affirmed")
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's own decompression-bomb threshold (about 89 million)
DEFAULT_LICENSES = {"coco": "cc-by-4.0", "shapes": GENERATED_DATA_LICENSE}
_RULES = (
    "Rule-based rewrites (`omninegclip/building/rewrite.py`; the template is recorded in `presence_rewrite` / `absence_rewrite`) "
    "name the negated object under a negation cue. "
)
_PRESENCE_RULES = "The presence-negated object is one the caption names if any, else the largest present object. "
_ABSENCE_RULES = (
    "The absent object is drawn among the {k} objects most often seen with the image's objects across the whole "
    "source (co-occurrence statistics), never one the image holds or any of its captions names. "
)
STORAGE_NOTE = (
    "Storage: each image is stored once, as its original file (an image not in RGB converted to an RGB PNG), under "
    "`images/` inside the dataset folder, however many captions it has; the `image` column holds that file's path "
    "relative to the folder (`images/<2 hex digits>/<name>.<ext>`). `train.py --dataset_name FOLDER` reads it as it is; "
    "`data_builder.load_with_images(FOLDER)` gives the `image` column as decoded images; on the Hub "
    "(`--push_to_hub`) each row carries its image."
)
_SPLIT_AND_GATE = (
    "Rows of one image share a split ({splits}). A negation that failed the quality gate was removed and counted; "
    "a row left with no negation was dropped and counted."
)
_GIVEN = {
    "ccneg": "Presence negations are CC-Neg's own negative prompts (`sop_data['negative-prompt']`, commas removed as "
             "CoN-CLIP's loader does); the negated object is `sop_data['sop_chosen_object']`. ",
    "negationclip": "Absence negations are NegationCLIP's `updated_caption`; the absent object, which the file does not "
                    "store, is recovered from the rewrite (the COCO category it newly names under a negation, else the "
                    "noun after the new negation cue). ",
}
LICENSE_NOTES = {
    "coco": "COCO annotations are CC BY 4.0; the images keep their Flickr licenses (see cocodataset.org/#termsofuse).",
    "ccneg": "CC-Neg captions come from CoN-CLIP's release; the images are CC3M's and keep their original terms.",
    "negationclip": "Captions from NegationCLIP's release, built on COCO (annotations CC BY 4.0, images under Flickr terms).",
    "shapes": "Procedurally generated by omninegclip/building/shapes.py.",
}


def contract_features(image_files: bool = False) -> datasets.Features:
    """The columns every built dataset has (`source_index`: the row's position in its source). The
    `image` column is a `datasets.Image`; with `image_files`, as the builder stores it: the path of
    the image's file relative to the dataset folder (each image stored once, `IMAGES_FOLDER`)."""
    text = datasets.Value("string")
    return datasets.Features({
        "image": text if image_files else datasets.Image(), "caption": text, "presence_negated": text, "absence_negated": text,
        "absence_affirmed": text, "present_objects": datasets.List(text), "negated_object": text, "absent_object": text,
        "presence_rewrite": text, "absence_rewrite": text, "source": text, "image_id": text,
        "source_index": datasets.Value("int64"),
    })


@dataclass
class BuildOptions:
    """How captions are negated and split (the source's files are the reader's business)."""

    seed: int = 0
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    max_rows: int | None = None  # the first N source rows only
    generate_presence: bool = True  # write rule-based presence negations (a negation the source ships is kept)
    generate_absence: bool = True
    absent_top_k: int = 5  # the absent object is drawn among the k most plausible
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger images are skipped (counted), never decoded
    context_length: int | None = CONTEXT_LENGTH  # a negation the text encoder would not see is refused; None: no check
    num_proc: int | None = None  # processes that check and store the images (None: the cores)
    progress: bool = True
    rewriter: LLMRewriter | None = field(default=None, repr=False)

    def __post_init__(self):
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"--{name} {value} must be in [0, 1)")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise UserError(f"--validation_fraction + --test_fraction = {self.validation_fraction + self.test_fraction} must leave rows for train (< 1)")
        if self.max_rows is not None and self.max_rows < 1:
            raise UserError(f"--max_rows {self.max_rows} must be at least 1")
        if self.absent_top_k < 1:
            raise UserError(f"--absent_top_k {self.absent_top_k} must be at least 1")
        if self.max_image_pixels < 1:
            raise UserError(f"--max_image_pixels {self.max_image_pixels} must be at least 1")
        if self.num_proc is not None and self.num_proc < 1:
            raise UserError(f"--num_proc {self.num_proc} must be at least 1")
        if self.context_length is not None and self.context_length < 3:
            raise UserError(f"context_length {self.context_length} must be at least 3 (start, one token, end)")


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    """The openai CLIP tokenizer (for counting tokens), or None when it cannot be built here."""
    try:
        from omninegclip.common.tokenization import build_clip_tokenizer

        tokenizer = build_clip_tokenizer()
    except (ImportError, OSError):  # no open_clip wheel with CLIP's BPE merges
        return None
    tokenizer.model_max_length = 10**9  # counting only: no "sequence too long" warning
    return tokenizer


class TokenWindow:
    """What of a text CLIP's text encoder sees: its first `context_length - 2` tokens (between start and end)."""

    def __init__(self, context_length: int | None = CONTEXT_LENGTH):
        self.context_length = context_length
        self.tokenizer = _clip_tokenizer() if context_length is not None else None
        self.content_tokens = (context_length or 0) - 2

    @property
    def available(self) -> bool:
        return self.tokenizer is not None

    def visible(self, text: str) -> str:
        """The start of `text` the encoder reads (all of it when it fits)."""
        if self.tokenizer is None or len(text.encode("utf-8", "surrogatepass")) <= self.content_tokens:
            return text  # every token covers at least one byte
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text if len(offsets) <= self.content_tokens else text[: offsets[self.content_tokens - 1][1]]

    def too_long(self, texts: list[str]) -> int:
        """How many of `texts` have more tokens than the encoder reads."""
        long = [text for text in texts if isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > self.content_tokens]
        if self.tokenizer is None or not long:
            return 0
        return sum(len(ids) > self.content_tokens for ids in self.tokenizer(long, add_special_tokens=False)["input_ids"])

    def negation_visible(self, caption: str, text: str, obj: str) -> bool:
        """Does the encoder still see the negation: the object under a negation cue, and a change from the caption?"""
        seen = self.visible(text)
        if seen == text:
            return True
        return seen != self.visible(caption) and any(mention.negated for mention in find_mentions(seen, [obj]))


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def split_for(image_id: str, source_split: str | None, validation_fraction: float, test_fraction: float) -> str:
    """The split of an image: the source's own, or one drawn by a stable hash of its id (seed-independent)."""
    if source_split in SPLITS:
        return source_split
    point = _unit_hash(image_id)
    if source_split == TRAIN_OR_VALIDATION:
        return "validation" if point < validation_fraction else "train"
    if point < test_fraction:
        return "test"
    return "validation" if point < test_fraction + validation_fraction else "train"


@dataclass
class _Report:
    skips: SkipLog = field(default_factory=SkipLog)  # "source:", "row:", "<kind>:" reasons (omninegclip.common.skips)
    llm_fallbacks: Counter = field(default_factory=Counter)
    converted_modes: Counter = field(default_factory=Counter)


def _choose_negated(item: SourceItem, rng: random.Random, window: TokenWindow) -> str | None:
    """The present object to negate: one the caption names if any (within what the text encoder
    reads of a very long caption, if it names one there), else the most visible."""
    present = sorted(set(item.present_objects))
    named = sorted(set(present) & set(detect_objects(window.visible(item.caption)))) or sorted(set(present) & set(detect_objects(item.caption)))
    if named:
        return rng.choice(named)
    return min(present, key=lambda obj: (-item.salience.get(obj, 0.0), obj)) if present else None


def _rewrite(kind: str, item: SourceItem, obj: str, rng: random.Random, options: BuildOptions, report: _Report,
             keep: Callable[[str], bool]) -> tuple[Rewrite | None, str]:
    """(a negation whose text `keep` accepts, or None with the reason)."""
    if options.rewriter is not None:
        ask = options.rewriter.presence if kind == "presence" else options.rewriter.absence
        rewrite = ask(item.caption, obj, item.present_objects)
        if rewrite is not None and keep(rewrite.text):
            return rewrite, ""
        report.llm_fallbacks[kind] += 1
    negate = presence_negate if kind == "presence" else absence_negate
    rewrite = negate(item.caption, obj, rng, keep=keep)
    if rewrite is None:
        # A negation exists but every one falls beyond what the text encoder reads (a very long caption)?
        if negate(item.caption, obj, random.Random(0)):
            return None, "negation_beyond_context"
        if kind == "presence" and len(find_mentions(item.caption, [obj])) > 1:
            return None, "object_still_affirmed"  # negating one mention would leave another: "no dog and another dog"
        return None, "rewrite_failed"
    return rewrite, ""


def _choose_absent(item: SourceItem, source: Source, stats: CooccurrenceStats, options: BuildOptions, rng: random.Random) -> tuple[str | None, str]:
    """(a plausible object that is not in the image, or None with the reason)."""
    present = sorted(set(item.present_objects))
    if not present and not source.exhaustive_objects:
        return None, "no_detectable_object"  # nothing known about the image: any object could be in it
    exclude = set(item.also_mentioned) | {mention.category for mention in find_mentions(item.caption)}
    absent = stats.choose_absent(present, rng, exclude=exclude, top_k=options.absent_top_k)
    return absent, "no_plausible_absent_object"


def _negation(kind: str, item: SourceItem, source: Source, stats: CooccurrenceStats, options: BuildOptions, report: _Report,
              rng: random.Random, window: TokenWindow) -> tuple[Rewrite, str] | None:
    """One negation of a row, (rewrite, object), checked by the quality gate and by what the text
    encoder reads of it; None (counted) when there is none."""
    given, skip = (item.presence, item.presence_skip) if kind == "presence" else (item.absence, item.absence_skip)
    if given is not None:
        rewrite, obj = Rewrite(given.text, given.rewrite), given.obj
    elif skip:
        report.skips.skip(f"{kind}:{skip}")
        return None
    elif not (options.generate_presence if kind == "presence" else options.generate_absence):
        return None
    else:
        if kind == "presence":
            obj = _choose_negated(item, rng, window)
            reason = "no_present_object" if source.exhaustive_objects else "no_detectable_object"
        else:
            obj, reason = _choose_absent(item, source, stats, options, rng)
        if obj:
            rewrite, reason = _rewrite(kind, item, obj, rng, options, report, keep=lambda text: window.negation_visible(item.caption, text, obj))
        if not obj or rewrite is None:
            report.skips.skip(f"{kind}:{reason}")
            return None
    problem = (presence_problem if kind == "presence" else absence_problem)(item.caption, rewrite.text, obj, item.present_objects)
    if problem:
        report.skips.skip(f"{kind}:quality_gate:{problem}")
        return None
    if not window.negation_visible(item.caption, rewrite.text, obj):
        report.skips.skip(f"{kind}:negation_beyond_context")
        return None
    return rewrite, obj


def _negations(item: SourceItem, source: Source, stats: CooccurrenceStats, options: BuildOptions, report: _Report, window: TokenWindow) -> dict:
    """The row's negation columns (None where it has no such negation; each missing one counted)."""
    rng = random.Random(f"{options.seed}|{source.name}|{item.source_index}")
    row = {}
    for kind, (text_column, object_column, rewrite_column) in (
        ("presence", ("presence_negated", "negated_object", "presence_rewrite")),
        ("absence", ("absence_negated", "absent_object", "absence_rewrite")),
    ):
        found = _negation(kind, item, source, stats, options, report, rng, window)
        row.update({text_column: found[0].text, object_column: found[1], rewrite_column: found[0].name} if found else
                   {text_column: None, object_column: None, rewrite_column: None})
    row["absence_affirmed"] = None
    if row["absent_object"] is not None:
        twin = absence_affirm(item.caption, row["absent_object"])
        if window.visible(twin) == twin:
            row["absence_affirmed"] = twin
        else:  # the affirmed object would fall beyond what the text encoder reads
            report.skips.skip("absence_affirmed:beyond_context")
    return row


class _ImageTooLarge(Exception):
    pass


_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


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
    if not target.parent.is_dir():  # (store_images makes the folders beforehand: a failing mkdir costs more than a stat)
        target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(stored)
    return StoredImage(path=path, converted_from=converted_from, bytes_read=len(data), bytes_written=len(stored))


MIN_IMAGES_PER_WORKER = 16  # fewer images than this per worker are stored in this process (starting workers costs more)
NEGATION_CHUNK = 256  # rows negated per task of a worker


def store_images(jobs: list[tuple[ImageRef, str]], root: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, num_proc: int | None = None,
                 progress: bool = False) -> list[StoredImage]:
    """`store_image` for each (image, relative path) of `jobs`, in `num_proc` worker processes
    (`fork_map`). Each worker reads, checks and writes its images itself and sends back only a
    `StoredImage`: memory stays about one image per worker, whatever the number of images."""
    for folder in sorted({(root / relative).parent for _, relative in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    return fork_map(lambda index: store_image(*jobs[index], root, max_pixels), len(jobs), num_proc, MIN_IMAGES_PER_WORKER,
                    "checking and storing images", progress, "image")


def _negate_all(items: list[SourceItem], source: Source, stats: CooccurrenceStats, options: BuildOptions, report: _Report,
                window: TokenWindow) -> list[dict]:
    """`_negations` of every item, in worker processes (`fork_map`, chunks of NEGATION_CHUNK rows; each
    row's choices come from its own seeded generator, so the result does not depend on the workers).
    An LLM rewriter runs here, in one process."""
    def chunk(index: int) -> tuple[list[dict], SkipLog, Counter]:
        counted = _Report()
        texts = [_negations(item, source, stats, options, counted, window) for item in items[index * NEGATION_CHUNK : (index + 1) * NEGATION_CHUNK]]
        return texts, counted.skips, counted.llm_fallbacks

    chunks = -(-len(items) // NEGATION_CHUNK)
    num_proc = 1 if options.rewriter is not None else options.num_proc
    texts = []
    for chunk_texts, skips, fallbacks in fork_map(chunk, chunks, num_proc, 2, f"negating {source.name} captions", options.progress, "chunk"):
        texts += chunk_texts
        report.skips.update(skips)
        report.llm_fallbacks.update(fallbacks)
    return texts


def _image_key(item: SourceItem) -> tuple:
    """Rows with the same key show the same image: stored once."""
    return item.image_id, item.image.name, str(item.image.path) if item.image.path is not None else None


def _relative_image_paths(keys: list[tuple]) -> list[str]:
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


def _write_split(split: str, rows: list[tuple[SourceItem, dict, StoredImage]], source: Source, options: BuildOptions, report: _Report,
                 cache_dir: Path) -> datasets.Dataset:
    features = contract_features(image_files=True)
    fingerprint = hashlib.sha256(json.dumps(
        [source.name, split, options.seed, [(item.image_id, item.source_index, text, stored.path) for item, text, stored in rows]],
        sort_keys=True, default=str,
    ).encode()).hexdigest()[:16]
    written = [0]

    def generate():
        for item, text, stored in rows:
            if stored.path is None:
                report.skips.skip(f"row:{stored.reason}", item.image.name)  # an image's rows are all counted; it is named once
                continue
            written[0] += 1
            yield {
                "image": stored.path, "caption": item.caption,
                "present_objects": sorted(set(item.present_objects)), "source": source.name,
                "image_id": item.image_id, "source_index": item.source_index, **text,
            }

    try:
        return datasets.Dataset.from_generator(generate, features=features, cache_dir=str(cache_dir), fingerprint=fingerprint, split=datasets.NamedSplit(split))
    except ValueError as error:
        if written[0] or "no data" not in str(error):  # datasets refuses a generator that yields nothing
            raise
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features, split=datasets.NamedSplit(split))


def build_from_source(source: Source, options: BuildOptions, cache_dir: Path, out_dir: Path | None = None) -> tuple[datasets.DatasetDict, dict]:
    """Negate, split and write every row of a source; returns the DatasetDict and the build summary.

    Each image is stored once, as a file under `out_dir/images/` (default: `cache_dir`), however many
    rows show it; the `image` column holds its path relative to `out_dir` (`load_with_images`)."""
    if not source.items:
        raise UserError(f"{', '.join(source.files)}: the source has no usable rows: {source.skips.describe() or 'no rows at all'}")
    items = source.items[: options.max_rows] if options.max_rows else source.items
    stats = CooccurrenceStats.from_object_sets(source.object_sets)
    report = _Report()
    report.skips.update(source.skips, "source:")
    window = TokenWindow(options.context_length)
    by_split: dict[str, list] = {split: [] for split in SPLITS}
    for item, text in zip(items, _negate_all(items, source, stats, options, report, window)):
        if text["presence_negated"] is None and text["absence_negated"] is None:
            report.skips.skip("row:no_negation")
            continue
        by_split[split_for(item.image_id, item.split, options.validation_fraction, options.test_fraction)].append((item, text))
    if not any(by_split.values()):
        raise UserError(f"{', '.join(source.files)}: no caption could be negated ({report.skips.describe()})")
    images: dict[tuple, ImageRef] = {}  # each image once, in the order rows first show it
    for rows in by_split.values():
        for item, _ in rows:
            images.setdefault(_image_key(item), item.image)
    first_of = {key: index for index, key in enumerate(images)}
    root = Path(out_dir if out_dir is not None else cache_dir)
    jobs = list(zip(images.values(), _relative_image_paths(list(images))))
    stored = store_images(jobs, root, options.max_image_pixels, options.num_proc, options.progress)
    for result in stored:
        if result.converted_from:
            report.converted_modes[result.converted_from] += 1
    dataset_dict = datasets.DatasetDict({
        split: _write_split(split, [(item, text, stored[first_of[_image_key(item)]]) for item, text in rows], source, options, report, cache_dir)
        for split, rows in by_split.items()
    })
    if not any(len(part) for part in dataset_dict.values()):
        raise UserError(f"{', '.join(source.files)}: no row could be written ({report.skips.describe()})")
    rows_out = sum(len(part) for part in dataset_dict.values())
    row_skips = report.skips.total("row:")
    if rows_out + row_skips != len(items):  # every row is written or counted: anything else is a bug here
        raise RuntimeError(f"row accounting is off: {len(items)} rows in, {rows_out} out, {row_skips} skipped ({report.skips.describe()})")
    kept = [result for result in stored if result.path is not None]
    summary = {
        "source": source.name,
        "inputs": source.files,
        "rows_in": len(items),
        **report.skips.to_json(),  # "skips" (reason -> count) and "skip_examples" (reason -> places)
        "images_converted_to_rgb": dict(sorted(report.converted_modes.items())),
        "images": {"files": len(kept), "rows": rows_out, "bytes_read": sum(result.bytes_read for result in kept),
                   "bytes_written": sum(result.bytes_written for result in kept), "folder": IMAGES_FOLDER},
    }
    if options.max_rows and len(source.items) > len(items):
        summary["rows_beyond_max_rows"] = len(source.items) - len(items)  # not read: --max_rows
    if options.rewriter is not None:
        summary["llm_rewriter"] = {"model": options.rewriter.name, "fallbacks_to_rules": dict(report.llm_fallbacks)}
    return dataset_dict, summary


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
            dataset_dict[split] = datasets.Dataset.from_dict({name: [] for name in features}, features=features, split=dataset.split)
            continue
        resolved = dataset.map(lambda batch: {"image": [str(folder / path) if path else None for path in batch["image"]]},
                               batched=True, keep_in_memory=True, desc=f"resolving the image paths of {split}")
        dataset_dict[split] = resolved.cast(features)
    return dataset_dict


_GATE_CHECKS = (
    ("presence", "presence_negated", "negated_object", presence_problem),
    ("absence", "absence_negated", "absent_object", absence_problem),
)


GATE_BATCH = 1000  # rows checked per task of a worker


def _gate_split(dataset: datasets.Dataset, progress: bool, desc: str, num_proc: int | None = 1) -> dict:
    table = dataset.select_columns(list(GATE_COLUMNS))
    counts = {kind: {"passed": 0, "missing": 0, "failed": Counter()} for kind, *_ in _GATE_CHECKS}
    for part in fork_map(lambda index: _gate_batch(table[index * GATE_BATCH : (index + 1) * GATE_BATCH]), -(-len(dataset) // GATE_BATCH),
                         num_proc, 2, desc, progress, "batch"):
        for kind, *_ in _GATE_CHECKS:
            counts[kind]["passed"] += part[kind]["passed"]
            counts[kind]["missing"] += part[kind]["missing"]
            counts[kind]["failed"].update(part[kind]["failed"])
    return {"rows": len(dataset), **counts}


def _gate_batch(batch: dict) -> dict:
    counts = {kind: {"passed": 0, "missing": 0, "failed": Counter()} for kind, *_ in _GATE_CHECKS}
    for index, caption in enumerate(batch["caption"]):
        for kind, text_column, object_column, check in _GATE_CHECKS:
            text = batch[text_column][index]
            if text is None:
                counts[kind]["missing"] += 1
                continue
            problem = check(caption, text, batch[object_column][index], batch["present_objects"][index] or [])
            if problem:
                counts[kind]["failed"][problem] += 1
            else:
                counts[kind]["passed"] += 1
    return counts


def quality_gate(dataset_dict: datasets.DatasetDict, progress: bool = False, num_proc: int | None = 1) -> dict:
    """Check every negation of a DatasetDict with the contract columns; counts per split and in total.

    presence_negated must name `negated_object`, which must be in `present_objects`; absence_negated must
    name `absent_object`, which must not be; both must hold a negation cue and differ from the caption.
    Returns {split: {"rows", "presence": {"passed", "missing", "failed": {reason: n}}, "absence": {...}},
    "total": {...}, "passed": no negation failed}. `num_proc` worker processes check batches of rows
    (None: the cores).
    """
    per_split = {}
    for split, dataset in dataset_dict.items():
        missing_columns = [column for column in GATE_COLUMNS if column not in dataset.column_names]
        if missing_columns:
            raise UserError(f"split {split!r} lacks the contract columns {missing_columns}; it has {dataset.column_names}")
        per_split[split] = _gate_split(dataset, progress, f"quality gate {split}", num_proc)
    total = {"rows": sum(counts["rows"] for counts in per_split.values())}
    for kind, *_ in _GATE_CHECKS:
        total[kind] = {
            "passed": sum(counts[kind]["passed"] for counts in per_split.values()),
            "missing": sum(counts[kind]["missing"] for counts in per_split.values()),
            "failed": sum((counts[kind]["failed"] for counts in per_split.values()), Counter()),
        }
    result = {**per_split, "total": total}
    for counts in result.values():
        for kind, *_ in _GATE_CHECKS:
            counts[kind]["failed"] = dict(sorted(counts[kind]["failed"].items()))
    result["passed"] = not any(total[kind]["failed"] for kind, *_ in _GATE_CHECKS)
    return result


def _negation_kinds(dataset_dict: datasets.DatasetDict) -> tuple[dict, dict]:
    """How many rows carry both negations / one / neither, and how many each rewrite wrote."""
    kinds, rewrites = Counter(), {"presence": Counter(), "absence": Counter()}
    for dataset in dataset_dict.values():
        columns = ["presence_negated", "absence_negated"] + [c for c in ("presence_rewrite", "absence_rewrite") if c in dataset.column_names]
        for batch in dataset.select_columns(columns).iter(batch_size=1000):
            for index, (presence, absence) in enumerate(zip(batch["presence_negated"], batch["absence_negated"])):
                kinds["both" if presence and absence else "presence_only" if presence else "absence_only" if absence else "neither"] += 1
                for kind, text in (("presence", presence), ("absence", absence)):
                    if text and f"{kind}_rewrite" in batch:
                        rewrites[kind][batch[f"{kind}_rewrite"][index] or "unnamed"] += 1
    return dict(sorted(kinds.items())), {kind: dict(sorted(counter.items())) for kind, counter in rewrites.items()}


def _examples(dataset_dict: datasets.DatasetDict, count: int = 3) -> list[dict]:
    columns = ["image_id", "caption", "presence_negated", "negated_object", "absence_negated", "absent_object"]
    for dataset in dataset_dict.values():
        if len(dataset) and all(column in dataset.column_names for column in columns):
            return dataset.select_columns(columns).select(range(min(count, len(dataset)))).to_list()
    return []


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out}: already exists; pass --overwrite to replace it")
        if not ((out / "dataset_dict.json").is_file() or (out / SUMMARY_FILE).is_file()):
            raise UserError(f"--out {out}: --overwrite only replaces a dataset this tool built, and this folder has no dataset_dict.json")


def _building_prefix(out: Path) -> str:
    return f".{out.name}.building-"


def recover_interrupted_builds(out: Path) -> list[Path]:
    """Clean up after builds of `out` whose process is gone (killed): a previous output that such a
    build had moved aside, between its two final renames, goes back to `out`; their folders are removed.
    Returns the folders removed."""
    out = Path(out).absolute()
    prefix = _building_prefix(out)
    removed = []
    for stale in sorted(out.parent.glob(prefix + "*")):
        pid = stale.name[len(prefix) :]
        if not pid.isdigit() or (int(pid) != os.getpid() and is_alive(int(pid))):
            continue  # another build, still running
        previous = stale / "previous"
        if previous.is_dir() and not out.exists():
            previous.rename(out)
            print(f"restored {out} (a build killed while replacing it had moved it aside)", file=sys.stderr)
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale)
    return removed


def write_atomically(out: Path, overwrite: bool, fill: Callable[[Path, Path], None]) -> None:
    """`fill(staging, scratch)` writes the complete output into `staging`; it then replaces `out`.

    Both folders are hidden siblings of `out` (same file system, so the final rename is atomic); they
    are removed whatever happens, and what a killed build left is cleaned up first
    (`recover_interrupted_builds`). `out` never holds a partial build.
    """
    out = Path(out).absolute()
    recover_interrupted_builds(out)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = out.parent / f"{_building_prefix(out)}{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    staging, scratch = root / "output", root / "scratch"
    scratch.mkdir(parents=True)
    try:
        fill(staging, scratch)
        _check_target(out, overwrite)  # nothing appeared there meanwhile
        if out.exists():
            out.rename(root / "previous")
        staging.rename(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _json(data: object) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


def _print_summary(summary: dict, out: Path) -> None:
    print(f"\nbuilt {summary['source']} -> {out}")
    print(f"  rows in: {summary.get('rows_in', '-')}; rows out: " + ", ".join(f"{k} {v}" for k, v in summary["rows_out"].items()))
    if summary.get("negations"):
        print("  negations: " + ", ".join(f"{k} {v}" for k, v in summary["negations"].items()))
    if summary.get("rows_beyond_max_rows"):
        print(f"  not read (--max_rows): {summary['rows_beyond_max_rows']}")
    if summary.get("skips"):
        print(f"  {SkipLog.from_json(summary).describe()}")
    for mode, count in summary.get("images_converted_to_rgb", {}).items():
        print(f"  converted to RGB from {mode}: {count}")
    long = summary.get("over_context_length")
    if long and any(long["texts"].values()):
        print(f"  longer than CLIP's {long['limit']} tokens (the text encoder reads only their start): "
              + ", ".join(f"{column} {count}" for column, count in long["texts"].items()))
    elif long is None:
        print("  token lengths not checked (no CLIP tokenizer: install open_clip_torch --no-deps for its BPE file)")
    gate = summary["quality_gate"]["total"]
    print("  quality gate: " + "; ".join(
        f"{kind} passed {gate[kind]['passed']}, none {gate[kind]['missing']}, failed {sum(gate[kind]['failed'].values())}"
        for kind in ("presence", "absence")))
    if not summary["quality_gate"]["passed"]:
        print("  WARNING: some negations fail the quality gate; see build_summary.json", file=sys.stderr)
    print(f"  summary: {out / SUMMARY_FILE}")


def over_context_length(dataset_dict: datasets.DatasetDict, context_length: int = CONTEXT_LENGTH) -> dict | None:
    """How many texts of each text column have more tokens than CLIP's text encoder reads (it
    truncates them); None when no CLIP tokenizer can be built here."""
    window = TokenWindow(context_length)
    if not window.available:
        return None
    counts = Counter()
    for dataset in dataset_dict.values():
        columns = [column for column in TEXT_COLUMNS if column in dataset.column_names]
        for batch in dataset.select_columns(columns).iter(batch_size=1000):
            for column in columns:
                counts[column] += window.too_long(batch[column])
    return {"limit": context_length, "texts": {column: counts[column] for column in TEXT_COLUMNS}}


def push_to_hub(out: Path, repo_id: str, card: str, private: bool = False) -> None:
    """Push the card (README.md, with `configs` for the Hub layout), then the dataset, each row with
    its image (`load_with_images`: datasets embeds the files' bytes in the Parquet files it uploads):
    `DatasetDict.push_to_hub` reads the card from the repo and writes its own `dataset_info`
    (features, the image column decoded; split sizes, download size) and `configs` into it, keeping the rest."""
    from huggingface_hub import HfApi

    dataset_dict = load_with_images(out)
    try:
        repo_id = HfApi().create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
        hub_dataset_card(card).push_to_hub(repo_id, repo_type="dataset")
        dataset_dict.push_to_hub(repo_id, private=private)
    except Exception as error:  # network, authentication, permissions: the local build stays valid
        raise UserError(f"--push_to_hub {repo_id}: the push failed ({type(error).__name__}: {error}); the dataset is saved at {out}") from None


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    output = argparse.ArgumentParser(add_help=False)
    group = output.add_argument_group("output")
    group.add_argument("--out", required=True, help="Folder to write the DatasetDict into (created; see --overwrite).")
    group.add_argument("--overwrite", action="store_true", help="Replace an existing dataset built by this tool at --out.")
    group.add_argument("--seed", type=int, default=0, help="Seed of every random choice (templates, absent objects).")
    group.add_argument("--push_to_hub", metavar="REPO_ID", help="Also push the dataset and its card to this Hub dataset repo.")
    group.add_argument("--private", action="store_true", help="With --push_to_hub: make the repo private.")
    group.add_argument("--license", help="License field of the dataset card (default: mit for shapes, cc-by-4.0 for coco, else other, named <source>-source-terms).")
    group.add_argument("--no_progress", action="store_true", help="No progress bars.")
    group.add_argument("--debug", action="store_true", help="Show the full traceback of an error (also: OMNINEGCLIP_DEBUG=1).")

    negation = argparse.ArgumentParser(add_help=False)
    group = negation.add_argument_group("negation and splits")
    group.add_argument("--validation_fraction", type=float, default=0.05, help="Share of images in validation (by image-id hash).")
    group.add_argument("--test_fraction", type=float, default=0.05, help="Share of images in test (by image-id hash) where the source has no test split.")
    group.add_argument("--max_rows", type=int, help="Use only the first N source rows (captions).")
    group.add_argument("--absent_top_k", type=int, default=5, help="Draw the absent object among the k most plausible.")
    group.add_argument("--rewriter_model", metavar="ID", help="Hub id or folder of a text-generation model that writes the negations "
                       "(outputs failing the quality gate fall back to the rule-based rewrite). Default: rules only.")
    group.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                       help="Skip (and count) images with more pixels than this, without decoding them. Default: %(default)s.")
    group.add_argument("--num_proc", "--preprocessing_num_workers", type=int, metavar="N",
                       help="Processes that check and store the images (default: the cores this process may use).")

    paragraphs = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="data_builder.py", description=paragraphs[0], epilog="\n\n".join(paragraphs[1:-1]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    coco = sources.add_parser("coco", parents=[negation, output], help="COCO captions + instances (presence and absence).",
                              description="COCO captions with the present objects from the instance annotations: presence negations "
                              "of objects the image holds, absence negations of plausible objects it does not.")
    coco.add_argument("--captions", required=True, help="COCO captions_*.json.")
    coco.add_argument("--instances", required=True, help="COCO instances_*.json of the same images.")
    coco.add_argument("--images", required=True, help="Folder of the images (file_name is relative to it).")
    coco.add_argument("--captions_per_image", type=int, default=1, help="Captions kept per image, in annotation-id order (0: all).")

    captions = sources.add_parser("captions", parents=[negation, output], help="Any image-caption dataset (objects found in the captions).",
                                  description="Any image-caption dataset. The objects of an image are those its captions name (COCO "
                                  "vocabulary with synonyms). JSON, JSON Lines and CSV/TSV files are read row by row: a malformed row "
                                  "is an error naming its line; a caption that is missing, empty or not text is a counted skip.")
    captions.add_argument("--dataset", required=True, help="A save_to_disk folder, an image folder (metadata.jsonl/csv), a JSON/JSONL/CSV/Parquet file, or a Hub id.")
    captions.add_argument("--loader", default="auto", choices=["auto", "disk", "imagefolder", "json", "csv", "parquet", "hub"], help="How to read --dataset.")
    captions.add_argument("--split", help="Use only this split (then divided by image-id hash).")
    captions.add_argument("--image_column", default="image", help="Column with the image (an Image feature, or a file path).")
    captions.add_argument("--caption_column", default="caption", help="Column with the caption (a string or a list of strings).")
    captions.add_argument("--image_id_column", help="Column with an image id (default: the image file name, else the row).")
    captions.add_argument("--images_dir", help="Folder that relative image paths start from (default: the data file's folder).")
    captions.add_argument("--captions_per_image", type=int, default=1, help="Captions kept per row when a row has a list (0: all).")
    downloads = captions.add_argument_group("images given as http(s) URLs")
    downloads.add_argument("--image_cache", metavar="DIR", help="Folder the images are downloaded into, kept for later builds "
                           "(default: a folder inside the build's scratch space, removed afterwards).")
    downloads.add_argument("--download_timeout", type=float, default=DOWNLOAD_TIMEOUT, metavar="SECONDS",
                           help="Give up on an image after this long in total (counted skip). Default: %(default)s.")
    downloads.add_argument("--max_image_bytes", type=int, default=MAX_IMAGE_BYTES, metavar="N",
                           help="Give up on an image larger than this (counted skip). Default: %(default)s.")

    ccneg = sources.add_parser("ccneg", parents=[negation, output], help="CC-Neg (CoN-CLIP) presence triples.",
                               description="CC-Neg presence triples from CoN-CLIP's ccneg_preprocessed.pt, read with "
                               "torch.load(weights_only=True): a file that would need arbitrary unpickling is refused, never run.")
    ccneg.add_argument("--annotations", required=True, help="ccneg_preprocessed.pt from the CoN-CLIP release.")
    ccneg.add_argument("--images", required=True, help="CC-Neg image root (the folder holding cc3m_subset_images_extracted_final/).")
    ccneg.add_argument("--eval_size", type=int, default=40000, help="The last N items are the evaluation (test) split.")
    ccneg.add_argument("--synthesize_absence", action="store_true", help="Also write rule-based absence negations.")

    negationclip = sources.add_parser("negationclip", parents=[negation, output], help="NegationCLIP absence triples.",
                                      description="NegationCLIP absence triples: COCO captions with LLM-written 'updated_caption's "
                                      "that negate a plausible absent object.")
    negationclip.add_argument("--annotations", required=True, help="NegationCLIP's COCO-format JSON with 'updated_caption'.")
    negationclip.add_argument("--images", required=True, help="Folder of the COCO images (e.g. train2014).")
    negationclip.add_argument("--instances", help="COCO instances_*.json of the same images: exact present objects.")
    negationclip.add_argument("--synthesize_presence", action="store_true", help="Also write rule-based presence negations.")

    shapes = sources.add_parser("shapes", parents=[output], help="The offline image world (omninegclip/building/shapes.py).",
                                description="The offline image world: procedurally drawn scenes whose objects are known exactly, "
                                "with the world's own negated captions.")
    shapes.add_argument("--num_train", type=int, default=16000, help="Training scenes.")
    shapes.add_argument("--num_validation", type=int, default=1000, help="Validation scenes.")
    shapes.add_argument("--num_test", type=int, default=2000, help="Test scenes.")
    shapes.add_argument("--image_size", type=int, default=64, help="Image side in pixels (8 to 1024).")
    return parser


def _check_shapes_arguments(args: argparse.Namespace) -> None:
    for flag in ("num_train", "num_validation", "num_test"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} {getattr(args, flag)} must be at least 0")
    if not args.num_train + args.num_validation + args.num_test:
        raise UserError("--num_train, --num_validation and --num_test are all 0: nothing to build")
    if not 8 <= args.image_size <= 1024:
        raise UserError(f"--image_size {args.image_size} must be between 8 and 1024 pixels")


_INPUT_FLAGS = ("captions", "instances", "images", "annotations", "dataset", "images_dir")


def _arguments(args: argparse.Namespace) -> dict:
    """The settings that shape the data, for the summary and the card: not where the output goes, and
    local input files by name only (the card is public; `inputs` in the summary has the full paths)."""
    hidden = {"out", "overwrite", "push_to_hub", "private", "no_progress", "debug", "image_cache", "num_proc"}
    shown = {key: value for key, value in sorted(vars(args).items()) if key not in hidden and value is not None}
    for key in _INPUT_FLAGS:
        if key in shown and Path(shown[key]).exists():
            shown[key] = Path(shown[key]).name
    return shown


def _read_source(args: argparse.Namespace, scratch: Path) -> Source:
    progress = not args.no_progress
    if args.source == "coco":
        return read_coco(args.captions, args.instances, args.images, args.captions_per_image, num_proc=args.num_proc)
    if args.source == "captions":
        downloads = ImageDownloads(Path(args.image_cache) if args.image_cache else scratch / "images",
                                   timeout=args.download_timeout, max_bytes=args.max_image_bytes)
        return read_captions_dataset(
            args.dataset, loader=args.loader, split=args.split, image_column=args.image_column, caption_column=args.caption_column,
            image_id_column=args.image_id_column, images_dir=args.images_dir, captions_per_image=args.captions_per_image,
            cache_dir=str(scratch / "hf_cache"), progress=progress, downloads=downloads,
        )
    if args.source == "ccneg":
        return read_ccneg(args.annotations, args.images, eval_size=args.eval_size)
    if args.source == "negationclip":
        return read_negationclip(args.annotations, args.images, instances=args.instances)
    raise UserError(f"unknown source {args.source!r}")


def _build_shapes(args: argparse.Namespace) -> tuple[datasets.DatasetDict, dict]:
    try:
        from omninegclip.building.shapes import build_world
    except ImportError as error:
        raise UserError(f"the shapes world needs omninegclip.building.shapes.build_world, which cannot be imported ({error})") from None
    world = build_world(num_train=args.num_train, num_validation=args.num_validation, num_test=args.num_test,
                        seed=args.seed, image_size=args.image_size, progress=not args.no_progress)
    return world, {"source": "shapes", "inputs": [], "rows_in": sum(len(part) for part in world.values()), "skips": {}}


def _build_description(args: argparse.Namespace, options: BuildOptions) -> str:
    text = _GIVEN.get(args.source, "")
    if options.generate_presence or options.generate_absence:
        text += _RULES
    if options.generate_presence:
        text += _PRESENCE_RULES
    if options.generate_absence:
        text += _ABSENCE_RULES.format(k=options.absent_top_k)
    splits = ("the last --eval_size items are the test split, the rest divided into train and validation by a stable hash of "
              "`image_id`" if args.source == "ccneg" else "the source's own splits where it has them, else a stable hash of `image_id`")
    return text + _SPLIT_AND_GATE.format(splits=splits)


def _check_causal_lm_folder(path: Path) -> None:
    """A local --rewriter_model folder must hold a text-generation (causal LM) model, not, say, a CLIP checkpoint."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"--rewriter_model {str(path)!r}: holds no config.json (expected a text-generation model folder)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise UserError(f"--rewriter_model {str(path)!r}: {config.name} is not a JSON object") from None
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"--rewriter_model {str(path)!r}: its config.json has model_type {model_type!r}, which is not a "
                        "text-generation (causal language) model")


def _load_rewriter(model_id: str) -> LLMRewriter:
    path = Path(model_id).expanduser()
    if not path.exists() and (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1):
        raise UserError(f"--rewriter_model {model_id!r}: no such folder (expected a text-generation model folder or a Hub id)")
    if path.is_dir():
        _check_causal_lm_folder(path)
    try:
        return LLMRewriter.from_pretrained(model_id)
    except Exception as error:  # transformers' many ways to fail: no such folder or repo, not a text-generation model, offline
        detail = " ".join(str(error).split()) or type(error).__name__
        raise UserError(f"--rewriter_model {model_id!r}: could not load a text-generation model ({detail[:300]})") from None


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if not args.no_progress:
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    # Before any work: the flags, then the target (after cleaning up what a killed build left), then the inputs.
    options = None
    if args.source == "shapes":
        _check_shapes_arguments(args)
    else:
        options = BuildOptions(
            seed=args.seed, validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
            max_rows=args.max_rows, absent_top_k=args.absent_top_k, max_image_pixels=args.max_image_pixels, progress=not args.no_progress,
            num_proc=args.num_proc,
            generate_presence=args.source in ("coco", "captions") or getattr(args, "synthesize_presence", False),
            generate_absence=args.source in ("coco", "captions") or getattr(args, "synthesize_absence", False),
        )
        if args.source in ("coco", "captions"):
            check_captions_per_image(args.captions_per_image)
        if args.source == "captions":
            ImageDownloads(timeout=args.download_timeout, max_bytes=args.max_image_bytes)  # checks the two flags
    out = Path(args.out).absolute()
    recover_interrupted_builds(out)
    _check_target(out, args.overwrite)
    ensure_writable(out.parent, f"--out {out}: its folder")  # the build is written beside --out, then renamed
    summary: dict = {}

    def fill(staging: Path, scratch: Path) -> None:
        if options is None:
            dataset_dict, built = _build_shapes(args)
            description = "The offline image world: procedurally drawn scenes whose objects are known exactly."
            method = "Negations come from the world's own templates (`omninegclip/building/shapes.py`), which know every object exactly."
        else:
            if args.rewriter_model:
                options.rewriter = _load_rewriter(args.rewriter_model)
            source = _read_source(args, scratch)
            dataset_dict, built = build_from_source(source, options, scratch / "cache", out_dir=staging)
            description = source.description
            method = _build_description(args, options) + "\n\n" + STORAGE_NOTE
        negations, rewrites = _negation_kinds(dataset_dict)
        summary.update(built)
        summary.update({
            "arguments": _arguments(args),
            "rows_out": {split: len(part) for split, part in dataset_dict.items()},
            "negations": negations,
            "rewrites": rewrites,
            "quality_gate": quality_gate(dataset_dict, progress=not args.no_progress, num_proc=args.num_proc if options else 1),
            "over_context_length": over_context_length(dataset_dict),
            "examples": _examples(dataset_dict),
            "provenance": provenance(args.seed),
        })
        # An empty split needs one (empty) shard, or load_from_disk cannot read it back.
        dataset_dict.save_to_disk(str(staging), num_shards={split: 1 for split, part in dataset_dict.items() if not len(part)})
        card = _render_card(summary, dataset_dict, description, method, args.license)
        (staging / SUMMARY_FILE).write_text(_json(summary), encoding="utf-8")
        (staging / CARD_FILE).write_text(card, encoding="utf-8")

    write_atomically(out, args.overwrite, fill)
    _print_summary(summary, out)
    if args.push_to_hub:
        push_to_hub(out, args.push_to_hub, (out / CARD_FILE).read_text(encoding="utf-8"), private=args.private)
        print(f"  pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return summary


def _render_card(summary: dict, dataset_dict: datasets.DatasetDict, description: str, method: str, license: str | None) -> str:
    """The folder's card. License: --license, else the source's (data the project generates: the
    repository's MIT; third-party captions and images: `other`, named after their source's terms)."""
    source = summary["source"]
    license = license or DEFAULT_LICENSES.get(source, "other")
    return render_dataset_card(
        summary, next(iter(dataset_dict.values())).features, license=license,
        license_name=f"{source}-source-terms" if license == "other" else None,
        source_description=description, build_description=method, license_note=LICENSE_NOTES.get(source, ""),
        num_bytes={split: part.data.nbytes for split, part in dataset_dict.items()},
        data_files=save_to_disk_files(summary["rows_out"]),
    )


def cli() -> None:
    """The console script's entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
