"""Build (image, caption, presence-negated caption, absence-negated caption) datasets for Omni-NegCLIP.

    python data_builder.py coco --captions annotations/captions_train2017.json \\
        --instances annotations/instances_train2017.json --images train2017 --out data/coco-neg
    python data_builder.py captions --dataset flickr30k_folder --caption_column caption --out data/flickr-neg
    python data_builder.py ccneg --annotations ccneg_dataset/ccneg_preprocessed.pt --images ccneg_dataset \\
        --out data/ccneg
    python data_builder.py negationclip --annotations negationclip_captions_train2014.json --images train2014 \\
        --out data/negclip
    python data_builder.py negbench --table cc12m_images_captioned_llama3.1_neg_captions.csv --images cc12m \\
        --out data/negcap                                  # or NegBench's CC12M-NegMCQ table, .csv or .parquet
    python data_builder.py shapes --out data/world           # the offline image world (omninegclip/building/shapes.py)

Common flags: --out DIR (required), --overwrite, --seed 0, --push_to_hub REPO_ID, --no_progress, --debug;
for the real sources also --validation_fraction 0.05, --test_fraction 0.05, --max_rows N,
--max_image_pixels N, --rewriter_model ID, --num_proc N (worker processes; default the cores);
for every source --statement_rate R (default 0.25: that share of the training rows with both
negations also gets an extra row of NegBench-style statements; 0 for none).
`python data_builder.py SOURCE --help` lists each source's flags.

What it writes: a `datasets.DatasetDict` (train / validation / test, `save_to_disk`) with the contract
columns `CONTRACT_COLUMNS` (shared with train.py and eval/), plus `build_summary.json` (rows in, rows
out per split, skips by reason and where, the quality gate, texts longer than CLIP's 77 tokens,
examples, and the provenance: seed, library versions, git commit) and README.md (the dataset card).
Every source row ends up written or counted: rows in = rows out - the statement rows + the `row:` skips
(`--statement_rate`, default 0.25: that share of the training rows with both negations also gets an
extra row, the same image with its texts as NegBench-style statements).

Images (the real sources): each image is stored ONCE, however many caption rows show it, as its
original file (never re-encoded; an image not in RGB is converted to an RGB PNG) under
`images/<2 hex digits>/<name>.<ext>` inside the output folder; the `image` column holds that path,
relative to the folder (`contract_features(image_files=True)`). `train.py --dataset_name FOLDER` and
`load_dataset(FOLDER)` read it as it is; `load_with_images(FOLDER)` gives the column as decoded
images, and `--push_to_hub` uploads that (each row with its image). The shapes world keeps its
images in the table (one row per scene, and the extra statement rows of the training split).

Speed: the negations, the image checks and the quality gate run in `--num_proc` forked worker
processes (`omninegclip.building.parallel.fork_map`: each row is seeded by its index, so any
number of workers writes the same bytes). An image is checked by decoding it without keeping it, a
JPEG in draft mode (1/8 scale: every byte of its compressed stream is still read, so a truncated
file fails as in a full decode); workers write the image files themselves, so memory stays one
image per worker.

Bad input: a bad flag, a missing file or folder, a malformed file or row is one error paragraph
naming the flag / file / row / column (exit status 2, no traceback unless --debug or
OMNINEGCLIP_DEBUG=1); a caption or image that cannot be used (empty, not text, corrupt, missing,
too large, a download that fails) is skipped and counted by reason in the summary.

The build goes into a hidden sibling folder and is renamed into place at the end: a killed build
leaves the previous output as it was, and the next build removes what it left; a full disk is one
error naming --out, with the partial build removed. A second build into the same --out while one
runs is refused (the lock file `.<out>.omninegclip.lock` beside it). Same inputs and seed give the
same bytes. Rows of one image share a split: the source's own split where it has one, else a
stable hash of the image id.

Public surface: `CONTRACT_COLUMNS`, `contract_features(image_files=False)`,
`build_from_source(source, options, cache_dir, out_dir=None)`, `quality_gate(dataset_dict, num_proc=1) -> dict`,
`over_context_length(dataset_dict) -> dict | None`, `main(argv) -> summary`. The pieces they use live in
omninegclip/building/: `inputs` (each source's flags and reader), `negation` (`BuildOptions`,
`TokenWindow`: what of a text CLIP's text encoder reads, `split_for`, the rules of one negation),
`storage` (`IMAGES_FOLDER`, `store_images`, `load_with_images`), `quality` (the gate), `summary` (the
printed summary and the card), `writing` (`write_atomically`, `recover_interrupted_builds`, `push_to_hub`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import datasets

from modeling_omninegclip import CAPTION_SETS
from omninegclip.building import quality
from omninegclip.building.inputs import build_options, build_shapes, load_rewriter, read_source, shown_arguments
from omninegclip.building.negation import BuildOptions, TokenWindow, negation, split_for
from omninegclip.building.parallel import fork_map
from omninegclip.building.rewrite import (
    STATEMENT_RATE,
    absence_affirm,
    absence_problem,
    presence_problem,
    statement_row,
)
from omninegclip.building.sources import DOWNLOAD_TIMEOUT, MAX_IMAGE_BYTES, SPLITS, ImageRef, Source, SourceItem
from omninegclip.building.storage import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGES_FOLDER,
    StoredImage,
    image_key,
    relative_image_paths,
    store_images,
)
from omninegclip.building.summary import STORAGE_NOTE, build_description, print_summary, render_card, to_json
from omninegclip.building.vocabulary import CooccurrenceStats
from omninegclip.building.writing import (
    CARD_FILE,
    SUMMARY_FILE,
    output_lock,
    prepare_output,
    push_to_hub,
    write_atomically,
)
from omninegclip.common.cli import UserError, run_cli
from omninegclip.common.clip import CONTEXT_LENGTH
from omninegclip.common.provenance import provenance
from omninegclip.common.skips import SkipLog

TEXT_COLUMNS = tuple(
    row.column for row in CAPTION_SETS
)  # caption, presence_negated, absence_negated, absence_affirmed
CONTRACT_COLUMNS = (
    "image",
    *TEXT_COLUMNS,
    "present_objects",
    "negated_object",
    "absent_object",
    "presence_rewrite",
    "absence_rewrite",
    "source",
    "image_id",
)
GATE_COLUMNS = ("caption", "presence_negated", "absence_negated", "present_objects", "negated_object", "absent_object")
INTERRUPTED_HINT = (
    "nothing was written to --out (a build replaces it only once complete, and the next build cleans up "
    "what this one left); run the same command again"
)  # said on Ctrl-C by omninegclip.common.cli.run_cli


def contract_features(image_files: bool = False) -> datasets.Features:
    """The columns every built dataset has (`source_index`: the row's position in its source). The
    `image` column is a `datasets.Image`; with `image_files`, as the builder stores it: the path of
    the image's file relative to the dataset folder (each image stored once, `IMAGES_FOLDER`)."""
    text = datasets.Value("string")
    return datasets.Features(
        {
            "image": text if image_files else datasets.Image(),
            **dict.fromkeys(TEXT_COLUMNS, text),
            "present_objects": datasets.List(text),
            "negated_object": text,
            "absent_object": text,
            "presence_rewrite": text,
            "absence_rewrite": text,
            "source": text,
            "image_id": text,
            "source_index": datasets.Value("int64"),
        }
    )


@dataclass
class _Report:
    skips: SkipLog = field(default_factory=SkipLog)  # "source:", "row:", "<kind>:" reasons (omninegclip.common.skips)
    llm_fallbacks: Counter = field(default_factory=Counter)
    converted_modes: Counter = field(default_factory=Counter)
    statement_rows: int = 0  # extra statement rows written (--statement_rate), beside the source's rows


def _negations(
    item: SourceItem,
    source: Source,
    stats: CooccurrenceStats,
    options: BuildOptions,
    report: _Report,
    window: TokenWindow,
) -> dict:
    """The row's negation columns (None where it has no such negation; each missing one counted)."""
    rng = random.Random(f"{options.seed}|{source.name}|{item.source_index}")
    row = {}
    for kind, (text_column, object_column, rewrite_column) in (
        ("presence", ("presence_negated", "negated_object", "presence_rewrite")),
        ("absence", ("absence_negated", "absent_object", "absence_rewrite")),
    ):
        found = negation(kind, item, source, stats, options, report, rng, window)
        row.update(
            {text_column: found[0].text, object_column: found[1], rewrite_column: found[0].name}
            if found
            else {text_column: None, object_column: None, rewrite_column: None}
        )
    row["absence_affirmed"] = None
    if row["absent_object"] is not None:
        given_twin = item.absence.affirmed if item.absence is not None else None  # NegMCQ's "features N"
        twin = given_twin or absence_affirm(item.caption, row["absent_object"])
        if window.visible(twin) == twin:
            row["absence_affirmed"] = twin
        else:  # the affirmed object would fall beyond what the text encoder reads
            report.skips.skip("absence_affirmed:beyond_context")
    return row


NEGATION_CHUNK = 256  # rows negated per task of a worker


def _negate_all(
    items: list[SourceItem],
    source: Source,
    stats: CooccurrenceStats,
    options: BuildOptions,
    report: _Report,
    window: TokenWindow,
) -> list[dict]:
    """`_negations` of every item, in worker processes (`fork_map`, chunks of NEGATION_CHUNK rows; each
    row's choices come from its own seeded generator, so the result does not depend on the workers).
    An LLM rewriter runs here, in one process."""

    def chunk(index: int) -> tuple[list[dict], SkipLog, Counter]:
        counted = _Report()
        texts = [
            _negations(item, source, stats, options, counted, window)
            for item in items[index * NEGATION_CHUNK : (index + 1) * NEGATION_CHUNK]
        ]
        return texts, counted.skips, counted.llm_fallbacks

    chunks = -(-len(items) // NEGATION_CHUNK)
    num_proc = 1 if options.rewriter is not None else options.num_proc
    texts = []
    for chunk_texts, skips, fallbacks in fork_map(
        chunk, chunks, num_proc, 2, f"negating {source.name} captions", options.progress, "chunk"
    ):
        texts += chunk_texts
        report.skips.update(skips)
        report.llm_fallbacks.update(fallbacks)
    return texts


def _write_split(
    split: str,
    rows: list[tuple[SourceItem, dict, StoredImage]],
    source: Source,
    options: BuildOptions,
    report: _Report,
    cache_dir: Path,
) -> datasets.Dataset:
    features = contract_features(image_files=True)
    fingerprint = hashlib.sha256(
        json.dumps(
            [
                source.name,
                split,
                options.seed,
                [(item.image_id, item.source_index, text, stored.path) for item, text, stored in rows],
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]
    written = [0]

    def generate():
        for item, text, stored in rows:
            statement = text.get("presence_rewrite") == "statement"
            if stored.path is None:
                if not statement:  # an extra statement row is not a source row: its source row is the one counted
                    report.skips.skip(
                        f"row:{stored.reason}", item.image.name
                    )  # an image's rows are all counted; it is named once
                continue
            written[0] += 1
            report.statement_rows += statement
            yield {
                "image": stored.path,
                "caption": item.caption,
                "present_objects": sorted(set(item.present_objects)),
                "source": source.name,
                "image_id": item.image_id,
                "source_index": item.source_index,
                **text,
            }

    try:
        return datasets.Dataset.from_generator(
            generate,
            features=features,
            cache_dir=str(cache_dir),
            fingerprint=fingerprint,
            split=datasets.NamedSplit(split),
        )
    except ValueError as error:
        if written[0] or "no data" not in str(error):  # datasets refuses a generator that yields nothing
            raise
        return datasets.Dataset.from_dict(
            {name: [] for name in features}, features=features, split=datasets.NamedSplit(split)
        )


def build_from_source(
    source: Source, options: BuildOptions, cache_dir: Path, out_dir: Path | None = None
) -> tuple[datasets.DatasetDict, dict]:
    """Negate, split and write every row of a source; returns the DatasetDict and the build summary.

    Each image is stored once, as a file under `out_dir/images/` (default: `cache_dir`), however many
    rows show it; the `image` column holds its path relative to `out_dir` (`load_with_images`)."""
    if not source.items:
        raise UserError(
            f"{', '.join(source.files)}: the source has no usable rows: {source.skips.describe() or 'no rows at all'}"
        )
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
        split = split_for(item.image_id, item.split, options.validation_fraction, options.test_fraction)
        by_split[split].append((item, text))
        # The statement family: an extra training row right after its row (evaluation splits keep one row each).
        key = f"{options.seed}|{source.name}|{item.source_index}|statement"
        statement = statement_row(text, key, options.statement_rate) if split == "train" else None
        if statement is not None:
            by_split[split].append((item, statement))
    if not any(by_split.values()):
        raise UserError(f"{', '.join(source.files)}: no caption could be negated ({report.skips.describe()})")
    images: dict[tuple, ImageRef] = {}  # each image once, in the order rows first show it
    for rows in by_split.values():
        for item, _ in rows:
            images.setdefault(image_key(item), item.image)
    first_of = {key: index for index, key in enumerate(images)}
    root = Path(out_dir if out_dir is not None else cache_dir)
    jobs = list(zip(images.values(), relative_image_paths(list(images))))
    stored = store_images(jobs, root, options.max_image_pixels, options.num_proc, options.progress)
    for result in stored:
        if result.converted_from:
            report.converted_modes[result.converted_from] += 1
    dataset_dict = datasets.DatasetDict(
        {
            split: _write_split(
                split,
                [(item, text, stored[first_of[image_key(item)]]) for item, text in rows],
                source,
                options,
                report,
                cache_dir,
            )
            for split, rows in by_split.items()
        }
    )
    if not any(len(part) for part in dataset_dict.values()):
        raise UserError(f"{', '.join(source.files)}: no row could be written ({report.skips.describe()})")
    rows_out = sum(len(part) for part in dataset_dict.values())
    row_skips = report.skips.total("row:")
    statement_rows = report.statement_rows  # written; one whose image is unusable is its source row's skip
    if rows_out - statement_rows + row_skips != len(items):  # every row is written or counted, else a bug here
        raise RuntimeError(
            f"row accounting is off: {len(items)} rows in, {rows_out} out ({statement_rows} of them statement "
            f"rows), {row_skips} skipped "
            f"({report.skips.describe()})"
        )
    kept = [result for result in stored if result.path is not None]
    summary = {
        "source": source.name,
        "inputs": source.files,
        "rows_in": len(items),
        **report.skips.to_json(),  # "skips" (reason -> count) and "skip_examples" (reason -> places)
        "images_converted_to_rgb": dict(sorted(report.converted_modes.items())),
        "images": {
            "files": len(kept),
            "rows": rows_out,
            "bytes_read": sum(result.bytes_read for result in kept),
            "bytes_written": sum(result.bytes_written for result in kept),
            "folder": IMAGES_FOLDER,
        },
    }
    if options.max_rows and len(source.items) > len(items):
        summary["rows_beyond_max_rows"] = len(source.items) - len(items)  # not read: --max_rows
    if options.rewriter is not None:
        summary["llm_rewriter"] = {"model": options.rewriter.name, "fallbacks_to_rules": dict(report.llm_fallbacks)}
    return dataset_dict, summary


_GATE_CHECKS = (
    ("presence", "presence_negated", "negated_object", presence_problem),
    ("absence", "absence_negated", "absent_object", absence_problem),
)


def quality_gate(dataset_dict: datasets.DatasetDict, progress: bool = False, num_proc: int | None = 1) -> dict:
    """The quality gate (`omninegclip.building.quality.quality_gate`) on the contract columns: every
    negation of a DatasetDict checked; counts per split and in total. `num_proc` worker processes
    check batches of rows (None: the cores)."""
    return quality.quality_gate(dataset_dict, GATE_COLUMNS, _GATE_CHECKS, progress=progress, num_proc=num_proc)


def _negation_kinds(dataset_dict: datasets.DatasetDict) -> tuple[dict, dict]:
    """How many rows carry both negations / one / neither, and how many each rewrite wrote."""
    kinds, rewrites = Counter(), {"presence": Counter(), "absence": Counter()}
    for dataset in dataset_dict.values():
        columns = ["presence_negated", "absence_negated"] + [
            c for c in ("presence_rewrite", "absence_rewrite") if c in dataset.column_names
        ]
        for batch in dataset.select_columns(columns).iter(batch_size=1000):
            for index, (presence, absence) in enumerate(zip(batch["presence_negated"], batch["absence_negated"])):
                kinds[
                    "both"
                    if presence and absence
                    else "presence_only"
                    if presence
                    else "absence_only"
                    if absence
                    else "neither"
                ] += 1
                for kind, text in (("presence", presence), ("absence", absence)):
                    if text and f"{kind}_rewrite" in batch:
                        rewrites[kind][batch[f"{kind}_rewrite"][index] or "unnamed"] += 1
    return dict(sorted(kinds.items())), {kind: dict(sorted(counter.items())) for kind, counter in rewrites.items()}


def _statements(rate: float, train: datasets.Dataset) -> dict:
    """What --statement_rate did in the training split (the only one that gets statement rows): the
    extra statement rows written, and the source rows that could have one (a statement row needs a
    row with both a presence and an absence negation; every statement row has both)."""
    kinds, rewrites = _negation_kinds(datasets.DatasetDict({"train": train}))
    written = rewrites["presence"].get("statement", 0)
    return {
        "rate": rate,
        "rows": len(train) - written,
        "written": written,
        "rows_with_both_negations": kinds.get("both", 0) - written,
        "presence_only": kinds.get("presence_only", 0),
        "absence_only": kinds.get("absence_only", 0),
    }


def _examples(dataset_dict: datasets.DatasetDict, count: int = 3) -> list[dict]:
    columns = ["image_id", "caption", "presence_negated", "negated_object", "absence_negated", "absent_object"]
    for dataset in dataset_dict.values():
        if len(dataset) and all(column in dataset.column_names for column in columns):
            return dataset.select_columns(columns).select(range(min(count, len(dataset)))).to_list()
    return []


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


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    """`data_builder.py SOURCE ...`: one subcommand per source, each with its own flags and the
    common ones (`_output_flags`; the real sources also `_negation_flags`)."""
    paragraphs = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(
        prog="data_builder.py",
        description=paragraphs[0],
        epilog="\n\n".join(paragraphs[1:-1]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    output, negation = _output_flags(), _negation_flags()
    for add in (_add_coco, _add_captions, _add_ccneg, _add_negationclip, _add_negbench):
        add(sources, [negation, output])
    _add_shapes(sources, [output])
    return parser


def _output_flags() -> argparse.ArgumentParser:
    output = argparse.ArgumentParser(add_help=False)
    group = output.add_argument_group("output")
    group.add_argument("--out", required=True, help="Folder to write the DatasetDict into (created; see --overwrite).")
    group.add_argument(
        "--overwrite", action="store_true", help="Replace an existing dataset built by this tool at --out."
    )
    group.add_argument("--seed", type=int, default=0, help="Seed of every random choice (templates, absent objects).")
    group.add_argument(
        "--push_to_hub", metavar="REPO_ID", help="Also push the dataset and its card to this Hub dataset repo."
    )
    group.add_argument("--private", action="store_true", help="With --push_to_hub: make the repo private.")
    group.add_argument(
        "--license",
        help="License field of the dataset card (default: mit for shapes, cc-by-4.0 for coco, else other, named "
        "<source>-source-terms).",
    )
    group.add_argument("--no_progress", action="store_true", help="No progress bars.")
    group.add_argument(
        "--debug", action="store_true", help="Show the full traceback of an error (also: OMNINEGCLIP_DEBUG=1)."
    )
    return output


def _negation_flags() -> argparse.ArgumentParser:
    negation = argparse.ArgumentParser(add_help=False)
    group = negation.add_argument_group("negation and splits")
    group.add_argument(
        "--validation_fraction", type=float, default=0.05, help="Share of images in validation (by image-id hash)."
    )
    group.add_argument(
        "--test_fraction",
        type=float,
        default=0.05,
        help="Share of images in test (by image-id hash) where the source has no test split.",
    )
    group.add_argument("--max_rows", type=int, help="Use only the first N source rows (captions).")
    group.add_argument(
        "--absent_top_k", type=int, default=5, help="Draw the absent object among the k most plausible."
    )
    group.add_argument(
        "--rewriter_model",
        metavar="ID",
        help="Hub id or folder of a text-generation model that writes the negations "
        "(outputs failing the quality gate fall back to the rule-based rewrite). Default: rules only.",
    )
    _statement_flag(group)
    group.add_argument(
        "--max_image_pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metavar="N",
        help="Skip (and count) images with more pixels than this, without decoding them. Default: %(default)s.",
    )
    group.add_argument(
        "--num_proc",
        "--preprocessing_num_workers",
        type=int,
        metavar="N",
        help="Processes that check and store the images (default: the cores this process may use).",
    )
    return negation


def _add_coco(sources, parents: list) -> None:
    coco = sources.add_parser(
        "coco",
        parents=parents,
        help="COCO captions + instances (presence and absence).",
        description="COCO captions with the present objects from the instance annotations: presence negations "
        "of objects the image holds, absence negations of plausible objects it does not.",
    )
    coco.add_argument("--captions", required=True, help="COCO captions_*.json.")
    coco.add_argument("--instances", required=True, help="COCO instances_*.json of the same images.")
    coco.add_argument("--images", required=True, help="Folder of the images (file_name is relative to it).")
    coco.add_argument(
        "--captions_per_image", type=int, default=1, help="Captions kept per image, in annotation-id order (0: all)."
    )


def _add_captions(sources, parents: list) -> None:
    captions = sources.add_parser(
        "captions",
        parents=parents,
        help="Any image-caption dataset (objects found in the captions).",
        description="Any image-caption dataset. The objects of an image are those its captions name (COCO "
        "vocabulary with synonyms). JSON, JSON Lines and CSV/TSV files are read row by row: a malformed row "
        "is an error naming its line; a caption that is missing, empty or not text is a counted skip.",
    )
    captions.add_argument(
        "--dataset",
        required=True,
        help="A save_to_disk folder, an image folder (metadata.jsonl/csv), a JSON/JSONL/CSV/Parquet file, "
        "or a Hub id.",
    )
    captions.add_argument(
        "--loader",
        default="auto",
        choices=["auto", "disk", "imagefolder", "json", "csv", "parquet", "hub"],
        help="How to read --dataset.",
    )
    captions.add_argument("--split", help="Use only this split (then divided by image-id hash).")
    captions.add_argument(
        "--image_column", default="image", help="Column with the image (an Image feature, or a file path)."
    )
    captions.add_argument(
        "--caption_column", default="caption", help="Column with the caption (a string or a list of strings)."
    )
    captions.add_argument(
        "--image_id_column", help="Column with an image id (default: the image file name, else the row)."
    )
    captions.add_argument(
        "--images_dir", help="Folder that relative image paths start from (default: the data file's folder)."
    )
    captions.add_argument(
        "--captions_per_image", type=int, default=1, help="Captions kept per row when a row has a list (0: all)."
    )
    _download_flags(captions)


def _download_flags(parser: argparse.ArgumentParser) -> None:
    downloads = parser.add_argument_group("images given as http(s) URLs")
    downloads.add_argument(
        "--image_cache",
        metavar="DIR",
        help="Folder the images are downloaded into, kept for later builds "
        "(default: a folder inside the build's scratch space, removed afterwards).",
    )
    downloads.add_argument(
        "--download_timeout",
        type=float,
        default=DOWNLOAD_TIMEOUT,
        metavar="SECONDS",
        help="Give up on an image after this long in total (counted skip). Default: %(default)s.",
    )
    downloads.add_argument(
        "--max_image_bytes",
        type=int,
        default=MAX_IMAGE_BYTES,
        metavar="N",
        help="Give up on an image larger than this (counted skip). Default: %(default)s.",
    )


def _add_ccneg(sources, parents: list) -> None:
    ccneg = sources.add_parser(
        "ccneg",
        parents=parents,
        help="CC-Neg (CoN-CLIP) presence triples.",
        description="CC-Neg presence triples from CoN-CLIP's ccneg_preprocessed.pt, read with "
        "torch.load(weights_only=True): a file that would need arbitrary unpickling is refused, never run.",
    )
    ccneg.add_argument("--annotations", required=True, help="ccneg_preprocessed.pt from the CoN-CLIP release.")
    ccneg.add_argument(
        "--images", required=True, help="CC-Neg image root (the folder holding cc3m_subset_images_extracted_final/)."
    )
    ccneg.add_argument(
        "--eval_size", type=int, default=40000, help="The last N items are the evaluation (test) split."
    )
    ccneg.add_argument("--synthesize_absence", action="store_true", help="Also write rule-based absence negations.")


def _add_negationclip(sources, parents: list) -> None:
    negationclip = sources.add_parser(
        "negationclip",
        parents=parents,
        help="NegationCLIP absence triples.",
        description="NegationCLIP absence triples: COCO captions with LLM-written 'updated_caption's "
        "that negate a plausible absent object.",
    )
    negationclip.add_argument(
        "--annotations", required=True, help="NegationCLIP's COCO-format JSON with 'updated_caption'."
    )
    negationclip.add_argument("--images", required=True, help="Folder of the COCO images (e.g. train2014).")
    negationclip.add_argument("--instances", help="COCO instances_*.json of the same images: exact present objects.")
    negationclip.add_argument(
        "--synthesize_presence", action="store_true", help="Also write rule-based presence negations."
    )


def _add_negbench(sources, parents: list) -> None:
    negbench = sources.add_parser(
        "negbench",
        parents=parents,
        help="NegBench's CC12M-NegCap / CC12M-NegMCQ fine-tuning tables.",
        description="NegBench's fine-tuning data as its pipeline writes it, one table read in batches. "
        "CC12M-NegCap (filepath, caption, extracted_objects, negative_objects, negative_captions; lists as "
        "Python literals): each negated caption is an absence negation of the absent object it names. "
        "CC12M-NegMCQ (image_path, correct_answer, caption_0..caption_3, correct_answer_template): the option "
        "'does not feature A' is the presence negation; for the hybrid and negative templates the right answer is "
        "the absence negation, 'features N' its affirmed twin, and the caption NegBench's 'This image features A.'. "
        "A row whose cells cannot be used is a counted skip naming its row (rows count from 0, as pandas does).",
    )
    negbench.add_argument(
        "--table", required=True, help="CC12M-NegCap or CC12M-NegMCQ table (.csv as NegBench writes it, or Parquet)."
    )
    negbench.add_argument(
        "--images", help="Folder that relative image paths start from (default: the table's folder)."
    )
    negbench.add_argument(
        "--negated_captions_per_row",
        type=int,
        default=1,
        metavar="N",
        help="CC12M-NegCap: rows written per table row, one per negated caption, in the table's order "
        "(0: all, NegBench's 3; the others counted). Default: %(default)s, as --captions_per_image.",
    )
    negbench.add_argument(
        "--synthesize_presence", action="store_true", help="Also write rule-based presence negations."
    )
    _download_flags(negbench)


def _statement_flag(group) -> None:
    group.add_argument(
        "--statement_rate",
        type=float,
        default=STATEMENT_RATE,
        metavar="R",
        help="Share of the training rows with both negations that also get an extra row: the same image with its "
        "four texts said as caption-free statements in NegBench's multiple-choice form: "
        "caption 'This image shows a dog.', "
        "presence 'This image does not show a dog.', absence 'This image does not show a cat.', "
        "affirmed twin 'This image shows a cat.' (their *_rewrite columns say 'statement'). The row itself keeps "
        f"its caption and negations. Default: {STATEMENT_RATE}; 0 for none.",
    )


def _add_shapes(sources, parents: list) -> None:
    shapes = sources.add_parser(
        "shapes",
        parents=parents,
        help="The offline image world (omninegclip/building/shapes.py).",
        description="The offline image world: procedurally drawn scenes whose objects are known exactly, "
        "with the world's own negated captions.",
    )
    shapes.add_argument("--num_train", type=int, default=16000, help="Training scenes.")
    shapes.add_argument("--num_validation", type=int, default=1000, help="Validation scenes.")
    shapes.add_argument("--num_test", type=int, default=2000, help="Test scenes.")
    shapes.add_argument("--image_size", type=int, default=64, help="Image side in pixels (8 to 1024).")
    _statement_flag(shapes)


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if not args.no_progress:
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    # Before any work: the flags, then the target (after cleaning up what a killed build left), then the inputs.
    options = build_options(args)
    with output_lock(args.out):  # a second build into this folder is refused until this one is done
        out = prepare_output(args.out, args.overwrite)
        summary: dict = {}
        write_atomically(out, args.overwrite, partial(_build_into, args, options, summary))
        print_summary(summary, out)
        if args.push_to_hub:
            push_to_hub(out, args.push_to_hub, (out / CARD_FILE).read_text(encoding="utf-8"), private=args.private)
            print(f"  pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return summary


def _build_into(
    args: argparse.Namespace, options: BuildOptions | None, summary: dict, staging: Path, scratch: Path
) -> None:
    """The whole build written into `staging` (the dataset, its summary and card); `summary` filled in."""
    dataset_dict, built, description, method = _build(args, options, staging, scratch)
    summary.update(built)
    summary.update(_summarize(args, options, dataset_dict))
    # An empty split needs one (empty) shard, or load_from_disk cannot read it back.
    dataset_dict.save_to_disk(
        str(staging), num_shards={split: 1 for split, part in dataset_dict.items() if not len(part)}
    )
    card = render_card(summary, dataset_dict, description, method, args.license)
    (staging / SUMMARY_FILE).write_text(to_json(summary), encoding="utf-8")
    (staging / CARD_FILE).write_text(card, encoding="utf-8")


def _build(
    args: argparse.Namespace, options: BuildOptions | None, staging: Path, scratch: Path
) -> tuple[datasets.DatasetDict, dict, str, str]:
    """The source read and built: (its DatasetDict, the build's summary, what the source is, how its
    negations were made)."""
    if options is None:
        dataset_dict, built = build_shapes(args)
        return (
            dataset_dict,
            built,
            "The offline image world: procedurally drawn scenes whose objects are known exactly.",
            "Negations come from the world's own templates (`omninegclip/building/shapes.py`), "
            "which know every object exactly.",
        )
    if args.rewriter_model:
        options.rewriter = load_rewriter(args.rewriter_model)
    source = read_source(args, scratch)
    dataset_dict, built = build_from_source(source, options, scratch / "cache", out_dir=staging)
    return dataset_dict, built, source.description, build_description(args.source, options) + "\n\n" + STORAGE_NOTE


def _summarize(args: argparse.Namespace, options: BuildOptions | None, dataset_dict: datasets.DatasetDict) -> dict:
    """What the summary says of the written data: settings, rows per split, negations, the quality
    gate, texts longer than CLIP reads, examples, provenance."""
    negations, rewrites = _negation_kinds(dataset_dict)
    return {
        "arguments": shown_arguments(args),
        "rows_out": {split: len(part) for split, part in dataset_dict.items()},
        "negations": negations,
        "rewrites": rewrites,
        **({"statements": _statements(args.statement_rate, dataset_dict["train"])} if args.statement_rate else {}),
        "quality_gate": quality_gate(
            dataset_dict, progress=not args.no_progress, num_proc=args.num_proc if options else 1
        ),
        "over_context_length": over_context_length(dataset_dict),
        "examples": _examples(dataset_dict),
        "provenance": provenance(args.seed),
    }


def cli() -> None:
    """The console script's entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
