"""Training data for `train.py`: load any HF dataset, validate it, tokenize, cache frozen image
embeddings, and collate batches for `OmniNegCLIPModel.forward`.

Public surface: `CaptionColumns`, `load_any_dataset`, `prepare_dataset`, `SourceReport`,
`summarize_reports`, `cached_image_embeddings`, `OmniNegCollator`, `BalancedSourceSampler`.

A prepared dataset has, per row: `row_id` (its index), `source_index` (which of the given datasets
the row came from), `source_row` (its row there), `input_ids`, `presence_negated_input_ids`,
`absence_negated_input_ids`, `absence_affirmed_input_ids` (empty list where the row has none) and either the image
column or, once cached, `image_embeds`.

Bad input never stops training midway and is never dropped silently. Before anything trains,
`prepare_dataset` checks every value: a caption or negation that is not a string is an error naming
the dataset, row and column; a row whose caption is empty (or None) is skipped; every image is
decoded once, and a row whose image is missing, corrupt, truncated or larger than PIL's
decompression-bomb limit is skipped (grayscale, palette and RGBA images are converted to RGB);
captions over the token limit are truncated. Skips are counted by reason with example rows in a
`SourceReport`, which `summarize_reports` turns into the one line `train.py` logs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from omninegclip.cli import UserError
from omninegclip.embedding import embed_images
from omninegclip.safe_load import UnreadableImage, open_rgb_image

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
# (CaptionColumns field, prepared column, the forward's argument prefix, the forward's row-mask argument)
NEGATION_FIELDS = (
    ("presence", "presence_negated_input_ids", "presence_negated", "presence_mask"),
    ("absence", "absence_negated_input_ids", "absence_negated", "absence_mask"),
    ("affirmed", "absence_affirmed_input_ids", "absence_affirmed", "absence_affirmed_mask"),
)
SOURCE_COLUMN = "source_index"
SOURCE_ROW_COLUMN = "source_row"
EXAMPLES_PER_REASON = 3  # example rows named per skip reason
IMAGE_CHECK_CHUNK = 64  # images read from the table at once while checking them


@dataclass(frozen=True)
class CaptionColumns:
    image: str
    caption: str
    presence: str | None
    absence: str | None
    affirmed: str | None = None

    @classmethod
    def from_flags(cls, image: str, caption: str, presence: str | None, absence: str | None,
                   affirmed: str | None = None) -> "CaptionColumns":
        off = lambda name: None if name is None or name.strip().lower() in ("", "none") else name  # noqa: E731
        return cls(image, caption, off(presence), off(absence), off(affirmed))

    def flags(self) -> dict[str, str]:
        """Column name -> the flag that named it, for error messages."""
        named = {
            self.image: "--image_column",
            self.caption: "--caption_column",
            self.presence: "--presence_column",
            self.absence: "--absence_column",
            self.affirmed: "--absence_affirmed_column",
        }
        return {column: flag for column, flag in named.items() if column is not None}


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


def load_any_dataset(
    name: str, split: str, config_name: str | None = None, cache_dir: str | None = None, required: bool = True
) -> datasets.Dataset | None:
    """One split of a `save_to_disk` folder, local data files (comma-separated), or a Hub dataset.
    A missing split is an error when `required`, else None."""
    path = Path(name)
    files = [Path(part) for part in name.split(",")]
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
        elif all(file.suffix in DATA_FILE_BUILDERS for file in files):
            missing = [str(file) for file in files if not file.is_file()]
            if missing:
                raise UserError(f"--dataset_name: data file(s) {missing} do not exist")
            empty = [str(file) for file in files if file.stat().st_size == 0]
            if empty:
                raise UserError(f"dataset {name!r}: data file(s) {empty} are empty: nothing to train on")
            builder = DATA_FILE_BUILDERS[files[0].suffix]
            loaded = datasets.load_dataset(builder, data_files=[str(file) for file in files], cache_dir=cache_dir)
        elif path.is_dir():
            loaded = datasets.load_dataset(str(path), cache_dir=cache_dir)
        else:
            if name.startswith((".", "/", "~")):
                raise UserError(f"dataset {name!r} does not exist: expected a save_to_disk folder, data files or a Hub id")
            loaded = datasets.load_dataset(name, config_name, cache_dir=cache_dir)
    except UserError:
        raise
    except Exception as error:  # datasets raises many types; the user needs the name and the reason
        raise UserError(f"could not load dataset {name!r}: {_causes(error)}") from None
    if isinstance(loaded, datasets.Dataset):
        return loaded if split == "train" or not required else _missing_split(name, split, ["train"], required)
    if split not in loaded:
        return _missing_split(name, split, list(loaded), required)
    return loaded[split]


def _missing_split(name: str, split: str, found: list[str], required: bool):
    if required:
        raise UserError(f"dataset {name!r} has no split {split!r}; its splits are {found}")
    return None


# ----------------------------------------------------------------------------------------------
# What was skipped, truncated and kept
# ----------------------------------------------------------------------------------------------


@dataclass
class SourceReport:
    """What `prepare_dataset` did with one dataset: rows read and kept, skips by reason (with the
    first few rows of each), captions truncated to the token limit, rows with each negation."""

    name: str
    split: str = "train"
    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    truncated_captions: int = 0
    with_presence: int = 0
    with_absence: int = 0
    with_affirmed: int = 0

    def skip(self, reason: str, row: int, detail: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"row {row}" + (f": {detail}" if detail else ""))

    def describe_skips(self) -> str:
        if not self.skipped:
            return ""
        reasons = "; ".join(
            f"{reason}: {count} [{'; '.join(self.examples[reason])}{'; …' if count > len(self.examples[reason]) else ''}]"
            for reason, count in sorted(self.skipped.items())
        )
        return f"skipped {sum(self.skipped.values())} ({reasons})"

    def describe(self) -> str:
        parts = [f"{self.split} {self.name!r}: kept {self.kept} of {self.rows} rows "
                 f"(with presence negation {self.with_presence}, with absence negation {self.with_absence}"
                 + (f", with absence-affirmed caption {self.with_affirmed}" if self.with_affirmed else "") + ")"]
        if self.skipped:
            parts.append(self.describe_skips())
        return ", ".join(parts)


def summarize_reports(reports: list[SourceReport], max_length: int) -> tuple[str, bool]:
    """One line for every dataset and split, and whether anything was skipped or truncated (then
    it is worth a warning). Truncation is reported once, in total, with its share per dataset."""
    line = "data: " + " | ".join(report.describe() for report in reports)
    truncated = [(report, report.truncated_captions) for report in reports if report.truncated_captions]
    if truncated:
        total = sum(count for _, count in truncated)
        shares = ", ".join(f"{report.split} {report.name!r}: {count}" for report, count in truncated)
        line += f" | truncated {total} caption(s) longer than {max_length} tokens ({shares}); CLIP reads only the first {max_length}"
    return line, bool(truncated) or any(report.skipped for report in reports)


# ----------------------------------------------------------------------------------------------
# Validation, image checks, tokenization
# ----------------------------------------------------------------------------------------------


def _validate(dataset: datasets.Dataset, name: str, columns: CaptionColumns) -> dict[str, list]:
    """Check the columns and their values; return the text columns as lists. A None caption counts
    as empty (skipped later); any other non-string value is an error."""
    if len(dataset) == 0:
        raise UserError(f"dataset {name!r} is empty: nothing to train on")
    found = list(dataset.column_names)
    for column, flag in columns.flags().items():
        if column not in found:
            raise UserError(f"dataset {name!r} has no column {column!r} (set by {flag}); its columns are {found}")
    texts = {column: dataset[column] for column in (columns.caption, columns.presence, columns.absence, columns.affirmed) if column}
    for column, values in texts.items():
        for row, value in enumerate(values):
            if value is not None and not isinstance(value, str):
                raise UserError(
                    f"dataset {name!r}, row {row}, column {column!r}: expected a string, got {type(value).__name__} {value!r:.80}"
                    f" (an empty or None {'negation' if column != columns.caption else 'caption'} is allowed: "
                    f"{'that row then has no such negation' if column != columns.caption else 'that row is skipped'})"
                )
    return texts


def _base_folder(name: str) -> Path | None:
    """Where relative image paths of a dataset given as data files (or a folder) are looked up."""
    first = Path(name.split(",")[0])
    if first.is_file():
        return first.parent
    return first if first.is_dir() else None


def _with_image_feature(dataset: datasets.Dataset, name: str, column: str) -> datasets.Dataset:
    """The dataset with `column` as a `datasets.Image` column. A column of file paths (json/csv data
    files) is cast to one; relative paths are looked up beside the data file, then as written."""
    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        return dataset
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise UserError(
            f"dataset {name!r}, column {column!r} (set by --image_column) holds {feature}; "
            "expected images (a datasets Image column) or image file paths (strings)"
        )
    base = _base_folder(name)

    def located(reference):
        if not isinstance(reference, str) or not reference.strip():
            return None
        written = Path(reference).expanduser()
        beside = base / written if base is not None and not written.is_absolute() else None
        chosen = beside if beside is not None and beside.is_file() else written
        return str(chosen.resolve()) if chosen.is_file() else reference

    paths = [located(reference) for reference in dataset[column]]
    dataset = dataset.remove_columns(column).add_column(column, paths)
    return dataset.cast_column(column, datasets.Image())


def _unreadable_images(dataset: datasets.Dataset, column: str, rows: list[int], name: str) -> dict[int, UnreadableImage]:
    """Decode the image of each of `rows` once (without keeping it); the rows whose image cannot
    be used, with why. Done before training so that no bad image turns up mid-epoch."""
    raw = dataset.cast_column(column, datasets.Image(decode=False)).select_columns([column])
    problems = {}
    chunks = range(0, len(rows), IMAGE_CHECK_CHUNK)
    for start in tqdm(chunks, desc=f"checking the images of {name}", unit="chunk", delay=2, leave=False):
        chunk = rows[start : start + IMAGE_CHECK_CHUNK]
        for row, value in zip(chunk, raw[chunk][column]):
            try:
                open_rgb_image(value)
            except UnreadableImage as error:
                problems[row] = error
    return problems


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


def _prepare_source(dataset: datasets.Dataset, name: str, columns: CaptionColumns, tokenizer, max_length: int,
                    report: SourceReport) -> datasets.Dataset:
    texts = _validate(dataset, name, columns)
    report.rows = len(dataset)
    dataset = _with_image_feature(dataset, name, columns.image)
    captions = texts[columns.caption]
    keep = [row for row, caption in enumerate(captions) if caption is not None and caption.strip()]
    if not keep:
        raise UserError(f"dataset {name!r}: every caption in column {columns.caption!r} is empty")
    for row in sorted(set(range(len(dataset))) - set(keep)):
        report.skip("empty_caption", row, f"column {columns.caption!r}")
    unreadable = _unreadable_images(dataset, columns.image, keep, name)
    for row, error in unreadable.items():
        report.skip(error.kind, row, str(error))
    keep = [row for row in keep if row not in unreadable]
    if not keep:
        raise UserError(f"dataset {name!r}: no usable row (column {columns.image!r}): {report.describe_skips()}")
    if len(keep) < len(dataset):
        dataset = dataset.select(keep)
        texts = {column: [values[row] for row in keep] for column, values in texts.items()}
    new_columns = {}
    for column, field_name in [(columns.caption, "input_ids")] + [(getattr(columns, kind), field_name) for kind, field_name, _, _ in NEGATION_FIELDS]:
        values = texts[column] if column else [None] * len(dataset)
        new_columns[field_name], cut = _tokenize(values, tokenizer, max_length)
        report.truncated_captions += cut
    report.kept = len(dataset)
    report.with_presence = sum(bool(ids) for ids in new_columns["presence_negated_input_ids"])
    report.with_absence = sum(bool(ids) for ids in new_columns["absence_negated_input_ids"])
    report.with_affirmed = sum(bool(ids) for ids in new_columns["absence_affirmed_input_ids"])
    dataset = dataset.select_columns([columns.image])
    for field_name, values in new_columns.items():
        dataset = dataset.add_column(field_name, values)
    return dataset.add_column(SOURCE_ROW_COLUMN, keep)


def prepare_dataset(
    raw: list[datasets.Dataset],
    names: list[str],
    columns: CaptionColumns,
    tokenizer,
    max_length: int = 77,
    limit: int | None = None,
    split: str = "train",
) -> tuple[datasets.Dataset, list[SourceReport]]:
    """Validate, check images, tokenize and (for two sources) interleave them one row each, the
    smaller one repeated until the larger one is used up. Returns the dataset and one report per
    source (skips by reason with example rows, truncated captions); `split` only labels the reports."""
    parts, reports = [], []
    for dataset, name in zip(raw, names):
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        report = SourceReport(name=name, split=split)
        prepared = _prepare_source(dataset, name, columns, tokenizer, max_length, report)
        parts.append(prepared.add_column(SOURCE_COLUMN, [len(parts)] * len(prepared)))
        reports.append(report)
    if len(parts) == 1:
        merged = parts[0]
    else:
        merged = datasets.interleave_datasets(parts, stopping_strategy="all_exhausted")
    return merged.add_column("row_id", list(range(len(merged)))), reports
class _LazyImages:
    """Slices of a dataset's image column, decoded only when the embedder asks for them."""

    def __init__(self, dataset: datasets.Dataset, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, rows: slice):
        return self.dataset[rows][self.column]


def _cache_key(model, image_processor, dataset: datasets.Dataset, column: str) -> str:
    digest = hashlib.sha256()
    for module in (model.vision_model, model.visual_projection):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(image_processor.to_json_string().encode())
    digest.update(f"{dataset._fingerprint}:{column}:{len(dataset)}".encode())
    return digest.hexdigest()[:32]


def cached_image_embeddings(model, image_processor, dataset: datasets.Dataset, column: str, cache_dir: str | Path) -> datasets.Dataset:
    """Replace the image column by the frozen tower's projected image embeddings, computed once.

    The cache file is keyed by the vision weights, the image processor's settings and the data's
    fingerprint, so a changed model or transform never reuses stale embeddings."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"image_embeds-{_cache_key(model, image_processor, dataset, column)}.safetensors"
    if path.is_file():
        embeds = load_file(str(path))["image_embeds"]
        logger.info("image embeddings: reusing %s", path)
    else:
        embeds = embed_images(model, image_processor, _LazyImages(dataset, column), normalize=False, desc="training images")
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial-{os.getpid()}")
        save_file({"image_embeds": embeds.contiguous()}, str(partial))
        os.replace(partial, path)
    table = datasets.Dataset.from_dict({"image_embeds": embeds.numpy().astype(np.float32)})
    return datasets.concatenate_datasets([dataset.remove_columns(column), table], axis=1)


@dataclass
class OmniNegCollator:
    """Rows of a prepared dataset -> keyword arguments of `OmniNegCLIPModel.forward`.
    Each caption set is padded to its own longest caption (dynamic padding, never to 77)."""

    image_processor: object
    columns: CaptionColumns
    pad_token_id: int

    def _pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(1, max(len(ids) for ids in sequences))
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {"row_ids": torch.tensor([row["row_id"] for row in rows])}
        batch["input_ids"], batch["attention_mask"] = self._pad([row["input_ids"] for row in rows])
        for _, field, prefix, mask_name in NEGATION_FIELDS:  # a row without the field has no such caption
            has = torch.tensor([bool(row.get(field)) for row in rows])
            if has.any():
                ids, mask = self._pad([row.get(field) or [] for row in rows])
                batch[f"{prefix}_input_ids"], batch[f"{prefix}_attention_mask"] = ids, mask
                batch[mask_name] = has
        if "image_embeds" in rows[0]:
            batch["image_embeds"] = torch.tensor(np.array([row["image_embeds"] for row in rows], dtype=np.float32))
        else:
            images = [row[self.columns.image].convert("RGB") for row in rows]
            batch["pixel_values"] = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return batch


class BalancedSourceSampler(torch.utils.data.Sampler[int]):
    """Training order for a dataset mixed from several sources (`source_index` column): each epoch,
    an independent shuffle of every source's rows, then one row of each source in turn. A batch of
    k * (number of sources) consecutive rows then holds exactly k rows of each source, also per
    process under data parallelism (Accelerate hands each process whole consecutive batches), as the
    authors draw one presence batch and one absence batch per step. Deterministic given seed and epoch."""

    def __init__(self, source_index: list[int], seed: int = 0):
        sources = sorted(set(source_index))
        self.positions = [torch.tensor([row for row, source in enumerate(source_index) if source == s]) for s in sources]
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
