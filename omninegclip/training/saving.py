"""The end of a training run: the final checkpoint (plain CLIP weights with any LoRA adapters merged,
processor, metrics, Trainer state, provenance, model card) written into a hidden folder and moved
into --output_dir file by file (`save_outputs_atomically`), then pushed to the Hub when asked.

`args` is train.py's parsed `Arguments` (model, data, omni, lora, card, training, output)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import CLIPProcessor

from omninegclip.common.cli import UserError
from omninegclip.common.outputs import LOCK_FILE
from omninegclip.training.checkpoints import write_provenance
from omninegclip.training.lora import ADAPTER_DIR, push_adapter, save_adapter
from omninegclip.training.model_card import push_checkpoint, write_model_card

if TYPE_CHECKING:
    from omninegclip.training.trainer import OmniNegCLIPTrainer
    from train import Arguments  # train.py's parsed flags

logger = logging.getLogger("omninegclip.train")

FINAL_STAGING = ".final-partial"  # where the final checkpoint is written before it is moved into --output_dir


def _card_settings(args: Arguments, record: dict, widget: list | None) -> dict:
    card_args = args.card
    return dict(base_model=args.model.model_name_or_path, datasets=record["datasets"], widget_examples=widget,
                license=card_args.license, base_model_id=card_args.card_base_model, dataset_ids=card_args.dataset_ids())


def save_outputs(args: Arguments, trainer: OmniNegCLIPTrainer, processor: CLIPProcessor, record: dict,
                 metrics: dict | None, lora_settings: dict | None, widget: list | None,
                 train_metrics: dict | None = None) -> None:
    """The checkpoint folder: plain CLIP weights (LoRA merged), processor, settings, provenance, the
    Trainer's state and train/eval metrics (`trainer_state.json`, `train_results.json`,
    `eval_results.json`, `all_results.json`) and model card. Written by the first process only."""
    model_args, card_args, training_args = args.model, args.card, args.training
    output_dir = Path(training_args.output_dir)
    if lora_settings is None:
        trainer.save_model()  # on every process: FSDP/DeepSpeed gather the full weights collectively
    else:
        if args.lora.save_adapter and trainer.is_world_process_zero():  # before merging: it takes the adapters out
            save_adapter(trainer.model, output_dir / ADAPTER_DIR, card_args.card_base_model or model_args.model_name_or_path)
        merged = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(output_dir, extra_settings={"lora": lora_settings})
    if not trainer.is_world_process_zero():
        return
    processor.save_pretrained(output_dir)
    if train_metrics is not None:
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
    if metrics is not None:
        trainer.save_metrics("eval", metrics)
    trainer.save_state()
    write_provenance(output_dir, record | {"global_step": trainer.state.global_step})
    write_model_card(output_dir, repo_id=training_args.hub_model_id, **_card_settings(args, record, widget))


def push_outputs(args: Arguments, record: dict, widget: list | None) -> None:
    """The final folder (with the tracker logs in `runs/`) to the Hub, the adapter to its own repo
    when asked (else it goes up in the `adapter/` subfolder)."""
    training_args, output_dir = args.training, Path(args.training.output_dir)
    adapter_repo = args.lora.hub_adapter_id
    if adapter_repo:
        push_adapter(output_dir / ADAPTER_DIR, adapter_repo, token=training_args.hub_token, private=training_args.hub_private_repo)
    push_checkpoint(output_dir, training_args.hub_model_id or output_dir.resolve().name,
                    token=training_args.hub_token, private=training_args.hub_private_repo,
                    also_ignore=[f"{ADAPTER_DIR}/**", f"{FINAL_STAGING}/**", LOCK_FILE] if adapter_repo
                    else [f"{FINAL_STAGING}/**", LOCK_FILE], **_card_settings(args, record, widget))


def save_outputs_atomically(args: Arguments, trainer: OmniNegCLIPTrainer, processor: CLIPProcessor, record: dict,
                            metrics: dict | None, lora_settings: dict | None, push: bool, widget: list | None,
                            train_metrics: dict | None = None) -> None:
    """`save_outputs` into a hidden folder of --output_dir, then each file renamed into place
    (config.json last): a full disk or a crash while saving leaves no half-written final model that
    loads (the checkpoint-* folders stay as they were). Then the push, from the complete folder."""
    training_args = args.training
    output_dir = Path(training_args.output_dir)
    staging = output_dir / FINAL_STAGING
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    training_args.output_dir = str(staging)
    try:
        save_outputs(args, trainer, processor, record, metrics, lora_settings, widget, train_metrics=train_metrics)
    except BaseException:
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        training_args.output_dir = str(output_dir)
    if trainer.is_world_process_zero():
        _move_into(staging, output_dir)
        logger.info("wrote the checkpoint to %s", output_dir)
        if push:
            push_outputs(args, record, widget)


def _move_into(staging: Path, output_dir: Path) -> None:
    try:
        for path in sorted(staging.iterdir(), key=lambda path: path.name == "config.json"):
            target = output_dir / path.name
            if path.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
        staging.rmdir()
    except OSError as error:
        raise UserError(f"--output_dir {output_dir}: could not move the final checkpoint into place from {staging} "
                        f"({error.strerror or error}); the complete files are in {staging}") from None
