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
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, make_dataclass
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.fingerprint import Hasher

from modeling_omninegclip import CAPTION, CAPTION_SETS
from omninegclip.common.cli import UserError
from omninegclip.common.clip import CONTEXT_LENGTH
from omninegclip.common.memory import release_freed_memory
from omninegclip.common.outputs import is_alive
from omninegclip.common.skips import KEPT, SkipLog, text_skip
from omninegclip.training.images import ImagePass, ImageRefs, _base_folder, default_workers, image_key, image_pass
from omninegclip.training.rowstore import RowStore, RowStoreWriter, token_dtype

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

    @classmethod
    def from_json(cls, data: dict) -> "SourceReport":
        """The report `to_json` wrote."""
        return cls(
            name=data["name"],
            split=data.get("split", "train"),
            rows=data.get("rows", 0),
            kept=data.get("kept", 0),
            skips=SkipLog.from_json(data),
            truncated_captions=data.get("truncated_captions", 0),
            with_sets={
                caption_set.name: data.get(f"with_{caption_set.name}", 0)
                for caption_set in CAPTION_SETS
                if caption_set.row_mask is not None
            },
        )

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
# Validation and tokenization, in worker processes, into an Arrow cache
# ----------------------------------------------------------------------------------------------

ROWS_PER_MAP_BATCH = 1000  # rows a worker validates and tokenizes at once
ROWS_PER_WORKER = 20_000  # fewer rows than this per worker are not worth a process
PREPARED_FORMAT = 3  # the layout of the tokenized rows and the stored splits (part of their cache keys)


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


def _validate(dataset: datasets.Dataset, name: str, columns: CaptionColumns, split: str = "train") -> None:
    """Check the columns: an error when one is missing or of the wrong kind. Their values are checked
    row by row when the rows are tokenized (`_row_batch`)."""
    if len(dataset) == 0:
        raise UserError(f"dataset {name!r}: its {split!r} split is empty")
    check_columns(name, list(dataset.column_names), columns, dataset.features)


def row_text_skip(values: dict[str, object], columns: CaptionColumns) -> tuple[str, str] | None:
    """Why a row's texts cannot be used, and in which column (None: they can): its caption must be
    text; a negation may be None or empty (then the row has no such negation) but not another type."""
    for column, value in values.items():
        if column == columns.caption:
            reason = text_skip(value, "caption")
        else:
            reason = text_skip(value, column) if value is not None and not isinstance(value, str) else None
        if reason is not None:
            shown = f": {type(value).__name__} {value!r:.40}" if reason.endswith("_not_text") else ""
            return reason, f"column {column!r}{shown}"
    return None


def _tokenize(texts: list[str | None], tokenizer, max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """Token ids per text ([] for None/empty), cut to max_length with the end token kept; which were cut."""
    present = [index for index, text in enumerate(texts) if text and text.strip()]
    ids: list[list[int]] = [[] for _ in texts]
    cut = np.zeros(len(texts), dtype=bool)
    if present:
        # verbose=False: the over-long ones are counted here and reported once, not warned about by the tokenizer
        encoded = tokenizer([texts[index] for index in present], add_special_tokens=True, verbose=False)["input_ids"]
        for index, tokens in zip(present, encoded):
            if len(tokens) > max_length:
                cut[index] = True
                tokens = tokens[: max_length - 1] + [tokens[-1]]
            ids[index] = tokens
    return ids, cut


def _row_batch(
    batch: dict[str, list], indices: list[int], columns: CaptionColumns, tokenizer, max_length: int, base
) -> dict[str, list]:
    """One batch of a dataset's rows, in a `datasets.map` worker: why each row is skipped (None:
    kept), its image's identity (`image_key`) and, per caption set, its token ids (none for a
    skipped row)."""
    rows = len(indices)
    texts = {column: batch[column] for column in columns.text_columns()}
    skip, where = [None] * rows, [None] * rows
    for position, row in enumerate(indices):
        found = row_text_skip({column: values[position] for column, values in texts.items()}, columns)
        if found is not None:
            skip[position], where[position] = found[0], f"row {row}, {found[1]}"
    out = {"skip": skip, "skip_where": where}
    truncated = np.zeros(rows, dtype=np.uint8)
    for caption_set in CAPTION_SETS:
        column = columns.texts.get(caption_set.name)
        if not column:
            continue
        values = [value if reason is None else None for value, reason in zip(texts[column], skip)]
        out[f"ids.{caption_set.name}"], cut = _tokenize(values, tokenizer, max_length)
        truncated += cut
    out["truncated"] = truncated
    keys = np.array([image_key(value, base) or (0, 0) for value in batch[columns.image]], dtype=np.uint64)
    out["image_hi"], out["image_lo"] = keys[:, 0], keys[:, 1]
    return out


def _row_features(columns: CaptionColumns, dtype: str) -> datasets.Features:
    """The columns `_row_batch` returns."""
    tokens = {
        f"ids.{caption_set.name}": datasets.List(datasets.Value(dtype))
        for caption_set in CAPTION_SETS
        if columns.texts.get(caption_set.name)
    }
    return datasets.Features(
        {
            "skip": datasets.Value("string"),
            "skip_where": datasets.Value("string"),
            **tokens,
            "truncated": datasets.Value("uint8"),
            "image_hi": datasets.Value("uint64"),
            "image_lo": datasets.Value("uint64"),
        }
    )


def _mapped_input(dataset: datasets.Dataset, name: str, columns: CaptionColumns, tokenizer, max_length: int):
    """What `tokenize_rows` maps (images left undecoded), and the key of its result: the dataset's
    fingerprint, the columns, where relative image paths are read from, the tokenizer, the limit."""
    if isinstance(dataset.features[columns.image], datasets.Image):
        dataset = dataset.cast_column(columns.image, datasets.Image(decode=False))
    base = _base_folder(name)
    dtype = str(token_dtype(len(tokenizer)))
    key = Hasher.hash(
        [PREPARED_FORMAT, dataset._fingerprint, repr(columns), max_length, str(base), Hasher.hash(tokenizer), dtype]
    )
    return dataset, base, dtype, key


def tokenize_rows(
    dataset: datasets.Dataset,
    name: str,
    columns: CaptionColumns,
    tokenizer,
    max_length: int,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
    split: str = "train",
) -> datasets.Dataset:
    """Every row of `dataset` checked, tokenized and its image identified (`_row_batch`), with
    `datasets.map(batched=True, num_proc=...)` (default: the machine's cores, fewer for a small
    dataset). With `cache_dir`, into Arrow files there named by what they depend on
    (`_mapped_input`); else in memory."""
    _validate(dataset, name, columns, split)
    dataset, base, dtype, key = _mapped_input(dataset, name, columns, tokenizer, max_length)
    workers = default_workers() if num_proc is None else num_proc
    workers = max(1, min(workers, -(-len(dataset) // ROWS_PER_WORKER)))
    cache_file = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file = str(Path(cache_dir) / f"rows-{key}.arrow")
    return dataset.map(
        _row_batch,
        batched=True,
        batch_size=ROWS_PER_MAP_BATCH,
        with_indices=True,
        remove_columns=dataset.column_names,
        fn_kwargs={"columns": columns, "tokenizer": tokenizer, "max_length": max_length, "base": base},
        features=_row_features(columns, dtype),
        num_proc=workers if workers > 1 else None,
        cache_file_name=cache_file,
        load_from_cache_file=cache_file is not None,
        keep_in_memory=cache_file is None,
        new_fingerprint=key,
        desc=f"tokenizing {split} {name!r}",
    )


def _record_batches(rows: datasets.Dataset):
    """The record batches of a tokenized dataset, read from its Arrow files with plain reads (not
    memory-mapped: what was read once does not stay in this process's memory)."""
    files = [entry["filename"] for entry in rows.cache_files]
    if not files or rows._indices is not None:
        yield from rows.with_format("arrow").iter(batch_size=ROWS_PER_MAP_BATCH * 8)
        return
    for file in files:
        with pa.OSFile(file) as handle:
            yield from pa.ipc.open_stream(handle)


# ----------------------------------------------------------------------------------------------
# A split stored once: every row's tokens and image, memory-mapped
# ----------------------------------------------------------------------------------------------


@dataclass
class PreparedSplit:
    """One split, ready to batch. `store` holds every row of its datasets (one after the other, the
    k-th from `starts[k]`): tokens per caption set, its image (an index into `images`, and into
    `image_embeds` when embedded). `kept` lists the rows that train (their texts and image can be
    used), ascending; `order` the training order as positions in `kept` (mixed datasets repeat the
    smaller one's rows without copying them). No image bytes are held: only references."""

    store: RowStore
    kept: np.ndarray
    starts: np.ndarray
    order: np.ndarray
    images: ImageRefs
    image_embeds: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.order)

    def source_of(self, rows: np.ndarray) -> np.ndarray:
        """The dataset of each of some store rows."""
        return (np.searchsorted(self.starts, rows, side="right") - 1).astype(np.int64)

    @property
    def source_index(self) -> np.ndarray:
        """Each kept row's dataset."""
        return self.source_of(self.kept)

    @property
    def source_row(self) -> np.ndarray:
        """Each kept row's row in its dataset."""
        return self.kept - self.starts[self.source_index]

    @property
    def image_index(self) -> np.ndarray:
        """Each kept row's unique image."""
        return np.asarray(self.store.image_index[self.kept])

    @property
    def tokens(self) -> dict[str, list[list[int]]]:
        """Each kept row's token ids per caption set (`CaptionSet.input_ids`), as lists (for small splits)."""
        found = {}
        for caption_set in CAPTION_SETS:
            has = self.store.has(caption_set.name)
            found[caption_set.input_ids] = [
                self.store.row_tokens(caption_set.name, int(row)) if has else [] for row in self.kept
            ]
        return found


def _interleaved(sizes: list[int]) -> np.ndarray:
    """Training order over concatenated sources: one row of each in turn, the smaller ones repeated
    until the largest is used up (`datasets.interleave_datasets(..., "all_exhausted")`'s order)."""
    offsets = np.cumsum([0] + sizes[:-1])
    turns = np.arange(max(sizes))
    return np.stack([offset + turns % size for offset, size in zip(offsets, sizes)], axis=1).reshape(-1)


def _store_rows(
    tokenized: list[datasets.Dataset], reports: list[SourceReport], columns: CaptionColumns, folder: Path, dtype
) -> tuple[RowStoreWriter, np.ndarray]:
    """Write every tokenized row of the datasets into a `RowStore` in `folder` (the texts' skips
    counted into `reports`); returns the writer, to be closed with the image indices, and the rows'
    image keys ((rows, 2) uint64)."""
    names = [row.name for row in CAPTION_SETS if columns.texts.get(row.name)]
    writer = RowStoreWriter(folder, names, dtype)
    keys = []
    for rows, report in zip(tokenized, reports):
        for batch in _record_batches(rows):
            skip = batch.column("skip")
            usable = np.asarray(pc.is_null(skip))
            if not usable.all():
                skipped = pc.filter(pa.table({"skip": skip, "where": batch.column("skip_where")}), pc.is_valid(skip))
                for reason, where in zip(skipped["skip"].to_pylist(), skipped["where"].to_pylist()):
                    report.skips.skip(reason, where)
            ids, lengths = {}, {}
            for name in names:
                column = batch.column(f"ids.{name}")
                lengths[name] = np.asarray(pc.list_value_length(column).fill_null(0), dtype=np.int64)
                ids[name] = np.asarray(pc.list_flatten(column))
            writer.append(ids, lengths, usable, np.asarray(batch.column("truncated")))
            keys.append(np.stack([np.asarray(batch.column("image_hi")), np.asarray(batch.column("image_lo"))], 1))
    return writer, (np.concatenate(keys) if keys else np.zeros((0, 2), dtype=np.uint64))


def _stored_split(
    raw: list[datasets.Dataset],
    names: list[str],
    columns: CaptionColumns,
    tokenizer,
    max_length: int,
    split: str,
    cache_dir: Path | None,
    num_proc: int | None,
) -> tuple[RowStore, ImageRefs, np.ndarray, list[SourceReport]]:
    """The split's rows tokenized and stored once (`cache_dir/split-<key>`, read back without being
    held; reused by the other processes of the run and by later launches, which tokenize nothing),
    its unique images, each dataset's first row in the store, and the reports of the texts' skips."""
    for dataset, name in zip(raw, names):
        _validate(dataset, name, columns, split)
    sizes = [len(dataset) for dataset in raw]
    starts = np.cumsum([0] + sizes[:-1]).astype(np.int64)
    inputs = [_mapped_input(dataset, name, columns, tokenizer, max_length)[3] for dataset, name in zip(raw, names)]
    key = Hasher.hash([PREPARED_FORMAT, inputs, names, split, columns.image])
    temporary = cache_dir is None
    folder = Path(tempfile.mkdtemp(prefix="omninegclip-rows-")) if temporary else Path(cache_dir) / f"split-{key}"
    store = None if temporary else RowStore.open(folder)
    if store is not None:
        meta = json.loads((folder / STORE_META).read_text())
        reports = [SourceReport.from_json(entry) for entry in meta["reports"]]
        refs = ImageRefs.of(raw, columns.image, names, np.load(folder / "image_refs.npy"), meta["image_keys"])
        logger.info("%s rows: reusing the prepared rows in %s (%d rows)", split, folder, len(store))
        return store, refs, starts, reports
    if not temporary and folder.exists():
        logger.warning(
            "the prepared rows in %s cannot be read (cut short or damaged); tokenizing the data again and "
            "replacing them",
            folder,
        )
    reports = [SourceReport(name=name, split=split, rows=size) for name, size in zip(names, sizes)]
    # A partial folder is named by host and pid: a cache folder shared by several machines holds
    # the builds of each, and only this machine's processes can be known to be gone.
    host = socket.gethostname()
    building = folder if temporary else folder.with_name(f"{folder.name}.partial-{host}-{os.getpid()}")
    if not temporary:  # what killed runs of this machine left behind
        for stale in Path(cache_dir).glob(f"split-*.partial-{host}-*"):
            pid = stale.name.rpartition("-")[2]
            if pid.isdigit() and int(pid) != os.getpid() and not is_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(building, ignore_errors=True)
    stored = False
    try:
        # Tokenized into Arrow files inside the folder being built, read once into the store, then removed.
        tokens_dir = None if temporary else building / "tokenized"
        tokenized = [
            tokenize_rows(dataset, name, columns, tokenizer, max_length, tokens_dir, num_proc, split)
            for dataset, name in zip(raw, names)
        ]
        writer, keys = _store_rows(tokenized, reports, columns, building, token_dtype(len(tokenizer)))
        del tokenized
        release_freed_memory()  # the record batches read into the store
        if tokens_dir is not None:
            shutil.rmtree(tokens_dir)
        refs, image_index = ImageRefs.from_keys(raw, columns.image, names, keys, starts)
        np.save(building / "image_refs.npy", refs.refs)
        (building / STORE_META).write_text(
            json.dumps({"reports": [report.to_json() for report in reports], "image_keys": refs.key_digest})
        )
        writer.close(image_index)
        if not temporary:
            _publish(building, folder)
        store = RowStore.open(folder)
        stored = store is not None
    finally:
        if not temporary:
            shutil.rmtree(building, ignore_errors=True)
        elif not stored:
            shutil.rmtree(folder, ignore_errors=True)
    if store is None:
        raise RuntimeError(f"the prepared rows in {folder} cannot be read back")
    if not temporary:
        logger.info("%s rows: stored the prepared rows in %s (%d rows)", split, folder, len(store))
    if temporary:  # no cache folder: the rows are held in memory
        store = store.in_memory()
        shutil.rmtree(folder, ignore_errors=True)
    return store, refs, starts, reports


def _publish(building: Path, folder: Path) -> None:
    """Rename the built folder into place. Where another process stored a readable one first, keep
    theirs; a damaged one is moved aside (then removed) and replaced."""
    try:
        os.rename(building, folder)
        return
    except OSError:
        if RowStore.open(folder) is not None:  # another process stored it first: use theirs
            return
    damaged = folder.with_name(f"{folder.name}.damaged-{socket.gethostname()}-{os.getpid()}")
    try:
        os.rename(folder, damaged)
    except OSError:  # someone else moved it already
        pass
    shutil.rmtree(damaged, ignore_errors=True)
    try:
        os.rename(building, folder)
    except OSError:  # another process replaced it meanwhile: theirs is read below
        pass


STORE_META = "split.json"


def _kept_rows(
    store: RowStore, starts: np.ndarray, reports: list[SourceReport], checked: ImagePass, images: int, columns
) -> list[np.ndarray]:
    """Per dataset, its rows that train: texts usable and image readable. The rows whose image cannot
    be used are counted in the reports (`SkipLog`, reason: the image's error kind, with the first rows),
    and each report's kept, truncated and with-set counts are those of its kept rows."""
    ends = np.append(starts[1:], len(store))
    kinds = sorted({error.kind for error in checked.unreadable.values()})
    code = np.full(images, -1, dtype=np.int64)  # per unique image: its error kind's position in `kinds`, or -1
    for index, error in checked.unreadable.items():
        code[index] = kinds.index(error.kind)
    kept = []
    for report, start, end in zip(reports, starts, ends):
        usable = np.asarray(store.usable[start:end])
        image = np.asarray(store.image_index[start:end])
        error = np.where(usable, code[image], -1)
        for position, kind in enumerate(kinds):
            rows = np.flatnonzero(error == position)
            for row in rows[:KEPT]:
                report.skips.skip(kind, f"row {row}: {checked.unreadable[int(image[row])]}", 0)
            if len(rows):
                report.skips.skip(kind, None, len(rows))
        rows = np.flatnonzero(usable & (error < 0))
        if not len(rows):
            raise UserError(
                f"dataset {report.name!r}: no usable row (column {columns.image!r}): {report.skips.describe()}"
            )
        report.kept = len(rows)
        report.truncated_captions = int(np.asarray(store.truncated[start:end])[rows].sum())
        for caption_set in CAPTION_SETS:
            if caption_set.row_mask is not None:
                has = store.has(caption_set.name)
                report.with_sets[caption_set.name] = (
                    int((store.lengths(caption_set.name, rows + start) > 0).sum()) if has else 0
                )
        kept.append(rows + start)
    return kept


def prepare_dataset(
    raw: list[datasets.Dataset],
    names: list[str],
    columns: CaptionColumns,
    tokenizer,
    max_length: int = CONTEXT_LENGTH,
    limit: int | None = None,
    split: str = "train",
    images: Callable[[ImageRefs], ImagePass] | None = None,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
) -> tuple[PreparedSplit, list[SourceReport]]:
    """Validate and tokenize every dataset (`tokenize_rows`, in `num_proc` worker processes), store
    the rows once (`cache_dir`: memory-mapped files every process of the run and later launches
    reuse), find their unique images, run `images` over them once (default: check that each decodes,
    in worker processes; `train.py` embeds them there too), leave out the rows whose image cannot be
    used, and (for two datasets) interleave them one row each. Returns the split and one report per
    dataset (skips by reason with example rows, truncated captions); `split` only labels the reports."""
    images = images or (lambda refs: image_pass(refs, None))
    if limit is not None:
        raw = [dataset.select(range(min(limit, len(dataset)))) for dataset in raw]
    store, refs, starts, reports = _stored_split(
        raw, list(names), columns, tokenizer, max_length, split, Path(cache_dir) if cache_dir else None, num_proc
    )
    for report in reports:
        if report.skips.counts and sum(report.skips.counts.values()) >= report.rows:
            raise UserError(
                f"dataset {report.name!r}: no usable row (column {columns.caption!r}): {report.skips.describe()}"
            )
    checked = images(refs)
    kept = _kept_rows(store, starts, reports, checked, len(refs), columns)
    sizes = [len(rows) for rows in kept]
    prepared = PreparedSplit(
        store=store,
        kept=np.concatenate(kept),
        starts=starts,
        order=np.arange(sizes[0]) if len(kept) == 1 else _interleaved(sizes),
        images=refs,
        image_embeds=checked.embeds,
    )
    return prepared, reports


# ----------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------


@dataclass
class _Part:
    """One split inside `PackedRows`: its store, its kept rows, its image embeddings, its number of
    unique images and the number of its first one across the splits."""

    store: RowStore
    kept: np.ndarray
    image_embeds: torch.Tensor | None
    images: int
    image_offset: int = 0


class PackedRows:
    """The rows of every split, gathered into a batch without per-row Python work: per caption set,
    token ids padded to the batch's longest caption (lengths 0 = the row has no such caption); each
    row's image embedding (or, for the pixel path, its image). A packed row is a position in the
    splits' kept rows, one split after the other. `from_splits` also gives the Trainer, per split, a
    table of small integers only: `row_id` (the training row's position in its split), `packed_row`
    (its row here), `source_index`, `source_row`."""

    def __init__(
        self,
        tokens: dict[str, list[list[int]]] | None,
        pad_token_id: int,
        image_index: np.ndarray | None = None,
        image_embeds: torch.Tensor | None = None,
        source_index: np.ndarray | None = None,
        source_row: np.ndarray | None = None,
        pixels: Callable[[np.ndarray], torch.Tensor] | None = None,
        parts: list[_Part] | None = None,
    ):
        if parts is None:  # one split in memory, from token lists
            names = {caption_set.input_ids: caption_set.name for caption_set in CAPTION_SETS}
            store = RowStore.from_lists(
                {names.get(key, key): value for key, value in tokens.items()}, image_index, pad_token_id
            )
            images = len(image_embeds) if image_embeds is not None else int(np.max(image_index, initial=-1)) + 1
            parts = [_Part(store, np.arange(len(store)), image_embeds, images)]
        offsets = np.cumsum([0] + [part.images for part in parts[:-1]])
        for part, offset in zip(parts, offsets):
            part.image_offset = int(offset)
        self.parts = parts
        self.pad_token_id = pad_token_id
        self.starts = np.cumsum([0] + [len(part.kept) for part in parts[:-1]]).astype(np.int64)
        self.pixels = pixels

    def __len__(self) -> int:
        return int(self.starts[-1] + len(self.parts[-1].kept))

    @property
    def image_embeds(self) -> torch.Tensor | None:
        """Every split's image embeddings, one after the other (a copy when there are several)."""
        found = [part.image_embeds for part in self.parts]
        if any(embeds is None for embeds in found):
            return None
        return found[0] if len(found) == 1 else torch.cat(found)

    @property
    def image_index(self) -> np.ndarray:
        """Each packed row's image, numbered across the splits' unique images."""
        return np.concatenate(
            [np.asarray(part.store.image_index[part.kept]) + part.image_offset for part in self.parts]
        )

    def has(self, name: str) -> bool:
        return any(part.store.has(name) for part in self.parts)

    def _split(self, rows: np.ndarray) -> list[tuple[_Part, np.ndarray, np.ndarray]]:
        """(part, positions in `rows`, store rows) for each split that `rows` reach."""
        which = np.searchsorted(self.starts, rows, side="right") - 1
        found = []
        for index in np.unique(which):
            positions = np.flatnonzero(which == index)
            part = self.parts[index]
            found.append((part, positions, part.kept[rows[positions] - self.starts[index]]))
        return found

    def tokens(self, name: str, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The token ids of a caption set for `rows`, padded to their longest, and their lengths."""
        pieces = []
        for part, positions, stored in self._split(rows):
            if part.store.has(name):
                pieces.append((positions, *part.store.gather(name, stored, self.pad_token_id)))
            else:
                pieces.append((positions, np.full((len(stored), 1), self.pad_token_id), np.zeros(len(stored))))
        longest = max(ids.shape[1] for _, ids, _ in pieces)
        input_ids = np.full((len(rows), longest), self.pad_token_id, dtype=np.int64)
        lengths = np.zeros(len(rows), dtype=np.int64)
        for positions, ids, found in pieces:
            input_ids[positions, : ids.shape[1]] = ids
            lengths[positions] = found
        return torch.from_numpy(input_ids), torch.from_numpy(lengths)

    def images(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """`image_embeds` (float32) of `rows`, or their `pixel_values` when no embeddings were made."""
        if all(part.image_embeds is not None for part in self.parts):
            out = None
            for part, positions, stored in self._split(rows):
                index = torch.from_numpy(np.asarray(part.store.image_index[stored], dtype=np.int64))
                found = part.image_embeds[index].float()
                if out is None:
                    out = torch.empty(len(rows), found.shape[-1], dtype=torch.float32)
                out[torch.from_numpy(positions)] = found
            return {"image_embeds": out}
        images = np.empty(len(rows), dtype=np.int64)
        for part, positions, stored in self._split(rows):
            images[positions] = np.asarray(part.store.image_index[stored]) + part.image_offset
        return {"pixel_values": self.pixels(images)}

    @classmethod
    def from_splits(
        cls,
        splits: dict[str, PreparedSplit],
        pad_token_id: int,
        pixels: Callable[[list[ImageRefs], np.ndarray], torch.Tensor] | None = None,
    ) -> tuple["PackedRows", dict[str, datasets.Dataset]]:
        """All splits packed together (nothing copied: each keeps its own arrays), and each split's
        table for the Trainer."""
        image_offsets = np.cumsum([0] + [len(split.images) for split in splits.values()])
        embedded = all(split.image_embeds is not None for split in splits.values())
        refs = [split.images for split in splits.values()]
        packed = cls(
            None,
            pad_token_id,
            parts=[_Part(split.store, split.kept, split.image_embeds, len(split.images)) for split in splits.values()],
            # A partial, not a lambda: DataLoader workers started by spawn or forkserver (safe after CUDA
            # has started) receive the collator pickled.
            pixels=None if embedded or pixels is None else partial(pixels, refs, image_offsets),
        )
        tables = {}
        for (role, split), offset in zip(splits.items(), packed.starts):
            kept = split.kept[split.order]  # each training row's row in the store
            source_index = split.source_of(kept).astype(np.int32)
            tables[role] = datasets.Dataset(
                pa.table(
                    {
                        "row_id": pa.array(np.arange(len(split.order), dtype=np.int64)),
                        PACKED_ROW_COLUMN: pa.array(split.order + offset),
                        SOURCE_COLUMN: pa.array(source_index),
                        SOURCE_ROW_COLUMN: pa.array(kept - split.starts[source_index]),
                    }
                )
            )
            del kept, source_index
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
        input_ids, lengths = self.rows.tokens(name, row_ids)
        attention_mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
        return input_ids, attention_mask, lengths > 0

    def _wanted(self, caption_set) -> bool:
        if caption_set is CAPTION:
            return True
        read = self.caption_sets is None or caption_set.name in self.caption_sets
        return read and self.rows.has(caption_set.name)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        row_ids = np.fromiter((item[PACKED_ROW_COLUMN] for item in items), dtype=np.int64, count=len(items))
        batch = {"row_ids": torch.tensor([item["row_id"] for item in items])}
        for caption_set in filter(self._wanted, CAPTION_SETS):
            ids, mask, has = self._pad(caption_set.name, row_ids)
            if caption_set.row_mask is None:
                batch[caption_set.input_ids], batch[caption_set.attention_mask] = ids, mask
            elif has.any():
                batch[caption_set.input_ids], batch[caption_set.attention_mask], batch[caption_set.row_mask] = (
                    ids,
                    mask,
                    has,
                )
        batch.update(self.rows.images(row_ids))
        return batch


class BalancedSourceSampler(torch.utils.data.Sampler[int]):
    """Training order for a dataset mixed from several sources (`source_index` column): each epoch,
    an independent shuffle of every source's rows, then one row of each source in turn. A batch of
    k * (number of sources) consecutive rows then holds exactly k rows of each source, also per
    process under data parallelism (Accelerate hands each process whole consecutive batches), as the
    authors draw one presence batch and one absence batch per step. Deterministic given seed and epoch."""

    def __init__(self, source_index, seed: int = 0):
        source_index = np.asarray(source_index)
        self.positions = [torch.from_numpy(np.flatnonzero(source_index == s)) for s in np.unique(source_index)]
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
