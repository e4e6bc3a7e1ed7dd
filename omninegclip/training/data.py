"""Training data for `train.py`: load any HF dataset, validate it, tokenize, find and embed (or
check) its unique images once, and collate batches for `OmniNegCLIPModel.forward`.

Public surface: `CaptionColumns`, `CaptionColumnArguments`, `load_any_dataset` (and `lift_json_fields`),
`check_columns`, `prepare_dataset` -> `PreparedSplit`,
`SourceReport`, `summarize_reports`, `PackedRows`, `OmniNegCollator`, `BalancedSourceSampler`.

Nothing here copies image bytes. A prepared split holds, per distinct row, where it came from
(`source_index`, `source_row`), its image (an index into the split's unique images,
`omninegclip.training.images.ImageRefs`, and into their embeddings) and its token ids per caption set
(`modeling_omninegclip.CAPTION_SETS`, keyed by `CaptionSet.input_ids`);
`PackedRows` packs every split into padded arrays, and the Trainer's tables hold small integers only
(`row_id`, `source_index`, `source_row`): the collator gathers a batch from the arrays at once.

Bad input never stops training midway and is never dropped silently. Before anything trains,
`prepare_dataset` checks every value (the rule of `omninegclip.common.skips`): a row whose caption is
missing, empty or not text, or whose negation is not text, is skipped (an empty or None negation is
allowed: the row then has no such negation); a missing column is an error; every unique image
is decoded once (in the pass that embeds it), and a row whose image is missing, corrupt, truncated or
larger than PIL's decompression-bomb limit is skipped (grayscale, palette and RGBA images are
converted to RGB); captions over the token limit are truncated. Skips are counted by reason with
example rows in a `SourceReport`, which `summarize_reports` turns into the one line `train.py` logs.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, make_dataclass
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch

from modeling_omninegclip import CAPTION, CAPTION_SETS
from omninegclip.common.cli import UserError
from omninegclip.common.clip import CONTEXT_LENGTH
from omninegclip.common.skips import SkipLog, text_skip
from omninegclip.training.images import ImagePass, ImageRefs, image_pass

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".tar": "webdataset",  # shards of `<key>.jpg` + `<key>.json` samples (`lift_json_fields` lifts the fields)
}
JSON_FIELDS_COLUMN = "json"  # a webdataset sample's `<key>.json`, one column of fields
GLOB_CHARACTERS = "*?["
SAVED_SHARDS = 64  # shards of a save_to_disk folder read as a stream (split across processes by shard)
SOURCE_COLUMN = "source_index"
SOURCE_ROW_COLUMN = "source_row"
PACKED_ROW_COLUMN = "packed_row"


@dataclass(frozen=True)
class CaptionColumns:
    """The dataset's image column and, per caption set (`CaptionSet.name`), the column holding it or
    None (the data has no such set). `columns.presence` reads as `columns.texts["presence"]`."""

    image: str
    texts: dict[str, str | None]

    @classmethod
    def from_flags(cls, image: str, *columns: str | None) -> "CaptionColumns":
        """The flags' values in `CAPTION_SETS` order (caption, presence, absence, affirmed); for a set
        with a row mask, 'none', '' or a value not given means no such column."""
        if len(columns) > len(CAPTION_SETS):
            raise TypeError(
                f"{len(columns)} caption columns given; the caption sets are {[row.name for row in CAPTION_SETS]}"
            )
        off = lambda name: None if name is None or name.strip().lower() in ("", "none") else name  # noqa: E731
        named = dict(zip((row.name for row in CAPTION_SETS), columns))
        return cls(
            image,
            {
                row.name: named.get(row.name) if row.row_mask is None else off(named.get(row.name))
                for row in CAPTION_SETS
            },
        )

    def __getattr__(self, name: str) -> str | None:
        texts = self.__dict__.get("texts", {})
        if name not in texts:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return texts[name]

    def text_columns(self) -> list[str]:
        """The caption columns the data has, in `CAPTION_SETS` order."""
        return [self.texts[row.name] for row in CAPTION_SETS if self.texts.get(row.name)]

    def flags(self) -> dict[str, str]:
        """Column name -> the flag that named it, for error messages."""
        named = {self.image: "--image_column"} | {self.texts.get(row.name): f"--{row.flag}" for row in CAPTION_SETS}
        return {column: flag for column, flag in named.items() if column is not None}


# `train.py`'s column flags, one per caption set (`--caption_column`, `--presence_column`, ...).
CaptionColumnArguments = make_dataclass(
    "CaptionColumnArguments",
    [(row.flag, str, field(default=row.default_column, metadata={"help": row.help})) for row in CAPTION_SETS],
    namespace={"__module__": __name__, "__doc__": "One column flag per caption set (`CAPTION_SETS`)."},
)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _causes(error: BaseException) -> str:
    """The messages of an exception and of what caused it: datasets wraps the informative one
    ("JSON parse error … in row 1", "Expected 2 fields in line 3") in a generic error."""
    messages, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = " ".join(str(error).split())
        messages.append(f"{type(error).__name__}: {text}" if text else type(error).__name__)
        error = error.__cause__ or error.__context__
    return "; caused by ".join(messages)


def _data_files(name: str) -> list[Path]:
    """The paths a --dataset_name value lists (comma-separated), glob patterns (`shards/*.tar`)
    expanded in sorted order; a pattern that matches nothing is an error."""
    files = []
    for part in (part.strip() for part in name.split(",")):
        if part and any(character in part for character in GLOB_CHARACTERS):
            matched = sorted(glob.glob(os.path.expanduser(part)))
            if not matched:
                raise UserError(f"--dataset_name: no file matches the pattern {part!r}")
            files += [Path(path) for path in matched]
        elif part:
            files.append(Path(part).expanduser())
    return files


def load_any_dataset(
    name: str,
    split: str,
    config_name: str | None = None,
    cache_dir: str | None = None,
    required: bool = True,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset | None:
    """One split of a `save_to_disk` folder, local data files (comma-separated, glob patterns allowed;
    `.tar` files are webdataset shards), or a Hub dataset; with `streaming`, as an `IterableDataset`
    read lazily. A `json` column of fields (webdataset's `<key>.json`) becomes top-level columns
    (`lift_json_fields`). A missing split is an error when `required`, else None."""
    path = Path(name)
    try:
        files = _data_files(name)
        builders = {DATA_FILE_BUILDERS.get(file.suffix) for file in files}
        if path.is_dir() and any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
        elif files and None not in builders:
            missing = [str(file) for file in files if not file.is_file()]
            if missing:
                raise UserError(f"--dataset_name: data file(s) {missing} do not exist")
            empty = [str(file) for file in files if file.stat().st_size == 0]
            if empty:
                raise UserError(f"dataset {name!r}: data file(s) {empty} are empty: nothing to train on")
            if len(builders) > 1:
                raise UserError(
                    f"dataset {name!r} mixes data file types ({sorted(file.suffix for file in files)}); "
                    "pass files of one type, or mix two datasets with --mix_dataset_name"
                )
            loaded = datasets.load_dataset(
                builders.pop(), data_files=[str(file) for file in files], cache_dir=cache_dir, streaming=streaming
            )
        elif path.is_dir():
            loaded = datasets.load_dataset(str(path), cache_dir=cache_dir, streaming=streaming)
        else:
            if name.startswith((".", "/", "~")):
                raise UserError(
                    f"dataset {name!r} does not exist: expected a save_to_disk folder, data files or a Hub id"
                )
            loaded = datasets.load_dataset(name, config_name, cache_dir=cache_dir, streaming=streaming)
    except UserError:
        raise
    except Exception as error:  # datasets raises many types; the user needs the name and the reason
        reason = _causes(error)
        if "to null" in reason:  # a field null in the first samples, from which the types are guessed
            reason += (
                "; a field that is null (None) in the first rows and text later cannot be typed: "
                'write "" for a missing negation instead of null'
            )
        raise UserError(f"could not load dataset {name!r}: {reason}") from None
    if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):
        chosen = loaded if split == "train" or not required else _missing_split(name, split, ["train"], required)
    elif split not in loaded:
        return _missing_split(name, split, list(loaded), required)
    else:
        chosen = loaded[split]
    if streaming and isinstance(chosen, datasets.Dataset):  # a save_to_disk folder, read lazily in shards
        chosen = chosen.to_iterable_dataset(num_shards=max(1, min(len(chosen), SAVED_SHARDS)))
    return lift_json_fields(chosen, name)


def lift_json_fields(dataset, name: str = "dataset"):
    """`dataset` with the fields of its `json` column of fields (a webdataset sample's `<key>.json`)
    as top-level columns, so that `--caption_column caption` names the field `caption`. Without such
    a column, `dataset` itself. A field named like another column is an error."""
    if dataset is None or dataset.features is None:
        return dataset
    fields = dataset.features.get(JSON_FIELDS_COLUMN)
    if not isinstance(fields, dict):
        return dataset
    clash = sorted(set(fields) & set(dataset.features))
    if clash:
        raise UserError(
            f"dataset {name!r}: the fields {clash} of its {JSON_FIELDS_COLUMN!r} column are also columns of their own"
        )
    if isinstance(dataset, datasets.Dataset):  # no copy: a change of the table's schema only
        flat = dataset.flatten(max_depth=2)
        return flat.rename_columns({f"{JSON_FIELDS_COLUMN}.{field}": field for field in fields})
    # A stream's images stay undecoded here (the map would decode every one, and stop at a corrupt
    # one): the Trainer decodes them, skipping and counting the unreadable ones.
    undecoded = {
        column: datasets.Image(decode=False) if isinstance(feature, datasets.Image) else feature
        for column, feature in dataset.features.items()
    }
    dataset = dataset.cast(datasets.Features(undecoded))
    lifted = datasets.Features()  # the fields where the json column was: the columns in the order `flatten` gives
    for column, feature in undecoded.items():
        lifted.update(fields if column == JSON_FIELDS_COLUMN else {column: feature})
    return dataset.map(_lifted_fields, remove_columns=[JSON_FIELDS_COLUMN], features=lifted)


def _lifted_fields(row: dict) -> dict:
    return dict(row[JSON_FIELDS_COLUMN] or {})


def _missing_split(name: str, split: str, found: list[str], required: bool):
    if required:
        raise UserError(f"dataset {name!r} has no split {split!r}; its splits are {found}")
    return None


# ----------------------------------------------------------------------------------------------
# What was skipped, truncated and kept
# ----------------------------------------------------------------------------------------------


@dataclass
class SourceReport:
    """What `prepare_dataset` did with one dataset: rows read and kept, the rows left out
    (`omninegclip.common.skips.SkipLog`: by reason, with the first rows of each), captions truncated to
    the token limit, rows with each negation."""

    name: str
    split: str = "train"
    rows: int = 0
    kept: int = 0
    skips: SkipLog = field(default_factory=SkipLog)
    truncated_captions: int = 0
    with_sets: dict[str, int] = field(default_factory=dict)  # rows with each optional caption set, by its name

    def to_json(self) -> dict:
        """The report as training_provenance.json records it: one `with_<name>` count per optional
        caption set, skips in `SkipLog.to_json`'s shape."""
        fields = {
            name: getattr(self, name) for name in self.__dataclass_fields__ if name not in ("skips", "with_sets")
        }
        counts = {
            f"with_{caption_set.name}": self.with_sets.get(caption_set.name, 0)
            for caption_set in CAPTION_SETS
            if caption_set.row_mask is not None
        }
        return {**fields, **counts, **self.skips.to_json()}

    def describe(self) -> str:
        # Sets on by default are always counted (a 0 is news); the others only where a dataset has them.
        counts = ", ".join(
            f"with {caption_set.counted_as or caption_set.name} {self.with_sets.get(caption_set.name, 0)}"
            for caption_set in CAPTION_SETS
            if caption_set.row_mask is not None and (caption_set.on_by_default or self.with_sets.get(caption_set.name))
        )
        parts = [f"{self.split} {self.name!r}: kept {self.kept} of {self.rows} rows ({counts})"]
        if self.skips:
            parts.append(self.skips.describe())
        return ", ".join(parts)


def summarize_reports(reports: list[SourceReport], max_length: int) -> tuple[str, bool]:
    """One line for every dataset and split, and whether anything was skipped or truncated (then
    it is worth a warning). Truncation is reported once, in total, with its share per dataset."""
    line = "data: " + " | ".join(report.describe() for report in reports)
    truncated = [(report, report.truncated_captions) for report in reports if report.truncated_captions]
    if truncated:
        total = sum(count for _, count in truncated)
        shares = ", ".join(f"{report.split} {report.name!r}: {count}" for report, count in truncated)
        line += (
            f" | truncated {total} caption(s) longer than {max_length} tokens ({shares}); "
            f"CLIP reads only the first {max_length}"
        )
    return line, bool(truncated) or any(report.skips for report in reports)


# ----------------------------------------------------------------------------------------------
# Validation, tokenization, images
# ----------------------------------------------------------------------------------------------


def _text_column(dataset: datasets.Dataset, column: str) -> list:
    """A column's values as one Python list, read from Arrow in one call (datasets 5's lazy
    `Column` would be read item by item)."""
    return dataset.with_format("arrow")[column].to_pylist()


def check_columns(
    name: str, found: list[str], columns: CaptionColumns, features: datasets.Features | None = None
) -> None:
    """A `UserError` when a column the flags name is not among `found`, or when the image column
    (its type known from `features`) holds neither images nor image paths. The same check, and the
    same messages, for prepared and streamed data."""
    for column, flag in columns.flags().items():
        if column not in found:
            raise UserError(f"dataset {name!r} has no column {column!r} (set by {flag}); its columns are {found}")
    feature = features.get(columns.image) if features is not None else None
    if feature is not None and not (
        isinstance(feature, datasets.Image)
        or (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"))
    ):
        raise UserError(
            f"dataset {name!r}, column {columns.image!r} (set by --image_column) holds {feature}; "
            "expected images (a datasets Image column) or image file paths (strings)"
        )


def _validate(dataset: datasets.Dataset, name: str, columns: CaptionColumns, split: str = "train") -> dict[str, list]:
    """Check the columns (an error when one is missing or of the wrong kind); return the text
    columns as lists. Their values are checked row by row by `_usable_rows`."""
    if len(dataset) == 0:
        raise UserError(f"dataset {name!r}: its {split!r} split is empty")
    check_columns(name, list(dataset.column_names), columns, dataset.features)
    return {column: _text_column(dataset, column) for column in columns.text_columns()}


def _usable_rows(texts: dict[str, list], columns: CaptionColumns, skips: SkipLog) -> list[int]:
    """The rows whose caption is text and whose negations are text or absent (None or empty: the
    row then has no such negation); every other row is counted in `skips` (`text_skip`'s reasons)."""
    keep = []
    for row in range(len(texts[columns.caption])):
        for column, values in texts.items():
            value = values[row]
            reason = (
                text_skip(value, "caption")
                if column == columns.caption
                else (text_skip(value, column) if value is not None and not isinstance(value, str) else None)
            )
            if reason is not None:
                shown = f": {type(value).__name__} {value!r:.40}" if reason.endswith("_not_text") else ""
                skips.skip(reason, f"row {row}, column {column!r}{shown}")
                break
        else:
            keep.append(row)
    return keep


def _tokenize(texts: list[str | None], tokenizer, max_length: int) -> tuple[list[list[int]], int]:
    """Token ids per text ([] for None/empty), cut to max_length with the end token kept; count the cut."""
    present = [index for index, text in enumerate(texts) if text and text.strip()]
    ids: list[list[int]] = [[] for _ in texts]
    truncated = 0
    for start in range(0, len(present), 4096):
        chunk = present[start : start + 4096]
        # verbose=False: the over-long ones are counted here and reported once, not warned about by the tokenizer
        encoded = tokenizer([texts[index] for index in chunk], add_special_tokens=True, verbose=False)["input_ids"]
        for index, tokens in zip(chunk, encoded):
            if len(tokens) > max_length:
                truncated += 1
                tokens = tokens[: max_length - 1] + [tokens[-1]]
            ids[index] = tokens
    return ids, truncated


@dataclass
class PreparedSplit:
    """One split, ready to batch. Its distinct rows (one per kept dataset row) carry where they came
    from, their image (an index into `images`, and into `image_embeds` when embedded) and their token
    ids per caption set; `order` lists the training rows as distinct rows (mixed datasets repeat the
    smaller one's rows without copying them). No image bytes are held: only references."""

    source_index: np.ndarray
    source_row: np.ndarray
    image_index: np.ndarray
    tokens: dict[str, list[list[int]]]
    order: np.ndarray
    images: ImageRefs
    image_embeds: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.order)


def _interleaved(sizes: list[int]) -> np.ndarray:
    """Training order over concatenated sources: one row of each in turn, the smaller ones repeated
    until the largest is used up (`datasets.interleave_datasets(..., "all_exhausted")`'s order)."""
    offsets = np.cumsum([0] + sizes[:-1])
    turns = np.arange(max(sizes))
    return np.stack([offset + turns % size for offset, size in zip(offsets, sizes)], axis=1).reshape(-1)


@dataclass
class _Source:
    """One dataset on its way through `prepare_dataset`: its report, its text columns as lists and
    the rows with a caption."""

    dataset: datasets.Dataset
    report: SourceReport
    texts: dict[str, list]
    keep: list[int]


def _read_source(
    dataset: datasets.Dataset, name: str, columns: CaptionColumns, limit: int | None, split: str
) -> _Source:
    """Validate one dataset (its first `limit` rows) and skip, counted, the rows whose texts cannot be used."""
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    report = SourceReport(name=name, split=split)
    texts = _validate(dataset, name, columns, split)
    report.rows = len(dataset)
    keep = _usable_rows(texts, columns, report.skips)
    if not keep:
        raise UserError(f"dataset {name!r}: no usable row (column {columns.caption!r}): {report.skips.describe()}")
    return _Source(dataset, report, texts, keep)


def _tokenized_rows(
    source: _Source, image_index: np.ndarray, checked: ImagePass, columns: CaptionColumns, tokenizer, max_length: int
) -> tuple[np.ndarray, np.ndarray, dict[str, list[list[int]]]]:
    """Skip, counted, the rows whose image cannot be used; tokenize every caption set of the others.
    Returns their rows, their image indices and their token ids per caption set (`CaptionSet.input_ids`)."""
    report = source.report
    usable = np.array([index not in checked.unreadable for index in image_index], dtype=bool)
    for row, index in zip(source.keep, image_index):
        if index in checked.unreadable:
            error = checked.unreadable[index]
            report.skips.skip(error.kind, f"row {row}: {error}")
    if not usable.any():
        raise UserError(
            f"dataset {report.name!r}: no usable row (column {columns.image!r}): {report.skips.describe()}"
        )
    rows = [row for row, ok in zip(source.keep, usable) if ok]
    tokens = {}
    for caption_set in CAPTION_SETS:
        column = columns.texts.get(caption_set.name)
        values = [source.texts[column][row] for row in rows] if column else [None] * len(rows)
        tokens[caption_set.input_ids], cut = _tokenize(values, tokenizer, max_length)
        report.truncated_captions += cut
        if caption_set.row_mask is not None:
            report.with_sets[caption_set.name] = sum(bool(ids) for ids in tokens[caption_set.input_ids])
    report.kept = len(rows)
    return np.array(rows, dtype=np.int64), image_index[usable], tokens


def prepare_dataset(
    raw: list[datasets.Dataset],
    names: list[str],
    columns: CaptionColumns,
    tokenizer,
    max_length: int = CONTEXT_LENGTH,
    limit: int | None = None,
    split: str = "train",
    images: Callable[[ImageRefs], ImagePass] | None = None,
) -> tuple[PreparedSplit, list[SourceReport]]:
    """Validate and tokenize every dataset, find their unique images, run `images` over them once
    (default: check that each decodes, in worker processes; `train.py` embeds them there too), drop
    the rows whose image cannot be used, and (for two datasets) interleave them one row each. Returns
    the split and one report per dataset (skips by reason with example rows, truncated captions);
    `split` only labels the reports."""
    images = images or (lambda refs: image_pass(refs, None))
    sources = [_read_source(dataset, name, columns, limit, split) for dataset, name in zip(raw, names)]
    refs, image_index = ImageRefs.find(
        [source.dataset for source in sources], columns.image, list(names), [source.keep for source in sources]
    )
    checked = images(refs)
    parts = [
        _tokenized_rows(source, index, checked, columns, tokenizer, max_length)
        for source, index in zip(sources, image_index)
    ]
    sizes = [len(rows) for rows, _, _ in parts]
    prepared = PreparedSplit(
        source_index=np.concatenate([np.full(size, k, dtype=np.int64) for k, size in enumerate(sizes)]),
        source_row=np.concatenate([rows for rows, _, _ in parts]),
        image_index=np.concatenate([index for _, index, _ in parts]),
        tokens={name: [ids for _, _, tokens in parts for ids in tokens[name]] for name in parts[0][2]},
        order=np.arange(sizes[0]) if len(parts) == 1 else _interleaved(sizes),
        images=refs,
        image_embeds=checked.embeds,
    )
    return prepared, [source.report for source in sources]


# ----------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------


class PackedRows:
    """The distinct rows of every split, as arrays a batch is gathered from without per-row Python
    work: per caption set, token ids padded to that set's longest caption (`lengths` 0 = the row has
    no such caption); each row's image (an index into `image_embeds`, or into `images` for the
    pixel path); where it came from. `from_splits` also gives the Trainer, per split, a table of
    small integers only: `row_id` (the training row's position in its split), `packed_row` (its
    row here), `source_index`, `source_row`."""

    def __init__(
        self,
        tokens: dict[str, list[list[int]]],
        pad_token_id: int,
        image_index: np.ndarray,
        image_embeds: torch.Tensor | None = None,
        source_index: np.ndarray | None = None,
        source_row: np.ndarray | None = None,
        pixels: Callable[[np.ndarray], torch.Tensor] | None = None,
    ):
        rows = len(image_index)
        self.ids, self.lengths = {}, {}
        for name, sequences in tokens.items():
            lengths = np.fromiter((len(ids) for ids in sequences), dtype=np.int64, count=rows)
            longest = max(1, int(lengths.max(initial=0)))
            dtype = (
                np.uint16
                if pad_token_id < 2**16 and all(max(ids, default=0) < 2**16 for ids in sequences)
                else np.int64
            )
            padded = np.full((rows, longest), pad_token_id, dtype=dtype)
            for row, ids in enumerate(sequences):
                padded[row, : len(ids)] = ids
            self.ids[name], self.lengths[name] = padded, lengths
        self.image_index = np.asarray(image_index, dtype=np.int64)
        self.image_embeds = image_embeds
        self.source_index = np.zeros(rows, dtype=np.int64) if source_index is None else np.asarray(source_index)
        self.source_row = np.arange(rows) if source_row is None else np.asarray(source_row)
        self.pixels = pixels

    @classmethod
    def from_splits(
        cls,
        splits: dict[str, PreparedSplit],
        pad_token_id: int,
        pixels: Callable[[list[ImageRefs], np.ndarray], torch.Tensor] | None = None,
    ) -> tuple["PackedRows", dict[str, datasets.Dataset]]:
        """All splits packed together, and each split's table for the Trainer."""
        names = list(next(iter(splits.values())).tokens)
        row_offsets = np.cumsum([0] + [len(split.source_row) for split in splits.values()])
        image_offsets = np.cumsum([0] + [len(split.images) for split in splits.values()])
        embedded = all(split.image_embeds is not None for split in splits.values())
        refs = [split.images for split in splits.values()]
        packed = cls(
            tokens={name: [ids for split in splits.values() for ids in split.tokens[name]] for name in names},
            pad_token_id=pad_token_id,
            image_index=np.concatenate(
                [split.image_index + offset for split, offset in zip(splits.values(), image_offsets)]
            ),
            image_embeds=torch.cat([split.image_embeds for split in splits.values()]) if embedded else None,
            source_index=np.concatenate([split.source_index for split in splits.values()]),
            source_row=np.concatenate([split.source_row for split in splits.values()]),
            # A partial, not a lambda: DataLoader workers started by spawn or forkserver (safe after CUDA
            # has started) receive the collator pickled.
            pixels=None if embedded or pixels is None else partial(pixels, refs, image_offsets),
        )
        tables = {}
        for (role, split), offset in zip(splits.items(), row_offsets):
            tables[role] = datasets.Dataset.from_dict(
                {
                    "row_id": np.arange(len(split.order), dtype=np.int64),
                    PACKED_ROW_COLUMN: (split.order + offset).astype(np.int64),
                    SOURCE_COLUMN: split.source_index[split.order],
                    SOURCE_ROW_COLUMN: split.source_row[split.order],
                }
            )
        return packed, tables


@dataclass
class OmniNegCollator:
    """Rows of a Trainer table (`packed_row`, `row_id`) -> keyword arguments of `OmniNegCLIPModel.forward`,
    one group per caption set of `CAPTION_SETS` (`CaptionSet.input_ids`, `.attention_mask`, `.row_mask`).
    Each caption set is padded to its own longest caption in the batch (dynamic padding, never to
    77). Left out: a set that no row of the batch carries, and every set not in `caption_sets` (by
    name; None: all): pass `OmniNegLossConfig.caption_sets_read()`, what the active loss terms read.
    The original captions are always there."""

    rows: PackedRows
    caption_sets: Collection[str] | None = None

    def _pad(self, name: str, row_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = torch.from_numpy(self.rows.lengths[name][row_ids])
        longest = max(1, int(lengths.max()))
        input_ids = torch.from_numpy(self.rows.ids[name][row_ids, :longest].astype(np.int64))
        attention_mask = (torch.arange(longest) < lengths[:, None]).long()
        return input_ids, attention_mask, lengths > 0

    def _wanted(self, caption_set) -> bool:
        if caption_set is CAPTION:
            return True
        read = self.caption_sets is None or caption_set.name in self.caption_sets
        return read and caption_set.input_ids in self.rows.ids

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        row_ids = np.fromiter((item[PACKED_ROW_COLUMN] for item in items), dtype=np.int64, count=len(items))
        batch = {"row_ids": torch.tensor([item["row_id"] for item in items])}
        for caption_set in filter(self._wanted, CAPTION_SETS):
            ids, mask, has = self._pad(caption_set.input_ids, row_ids)
            if caption_set.row_mask is None:
                batch[caption_set.input_ids], batch[caption_set.attention_mask] = ids, mask
            elif has.any():
                batch[caption_set.input_ids], batch[caption_set.attention_mask], batch[caption_set.row_mask] = (
                    ids,
                    mask,
                    has,
                )
        images = self.rows.image_index[row_ids]
        if self.rows.image_embeds is not None:
            batch["image_embeds"] = self.rows.image_embeds[torch.from_numpy(images)]
        else:
            batch["pixel_values"] = self.rows.pixels(images)
        return batch


class BalancedSourceSampler(torch.utils.data.Sampler[int]):
    """Training order for a dataset mixed from several sources (`source_index` column): each epoch,
    an independent shuffle of every source's rows, then one row of each source in turn. A batch of
    k * (number of sources) consecutive rows then holds exactly k rows of each source, also per
    process under data parallelism (Accelerate hands each process whole consecutive batches), as the
    authors draw one presence batch and one absence batch per step. Deterministic given seed and epoch."""

    def __init__(self, source_index: list[int], seed: int = 0):
        sources = sorted(set(source_index))
        self.positions = [
            torch.tensor([row for row, source in enumerate(source_index) if source == s]) for s in sources
        ]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.positions)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        shuffled = [rows[torch.randperm(len(rows), generator=generator)].tolist() for rows in self.positions]
        for turn in range(max(len(rows) for rows in shuffled)):
            for rows in shuffled:
                if turn < len(rows):
                    yield rows[turn]
