"""What train.py does before the Trainer starts: the text blocks made trainable (fully or with LoRA
adapters), the training and evaluation splits loaded, checked, tokenized and their images decoded
once (`prepare_splits`), the negation metrics of the evaluation (`negation_metrics`), and warnings
for data or settings that would train something other than they seem to.

`args` is train.py's parsed `Arguments` (model, data, omni, lora, card, training, output)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import torch
from transformers import CLIPProcessor, TrainingArguments

from omninegclip.training.metrics import NegationMetrics, which_object_rows
from modeling_omninegclip import LOSS_TERMS, OmniNegCLIPModel, apply_trainable, resolve_text_blocks
from omninegclip.common.caption_sets import CAPTION_SETS
from omninegclip.common.cli import UserError
from omninegclip.training.data import (
    SOURCE_COLUMN,
    SOURCE_ROW_COLUMN,
    PackedRows,
    SourceReport,
    load_any_dataset,
    prepare_dataset,
    summarize_reports,
)
from omninegclip.training.images import ImageTransform, image_pass, pixel_values
from omninegclip.training.lora import add_lora

if TYPE_CHECKING:
    from train import Arguments, DataArguments, LoraArguments, OmniNegArguments  # train.py's parsed flags

logger = logging.getLogger("omninegclip.train")

def make_trainable(model: OmniNegCLIPModel, omni_args: OmniNegArguments, lora_args: LoraArguments, source: str):
    """Give `model` the loss and trainable settings of the flags, and freeze what does not train, or
    wrap it with LoRA adapters on the chosen blocks; log which blocks train. Returns (the model to
    train, the LoRA settings or None)."""
    model.loss_config = omni_args.loss_config()
    model.trainable_config = omni_args.trainable_config(lora=lora_args.enabled)
    lora_settings = None
    try:
        if lora_args.enabled:
            trained_model, lora_settings = add_lora(model, model.trainable_config, lora_args)
        else:
            trained_model = model
            apply_trainable(model, model.trainable_config)
    except ValueError as error:
        raise UserError(f"bad trainable setting for {source!r}: {error}") from None
    log_text_blocks(model, omni_args, lora_args.enabled)
    return trained_model, lora_settings


def log_text_blocks(model: OmniNegCLIPModel, omni_args: OmniNegArguments, lora: bool) -> list[int]:
    """Say which text blocks train and which flag chose them (a warning when it overrode another)."""
    depth = model.config.text_config.num_hidden_layers
    blocks = resolve_text_blocks(depth, model.trainable_config)
    chooser, overridden = omni_args.blocks_choice()
    if overridden:
        logger.warning("%s decides the text blocks; %s given too and ignored (--text_blocks wins over --text_preset, "
                       "which wins over --front_blocks)", chooser, " and ".join(overridden))
    logger.info("text blocks that train%s: %s of %d (chosen by %s)", " (LoRA adapters)" if lora else "",
                blocks or "none", depth, chooser)
    return blocks


def _image_pass(args: Arguments, processor: CLIPProcessor, model: OmniNegCLIPModel):
    """What `prepare_dataset` runs once over a split's unique images: with a frozen image tower (and
    the cache on), embed them on the training device in the training precision; otherwise only check
    that each decodes. Either way in worker processes, with the result cached on disk."""
    data_args, training_args = args.data, args.training
    embed = data_args.cache_image_embeddings and not args.omni.train_vision_tower
    cache_dir = Path(data_args.image_embedding_cache_dir or Path(training_args.output_dir).parent / ".image_embedding_cache")
    transform = ImageTransform.for_processor(processor.image_processor, draft=data_args.fast_image_decode)
    precision = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else None
    if embed:
        model.to(training_args.device)  # the Trainer would move it only later: embed where training runs

    def run(refs):
        return image_pass(refs, transform, model=model if embed else None, device=training_args.device,
                          autocast_dtype=precision, batch_size=data_args.image_embedding_batch_size,
                          num_workers=data_args.preprocessing_num_workers, cache_dir=cache_dir)
    return run, transform


def prepare_splits(args: Arguments, processor: CLIPProcessor, model: OmniNegCLIPModel
                   ) -> tuple[dict[str, datasets.Dataset], PackedRows, ImageTransform, list[SourceReport]]:
    """Load, validate and tokenize the training split (and the eval split, if any); decode each
    unique image once, embedding it with the frozen image tower (the first process of a machine
    does it and caches the result; the others read it). Logs one `data:` line (what was kept,
    skipped and truncated). Returns the Trainer's tables, the packed rows they point into, the
    image transform and the reports."""
    data_args, training_args = args.data, args.training
    columns = data_args.columns()
    read = args.omni.loss_config().caption_sets_read()
    for row in CAPTION_SETS:
        if columns.texts[row.name] and row.name not in read:
            off = ", ".join(f"{term.name} (--{term.weight} 0)" for term in LOSS_TERMS if row.name in term.reads)
            logger.warning("--%s %r is only read by loss terms that are off: %s", row.flag, columns.texts[row.name], off)
    splits = {"train": data_args.train_split}
    if training_args.eval_strategy != "no" and data_args.eval_split and data_args.eval_split.lower() != "none":
        splits["eval"] = data_args.eval_split
    images, transform = _image_pass(args, processor, model)
    prepared, reports = {}, []
    for role, split in splits.items():
        loaded = [
            (name, load_any_dataset(name, split, data_args.dataset_config_name, args.model.cache_dir, required=role == "train"))
            for name in data_args.sources()
        ]
        loaded = [(name, dataset) for name, dataset in loaded if dataset is not None]
        if not loaded:
            logger.warning("no %r split in %s: evaluation loss skipped", split, data_args.sources())
            training_args.eval_strategy = "no"
            continue
        limit = data_args.max_train_samples if role == "train" else data_args.max_eval_samples
        with training_args.main_process_first(desc=f"preparing {role} data"):
            prepared[role], split_reports = prepare_dataset(
                [dataset for _, dataset in loaded], [name for name, _ in loaded], columns,
                processor.tokenizer, data_args.max_caption_length, limit, split=split, images=images,
            )
        reports += split_reports
    summary, noteworthy = summarize_reports(reports, data_args.max_caption_length)
    logger.log(logging.WARNING if noteworthy else logging.INFO, summary)
    packed, tables = PackedRows.from_splits(prepared, processor.tokenizer.pad_token_id, pixels=partial(pixel_values, transform))
    return tables, packed, transform, reports


def negation_metrics(args: Arguments, eval_dataset: datasets.Dataset) -> NegationMetrics:
    """The evaluation's negation accuracies; which rows are which-object pairs is read from the raw
    evaluation split(s), found as prepare_splits found them."""
    data_args, columns = args.data, args.data.columns()
    raw = [load_any_dataset(name, data_args.eval_split, data_args.dataset_config_name, args.model.cache_dir, required=False)
           for name in data_args.sources()]
    pairs = which_object_rows(eval_dataset, [dataset for dataset in raw if dataset is not None], columns.presence,
                              columns.absence, SOURCE_COLUMN, SOURCE_ROW_COLUMN)
    return NegationMetrics(pairs)


ROWS_CHECKED = 2000  # rows of each training dataset read by check_negation_columns


def check_negation_columns(data_args: DataArguments, cache_dir: str | None = None) -> list[str]:
    """Warnings (logged, returned) about the negation columns of each training dataset, from its
    first `ROWS_CHECKED` rows: negations identical to their caption (nothing to learn from them),
    and presence/absence columns that look swapped (where a `negated_object` column says which
    object the presence negation is about: the absence text negates it and the presence text does not)."""
    from omninegclip.building.vocabulary import find_mentions

    def negates(text: str, obj: str) -> bool:
        return any(mention.negated for mention in find_mentions(text, [obj]))

    columns = data_args.columns()
    found = []
    for name in data_args.sources():
        dataset = load_any_dataset(name, data_args.train_split, data_args.dataset_config_name, cache_dir, required=False)
        if dataset is None:
            continue
        texts = [column for column in (columns.caption, columns.presence, columns.absence) if column and column in dataset.column_names]
        has_object = "negated_object" in dataset.column_names
        rows = dataset.select(range(min(ROWS_CHECKED, len(dataset)))).select_columns(texts + (["negated_object"] if has_object else []))
        identical = {flag: [] for flag in ("--presence_column", "--absence_column")}
        swapped = checked = 0
        for row, values in enumerate(rows):
            caption = values.get(columns.caption)
            for flag, column in (("--presence_column", columns.presence), ("--absence_column", columns.absence)):
                text = values.get(column) if column else None
                if isinstance(text, str) and isinstance(caption, str) and text.strip() and text.strip() == caption.strip():
                    identical[flag].append(row)
            presence, absence, obj = values.get(columns.presence), values.get(columns.absence), values.get("negated_object")
            if has_object and all(isinstance(value, str) and value.strip() for value in (presence, absence, obj)):
                checked += 1
                swapped += negates(absence, obj) and not negates(presence, obj)
        for flag, found_rows in identical.items():
            if found_rows:
                column = columns.presence if flag == "--presence_column" else columns.absence
                found.append(f"dataset {name!r}: {len(found_rows)} of the first {len(rows)} rows have a {flag} {column!r} text identical to "
                             f"their caption (rows {', '.join(map(str, found_rows[:5]))}{', …' if len(found_rows) > 5 else ''}): such a "
                             f"pair pushes a text away from itself")
        if checked and swapped * 2 > checked:
            found.append(f"dataset {name!r}: in {swapped} of {checked} rows checked, the --absence_column {columns.absence!r} text negates the "
                         f"row's negated_object and the --presence_column {columns.presence!r} text does not: the two columns look swapped "
                         f"(try --presence_column {columns.absence} --absence_column {columns.presence})")
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
        warnings.append(f"a global batch of 1 row (--per_device_train_batch_size 1 x 1 process): the in-batch terms "
                        f"{', '.join(IN_BATCH_TERMS)} compare each row only with itself and are 0; use a batch of 2 or more")
    train = [report for report in reports if report.split == split]
    if train and not any(any(report.with_sets.values()) for report in train):
        warnings.append(f"no training row has a presence or an absence negation ({', '.join(repr(report.name) for report in train)}): "
                        f"this is plain CLIP fine-tuning, not Omni-NegCLIP; check --presence_column and --absence_column")
    for warning in warnings:
        logger.warning(warning)
    return warnings
