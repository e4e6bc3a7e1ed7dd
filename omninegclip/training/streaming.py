"""Streaming training data: rows read lazily from `datasets.IterableDataset`s (Hub ids, local files,
webdataset `.tar` shards) for data that will not fit on disk or should not be copied. Nothing is
prepared before training: the frozen image tower runs inside each step.

What `OmniNegCLIPTrainer` does with a streamed `train_dataset` (an `IterableDataset`, or a dict of
them by name; `train.py --streaming` loads them):

- `check_streaming_settings`: `--max_steps` is required (a stream has no length), there is no
  evaluation during the run (evaluate the checkpoints with `python -m eval`), and
  `--dataloader_num_workers` stays 0 (images are decoded in threads instead, see below);
- `mixed_stream`: each source's columns are checked with the messages of prepared data
  (`omninegclip.training.data.check_columns`), its image column is read undecoded, each source is
  split across processes (`datasets.distributed.split_dataset_by_node`), and two or more are mixed
  (`datasets.interleave_datasets` at `--mix_probabilities`, default equal, seeded by `--seed`;
  a used-up source starts again until all are used up);
- `StreamRows` reads this process's rows in order, over and over (every process always has another
  batch: the loss gathers embeddings across processes). A row whose caption is not text, or whose
  negation is neither text nor empty, is skipped and counted (`text_skip`'s reasons, as for prepared
  data); images are decoded and preprocessed (`ImageTransform`) in `--preprocessing_num_workers`
  threads, a few batches ahead, and a row whose image is missing, corrupt, truncated or too large is
  skipped and counted;
- `StreamCollator` tokenizes each batch's captions (cut at `--max_caption_length`, end token kept,
  counted) into `OmniNegCLIPModel.forward`'s keys (`OmniNegCollator`: only the caption sets the active
  loss terms read), with the batch's `pixel_values`: uint8 (B, H, W, 3) on the plain preprocessing
  path, normalised on the training device by `StreamingData.model_inputs`;
- every row carries the stream's position just after it (`IterableDataset.state_dict()`); the
  Trainer's `compute_loss` hands each batch it trains on to `StreamProgress.consumed` (the DataLoader
  and Accelerate read ahead, so the dataset's own state is further on), which keeps that position and
  counts what was kept, skipped and truncated on the way. `StreamPositionCallback` writes it into
  every checkpoint-* folder, one `stream_position-<process>.json` per process; a resumed run starts
  each process's stream there (the Trainer's own skipping of batches is off: `ignore_data_skip`),
  so it trains on exactly the rows an uninterrupted run would have. The counts go into the training
  record (`training_provenance.json`, key `streaming`) and one `data:` line at the end.

Limits: no shuffling beyond the sources' own order and the mix; resuming needs the same number of
processes; the DataLoader reads in the main process.

Public surface: `is_stream`, `check_streaming_settings`, `mix_weights`, `mixed_stream`, `StreamingData`,
`StreamRows`, `StreamCollator`, `StreamBatch`, `StreamProgress`, `StreamPositionCallback`, `POSITION_FILE`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate.data_loader import prepare_data_loader
from datasets.distributed import split_dataset_by_node
from transformers import TrainerCallback

from modeling_omninegclip import CAPTION_SETS
from omninegclip.common.cli import UserError
from omninegclip.common.safe_load import UnreadableImage
from omninegclip.common.skips import SkipLog
from omninegclip.training.data import (
    PACKED_ROW_COLUMN,
    CaptionColumns,
    OmniNegCollator,
    PackedRows,
    SourceReport,
    _tokenize,
    check_columns,
    row_text_skip,
    summarize_reports,
)
from omninegclip.training.images import ImageTransform, _base_folder, _located, default_workers

logger = logging.getLogger("omninegclip.train")

STREAM_BATCH_KEY = "stream_batch"  # the batch's `StreamBatch`, taken out by `compute_loss`
POSITION_FILE = "stream_position-{process}.json"
SOURCE_COLUMN = "__omninegclip_source__"  # which source a mixed row came from
KEY_COLUMN = "__omninegclip_key__"  # the row's name in messages: shard and sample key, or its row number
BATCHES_AHEAD = 2  # batches whose images are decoded while the model trains on the current one
RECENT_BATCHES = 64  # consumed batches whose rows a NaN/inf error can still name


def is_stream(dataset) -> bool:
    """Whether a Trainer's dataset argument is streamed: an `IterableDataset` or a dict of them."""
    values = list(dataset.values()) if isinstance(dataset, dict) else [dataset]
    return bool(values) and all(isinstance(value, datasets.IterableDataset) for value in values)


def check_streaming_settings(args, evaluates: bool = False) -> None:
    """Refuse, by flag, what a streamed run cannot do; turn off the Trainer's skipping of batches on
    resume (the stream's saved position resumes instead). `evaluates`: an eval dataset was given."""
    if args.max_steps is None or args.max_steps <= 0:
        raise UserError(
            "--streaming needs --max_steps: a stream has no length, so the run's length (and the learning-rate "
            "schedule) is given in optimiser steps, e.g. --max_steps 10000"
        )
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    if strategy != "no" or evaluates:
        shown = f"--eval_strategy {strategy}" if strategy != "no" else "an evaluation dataset"
        raise UserError(
            f"{shown} with --streaming: a streamed run does not evaluate while it trains; pass --eval_strategy no "
            "and evaluate the saved checkpoints with `python -m eval <base model> <output_dir>/checkpoint-N "
            "--tasks ...`"
        )
    if args.dataloader_num_workers:
        raise UserError(
            f"--dataloader_num_workers {args.dataloader_num_workers} with --streaming: the stream is read in the main "
            "process (its position is kept there, for resuming) and images are decoded in --preprocessing_num_workers "
            "threads; leave --dataloader_num_workers 0"
        )
    args.ignore_data_skip = True


def mix_weights(text: str | None) -> list[float] | None:
    """The probabilities `--mix_probabilities` gives ('0.7,0.3'), or None when it is not given; each
    must be a finite number > 0 and together they must make 1."""
    if text is None or not str(text).strip():
        return None
    try:
        weights = [float(part) for part in str(text).split(",")]
    except ValueError:
        raise UserError(f"--mix_probabilities must be comma-separated numbers like '0.5,0.5', got {text!r}") from None
    if any(not math.isfinite(weight) or weight <= 0 for weight in weights):
        raise UserError(f"--mix_probabilities {text!r}: every probability must be a finite number > 0")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise UserError(
            f"--mix_probabilities {text!r} adds up to {sum(weights):g}; the probabilities must add up to 1"
        )
    return weights


# ----------------------------------------------------------------------------------------------
# The sources, checked, split across processes and mixed
# ----------------------------------------------------------------------------------------------


def _columns_of(stream: datasets.IterableDataset, name: str) -> list[str]:
    """A stream's columns: from its features, or (where the format does not say) its first row."""
    if stream.column_names is not None:
        return list(stream.column_names)
    try:
        first = next(iter(stream.take(1)), None)
    except Exception as error:  # datasets raises many types; the user needs the name and the reason
        raise UserError(f"could not read dataset {name!r}: {type(error).__name__}: {error}") from None
    if first is None:
        raise UserError(f"dataset {name!r}: its training split is empty: nothing to train on")
    return list(first)


def _tagged(source: int, row: dict, index: int) -> dict:
    """The source number and the row's name: a webdataset sample's shard and key, else its row number."""
    if row.get("__key__") is not None and row.get("__url__") is not None:
        key = f"{Path(str(row['__url__'])).name}/{row['__key__']}"
    else:
        key = f"row {index}"
    return {SOURCE_COLUMN: source, KEY_COLUMN: key}


def mixed_stream(
    named: dict[str, datasets.IterableDataset],
    columns: CaptionColumns,
    probabilities: list[float] | None,
    seed: int,
    process_index: int,
    world_size: int,
) -> datasets.IterableDataset:
    """This process's share of every source, mixed: the columns checked (`check_columns`), only the
    image, caption and source columns kept (images undecoded), each source split across processes
    and the sources interleaved at `probabilities` (None: equal)."""
    if probabilities is not None and len(probabilities) != len(named):
        raise UserError(
            f"--mix_probabilities gives {len(probabilities)} probabilities for {len(named)} dataset(s) "
            f"{list(named)}: give one per dataset"
        )
    wanted = [columns.image, *columns.text_columns()]
    parts = []
    for source, (name, stream) in enumerate(named.items()):
        check_columns(name, _columns_of(stream, name), columns, stream.features)
        features = None
        if stream.features is not None:
            if isinstance(stream.features[columns.image], datasets.Image):
                stream = stream.cast_column(columns.image, datasets.Image(decode=False))
            text = datasets.Value("string")
            features = datasets.Features(
                {columns.image: stream.features[columns.image]}
                | {column: text for column in columns.text_columns()}
                | {SOURCE_COLUMN: datasets.Value("int64"), KEY_COLUMN: text}
            )
        tagged = stream.map(partial(_tagged, source), with_indices=True, features=features)
        tagged = tagged.select_columns([*wanted, SOURCE_COLUMN, KEY_COLUMN])
        parts.append(split_dataset_by_node(tagged, rank=process_index, world_size=world_size))
    if len(parts) == 1:
        return parts[0]
    return datasets.interleave_datasets(
        parts,
        probabilities=probabilities or [1.0 / len(parts)] * len(parts),
        seed=seed,
        stopping_strategy="all_exhausted",
    )


# ----------------------------------------------------------------------------------------------
# Rows, checked and decoded
# ----------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One row read from the stream, its image being decoded (`pixels`) or its skip already known."""

    source: int
    key: str
    position: dict
    starts_pass: bool
    texts: dict[str, str | None] = field(default_factory=dict)
    pixels: Future | None = None
    skip: tuple[str, str] | None = None  # (reason, place)


class _Inline:
    """A pool of no threads: `submit` runs at once (`--preprocessing_num_workers 0`)."""

    def submit(self, function, *args) -> Future:
        future = Future()
        try:
            future.set_result(function(*args))
        except Exception as error:  # handed over as a thread pool would
            future.set_exception(error)
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class StreamRows(torch.utils.data.IterableDataset):
    """This process's rows of `stream`, endlessly (pass after pass), each a dict: `pixels` (what
    `ImageTransform.decode` gives), `texts` (caption set name -> text or None), `source`, `key`,
    `ordinal` (its number among the rows this process has yielded), `position` (where the stream
    stands just after it: resume there to read the next row) and `skipped` (the rows left out just
    before it: (source, reason, place)). `start`: a position to resume from, used by the next iteration."""

    def __init__(
        self,
        stream: datasets.IterableDataset,
        names: list[str],
        columns: CaptionColumns,
        transform: ImageTransform,
        threads: int,
        ahead: int,
    ):
        self.stream, self.names, self.columns, self.transform = stream, names, columns, transform
        self.threads, self.ahead = threads, max(1, ahead)
        self.bases = [_base_folder(name) for name in names]
        self.start: dict | None = None

    def _decode(self, value, source: int):
        return self.transform.decode(_located(value, self.bases[source]))

    def _entries(self, start: dict | None, pool):
        """Every row read, pass after pass, with its position; images submitted to `pool`."""
        passes, ordinal = (start["passes"], start["ordinal"]) if start else (0, 0)
        if start is not None:
            self.stream.set_epoch(passes)
            self.stream.load_state_dict(start["stream"])
        while True:
            self.stream.set_epoch(passes)
            read = 0
            for row in self.stream:
                read += 1
                source = int(row[SOURCE_COLUMN])
                position = {"stream": self.stream.state_dict(), "passes": passes, "ordinal": ordinal}
                entry = _Entry(source, row[KEY_COLUMN], position, starts_pass=read == 1)
                bad_text = row_text_skip(
                    {column: row.get(column) for column in self.columns.text_columns()}, self.columns
                )
                if bad_text is not None:
                    reason, where = bad_text
                    entry.skip = (reason, f"{entry.key}, {where}")
                else:
                    entry.texts = {
                        caption_set.name: row.get(self.columns.texts[caption_set.name])
                        for caption_set in CAPTION_SETS
                        if self.columns.texts.get(caption_set.name)
                    }
                    entry.pixels = pool.submit(self._decode, row[self.columns.image], source)
                    ordinal += 1
                    entry.position["ordinal"] = ordinal
                yield entry
            if read == 0 and (start is None or passes > start["passes"]):
                raise UserError(f"dataset(s) {self.names}: the stream holds no row: nothing to train on")
            passes += 1

    def __iter__(self):
        start, self.start = self.start, None
        skipped: list[tuple[int, str, str]] = []
        unusable = SkipLog()  # the rows skipped since the last usable one
        passes_without_row = 0
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="stream-decode") if self.threads else _Inline()
        with pool:
            buffer: deque[_Entry] = deque()
            for entry in self._entries(start, pool):
                buffer.append(entry)
                if len(buffer) < self.ahead:
                    continue
                entry = buffer.popleft()
                if entry.starts_pass:
                    passes_without_row += 1
                    if passes_without_row > 1:
                        raise UserError(
                            f"dataset(s) {self.names}: no usable row in a whole pass over the stream: "
                            f"{unusable.describe()}"
                        )
                if entry.skip is None:
                    try:
                        pixels = entry.pixels.result()
                    except UnreadableImage as error:
                        entry.skip = (error.kind, f"{entry.key}: {error}")
                if entry.skip is not None:
                    skipped.append((entry.source, *entry.skip))
                    unusable.skip(entry.skip[0], f"{self.names[entry.source]!r} {entry.skip[1]}")
                    continue
                passes_without_row, unusable = 0, SkipLog()
                yield {
                    "pixels": pixels,
                    "texts": entry.texts,
                    "source": entry.source,
                    "key": entry.key,
                    "ordinal": entry.position["ordinal"] - 1,
                    "position": entry.position,
                    "skipped": skipped,
                }
                skipped = []


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


@dataclass
class StreamBatch:
    """What a streamed batch says about itself, beside the model's inputs: the stream's position
    after its last row, its rows' sources, names and ordinals, the rows skipped before them, and per
    source the captions truncated and the rows with each optional caption set."""

    position: dict
    sources: list[int]
    keys: list[str]
    ordinals: list[int]
    skipped: list[tuple[int, str, str]]
    truncated: dict[int, int]
    with_sets: dict[int, dict[str, int]]


@dataclass
class StreamCollator:
    """`StreamRows` items -> keyword arguments of `OmniNegCLIPModel.forward` (through `OmniNegCollator`:
    per caption set padded to the batch's longest, only the sets in `caption_sets`), `pixel_values`
    as decoded, `row_ids` (the rows' ordinals) and the `StreamBatch` under `STREAM_BATCH_KEY`."""

    tokenizer: object
    max_length: int
    caption_sets: frozenset[str] | None = None

    def __call__(self, items: list[dict]) -> dict:
        tokens = {caption_set.input_ids: [None] * len(items) for caption_set in CAPTION_SETS}
        truncated, with_sets = {}, {}
        for source in sorted({item["source"] for item in items}):
            rows = [index for index, item in enumerate(items) if item["source"] == source]
            truncated[source], with_sets[source] = 0, {}
            for caption_set in CAPTION_SETS:
                ids, cut = _tokenize(
                    [items[row]["texts"].get(caption_set.name) for row in rows], self.tokenizer, self.max_length
                )
                truncated[source] += int(cut.sum())
                for row, row_ids in zip(rows, ids):
                    tokens[caption_set.input_ids][row] = row_ids
                if caption_set.row_mask is not None:
                    with_sets[source][caption_set.name] = sum(bool(row_ids) for row_ids in ids)
        pixels = torch.from_numpy(np.stack([item["pixels"] for item in items]))
        packed = PackedRows(
            tokens, self.tokenizer.pad_token_id, np.arange(len(items)), pixels=partial(_rows_of, pixels)
        )
        ordinals = [item["ordinal"] for item in items]
        batch = OmniNegCollator(packed, self.caption_sets)(
            [{PACKED_ROW_COLUMN: row, "row_id": ordinal} for row, ordinal in enumerate(ordinals)]
        )
        batch[STREAM_BATCH_KEY] = StreamBatch(
            position=items[-1]["position"],
            sources=[item["source"] for item in items],
            keys=[item["key"] for item in items],
            ordinals=ordinals,
            skipped=[skip for item in items for skip in item["skipped"]],
            truncated=truncated,
            with_sets=with_sets,
        )
        return batch


def _rows_of(pixels: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    return pixels[torch.from_numpy(rows)]


# ----------------------------------------------------------------------------------------------
# What was trained on: the position to resume from, the counts
# ----------------------------------------------------------------------------------------------


def merge_reports(per_process: list[list[dict]]) -> list[SourceReport]:
    """The reports of every process (each a list of `SourceReport.to_json`, one per source), added up."""
    merged = [SourceReport.from_json(report) for report in per_process[0]]
    for reports in per_process[1:]:
        for total, data in zip(merged, reports):
            other = SourceReport.from_json(data)
            total.rows += other.rows
            total.kept += other.kept
            total.truncated_captions += other.truncated_captions
            total.skips.update(other.skips)
            for name, count in other.with_sets.items():
                total.with_sets[name] = total.with_sets.get(name, 0) + count
    return merged


class StreamProgress:
    """This process's consumed stream: the position after the last batch trained on, per source a
    `SourceReport` (rows read = kept + skipped, captions truncated, rows with each negation), the
    last batch's rows as (source name, row name) (`last_rows`) and recent rows' names by ordinal (for
    NaN/inf errors)."""

    def __init__(self, names: list[str], split: str = "train"):
        self.names = names
        self.reports = [SourceReport(name=name, split=split) for name in names]
        self.position: dict | None = None
        self.last_rows: list[tuple[str, str]] = []
        self.recent: dict[int, str] = {}

    def consumed(self, batch: StreamBatch) -> None:
        """Count a batch the model trained on, and remember where the stream stood after it."""
        self.position = batch.position
        for source, reason, place in batch.skipped:
            self.reports[source].rows += 1
            self.reports[source].skips.skip(reason, place)
        for source in batch.sources:
            self.reports[source].rows += 1
            self.reports[source].kept += 1
        for source, count in batch.truncated.items():
            self.reports[source].truncated_captions += count
        for source, counts in batch.with_sets.items():
            for name, count in counts.items():
                self.reports[source].with_sets[name] = self.reports[source].with_sets.get(name, 0) + count
        self.last_rows = [(self.names[source], key) for source, key in zip(batch.sources, batch.keys)]
        self.recent.update(
            (ordinal, f"{self.names[source]!r} {key}")
            for ordinal, source, key in zip(batch.ordinals, batch.sources, batch.keys)
        )
        while len(self.recent) > RECENT_BATCHES * max(1, len(batch.keys)):
            self.recent.pop(next(iter(self.recent)))

    def describe_rows(self, ordinals: list[int]) -> str:
        places = [self.recent.get(ordinal, f"row #{ordinal} of the stream") for ordinal in ordinals]
        shown = ", ".join(places[:8]) + (f", … ({len(places)} rows)" if len(places) > 8 else "")
        return f"training batch of {len(places)} streamed rows: {shown}"

    def to_json(self) -> dict:
        return {"position": self.position, "reports": [report.to_json() for report in self.reports]}

    def load(self, saved: dict) -> None:
        self.position = saved["position"]
        self.reports = [SourceReport.from_json(report) for report in saved["reports"]]


def _gather(value):
    """`value` of every process, in process order (one process: `[value]`)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


# ----------------------------------------------------------------------------------------------
# The whole of it, for the Trainer
# ----------------------------------------------------------------------------------------------


class StreamingData:
    """The streamed training data of one run: the rows, the collator, the progress, and how to
    resume. Built by `OmniNegCLIPTrainer` from the raw streams (see the module docstring)."""

    def __init__(self, named: dict[str, datasets.IterableDataset], args, processor, caption_sets):
        self.names = list(named)
        columns = args.columns()
        self.probabilities = mix_weights(args.mix_probabilities)
        stream = mixed_stream(named, columns, self.probabilities, args.seed, args.process_index, args.world_size)
        self.transform = ImageTransform.for_processor(processor.image_processor, draft=args.fast_image_decode)
        threads = default_workers() if args.preprocessing_num_workers is None else args.preprocessing_num_workers
        batch = args.per_device_train_batch_size * max(1, args.n_gpu)
        self.rows = StreamRows(stream, self.names, columns, self.transform, threads, ahead=BATCHES_AHEAD * batch)
        self.collator = StreamCollator(processor.tokenizer, args.max_caption_length, frozenset(caption_sets))
        self.progress = StreamProgress(self.names)
        self.world_size = args.world_size

    def settings(self) -> dict:
        """What the training record says of the stream (and what a resumed run must repeat)."""
        return {"sources": self.names, "mix_probabilities": self.probabilities, "processes": self.world_size}

    def dataloader(self, batch_size: int, args, accelerator) -> torch.utils.data.DataLoader:
        """Batches of this process's rows on the training device. Each process reads its own share
        already (`split_dataset_by_node`): the loader is prepared as for one process, so that
        Accelerate neither hands out one process's batches to all nor splits the share again."""
        loader = torch.utils.data.DataLoader(
            self.rows,
            batch_size=batch_size,
            collate_fn=self.collator,
            num_workers=0,
            pin_memory=args.dataloader_pin_memory and accelerator.device.type == "cuda",
        )
        return prepare_data_loader(
            loader,
            device=accelerator.device,
            num_processes=1,
            process_index=0,
            put_on_device=True,
            dispatch_batches=False,
            non_blocking=args.dataloader_pin_memory,
        )

    def model_inputs(self, inputs: dict, training: bool) -> dict:
        """A batch as the model takes it: the `StreamBatch` taken out (and, in training, counted as
        consumed), uint8 pixels normalised where they lie."""
        batch = inputs.pop(STREAM_BATCH_KEY, None)
        if batch is not None and training:
            self.progress.consumed(batch)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = self.transform.normalize(inputs["pixel_values"])
        return inputs

    def position_file(self, folder: Path, process_index: int) -> Path:
        return Path(folder) / POSITION_FILE.format(process=process_index)

    def save(self, folder: Path, process_index: int) -> None:
        """This process's position and counts into a checkpoint folder (written whole, then renamed)."""
        path = self.position_file(folder, process_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial_path = path.with_suffix(f".partial-{os.getpid()}")
        saved = {"processes": self.world_size, "process": process_index} | self.progress.to_json()
        partial_path.write_text(json.dumps(saved) + "\n")
        os.replace(partial_path, path)

    def restore(self, checkpoint: str | Path, process_index: int) -> None:
        """Continue where the stream of `checkpoint` stopped: the next rows are the ones an
        uninterrupted run would have read next, and the counts go on from the saved ones."""
        path = self.position_file(Path(checkpoint), process_index)
        if not path.is_file():
            raise UserError(
                f"--resume_from_checkpoint {checkpoint}: it holds no stream position for process {process_index} "
                f"({path.name}): it was not saved by a run with --streaming, or by one with fewer processes; resume "
                "a checkpoint of the same streamed run, with the same number of processes"
            )
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"--resume_from_checkpoint: {path} cannot be read ({error})") from None
        if saved.get("processes") != self.world_size:
            raise UserError(
                f"--resume_from_checkpoint {checkpoint} was saved by a streamed run of {saved.get('processes')} "
                f"process(es), this run has {self.world_size}: each process's stream position belongs to its share "
                "of the data; resume with the same number of processes"
            )
        self.progress.load(saved)
        self.rows.start = saved["position"]
        ordinal = saved["position"]["ordinal"]
        logger.info("stream of process %d: resuming after its first %s rows", process_index, ordinal)

    def merged_reports(self) -> list[SourceReport]:
        """Every process's counts, added up (a collective call: every process makes it)."""
        return merge_reports(_gather([report.to_json() for report in self.progress.reports]))


class StreamPositionCallback(TrainerCallback):
    """For a streamed run: the stream's position and counts into every checkpoint-* folder (one file
    per process), the counts into the training record before each save and at the end, and one
    `data:` line in the log at the end of training."""

    def __init__(self, trainer):  # an OmniNegCLIPTrainer with a `stream`
        self.trainer = trainer

    def _record(self) -> list[SourceReport]:
        reports = self.trainer.stream.merged_reports()
        self.trainer.record["streaming"] = self.trainer.stream.settings() | {
            "data": [report.to_json() for report in reports]
        }
        return reports

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # the same step on every process: the counts are gathered
            self._record()

    def on_save(self, args, state, control, **kwargs):
        self.trainer.stream.save(Path(args.output_dir) / f"checkpoint-{state.global_step}", args.process_index)

    def on_train_end(self, args, state, control, **kwargs):
        reports = self._record()
        summary, noteworthy = summarize_reports(reports, args.max_caption_length)
        if state.is_world_process_zero:
            logger.log(logging.WARNING if noteworthy else logging.INFO, "streamed %s", summary)
