"""The output folder of a training run: which checkpoint-* folders are complete, whether the folder
may be written and which checkpoint to resume from (`check_output_and_resume`), whether a resumed
run continues the same run (`check_resume_settings`), and the provenance record every checkpoint
carries (`training_record`, `write_provenance`). `resolve_resume` turns `latest` (the newest complete
checkpoint-* of the output folder) and `last-checkpoint` (the Hub backup of `--hub_strategy
checkpoint`) into a folder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainingArguments

from omninegclip.common.cli import UserError
from omninegclip.common.outputs import LOCK_FILE, PROBE_PREFIX, overlapping
from omninegclip.common.provenance import provenance
from omninegclip.common.safe_load import first_line
from omninegclip.training.data import SourceReport

if TYPE_CHECKING:
    from modeling_omninegclip import OmniNegCLIPModel
    from omninegclip.training.config import OmniNegCLIPConfig

logger = logging.getLogger("omninegclip.train")

PROVENANCE_FILE = "training_provenance.json"

# The Trainer writes it last into a checkpoint-* folder (after the weights, optimiser and RNG
# states, whatever their format: full, LoRA adapters, FSDP or DeepSpeed shards): a folder without it
# is a save that was interrupted.
TRAINER_STATE_FILE = "trainer_state.json"
LATEST_CHECKPOINT = ("latest", "last", "true")
HUB_LAST_CHECKPOINT = (
    "last-checkpoint"  # the folder --hub_strategy checkpoint keeps on the Hub (and here, once fetched)
)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoint-* folders of `output_dir` the Trainer finished writing, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [path for path in folder.glob("checkpoint-*") if path.is_dir() and path.name.split("-", 1)[1].isdigit()]
    return sorted(
        (path for path in found if (path / TRAINER_STATE_FILE).is_file()),
        key=lambda path: int(path.name.split("-", 1)[1]),
    )


def _local_paths(source: str) -> list[Path]:
    """The local files or folders a --dataset_name value names (comma-separated data files allowed)."""
    return [
        Path(part.strip()).expanduser()
        for part in source.split(",")
        if part.strip() and Path(part.strip()).expanduser().exists()
    ]


def check_output_and_resume(
    training_args: TrainingArguments, overwrite: bool = False, sources: list[str] = (), model: str | None = None
) -> str | None:
    """Fail before anything slow on an --output_dir that is a file, that is or holds or lies inside
    a dataset of `sources` or the `model` trained from, or that is not empty while this run neither
    resumes nor overwrites it; on a checkpoint to resume from that is not one. Return the checkpoint
    folder to resume from (`latest`: the newest complete checkpoint-* in --output_dir), or None."""
    output_dir = Path(training_args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {str(output_dir)!r} is a file; expected a folder (created if missing)")
    for source in sources:
        for path in _local_paths(source):
            if overlapping(output_dir, path):
                raise UserError(
                    f"--output_dir {str(output_dir)!r} overlaps the training data {str(path)!r} (the same folder, or "
                    "one "
                    f"inside the other): the model would overwrite the dataset's files; pass another --output_dir"
                )
    for path in _local_paths(model or ""):
        if overlapping(output_dir, path):
            raise UserError(
                f"--output_dir {str(output_dir)!r} overlaps the model trained from, --model_name_or_path "
                f"{str(path)!r} (the "
                f"same folder, or one inside the other): the run would replace its base in place, even with "
                f"--overwrite_output_dir; pass another --output_dir"
            )
    contents = (
        sorted(
            path.name
            for path in output_dir.iterdir()
            if path.name != LOCK_FILE and not path.name.startswith(PROBE_PREFIX)
        )
        if output_dir.is_dir()
        else []
    )
    resume = training_args.resume_from_checkpoint
    resumes_here = bool(resume) and (
        resume.lower() in LATEST_CHECKPOINT
        or resume == HUB_LAST_CHECKPOINT
        or Path(resume).expanduser().resolve().parent == output_dir.resolve()
    )
    if contents and not resumes_here:
        shown = ", ".join(contents[:6]) + (f", … ({len(contents)} entries)" if len(contents) > 6 else "")
        if not overwrite:
            again = (
                " --resume_from_checkpoint latest to continue the run saved there,"
                if complete_checkpoints(output_dir)
                else ""
            )
            raise UserError(
                f"--output_dir {str(output_dir)!r} is not empty ({shown}) and this run does not resume a checkpoint "
                "of it: pass"
                f"{again} --overwrite_output_dir to write over it, or another --output_dir"
            )
        logger.warning("--overwrite_output_dir: writing over the files in %s (%s)", output_dir, shown)
        if training_args.process_index == 0:
            _remove_old_checkpoints(output_dir)
    if not resume:
        return None
    if resume == HUB_LAST_CHECKPOINT and not (output_dir / HUB_LAST_CHECKPOINT).is_dir():
        return resume  # fetched from the Hub by the Trainer, once the Hub is known to answer
    return resolve_checkpoint(output_dir, resume)


def resolve_checkpoint(output_dir: str | Path, resume: str) -> str:
    """The checkpoint folder `--resume_from_checkpoint` names: a folder the Trainer wrote, or `latest`
    (the newest complete checkpoint-* in `output_dir`); a `UserError` naming the flag otherwise."""
    output_dir = Path(output_dir)
    if resume.lower() in LATEST_CHECKPOINT:
        checkpoints = complete_checkpoints(output_dir)
        if not checkpoints:
            raise UserError(
                f"--resume_from_checkpoint {resume}: no complete checkpoint-* folder (one with {TRAINER_STATE_FILE}) "
                f"in --output_dir {str(output_dir)!r}"
            )
        return str(checkpoints[-1])
    folder = Path(resume).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"--resume_from_checkpoint {resume!r} does not exist or is not a folder; expected a checkpoint-* "
            f"folder the Trainer wrote, 'latest' for the newest one in --output_dir, or '{HUB_LAST_CHECKPOINT}' "
            f"for the Hub backup of --hub_strategy checkpoint"
        )
    if not (folder / TRAINER_STATE_FILE).is_file():
        raise UserError(
            f"--resume_from_checkpoint {resume!r} is not a complete checkpoint: it has no {TRAINER_STATE_FILE} "
            "(not a folder the Trainer wrote, or a save interrupted midway); pass an earlier checkpoint-* folder or "
            "'latest'"
        )
    return str(folder)


def _remove_old_checkpoints(output_dir: Path) -> None:
    """An overwritten run's checkpoint-* folders go (and a Hub backup fetched into it): `latest` must
    never resume the old run, whose settings and schedule differ."""
    old = [path for path in output_dir.glob("checkpoint-*") if path.is_dir()]
    old += [path for path in (output_dir / HUB_LAST_CHECKPOINT,) if path.is_dir()]
    for path in old:
        shutil.rmtree(path)
    if old:
        logger.warning(
            "--overwrite_output_dir: removed the old run's %s from %s",
            ", ".join(sorted(path.name for path in old)),
            output_dir,
        )


def interrupted_message(output_dir: str) -> str:
    """What a Ctrl-C'd run kept and how to go on."""
    checkpoints = complete_checkpoints(output_dir)
    if checkpoints:
        return (
            f"the {len(checkpoints)} complete checkpoint-* folder(s) in {output_dir} are kept (newest: "
            f"{checkpoints[-1].name}); "
            f"continue with the same flags plus --resume_from_checkpoint latest"
        )
    return (
        f"no checkpoint had been saved in {output_dir} yet (see --save_steps); run the same command again to start "
        f"over"
    )


def training_record(
    config: OmniNegCLIPConfig,
    model: OmniNegCLIPModel,
    lora_settings: dict | None,
    reports: list[SourceReport],
    datasets: list[str],
) -> dict:
    """What produced a checkpoint: versions, seed, git commit, data (with its skips) and every setting."""
    return provenance(seed=config.seed) | {
        "base_model": model.name_or_path,
        "datasets": datasets,
        "base_model_id": config.card_base_model,
        "dataset_ids": config.dataset_ids(),
        "data": [report.to_json() for report in reports],
        "world_size": config.world_size,
        "resumed_from": None,
        "omninegclip": model.settings() | {"lora": lora_settings},
        "training_arguments": {
            key: value for key, value in config.to_dict().items() if not key.startswith("hub_token")
        },
    }


def write_provenance(folder: Path, record: dict) -> None:
    (folder / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")


# The Trainer's settings that change what a run computes: a resumed run must have the same.
# (--max_steps and --num_train_epochs may grow, to train a run further.)
RUN_SETTINGS = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "optim",
    "seed",
    "dataloader_drop_last",
)


def _resume_identity(record: dict, train_split: str) -> dict:
    """What must match for a run to resume another: base model, training data, losses, trainable parts, LoRA."""
    record = json.loads(json.dumps(record, default=str))  # as the checkpoint's JSON holds it
    settings = record.get("omninegclip") or {}
    return {
        "base model (--model_name_or_path)": record.get("base_model"),
        "datasets (--dataset_name, --mix_dataset_name)": record.get("datasets"),
        "training rows (per dataset: rows read, rows kept)": [
            [report.get("name"), report.get("split"), report.get("rows"), report.get("kept")]
            for report in record.get("data") or []
            if report.get("split") == train_split
        ],
        "loss settings (--lambda_*, --margin)": settings.get("loss"),
        "text blocks that train": settings.get("trainable_text_blocks"),
        "trainable parts (--train_*)": {
            key: value
            for key, value in (settings.get("trainable") or {}).items()
            if key not in ("front_blocks", "text_preset", "text_blocks")
        },
        "LoRA (--lora_*)": settings.get("lora"),
        "streamed data (--streaming, --mix_probabilities, processes)": {
            key: value for key, value in (record.get("streaming") or {}).items() if key != "data"
        }
        or None,
        "schedule and optimiser (--learning_rate, --lr_scheduler_type, --warmup_*, batch sizes, --weight_decay, "
        "--optim, "
        "--seed, ...)": {name: (record.get("training_arguments") or {}).get(name) for name in RUN_SETTINGS},
    }


def check_resume_settings(checkpoint: str | Path, record: dict, train_split: str = "train") -> None:
    """A `UserError` naming every difference between the settings recorded in the checkpoint to
    resume from and this run's (a resumed run must continue the same run)."""
    path = Path(checkpoint) / PROVENANCE_FILE
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        logger.warning(
            "--resume_from_checkpoint %s: no %s there, so its settings cannot be compared with this run's",
            checkpoint,
            PROVENANCE_FILE,
        )
        return
    except (OSError, ValueError) as error:
        raise UserError(f"--resume_from_checkpoint: {path} cannot be read ({first_line(error)})") from None
    before, now = _resume_identity(saved, train_split), _resume_identity(record, train_split)
    differences = [
        f"{name}: {before[name]!r} in the checkpoint, {now[name]!r} now" for name in now if before[name] != now[name]
    ]
    if differences:
        raise UserError(
            f"--resume_from_checkpoint {checkpoint} was saved by a run with other settings: "
            + "; ".join(differences)
            + ". Resume with the checkpoint's settings, or start a new run from its weights with "
            f"--model_name_or_path {checkpoint} and another --output_dir"
        )
