"""The Trainer of Omni-NegCLIP: `OmniNegCLIPTrainer`, configured by `OmniNegCLIPConfig`.

It takes raw `datasets.Dataset`s (an image column, a caption column and the optional negation
columns; a dict of several datasets mixes them half and half per batch) and a processor, and
prepares them itself: every row checked (skips counted and reported), captions tokenized, each
unique image embedded once on the training device by the frozen image tower. A streamed
`datasets.IterableDataset` (or a dict of them) is read while training instead
(`omninegclip.training.streaming`: checked row by row, images embedded inside the step, the
stream's position saved in every checkpoint). Its `compute_loss`
runs the Omni-NegCLIP objective and logs every term; NaN/inf stops name the bad rows; evaluation
reports the negation accuracies over every row; the Trainer's own Hub path (`push_to_hub`,
`--hub_strategy`) pushes with the project's model card (`create_model_card`).

    trainer = OmniNegCLIPTrainer(model, OmniNegCLIPConfig(output_dir="runs/x"), train_dataset=train,
                                 eval_dataset=validation, processing_class=processor)
    trainer.train(); trainer.evaluate(); trainer.save_final_model(); trainer.push_to_hub()
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import CLIPProcessor, Trainer, TrainingArguments
from transformers import trainer as transformers_trainer
from transformers.utils import PushInProgress

from modeling_omninegclip import LOSS_TERM_NAMES, OmniNegCLIPModel
from omninegclip.common.cli import UserError
from omninegclip.training.arguments import check_report_to
from omninegclip.training.callbacks import ClampLogitScaleCallback, FiniteLossCallback, ProvenanceCallback
from omninegclip.training.checkpoints import (
    HUB_LAST_CHECKPOINT,
    TRAINER_STATE_FILE,
    check_output_and_resume,
    check_resume_settings,
    complete_checkpoints,
    resolve_checkpoint,
    training_record,
    write_provenance,
)
from omninegclip.training.config import OmniNegCLIPConfig
from omninegclip.training.data import (
    PACKED_ROW_COLUMN,
    SOURCE_COLUMN,
    SOURCE_ROW_COLUMN,
    BalancedSourceSampler,
    OmniNegCollator,
)
from omninegclip.training.hub import check_hub_access, fetch_last_checkpoint
from omninegclip.training.lora import ADAPTER_DIR, push_adapter
from omninegclip.training.metrics import stack_embeddings
from omninegclip.training.model_card import load_widget_examples, write_model_card
from omninegclip.training.prepare import (
    check_negation_columns,
    make_trainable,
    negation_metrics,
    prepare_splits,
    warn_degenerate_training,
    warn_unread_columns,
)
from omninegclip.training.saving import check_disk_space, merge_adapters, save_final_model
from omninegclip.training.streaming import (
    StreamingData,
    StreamPositionCallback,
    check_streaming_settings,
    is_stream,
)

logger = logging.getLogger("omninegclip.train")


class NonFiniteLossError(UserError):
    """A loss term became NaN or inf; the message names the step, the rows and the terms, and the
    last good checkpoint. A `UserError`, so the command line reports it as one paragraph."""


def _format_term(name: str, value: torch.Tensor) -> str:
    return f"{name}={float(value.detach().float().cpu()):g}" if value.numel() == 1 else name


HUB_CHECKPOINT, HUB_ALL_CHECKPOINTS = "checkpoint", "all_checkpoints"  # --hub_strategy values
PLAIN_ARGUMENTS = (
    "OmniNegCLIPTrainer needs an OmniNegCLIPConfig, not a plain TrainingArguments: the config holds the method's "
    "settings (text blocks, loss weights, caption-set columns, LoRA, card) and the Trainer settings the method needs "
    "(remove_unused_columns=False, label_names=[]). Use `from omninegclip import OmniNegCLIPConfig` and "
    "`OmniNegCLIPConfig(output_dir=..., <the same TrainingArguments keywords>, <method settings>)`; "
    "`OmniNegCLIPConfig(**your_args.to_dict())` converts existing arguments."
)


def _named(dataset, role: str) -> dict[str, datasets.Dataset | datasets.IterableDataset]:
    """A dataset, or a dict of datasets by name, as a dict by name; all prepared-style
    (`datasets.Dataset`) or all streamed (`datasets.IterableDataset`, training only)."""
    if dataset is None:
        return {}
    kinds = (datasets.Dataset, datasets.IterableDataset) if role == "train" else (datasets.Dataset,)
    if isinstance(dataset, kinds):
        return {dataset.info.dataset_name or f"{role}_dataset": dataset}
    values = list(dataset.values()) if isinstance(dataset, dict) else []
    if values and any(all(isinstance(value, kind) for value in values) for kind in kinds):
        return dict(dataset)
    streamed = " or of datasets.IterableDataset (streaming)" if role == "train" else ""
    raise UserError(
        f"{role}_dataset must be a datasets.Dataset or a dict of them by name (several are mixed half and half per "
        f"batch){streamed}, got {type(dataset).__name__}"
        + ("; a streamed run does not evaluate while it trains" if role == "eval" and is_stream(dataset) else "")
    )


def _is_prepared(dataset) -> bool:
    """A table the Trainer already prepared (rows pointing into packed token and embedding arrays)."""
    return isinstance(dataset, datasets.Dataset) and PACKED_ROW_COLUMN in dataset.column_names


class OmniNegCLIPTrainer(Trainer):
    """`Trainer` for Omni-NegCLIP: raw datasets in, the Omni-NegCLIP objective with every term logged.

    model: an `OmniNegCLIPModel` (e.g. `OmniNegCLIPModel.from_pretrained("openai/clip-vit-base-patch32")`)
    or the name of a CLIP checkpoint. args: an `OmniNegCLIPConfig`. train_dataset / eval_dataset: a
    `datasets.Dataset` with the config's image, caption and negation columns, or a dict of them by
    name; train_dataset may instead be streamed (an `IterableDataset` or a dict of them: needs
    `max_steps`, no eval_dataset). processing_class: the CLIP processor (tokenizer and image
    processor). The text blocks and parts the config names train; the rest is frozen (or LoRA adapters are added)."""

    # The model returns a batch mean, not a sum over `num_items_in_batch`: the Trainer scales for GA.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: OmniNegCLIPModel | str,
        args: OmniNegCLIPConfig,
        train_dataset=None,
        eval_dataset=None,
        processing_class: CLIPProcessor | None = None,
        data_collator=None,
        compute_metrics=None,
        callbacks=None,
        **kwargs,
    ):
        if not isinstance(args, OmniNegCLIPConfig):
            raise (
                TypeError(PLAIN_ARGUMENTS)
                if isinstance(args, TrainingArguments)
                else TypeError(f"args must be an OmniNegCLIPConfig, got {type(args).__name__}")
            )
        if isinstance(model, str):
            model = OmniNegCLIPModel.from_pretrained(model)
        if not isinstance(model, OmniNegCLIPModel):
            raise TypeError(
                f"model must be an OmniNegCLIPModel (OmniNegCLIPModel.from_pretrained(<a CLIP checkpoint>)), "
                f"got {type(model).__name__}"
            )
        # Before anything slow: the trackers, the Hub, the output folder, the card's examples.
        check_report_to(args)
        if args.world_size > 1 and not args.dataloader_drop_last:
            logger.info("several processes: using drop-last batches (padded duplicate rows would be false negatives)")
            args.dataloader_drop_last = True
        self.stream: StreamingData | None = None
        streamed = is_stream(train_dataset)
        if streamed:  # before anything slow, and before an evaluation dataset is looked at
            check_streaming_settings(args, evaluates=eval_dataset is not None)
        elif args.mix_probabilities:
            raise UserError(
                f"--mix_probabilities {args.mix_probabilities} sets the mix of streamed datasets (--streaming); "
                "prepared datasets are mixed half and half in every batch"
            )
        train_named, eval_named = _named(train_dataset, "train"), _named(eval_dataset, "eval")
        self.source_names = list(train_named)
        check_output_and_resume(
            args, args.overwrite_output_dir, self.source_names + list(eval_named), model.name_or_path
        )
        self.widget = load_widget_examples(args.widget_examples) if args.widget_examples else None
        if args.push_to_hub:
            check_hub_access(args)
        self.base_model = model.name_or_path
        trained_model, self.lora_settings = make_trainable(model, args)
        check_disk_space(args, model, trained_model)
        reports = []
        if streamed:  # read while training: checked row by row, images embedded inside the step
            if processing_class is None:
                raise UserError(
                    "OmniNegCLIPTrainer reads streamed datasets itself and needs the CLIP processor: pass "
                    "processing_class=CLIPProcessor.from_pretrained(<the checkpoint>)"
                )
            warn_unread_columns(args)
            self.stream = StreamingData(train_named, args, processing_class, model.loss_config.caption_sets_read())
            train_dataset, data_collator = self.stream.rows, data_collator or self.stream.collator
        elif train_named and not any(_is_prepared(dataset) for dataset in train_named.values()):
            if processing_class is None:
                raise UserError(
                    "OmniNegCLIPTrainer prepares raw datasets itself and needs the CLIP processor: pass "
                    "processing_class=CLIPProcessor.from_pretrained(<the checkpoint>)"
                )
            check_negation_columns(train_named, args.columns())
            splits = {"train": train_named} | ({"eval": eval_named} if eval_named else {})
            tables, packed, _, reports = prepare_splits(args, processing_class, model, splits)
            warn_degenerate_training(args, reports, reports[0].split)
            train_dataset, eval_dataset = tables["train"], tables.get("eval")
            data_collator = data_collator or OmniNegCollator(
                packed, caption_sets=model.loss_config.caption_sets_read()
            )
            if compute_metrics is None and eval_dataset is not None:
                compute_metrics = negation_metrics(eval_dataset, eval_named, args.columns())
        elif train_named:  # tables prepared by the caller, with their collator
            (train_dataset,) = train_named.values()
            eval_dataset = next(iter(eval_named.values()), None)
        self.record = training_record(args, model, self.lora_settings, reports, self.source_names)
        if self.stream is not None:
            self.record["streaming"] = self.stream.settings()
        super().__init__(
            model=trained_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=[ProvenanceCallback(self.record), *(callbacks or [])],
            **kwargs,
        )
        self.model_accepts_loss_kwargs = False
        self.add_callback(ClampLogitScaleCallback())
        self.add_callback(FiniteLossCallback(self, args.nan_check_steps))
        if self.stream is not None:
            self.add_callback(StreamPositionCallback(self))
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_count = 0
        self._unchecked: list[tuple[int, dict[str, torch.Tensor], torch.Tensor | None]] = []
        self._counted_parameters: tuple[weakref.ref, int] | None = None  # (model, its count) for floating_point_ops
        if self.train_dataset is not None:
            self.planned_steps = ready_to_train(self, model, lora=self.lora_settings is not None)

    @property
    def omninegclip_model(self) -> OmniNegCLIPModel:
        """The OmniNegCLIPModel being trained (inside any PEFT wrapper)."""
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, resuming from a checkpoint folder, `latest` (the newest complete
        checkpoint-* of output_dir) or `last-checkpoint` (the Hub backup of `--hub_strategy
        checkpoint`, fetched first), after checking that it was saved by a run with the same settings."""
        resume = resume_from_checkpoint if resume_from_checkpoint is not None else self.args.resume_from_checkpoint
        if resume is True:
            resume = "latest"
        if resume:
            resume = self.resolve_resume(str(resume))
            check_resume_settings(
                resume, self.record, self.record["data"][0]["split"] if self.record["data"] else "train"
            )
            if self.stream is not None:  # the next rows are the ones the interrupted run would have read
                self.stream.restore(resume, self.args.process_index)
            step = json.loads((Path(resume) / TRAINER_STATE_FILE).read_text()).get("global_step")
            logger.info("resuming from %s (step %s)", resume, step)
        self.record["resumed_from"] = resume or None
        return super().train(resume_from_checkpoint=resume or None, **kwargs)

    def resolve_resume(self, resume: str) -> str:
        """The checkpoint folder that `resume` names."""
        if resume == HUB_LAST_CHECKPOINT and not (Path(self.args.output_dir) / resume).is_dir():
            if self.args.process_index == 0:
                fetch_last_checkpoint(self.args)
            self.accelerator.wait_for_everyone()
            return str(Path(self.args.output_dir) / resume)
        return resolve_checkpoint(self.args.output_dir, resume)

    def save_final_model(self, eval_metrics: dict | None = None, train_metrics: dict | None = None) -> Path:
        """The final checkpoint in output_dir, written atomically: plain CLIP weights (LoRA adapters
        merged first: from then on this Trainer holds the merged model), processor, metrics, Trainer
        state, provenance and the model card. See `omninegclip.training.saving`."""
        return save_final_model(self, eval_metrics, train_metrics)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs):
        """`Trainer.push_to_hub` with the project's card; LoRA adapters are merged first (the repo holds
        plain CLIP weights only), and with `hub_adapter_id` the adapter goes to its own repo as well."""
        if self.lora_settings is not None and hasattr(self.accelerator.unwrap_model(self.model), "merge_and_unload"):
            merge_adapters(self)
        result = super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)
        if self.args.hub_adapter_id and self.is_world_process_zero():
            push_adapter(
                Path(self.args.output_dir) / ADAPTER_DIR,
                self.args.hub_adapter_id,
                token=self.args.hub_token,
                private=self.args.hub_private_repo,
            )
        return result

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """`--hub_strategy` backups during training. Without LoRA, the Trainer's own. With LoRA the
        repo's root gets the merged weights once, at the end, and never the adapter files (loaders would
        apply them on top of the merged weights): `checkpoint` and `all_checkpoints` push the checkpoint
        folder (adapters, optimiser, scheduler) into `last-checkpoint/` or `checkpoint-N/` only, and
        `every_save` pushes nothing before the end."""
        if self.is_world_process_zero():  # the backup carries what resuming checks (the callback writes it only later)
            self.write_record(Path(checkpoint_folder))
        if self.lora_settings is None:
            return super()._push_from_checkpoint(checkpoint_folder)
        strategy = str(getattr(self.args.hub_strategy, "value", self.args.hub_strategy))
        if not self.is_world_process_zero() or strategy not in (HUB_CHECKPOINT, HUB_ALL_CHECKPOINTS):
            return None
        if self.push_in_progress is not None and not self.push_in_progress.is_done() and not self.args.hub_always_push:
            return None
        path_in_repo = HUB_LAST_CHECKPOINT if strategy == HUB_CHECKPOINT else Path(checkpoint_folder).name
        job = transformers_trainer.hf_api().upload_folder(
            repo_id=self.hub_model_id,
            folder_path=checkpoint_folder,
            path_in_repo=path_in_repo,
            token=self.args.hub_token,
            commit_message=f"Training in progress, step {self.state.global_step}, checkpoint",
            run_as_future=True,
            revision=self.args.hub_revision,
        )
        self.push_in_progress = PushInProgress([job])
        return None

    def create_model_card(self, model_name: str | None = None, **kwargs) -> None:
        """The project's card (README.md of output_dir: metadata with pipeline tag, widget, base model,
        datasets, tags and model-index; usage, training and results) instead of the Trainer's generic
        one; `trainer.push_to_hub()` uploads it. The folder gets this run's training record first
        (training_provenance.json): the card describes what it says."""
        if not self.is_world_process_zero():
            return
        self.write_record(Path(self.args.output_dir))
        write_model_card(
            Path(self.args.output_dir), repo_id=self.hub_model_id or self.args.hub_model_id, **self.card_settings()
        )

    def write_record(self, folder: Path) -> None:
        """This run's training record (training_provenance.json) into `folder`, at the current step."""
        write_provenance(folder, self.record | {"global_step": self.state.global_step})

    def card_settings(self) -> dict:
        return dict(
            base_model=self.base_model,
            datasets=self.source_names,
            widget_examples=self.widget,
            license=self.args.license,
            base_model_id=self.args.card_base_model,
            dataset_ids=self.args.dataset_ids(),
        )

    def get_train_dataloader(self):
        """A streamed run's batches come from its `StreamingData` (this process's share, read ahead and
        decoded in threads); otherwise the Trainer's own."""
        if self.stream is None:
            return super().get_train_dataloader()
        return self.stream.dataloader(self._train_batch_size, self.args, self.accelerator)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if isinstance(dataset, datasets.Dataset) and SOURCE_COLUMN in dataset.column_names:
            sources = np.asarray(dataset.with_format("arrow")[SOURCE_COLUMN])
            if len(np.unique(sources)) > 1:
                return BalancedSourceSampler(sources, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def describe_rows(self, row_ids: list[int], training: bool) -> str:
        """Where rows of the prepared data came from: 'dataset NAME row R' (the first few)."""
        if training and self.stream is not None:
            return self.stream.progress.describe_rows(row_ids)
        dataset = self.train_dataset if training else self.eval_dataset
        if not isinstance(dataset, datasets.Dataset) or SOURCE_ROW_COLUMN not in dataset.column_names:
            return f"prepared rows {row_ids}"
        origin = dataset.select_columns([SOURCE_COLUMN, SOURCE_ROW_COLUMN])[row_ids]
        places = []
        for source, row in zip(origin[SOURCE_COLUMN], origin[SOURCE_ROW_COLUMN]):
            name = self.source_names[source] if source < len(self.source_names) else f"source {source}"
            places.append(f"{name!r} row {row}")
        shown = ", ".join(places[:8]) + (f", … ({len(places)} rows)" if len(places) > 8 else "")
        split = "training" if training else "evaluation"
        return f"{split} batch of {len(places)} rows: {shown}"

    def _non_finite_error(self, model, terms: dict, row_ids, completed_steps: int) -> NonFiniteLossError:
        bad = [name for name, value in terms.items() if not torch.isfinite(value).all()] or ["loss"]
        rows = self.describe_rows(row_ids.tolist(), model.training) if row_ids is not None else "rows unknown"
        checkpoints = complete_checkpoints(self.args.output_dir)
        kept = (
            f"the last good checkpoint, {checkpoints[-1]}, is kept as it was; resume from it with "
            f"--resume_from_checkpoint {checkpoints[-1]} (e.g. with a lower --learning_rate)"
            if checkpoints
            else f"no checkpoint had been saved yet in {self.args.output_dir} (see --save_steps)"
        )
        where = (
            f"training step {completed_steps + 1}" if model.training else f"evaluation after step {completed_steps}"
        )
        return NonFiniteLossError(
            f"the loss became NaN or inf in {where}: terms that went bad: "
            f"{', '.join(_format_term(name, terms[name]) if name in terms else name for name in bad)}; "
            f"{rows}. Training stopped: {kept}."
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.stream is not None:  # the batch the model trains on now: the stream's position after it
            inputs = self.stream.model_inputs(inputs, model.training)
        row_ids = inputs.pop("row_ids", None)
        outputs = model(**inputs, return_loss=True)
        terms = {name: getattr(outputs, name) for name in LOSS_TERM_NAMES if getattr(outputs, name) is not None}
        checked = terms | {"loss": outputs.loss}
        if model.training:  # checked later, a few steps at once (FiniteLossCallback): no host sync per step
            self._unchecked.append((self.state.global_step + 1, {k: v.detach() for k, v in checked.items()}, row_ids))
            for name, value in terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + value.detach().float()
            self._term_count += 1
        elif not all(bool(torch.isfinite(value).all()) for value in checked.values()):
            raise self._non_finite_error(model, checked, row_ids, self.state.global_step)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def floating_point_ops(self, inputs: dict) -> int:
        """`Trainer.floating_point_ops` (6 x input tokens x parameters without embeddings, the
        `total_flos` the Trainer logs), with the parameters counted once per model instead of every
        step: counting walks every module, about 0.7 ms a step for ViT-B/32 on the CPU."""
        model = self.model
        if not hasattr(model, "num_parameters") or getattr(model, "main_input_name", "input_ids") not in inputs:
            return super().floating_point_ops(inputs)
        if self._counted_parameters is None or self._counted_parameters[0]() is not model:
            self._counted_parameters = (weakref.ref(model), model.num_parameters(exclude_embeddings=True))
        return 6 * inputs[getattr(model, "main_input_name", "input_ids")].numel() * self._counted_parameters[1]

    def check_finite(self, model) -> None:
        """Raise for the first unchecked training step whose loss or a term is NaN/inf."""
        unchecked, self._unchecked = self._unchecked, []
        if not unchecked:
            return
        finite = torch.stack(
            [torch.stack([torch.isfinite(v).all() for v in terms.values()]).all() for _, terms, _ in unchecked]
        ).cpu()
        if not bool(finite.all()):
            step, terms, row_ids = unchecked[int((~finite).nonzero()[0])]
            raise self._non_finite_error(model, terms, row_ids, step - 1)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss, and for `compute_metrics` (omninegclip/training/metrics.py) every row's image, caption and
        negated-caption embeddings with its row_id as the label (the Trainer gathers them from every process)."""
        inputs = self._prepare_inputs(inputs)
        row_ids = inputs.get("row_ids")
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only or self.compute_metrics is None or row_ids is None:
            return loss.detach(), None, None
        return loss.detach(), stack_embeddings(outputs), row_ids

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation keeps the last incomplete batch, so the negation metrics cover every row: under
        several processes Accelerate fills it up with rows from the split's start (every process then
        gathers as many rows) and `gather_for_metrics` leaves those out of the metrics and the loss mean."""
        drop_last, self.args.dataloader_drop_last = self.args.dataloader_drop_last, False
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.args.dataloader_drop_last = drop_last

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._term_count and "loss" in logs:  # every process logs at the same steps, with the same terms
            names = sorted(self._term_sums)
            means = torch.stack([self._term_sums[name] for name in names]).to(self.args.device) / self._term_count
            # Each process holds its share of a global-batch term: their mean is the term.
            means = self.accelerator.reduce(means, reduction="mean")
            logs.update({name: round(float(value), 4) for name, value in zip(names, means)})
            self._term_sums, self._term_count = {}, 0
        super().log(logs, *args, **kwargs)


def check_training_steps(trainer: Trainer) -> int:
    """The optimiser steps this run will take; a `UserError` naming rows, global batch and steps when
    it would take none (the run would then save the base model as the fine-tuned one)."""
    args = trainer.args
    if getattr(trainer, "stream", None) is not None:  # no length: --max_steps (required) says
        return args.max_steps
    sampler = trainer._get_train_sampler()  # a mix is repeated to the larger source's length
    rows = len(sampler) if sampler is not None else len(trainer.train_dataset)
    processes = args.world_size
    accumulation = args.gradient_accumulation_steps
    global_batch = args.per_device_train_batch_size * processes
    batches = rows // global_batch if args.dataloader_drop_last else -(-rows // global_batch)  # per process and epoch
    batch_text = (
        f"a global batch of {global_batch} rows per forward pass (--per_device_train_batch_size "
        f"{args.per_device_train_batch_size} x {processes} process(es)), {global_batch * accumulation} per optimiser "
        "step "
        f"(x --gradient_accumulation_steps {accumulation})"
    )
    if batches == 0:
        forced = " (forced: several processes)" if processes > 1 else ""
        raise UserError(
            f"this run would train 0 steps and save the base model as the fine-tuned one: {rows} training rows, "
            f"{batch_text}, and drop-last batches (--dataloader_drop_last{forced}) leave 0 batches per epoch; "
            f"use --per_device_train_batch_size <= {max(rows // processes, 1)} or more data"
        )
    updates_per_epoch = -(-batches // accumulation)
    steps = args.max_steps if args.max_steps >= 0 else math.ceil(args.num_train_epochs * updates_per_epoch)
    if steps < 1:
        chosen = (
            f"--max_steps {args.max_steps}"
            if args.max_steps >= 0
            else f"--max_steps {args.max_steps} (epochs decide) and --num_train_epochs {args.num_train_epochs}"
        )
        raise UserError(
            f"this run would train 0 steps and save the base model as the fine-tuned one: {chosen} with {rows} "
            "training rows, "
            f"{batch_text} = {updates_per_epoch} step(s) per epoch; pass --max_steps >= 1 or --num_train_epochs > 0"
        )
    return steps


def ready_to_train(trainer: OmniNegCLIPTrainer, model, lora: bool) -> int:
    """Refuse what cannot train (LoRA under FSDP, a run of 0 steps), make the logit scale shardable
    for FSDP/DeepSpeed; return the optimiser steps the run will take."""
    if lora and trainer.is_fsdp_enabled:
        raise UserError(
            "--lora_r does not work under FSDP (merging adapters needs unsharded weights): "
            "launch with configs/accelerate/ddp.yaml or deepspeed_zero2.yaml instead"
        )
    steps = check_training_steps(trainer)
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:  # neither takes CLIP's 0-dim logit_scale
        model.make_logit_scale_shardable()
    return steps


def end_process_group() -> None:
    """After a run under several processes: wait for all, then close the process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
