"""The Trainer of Omni-NegCLIP: `OmniNegCLIPTrainer` (the Omni-NegCLIP losses, every term logged, a
balanced sampler for mixed datasets, NaN/inf stops naming the bad rows, evaluation over every row),
`check_training_steps` (a run that would train 0 steps is refused before it starts), and the steps
around `trainer.train()` (`ready_to_train`, `end_process_group`)."""

from __future__ import annotations

import logging
import math

import datasets
import torch
from transformers import Trainer

from omninegclip.training.metrics import stack_embeddings
from modeling_omninegclip import LOSS_TERM_NAMES
from omninegclip.common.cli import UserError
from omninegclip.training.callbacks import ClampLogitScaleCallback, FiniteLossCallback
from omninegclip.training.checkpoints import complete_checkpoints
from omninegclip.training.data import SOURCE_COLUMN, SOURCE_ROW_COLUMN, BalancedSourceSampler

logger = logging.getLogger("omninegclip.train")


class NonFiniteLossError(UserError):
    """A loss term became NaN or inf; the message names the step, the rows and the terms, and the
    last good checkpoint. A `UserError`, so the command line reports it as one paragraph."""


def _format_term(name: str, value: torch.Tensor) -> str:
    return f"{name}={float(value.detach().float().cpu()):g}" if value.numel() == 1 else name


class OmniNegCLIPTrainer(Trainer):
    """`Trainer` whose `compute_loss` runs the Omni-NegCLIP objectives and logs every term.

    `source_names` (the datasets of the prepared data, in `source_index` order) lets an error name
    the dataset rows of a bad batch."""

    # The model returns a batch mean, not a sum over `num_items_in_batch`: the Trainer scales for GA.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, source_names: list[str] | None = None, nan_check_steps: int = 50, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.add_callback(ClampLogitScaleCallback())
        self.add_callback(FiniteLossCallback(self, nan_check_steps))
        self.source_names = list(source_names or [])
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_count = 0
        self._unchecked: list[tuple[int, dict[str, torch.Tensor], torch.Tensor | None]] = []

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if isinstance(dataset, datasets.Dataset) and SOURCE_COLUMN in dataset.column_names:
            sources = dataset[SOURCE_COLUMN]
            if len(set(sources)) > 1:
                return BalancedSourceSampler(list(sources), seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def describe_rows(self, row_ids: list[int], training: bool) -> str:
        """Where rows of the prepared data came from: 'dataset NAME row R' (the first few)."""
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
        kept = (f"the last good checkpoint, {checkpoints[-1]}, is kept as it was; resume from it with "
                f"--resume_from_checkpoint {checkpoints[-1]} (e.g. with a lower --learning_rate)"
                if checkpoints else f"no checkpoint had been saved yet in {self.args.output_dir} (see --save_steps)")
        where = f"training step {completed_steps + 1}" if model.training else f"evaluation after step {completed_steps}"
        return NonFiniteLossError(
            f"the loss became NaN or inf in {where}: terms that went bad: "
            f"{', '.join(_format_term(name, terms[name]) if name in terms else name for name in bad)}; "
            f"{rows}. Training stopped: {kept}."
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
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

    def check_finite(self, model) -> None:
        """Raise for the first unchecked training step whose loss or a term is NaN/inf."""
        unchecked, self._unchecked = self._unchecked, []
        if not unchecked:
            return
        finite = torch.stack([torch.stack([torch.isfinite(v).all() for v in terms.values()]).all()
                              for _, terms, _ in unchecked]).cpu()
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
    sampler = trainer._get_train_sampler()  # a mix is repeated to the larger source's length
    rows = len(sampler) if sampler is not None else len(trainer.train_dataset)
    processes = args.world_size
    accumulation = args.gradient_accumulation_steps
    global_batch = args.per_device_train_batch_size * processes
    batches = rows // global_batch if args.dataloader_drop_last else -(-rows // global_batch)  # per process and epoch
    batch_text = (f"a global batch of {global_batch} rows per forward pass (--per_device_train_batch_size "
                  f"{args.per_device_train_batch_size} x {processes} process(es)), {global_batch * accumulation} per optimiser step "
                  f"(x --gradient_accumulation_steps {accumulation})")
    if batches == 0:
        forced = " (forced: several processes)" if processes > 1 else ""
        raise UserError(
            f"this run would train 0 steps and save the base model as the fine-tuned one: {rows} training rows, "
            f"{batch_text}, and drop-last batches (--dataloader_drop_last{forced}) leave 0 batches per epoch; "
            f"use --per_device_train_batch_size <= {max(rows // processes, 1)} or more data")
    updates_per_epoch = -(-batches // accumulation)
    steps = args.max_steps if args.max_steps >= 0 else math.ceil(args.num_train_epochs * updates_per_epoch)
    if steps < 1:
        chosen = (f"--max_steps {args.max_steps}" if args.max_steps >= 0 else
                  f"--max_steps {args.max_steps} (epochs decide) and --num_train_epochs {args.num_train_epochs}")
        raise UserError(
            f"this run would train 0 steps and save the base model as the fine-tuned one: {chosen} with {rows} training rows, "
            f"{batch_text} = {updates_per_epoch} step(s) per epoch; pass --max_steps >= 1 or --num_train_epochs > 0")
    return steps


def ready_to_train(trainer: OmniNegCLIPTrainer, model, lora: bool, push: bool) -> int:
    """Refuse what cannot train (LoRA under FSDP, a run of 0 steps), make the logit scale shardable
    for FSDP/DeepSpeed; return the optimiser steps the run will take."""
    if lora and trainer.is_fsdp_enabled:
        raise UserError("--lora_r does not work under FSDP (merging adapters needs unsharded weights): "
                        "launch with configs/accelerate/ddp.yaml or deepspeed_zero2.yaml instead")
    steps = check_training_steps(trainer)
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:  # neither takes CLIP's 0-dim logit_scale
        model.make_logit_scale_shardable()
    if push:
        logger.info("--push_to_hub: the final checkpoint is pushed once, after training (--hub_strategy is not used)")
    return steps


def end_process_group() -> None:
    """After a run under several processes: wait for all, then close the process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
