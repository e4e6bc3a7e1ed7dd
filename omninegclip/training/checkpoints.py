"""The output folder of a training run: which checkpoint-* folders are complete, whether the folder
may be written and which checkpoint to resume from (`check_output_and_resume`), whether a resumed
run continues the same run (`check_resume_settings`), and the provenance record every checkpoint
carries (`training_record`, `write_provenance`)."""

from __future__ import annotations

import json
import logging
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
    from train import Arguments  # train.py's parsed flags

logger = logging.getLogger("omninegclip.train")

PROVENANCE_FILE = "training_provenance.json"

# The Trainer writes it last into a checkpoint-* folder (after the weights, optimiser and RNG
# states, whatever their format: full, LoRA adapters, FSDP or DeepSpeed shards): a folder without it
# is a save that was interrupted.
TRAINER_STATE_FILE = "trainer_state.json"
LATEST_CHECKPOINT = ("latest", "last", "true")


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoint-* folders of `output_dir` the Trainer finished writing, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [path for path in folder.glob("checkpoint-*") if path.is_dir() and path.name.split("-", 1)[1].isdigit()]
    return sorted((path for path in found if (path / TRAINER_STATE_FILE).is_file()), key=lambda path: int(path.name.split("-", 1)[1]))


def _local_paths(source: str) -> list[Path]:
    """The local files or folders a --dataset_name value names (comma-separated data files allowed)."""
    return [Path(part.strip()).expanduser() for part in source.split(",") if part.strip() and Path(part.strip()).expanduser().exists()]


def check_output_and_resume(training_args: TrainingArguments, overwrite: bool = False, sources: list[str] = ()) -> str | None:
    """Fail before anything slow on an --output_dir that is a file, that is or holds or lies inside
    a dataset of `sources`, or that is not empty while this run neither resumes nor overwrites it;
    on a checkpoint to resume from that is not one. Return the checkpoint folder to resume from
    (`latest`: the newest complete checkpoint-* in --output_dir), or None."""
    output_dir = Path(training_args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {str(output_dir)!r} is a file; expected a folder (created if missing)")
    for source in sources:
        for path in _local_paths(source):
            if overlapping(output_dir, path):
                raise UserError(f"--output_dir {str(output_dir)!r} overlaps the training data {str(path)!r} (the same folder, or one "
                                f"inside the other): the model would overwrite the dataset's files; pass another --output_dir")
    contents = sorted(path.name for path in output_dir.iterdir()
                      if path.name != LOCK_FILE and not path.name.startswith(PROBE_PREFIX)) if output_dir.is_dir() else []
    resume = training_args.resume_from_checkpoint
    resumes_here = bool(resume) and (resume.lower() in LATEST_CHECKPOINT or Path(resume).expanduser().resolve().parent == output_dir.resolve())
    if contents and not resumes_here:
        shown = ", ".join(contents[:6]) + (f", … ({len(contents)} entries)" if len(contents) > 6 else "")
        if not overwrite:
            again = (" --resume_from_checkpoint latest to continue the run saved there," if complete_checkpoints(output_dir) else "")
            raise UserError(f"--output_dir {str(output_dir)!r} is not empty ({shown}) and this run does not resume a checkpoint of it: pass"
                            f"{again} --overwrite_output_dir to write over it, or another --output_dir")
        logger.warning("--overwrite_output_dir: writing over the files in %s (%s)", output_dir, shown)
    if training_args.per_device_train_batch_size < 1:
        raise UserError(f"--per_device_train_batch_size must be >= 1, got {training_args.per_device_train_batch_size}")
    if not resume:
        return None
    if resume.lower() in LATEST_CHECKPOINT:
        checkpoints = complete_checkpoints(output_dir)
        if not checkpoints:
            raise UserError(f"--resume_from_checkpoint {resume}: no complete checkpoint-* folder (one with {TRAINER_STATE_FILE}) "
                            f"in --output_dir {str(output_dir)!r}")
        return str(checkpoints[-1])
    folder = Path(resume).expanduser()
    if not folder.is_dir():
        raise UserError(f"--resume_from_checkpoint {resume!r} does not exist or is not a folder; expected a checkpoint-* "
                        f"folder the Trainer wrote, or 'latest' for the newest one in --output_dir")
    if not (folder / TRAINER_STATE_FILE).is_file():
        raise UserError(f"--resume_from_checkpoint {resume!r} is not a complete checkpoint: it has no {TRAINER_STATE_FILE} "
                        f"(not a folder the Trainer wrote, or a save interrupted midway); pass an earlier checkpoint-* folder or 'latest'")
    return str(folder)


def interrupted_message(output_dir: str) -> str:
    """What a Ctrl-C'd run kept and how to go on."""
    checkpoints = complete_checkpoints(output_dir)
    if checkpoints:
        return (f"the {len(checkpoints)} complete checkpoint-* folder(s) in {output_dir} are kept (newest: {checkpoints[-1].name}); "
                f"continue with the same flags plus --resume_from_checkpoint latest")
    return f"no checkpoint had been saved in {output_dir} yet (see --save_steps); run the same command again to start over"


def training_record(args: Arguments, model: OmniNegCLIPModel, lora_settings: dict | None, push: bool,
                    reports: list[SourceReport], resumed_from: str | None) -> dict:
    """What produced a checkpoint: versions, seed, git commit, data (with its skips) and every setting."""
    model_args, data_args, card_args, training_args = args.model, args.data, args.card, args.training
    return provenance(seed=training_args.seed) | {
        "base_model": model_args.model_name_or_path,
        "datasets": data_args.sources(),
        "base_model_id": card_args.card_base_model,
        "dataset_ids": card_args.dataset_ids(),
        "data": [report.to_json() for report in reports],
        "world_size": training_args.world_size,
        "resumed_from": resumed_from,
        "omninegclip": model.settings() | {"lora": lora_settings},
        "training_arguments": {k: v for k, v in training_args.to_dict().items() if not k.startswith("hub_token")}
        | {"push_to_hub": push},
    }


def write_provenance(folder: Path, record: dict) -> None:
    (folder / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")


def _resume_identity(record: dict, train_split: str) -> dict:
    """What must match for a run to resume another: base model, training data, losses, trainable parts, LoRA."""
    record = json.loads(json.dumps(record, default=str))  # as the checkpoint's JSON holds it
    settings = record.get("omninegclip") or {}
    return {
        "base model (--model_name_or_path)": record.get("base_model"),
        "datasets (--dataset_name, --mix_dataset_name)": record.get("datasets"),
        "training rows (per dataset: rows read, rows kept)": [
            [report.get("name"), report.get("split"), report.get("rows"), report.get("kept")] for report in record.get("data") or []
            if report.get("split") == train_split],
        "loss settings (--lambda_*, --margin)": settings.get("loss"),
        "text blocks that train": settings.get("trainable_text_blocks"),
        "trainable parts (--train_*)": {key: value for key, value in (settings.get("trainable") or {}).items()
                                        if key not in ("front_blocks", "text_preset", "text_blocks")},
        "LoRA (--lora_*)": settings.get("lora"),
    }


def check_resume_settings(checkpoint: str | Path, record: dict, train_split: str = "train") -> None:
    """A `UserError` naming every difference between the settings recorded in the checkpoint to
    resume from and this run's (a resumed run must continue the same run)."""
    path = Path(checkpoint) / PROVENANCE_FILE
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        logger.warning("--resume_from_checkpoint %s: no %s there, so its settings cannot be compared with this run's", checkpoint, PROVENANCE_FILE)
        return
    except (OSError, ValueError) as error:
        raise UserError(f"--resume_from_checkpoint: {path} cannot be read ({first_line(error)})") from None
    before, now = _resume_identity(saved, train_split), _resume_identity(record, train_split)
    differences = [f"{name}: {before[name]!r} in the checkpoint, {now[name]!r} now" for name in now if before[name] != now[name]]
    if differences:
        raise UserError(f"--resume_from_checkpoint {checkpoint} was saved by a run with other settings: " + "; ".join(differences)
                        + ". Resume with the checkpoint's settings, or start a new run from its weights with "
                          f"--model_name_or_path {checkpoint} and another --output_dir")
