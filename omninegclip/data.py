"""Training data for `train.py`: load any HF dataset, validate it, tokenize, cache frozen image
embeddings, and collate batches for `OmniNegCLIPModel.forward`.

Public surface: `CaptionColumns`, `load_any_dataset`, `prepare_dataset`, `cached_image_embeddings`,
`OmniNegCollator`, `BalancedSourceSampler`.

A prepared dataset has, per row: `row_id`, `source_index` (which of the given datasets the row came
from), `input_ids`, `presence_negated_input_ids`, `absence_negated_input_ids` (empty list where the
row has no such negation) and either the image column or, once cached, `image_embeds`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from omninegclip.cli import UserError
from omninegclip.embedding import embed_images

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
NEGATION_FIELDS = (("presence", "presence_negated_input_ids"), ("absence", "absence_negated_input_ids"))
SOURCE_COLUMN = "source_index"


@dataclass(frozen=True)
class CaptionColumns:
    image: str
    caption: str
    presence: str | None
    absence: str | None

    @classmethod
    def from_flags(cls, image: str, caption: str, presence: str | None, absence: str | None) -> "CaptionColumns":
        off = lambda name: None if name is None or name.strip().lower() in ("", "none") else name  # noqa: E731
        return cls(image, caption, off(presence), off(absence))

    def flags(self) -> dict[str, str]:
        """Column name -> the flag that named it, for error messages."""
        named = {
            self.image: "--image_column",
            self.caption: "--caption_column",
            self.presence: "--presence_column",
            self.absence: "--absence_column",
        }
        return {column: flag for column, flag in named.items() if column is not None}


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
        raise UserError(f"could not load dataset {name!r}: {type(error).__name__}: {error}") from None
    if isinstance(loaded, datasets.Dataset):
        return loaded if split == "train" or not required else _missing_split(name, split, ["train"], required)
    if split not in loaded:
        return _missing_split(name, split, list(loaded), required)
    return loaded[split]


def _missing_split(name: str, split: str, found: list[str], required: bool):
    if required:
        raise UserError(f"dataset {name!r} has no split {split!r}; its splits are {found}")
    return None


def _validate(dataset: datasets.Dataset, name: str, columns: CaptionColumns) -> dict[str, list]:
    """Check the columns and their values; return the text columns as lists."""
    if len(dataset) == 0:
        raise UserError(f"dataset {name!r} is empty: nothing to train on")
    found = list(dataset.column_names)
    for column, flag in columns.flags().items():
        if column not in found:
            raise UserError(f"dataset {name!r} has no column {column!r} (set by {flag}); its columns are {found}")
    texts = {column: dataset[column] for column in (columns.caption, columns.presence, columns.absence) if column}
    for column, values in texts.items():
        optional = column != columns.caption
        for row, value in enumerate(values):
            if value is None and optional:
                continue
            if not isinstance(value, str):
                raise UserError(
                    f"dataset {name!r}, row {row}, column {column!r}: expected a string"
                    f"{' or None' if optional else ''}, got {type(value).__name__} {value!r:.80}"
                )
    return texts


def _tokenize(texts: list[str | None], tokenizer, max_length: int) -> tuple[list[list[int]], int]:
    """Token ids per text ([] for None/empty), cut to max_length with the end token kept; count the cut."""
    present = [index for index, text in enumerate(texts) if text and text.strip()]
    ids: list[list[int]] = [[] for _ in texts]
    truncated = 0
    for start in range(0, len(present), 4096):
        chunk = present[start : start + 4096]
        encoded = tokenizer([texts[index] for index in chunk], add_special_tokens=True)["input_ids"]
        for index, tokens in zip(chunk, encoded):
            if len(tokens) > max_length:
                truncated += 1
                tokens = tokens[: max_length - 1] + [tokens[-1]]
            ids[index] = tokens
    return ids, truncated


def prepare_dataset(
    raw: list[datasets.Dataset],
    names: list[str],
    columns: CaptionColumns,
    tokenizer,
    max_length: int = 77,
    limit: int | None = None,
) -> datasets.Dataset:
    """Validate, tokenize and (for two sources) interleave them one row each, the smaller one repeated
    until the larger one is used up. Rows with an empty caption are skipped and counted; over-long
    captions are truncated and counted; both are logged once."""
    parts = []
    for dataset, name in zip(raw, names):
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        texts = _validate(dataset, name, columns)
        keep = [row for row, caption in enumerate(texts[columns.caption]) if caption.strip()]
        if len(keep) < len(dataset):
            logger.warning("%s: skipped %d row(s) with an empty caption (column %r)", name, len(dataset) - len(keep), columns.caption)
            if not keep:
                raise UserError(f"dataset {name!r}: every caption in column {columns.caption!r} is empty")
            dataset = dataset.select(keep)
            texts = {column: [values[row] for row in keep] for column, values in texts.items()}
        new_columns = {}
        truncated = 0
        for column, field in [(columns.caption, "input_ids")] + [
            (getattr(columns, kind), field) for kind, field in NEGATION_FIELDS
        ]:
            values = texts[column] if column else [None] * len(dataset)
            new_columns[field], cut = _tokenize(values, tokenizer, max_length)
            truncated += cut
        if truncated:
            logger.warning("%s: truncated %d caption(s) longer than %d tokens", name, truncated, max_length)
        counts = {field: sum(bool(ids) for ids in values) for field, values in new_columns.items()}
        logger.info("%s: %d rows; with presence negation %d, with absence negation %d", name, len(dataset),
                    counts["presence_negated_input_ids"], counts["absence_negated_input_ids"])
        dataset = dataset.select_columns([columns.image])
        for field, values in new_columns.items():
            dataset = dataset.add_column(field, values)
        parts.append(dataset.add_column(SOURCE_COLUMN, [len(parts)] * len(dataset)))
    if len(parts) == 1:
        merged = parts[0]
    else:
        merged = datasets.interleave_datasets(parts, stopping_strategy="all_exhausted")
    return merged.add_column("row_id", list(range(len(merged))))


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
        for kind, field in NEGATION_FIELDS:
            has = torch.tensor([bool(row[field]) for row in rows])
            if has.any():
                ids, mask = self._pad([row[field] for row in rows])
                batch[f"{kind}_negated_input_ids"], batch[f"{kind}_negated_attention_mask"] = ids, mask
                batch[f"{kind}_mask"] = has
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
