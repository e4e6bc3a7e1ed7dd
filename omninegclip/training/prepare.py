"""What `OmniNegCLIPTrainer` does before training starts: the text blocks made trainable (fully or
with LoRA adapters, `make_trainable`), the training and evaluation datasets checked, tokenized and
their images decoded once (`prepare_splits`), the negation metrics of the evaluation
(`negation_metrics`), and warnings for data or settings that would train something other than they
seem to. Every function takes the `OmniNegCLIPConfig` and the raw datasets by name."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import datasets
import torch
from transformers import CLIPProcessor, TrainingArguments

from modeling_omninegclip import CAPTION_SETS, LOSS_TERMS, OmniNegCLIPModel, apply_trainable, resolve_text_blocks
from omninegclip.building.vocabulary import find_mentions
from omninegclip.common.cli import UserError
from omninegclip.training.config import OmniNegCLIPConfig
from omninegclip.training.data import (
    SOURCE_COLUMN,
    SOURCE_ROW_COLUMN,
    CaptionColumns,
    PackedRows,
    SourceReport,
    prepare_dataset,
    summarize_reports,
)
from omninegclip.training.images import ImageTransform, image_pass, pixel_values
from omninegclip.training.lora import add_lora
from omninegclip.training.metrics import NegationMetrics, which_object_rows

logger = logging.getLogger("omninegclip.train")


def make_trainable(model: OmniNegCLIPModel, config: OmniNegCLIPConfig):
    """Give `model` the loss and trainable settings of `config`, and freeze what does not train, or
    wrap it with LoRA adapters on the chosen blocks; log which blocks train. Returns (the model to
    train, the LoRA settings or None). A run in which nothing would train is refused."""
    source = model.name_or_path
    model.loss_config = config.loss_config()
    model.trainable_config = config.trainable_config()
    lora_settings = None
    try:
        if config.lora:
            trained_model, lora_settings = add_lora(
                model,
                model.trainable_config,
                config.lora_r,
                config.lora_alpha,
                config.lora_dropout,
                config.lora_target,
            )
        else:
            trained_model = model
            apply_trainable(model, model.trainable_config)
    except ValueError as error:
        raise UserError(f"bad trainable setting for {source!r}: {error}") from None
    log_text_blocks(model, config)
    if not any(parameter.requires_grad for parameter in trained_model.parameters()):
        raise UserError(
            "nothing would train: --front_blocks/--text_preset/--text_blocks chose no text block and every "
            "--train_* flag (token and position embedding, final layer norm, text projection, logit scale, "
            "vision tower) is false; choose blocks (e.g. --front_blocks 6) or set a --train_* flag"
        )
    return trained_model, lora_settings


def log_text_blocks(model: OmniNegCLIPModel, config: OmniNegCLIPConfig) -> list[int]:
    """Say which text blocks train and which flag chose them (a warning when it overrode another)."""
    depth = model.config.text_config.num_hidden_layers
    blocks = resolve_text_blocks(depth, model.trainable_config)
    chooser, overridden = config.blocks_choice()
    if overridden:
        logger.warning(
            "%s decides the text blocks; %s given too and ignored (--text_blocks wins over --text_preset, "
            "which wins over --front_blocks)",
            chooser,
            " and ".join(overridden),
        )
    logger.info(
        "text blocks that train%s: %s of %d (chosen by %s)",
        " (LoRA adapters)" if config.lora else "",
        blocks or "none",
        depth,
        chooser,
    )
    return blocks


def _image_pass(config: OmniNegCLIPConfig, processor: CLIPProcessor, model: OmniNegCLIPModel):
    """What `prepare_dataset` runs once over a split's unique images: with a frozen image tower (and
    the cache on), embed them on the training device in the training precision; otherwise only check
    that each decodes. Either way in worker processes, with the result cached on disk."""
    embed = config.cache_image_embeddings and not config.train_vision_tower
    cache_dir = Path(config.image_embedding_cache_dir or Path(config.output_dir).parent / ".image_embedding_cache")
    transform = ImageTransform.for_processor(processor.image_processor, draft=config.fast_image_decode)
    precision = torch.bfloat16 if config.bf16 else torch.float16 if config.fp16 else None
    if embed:
        model.to(config.device)  # the Trainer would move it only later: embed where training runs

    def run(refs):
        return image_pass(
            refs,
            transform,
            model=model if embed else None,
            device=config.device,
            autocast_dtype=precision,
            batch_size=config.image_embedding_batch_size,
            num_workers=config.preprocessing_num_workers,
            cache_dir=cache_dir,
        )

    return run, transform


def prepared_cache_dir(config: OmniNegCLIPConfig) -> Path:
    """Where the tokenized rows of a run are stored (memory-mapped; reused by later launches)."""
    return Path(config.prepared_data_cache_dir or Path(config.output_dir).parent / ".prepared_data_cache")


def warn_unread_columns(config: OmniNegCLIPConfig) -> None:
    """A caption-set column that only switched-off loss terms read is named, with the weights that are 0."""
    columns, read = config.columns(), config.loss_config().caption_sets_read()
    for row in CAPTION_SETS:
        if columns.texts[row.name] and row.name not in read:
            off = ", ".join(f"{term.name} (--{term.weight} 0)" for term in LOSS_TERMS if row.name in term.reads)
            logger.warning(
                "--%s %r is only read by loss terms that are off: %s", row.flag, columns.texts[row.name], off
            )


def prepare_splits(
    config: OmniNegCLIPConfig,
    processor: CLIPProcessor,
    model: OmniNegCLIPModel,
    splits: dict[str, dict[str, datasets.Dataset]],
) -> tuple[dict[str, datasets.Dataset], PackedRows, ImageTransform, list[SourceReport]]:
    """Validate and tokenize each split's datasets (`splits`: role "train"/"eval" -> dataset name ->
    raw dataset), decode each unique image once, embedding it with the frozen image tower (the first
    process of a machine does it and caches the result; the others read it). The rows are tokenized
    in `--preprocessing_num_workers` processes and stored once in memory-mapped files
    (`--prepared_data_cache_dir`), which every process of the run maps. Logs one `data:` line
    (what was kept, skipped and truncated). Returns the Trainer's tables, the packed rows they point
    into, the image transform and the reports."""
    columns = config.columns()
    warn_unread_columns(config)
    images, transform = _image_pass(config, processor, model)
    prepared, reports = {}, []
    for role, named in splits.items():
        for name, dataset in named.items():
            if len(dataset) == 0:
                split = _split_name({name: dataset})
                raise UserError(EMPTY_SPLIT[role].format(name=name, split=f" {split!r}" if split else ""))
        with config.main_process_first(desc=f"preparing {role} data"):
            prepared[role], split_reports = prepare_dataset(
                list(named.values()),
                list(named),
                columns,
                processor.tokenizer,
                config.max_caption_length,
                split=_split_name(named) or role,
                images=images,
                cache_dir=prepared_cache_dir(config),
                num_proc=config.preprocessing_num_workers,
            )
        reports += split_reports
    summary, noteworthy = summarize_reports(reports, config.max_caption_length)
    logger.log(logging.WARNING if noteworthy else logging.INFO, summary)
    packed, tables = PackedRows.from_splits(
        prepared, processor.tokenizer.pad_token_id, pixels=partial(pixel_values, transform)
    )
    return tables, packed, transform, reports


EMPTY_SPLIT = {
    "train": "dataset {name!r}: its training split{split} (--train_split) is empty: nothing to train on; "
    "pass the split that holds the training rows",
    "eval": "dataset {name!r}: its evaluation split{split} (--eval_split) is empty: pass --eval_split none to "
    "train without evaluation, or a split that has rows",
}


def _split_name(named: dict[str, datasets.Dataset]) -> str | None:
    """The split the datasets came from, where they all name the same one; else None."""
    found = {str(dataset.split) for dataset in named.values() if getattr(dataset, "split", None) is not None}
    return found.pop() if len(found) == 1 else None


def negation_metrics(
    eval_table: datasets.Dataset, raw: dict[str, datasets.Dataset], columns: CaptionColumns
) -> NegationMetrics:
    """The evaluation's negation accuracies; which rows are which-object pairs is read from the raw
    evaluation datasets (in the prepared table's `source_index` order)."""
    pairs = which_object_rows(
        eval_table, list(raw.values()), columns.presence, columns.absence, SOURCE_COLUMN, SOURCE_ROW_COLUMN
    )
    return NegationMetrics(pairs)


ROWS_CHECKED = 2000  # rows of each training dataset read by check_negation_columns


def check_negation_columns(train: dict[str, datasets.Dataset], columns: CaptionColumns) -> list[str]:
    """Warnings (logged, returned) about the negation columns of each training dataset, from its
    first `ROWS_CHECKED` rows: negations identical to their caption (nothing to learn from them),
    and presence/absence columns that look swapped (where a `negated_object` column says which
    object the presence negation is about: the absence text negates it and the presence text does not)."""

    def negates(text: str, obj: str) -> bool:
        return any(mention.negated for mention in find_mentions(text, [obj]))

    found = []
    for name, dataset in train.items():
        texts = [
            column
            for column in (columns.caption, columns.presence, columns.absence)
            if column and column in dataset.column_names
        ]
        has_object = "negated_object" in dataset.column_names
        rows = dataset.select(range(min(ROWS_CHECKED, len(dataset)))).select_columns(
            texts + (["negated_object"] if has_object else [])
        )
        identical = {flag: [] for flag in ("--presence_column", "--absence_column")}
        swapped = checked = 0
        for row, values in enumerate(rows):
            caption = values.get(columns.caption)
            for flag, column in (("--presence_column", columns.presence), ("--absence_column", columns.absence)):
                text = values.get(column) if column else None
                if (
                    isinstance(text, str)
                    and isinstance(caption, str)
                    and text.strip()
                    and text.strip() == caption.strip()
                ):
                    identical[flag].append(row)
            presence, absence, obj = (
                values.get(columns.presence),
                values.get(columns.absence),
                values.get("negated_object"),
            )
            if has_object and all(isinstance(value, str) and value.strip() for value in (presence, absence, obj)):
                checked += 1
                swapped += negates(absence, obj) and not negates(presence, obj)
        for flag, found_rows in identical.items():
            if found_rows:
                column = columns.presence if flag == "--presence_column" else columns.absence
                found.append(
                    f"dataset {name!r}: {len(found_rows)} of the first {len(rows)} rows have a {flag} {column!r} text "
                    "identical to "
                    "their caption (rows "
                    f"{', '.join(map(str, found_rows[:5]))}{', …' if len(found_rows) > 5 else ''}): such a "
                    f"pair pushes a text away from itself"
                )
        if checked and swapped * 2 > checked:
            found.append(
                f"dataset {name!r}: in {swapped} of {checked} rows checked, the --absence_column {columns.absence!r} "
                "text negates the "
                f"row's negated_object and the --presence_column {columns.presence!r} text does not: the two columns "
                "look swapped "
                f"(try --presence_column {columns.absence} --absence_column {columns.presence})"
            )
    for warning in found:
        logger.warning(warning)
    return found


IN_BATCH_TERMS = ("loss_presence_text", "loss_absence_negated", "loss_absence_original")  # 0 with one row per batch


def warn_degenerate_training(training_args: TrainingArguments, reports: list[SourceReport], split: str) -> list[str]:
    """Warnings for runs that train something other than they seem to: a global batch of one row
    (the in-batch terms are 0), training rows without any negation (plain CLIP fine-tuning)."""
    warnings = []
    global_batch = training_args.per_device_train_batch_size * training_args.world_size
    if global_batch == 1:
        warnings.append(
            f"a global batch of 1 row (--per_device_train_batch_size 1 x 1 process): the in-batch terms "
            f"{', '.join(IN_BATCH_TERMS)} compare each row only with itself and are 0; use a batch of 2 or more"
        )
    train = [report for report in reports if report.split == split]
    if train and not any(any(report.with_sets.values()) for report in train):
        warnings.append(
            "no training row has a presence or an absence negation "
            f"({', '.join(repr(report.name) for report in train)}): "
            f"this is plain CLIP fine-tuning, not Omni-NegCLIP; check --presence_column and --absence_column"
        )
    for warning in warnings:
        logger.warning(warning)
    return warnings
