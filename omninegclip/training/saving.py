"""The end of a training run: the final checkpoint (plain CLIP weights with any LoRA adapters merged,
processor, metrics, Trainer state, provenance, model card) written into a hidden folder and moved
into output_dir file by file (`save_final_model`), and the disk space that needs, checked before
training (`check_disk_space`). The push is the Trainer's own (`trainer.push_to_hub()`). Each function
takes the `OmniNegCLIPTrainer` (its `record`, `lora_settings`, `base_model`, `omninegclip_model`)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from transformers import Trainer

from modeling_omninegclip import SETTINGS_KEY
from omninegclip.common.cli import UserError
from omninegclip.training.lora import ADAPTER_DIR, save_adapter

logger = logging.getLogger("omninegclip.train")

FINAL_STAGING = ".final-partial"  # where the final checkpoint is written before it is moved into output_dir
PROCESSOR_BYTES = 4 * 2**20  # tokenizer and image processor files, with room to spare


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"


def space_needed(model, trained_model) -> tuple[int, int]:
    """(bytes of the final folder, bytes of one checkpoint-* folder): the weights as saved, plus the
    optimiser's two float32 moments of every trained parameter (of `trained_model`: LoRA's
    adapters) in a checkpoint."""
    weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters()) + PROCESSOR_BYTES
    trained = sum(parameter.numel() for parameter in trained_model.parameters() if parameter.requires_grad)
    return weights, weights + 2 * 4 * trained


def check_disk_space(args, model, trained_model) -> None:
    """Refuse, before preparation and training, an output_dir whose disk cannot hold the final folder
    and (when checkpoints are saved) one checkpoint: a run that trains for hours must not lose its
    weights at the end."""
    folder = Path(args.output_dir)
    existing = next((path for path in (folder, *folder.parents) if path.exists()), Path("."))
    free = shutil.disk_usage(existing).free
    final, checkpoint = space_needed(model, trained_model)
    saves = str(getattr(args.save_strategy, "value", args.save_strategy)) != "no"
    needed = final + (checkpoint if saves else 0)
    if free < needed:
        raise UserError(
            f"--output_dir {folder}: its disk has {_megabytes(free)} free, and this run needs about "
            f"{_megabytes(needed)} "
            f"(final folder {_megabytes(final)}"
            + (f", one checkpoint {_megabytes(checkpoint)}" if saves else "")
            + "); free some space or pass an --output_dir on a larger disk"
        )


def merge_adapters(trainer: Trainer) -> None:
    """Write the adapter (when asked) and merge the LoRA adapters: from then on the Trainer holds
    the merged plain model, so `save_model` and `push_to_hub` write plain CLIP weights only."""
    output_dir, args = Path(trainer.args.output_dir), trainer.args
    if args.save_adapter and trainer.is_world_process_zero():  # before merging: it takes the adapters out
        save_adapter(trainer.model, output_dir / ADAPTER_DIR, args.card_base_model or trainer.base_model)
    merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    trainer.model = trainer.model_wrapped = merged
    # config.json records the adapters that were merged (OmniNegCLIPModel.save_pretrained keeps what the config holds)
    setattr(
        merged.config,
        SETTINGS_KEY,
        dict(getattr(merged.config, SETTINGS_KEY, None) or {}) | {"lora": trainer.lora_settings},
    )


def _write_final(trainer: Trainer, eval_metrics: dict | None, train_metrics: dict | None) -> None:
    """Everything of the final folder into output_dir (the staging folder, while this runs); the
    card (`create_model_card`) writes the run's record beside it."""
    trainer.save_model(_internal_call=True)  # every process (FSDP/DeepSpeed gather the weights); the push comes after
    if not trainer.is_world_process_zero():
        return
    if train_metrics is not None:
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
    if eval_metrics is not None:
        trainer.save_metrics("eval", eval_metrics)
    trainer.save_state()
    trainer.create_model_card()


def save_final_model(trainer: Trainer, eval_metrics: dict | None = None, train_metrics: dict | None = None) -> Path:
    """The final folder written into a hidden folder of output_dir, then each file renamed into place
    (config.json last): a full disk or a crash while saving leaves no half-written final model that
    loads, and the checkpoint-* folders stay as they were."""
    args = trainer.args
    output_dir = Path(args.output_dir)
    staging = output_dir / FINAL_STAGING
    if trainer.lora_settings is not None and hasattr(
        trainer.accelerator.unwrap_model(trainer.model), "merge_and_unload"
    ):
        merge_adapters(trainer)
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    args.output_dir = str(staging)
    try:
        _write_final(trainer, eval_metrics, train_metrics)
    except OSError as error:
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        if error.errno != errno.ENOSPC:
            raise
        final, _ = space_needed(trainer.omninegclip_model, trainer.model)
        kept = sorted(path.name for path in output_dir.glob("checkpoint-*"))
        raise UserError(
            f"--output_dir {output_dir}: the disk filled up while saving the final model (it needs about "
            f"{_megabytes(final)}); nothing half-written was left there"
            + (
                f", and the checkpoint-* folders ({', '.join(kept)}) are kept as they were: free some space and "
                f"resume with --resume_from_checkpoint latest"
                if kept
                else "; no checkpoint was saved (see --save_steps): free some space and train again"
            )
        ) from None
    except BaseException:
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        args.output_dir = str(output_dir)
    if trainer.is_world_process_zero():
        _move_into(staging, output_dir)
        logger.info("wrote the checkpoint to %s", output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _move_into(staging: Path, output_dir: Path) -> None:
    try:
        for path in sorted(staging.iterdir(), key=lambda path: path.name == "config.json"):
            target = output_dir / path.name
            if path.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
        staging.rmdir()
    except OSError as error:
        raise UserError(
            f"--output_dir {output_dir}: could not move the final checkpoint into place from {staging} "
            f"({error.strerror or error}); the complete files are in {staging}"
        ) from None
