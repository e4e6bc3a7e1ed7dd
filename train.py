"""Fine-tune CLIP with Omni-NegCLIP: front text blocks only, presence- and absence-based negation.

Single process (CPU or one GPU):

    python train.py --model_name_or_path openai/clip-vit-base-patch32 \\
        --dataset_name data/coco-neg --output_dir runs/omninegclip \\
        --per_device_train_batch_size 128 --learning_rate 1e-6 --weight_decay 0.2 \\
        --warmup_steps 50 --lr_scheduler_type cosine --num_train_epochs 30 --bf16

Several GPUs (the same script, unchanged; see configs/accelerate/ for DDP, FSDP, DeepSpeed):

    accelerate launch --config_file configs/accelerate/ddp.yaml train.py <the same flags>

Or one YAML/JSON file holding every flag: `python train.py configs/faithful.yaml`.

Data: any HF dataset (a Hub id, a `save_to_disk` folder, or local json/csv/parquet files) with an
image column, a caption column and presence-/absence-negated caption columns (`data_builder.py`
writes exactly these). A row may carry either negation, both or none (None or ""). To train as the
authors do, on a presence dataset (CC-Neg) and an absence dataset (COCO) at once, pass the second
with `--mix_dataset_name`: the two are interleaved one row each (the smaller one repeated), so with
the Trainer's shuffling every batch holds about half presence rows and half absence rows, and each
loss term is computed on the rows that carry its inputs.

The image tower is frozen by default; its embeddings are then computed once, before training, and
cached on disk keyed by the vision weights, the image processor and the data (so no random image
augmentation in that mode). Captions are padded per batch, and all caption sets of a batch go
through the text encoder in one call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import (
    CLIPProcessor,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from modeling_omninegclip import LOSS_TERM_NAMES, OmniNegCLIPModel, OmniNegLossConfig, TrainableConfig, apply_trainable
from omninegclip.cli import UserError, run_cli
from omninegclip.data import (
    CaptionColumns,
    OmniNegCollator,
    cached_image_embeddings,
    load_any_dataset,
    prepare_dataset,
)
from omninegclip.provenance import provenance
from omninegclip.model_card import write_model_card

logger = logging.getLogger("omninegclip.train")


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="openai/clip-vit-base-patch32",
        metadata={"help": "A CLIP checkpoint: Hub id or local folder (weights + processor)."},
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Where the processor lives, if not beside the weights."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Hub download cache."})


@dataclass
class DataArguments:
    dataset_name: str = field(
        default=None,
        metadata={"help": "Hub id, `save_to_disk` folder, or local data file(s) (comma-separated) to train on."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    mix_dataset_name: str | None = field(
        default=None,
        metadata={"help": "A second dataset (same column names) interleaved with the first, e.g. absence rows beside presence rows."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default="validation", metadata={"help": "Split for the evaluation loss; 'none' to skip. Missing: skipped with a note."}
    )
    image_column: str = field(default="image", metadata={"help": "Column with the images (PIL or datasets Image)."})
    caption_column: str = field(default="caption", metadata={"help": "Column with the original captions."})
    presence_column: str = field(
        default="presence_negated",
        metadata={"help": "Column with presence-negated captions (negate an object IN the image); 'none' for no such column."},
    )
    absence_column: str = field(
        default="absence_negated",
        metadata={"help": "Column with absence-negated captions (negate a plausible object NOT in the image); 'none' for no such column."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})
    max_caption_length: int = field(default=77, metadata={"help": "Token limit per caption; longer ones are truncated and counted."})
    cache_image_embeddings: bool = field(
        default=True,
        metadata={"help": "With a frozen image tower, embed each image once and reuse it every epoch (cached on disk)."},
    )
    image_embedding_cache_dir: str | None = field(
        default=None, metadata={"help": "Where cached image embeddings go (default: <output_dir>/../.image_embedding_cache)."}
    )

    def __post_init__(self):
        if not self.dataset_name:
            raise UserError("--dataset_name is required: a Hub id, a save_to_disk folder or data files")
        if not 2 < self.max_caption_length <= 77:
            raise UserError(f"--max_caption_length must be in 3..77 (CLIP's context), got {self.max_caption_length}")
        for flag in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise UserError(f"--{flag} must be >= 1, got {value}")


@dataclass
class OmniNegArguments:
    lambda_abs: float = field(default=1.0, metadata={"help": "Weight of the absence objective L_abs."})
    lambda_orig: float = field(default=1.0, metadata={"help": "Weight of L_orig inside L_abs."})
    lambda_text: float = field(default=1.0, metadata={"help": "Weight of the caption/negation separation hinge L_text."})
    margin: float = field(default=0.9, metadata={"help": "Margin m of L_text = max(0, cos(t, a) + m)."})
    lambda_choice: float = field(
        default=0.0, metadata={"help": "Weight of the optional multiple-choice term (absence negation beats presence negation); 0 = the paper."}
    )
    front_blocks: int | None = field(
        default=None, metadata={"help": "Train text blocks 0..N-1 (default: half the text depth, 6 of 12 for ViT-B/32)."}
    )
    text_preset: str | None = field(default=None, metadata={"help": "front | middle | back | whole (overrides --front_blocks)."})
    text_blocks: str | None = field(
        default=None, metadata={"help": "Explicit comma-separated text block indices, e.g. '0,1,2' (overrides the others)."}
    )
    train_token_embedding: bool = field(default=True, metadata={"help": "Train the token embedding."})
    train_position_embedding: bool = field(default=True, metadata={"help": "Train the position embedding."})
    train_final_layer_norm: bool = field(default=True, metadata={"help": "Train the text tower's final layer norm."})
    train_text_projection: bool = field(default=True, metadata={"help": "Train the text projection."})
    train_logit_scale: bool = field(default=True, metadata={"help": "Train the logit scale (clamped to <= ln 100)."})
    train_vision_tower: bool = field(default=False, metadata={"help": "Also train the image tower (off in Omni-NegCLIP)."})

    def loss_config(self) -> OmniNegLossConfig:
        try:
            return OmniNegLossConfig(self.lambda_abs, self.lambda_orig, self.lambda_text, self.margin, self.lambda_choice)
        except ValueError as error:
            raise UserError(f"bad loss setting: {error}") from None

    def trainable_config(self) -> TrainableConfig:
        blocks = None
        if self.text_blocks:
            try:
                blocks = [int(part) for part in self.text_blocks.split(",") if part.strip()]
            except ValueError:
                raise UserError(f"--text_blocks must be comma-separated integers like '0,1,2', got {self.text_blocks!r}") from None
        try:
            return TrainableConfig(
                front_blocks=self.front_blocks,
                text_preset=self.text_preset,
                text_blocks=blocks,
                train_token_embedding=self.train_token_embedding,
                train_position_embedding=self.train_position_embedding,
                train_final_layer_norm=self.train_final_layer_norm,
                train_text_projection=self.train_text_projection,
                train_logit_scale=self.train_logit_scale,
                train_vision_tower=self.train_vision_tower,
            )
        except ValueError as error:
            raise UserError(f"bad trainable setting: {error}") from None


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------


class ClampLogitScaleCallback(TrainerCallback):
    """exp(logit_scale) <= 100 after every optimiser step, as CLIP trains."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        unwrapped = getattr(model, "module", model)
        if unwrapped is not None:
            unwrapped.clamp_logit_scale()


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf; the message names the step, the rows and the terms."""


class OmniNegCLIPTrainer(Trainer):
    """`Trainer` whose `compute_loss` runs the Omni-NegCLIP objectives and logs every term."""

    # The model returns a batch mean, not a sum over `num_items_in_batch`: the Trainer scales for GA.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.add_callback(ClampLogitScaleCallback())
        self._term_sums: dict[str, float] = {}
        self._term_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        row_ids = inputs.pop("row_ids", None)
        outputs = model(**inputs, return_loss=True)
        terms = {name: getattr(outputs, name) for name in LOSS_TERM_NAMES if getattr(outputs, name) is not None}
        bad = [name for name, value in terms.items() if not torch.isfinite(value).all()]
        if bad or not torch.isfinite(outputs.loss).all():
            rows = row_ids.tolist() if row_ids is not None else "unknown"
            raise NonFiniteLossError(
                f"non-finite loss at step {self.state.global_step}: terms {bad or ['loss']} went bad on dataset rows {rows}. "
                f"The last good checkpoint is the newest checkpoint-* folder in {self.args.output_dir}."
            )
        if model.training:
            for name, value in terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(value.detach())
            self._term_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._term_count and "loss" in logs:
            for name, total in self._term_sums.items():
                logs[name] = round(total / self._term_count, 4)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, *args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, OmniNegArguments, TrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, OmniNegArguments, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        path = Path(argv[0])
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        parse = parser.parse_json_file if path.suffix == ".json" else parser.parse_yaml_file
        return parse(str(path), allow_extra_keys=False)
    try:
        return parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise UserError("bad command-line flags (see the argparse message above; `python train.py --help` lists them)") from None
        raise


def load_model(model_args: ModelArguments, omni_args: OmniNegArguments) -> tuple[OmniNegCLIPModel, CLIPProcessor]:
    source = model_args.model_name_or_path
    try:
        model = OmniNegCLIPModel.from_pretrained(source, cache_dir=model_args.cache_dir)
        processor = CLIPProcessor.from_pretrained(model_args.processor_name_or_path or source, cache_dir=model_args.cache_dir)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(
            f"--model_name_or_path {source!r} is not a loadable CLIP checkpoint with its processor "
            f"(expected a Hub id or a folder with config.json of model_type 'clip', weights and processor files): {error}"
        ) from None
    if model.config.model_type != "clip":
        raise UserError(f"--model_name_or_path {source!r} has model_type {model.config.model_type!r}, expected 'clip'")
    model.loss_config = omni_args.loss_config()
    model.trainable_config = omni_args.trainable_config()
    try:
        apply_trainable(model, model.trainable_config)
    except ValueError as error:
        raise UserError(f"bad trainable setting for {source!r}: {error}") from None
    return model, processor


def main(argv: list[str]) -> None:
    model_args, data_args, omni_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    datasets.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)
    # Negation columns are inputs the model's signature does not name: keep them.
    training_args.remove_unused_columns = False
    training_args.label_names = []
    if training_args.world_size > 1 and not training_args.dataloader_drop_last:
        logger.info("several processes: using drop-last batches (padded duplicate rows would be false negatives)")
        training_args.dataloader_drop_last = True

    model, processor = load_model(model_args, omni_args)
    columns = CaptionColumns.from_flags(
        data_args.image_column, data_args.caption_column, data_args.presence_column, data_args.absence_column
    )
    splits = {"train": data_args.train_split}
    if training_args.eval_strategy != "no" and data_args.eval_split and data_args.eval_split.lower() != "none":
        splits["eval"] = data_args.eval_split
    prepared = {}
    for role, split in splits.items():
        sources = [data_args.dataset_name] + ([data_args.mix_dataset_name] if data_args.mix_dataset_name else [])
        raw = [load_any_dataset(name, split, data_args.dataset_config_name, model_args.cache_dir, required=role == "train") for name in sources]
        raw = [dataset for dataset in raw if dataset is not None]
        if not raw:
            logger.warning("no %r split in %s: evaluation loss skipped", split, data_args.dataset_name)
            training_args.eval_strategy = "no"
            continue
        limit = data_args.max_train_samples if role == "train" else data_args.max_eval_samples
        with training_args.main_process_first(desc=f"preparing {role} data"):
            prepared[role] = prepare_dataset(raw, sources, columns, processor.tokenizer, data_args.max_caption_length, limit)

    if data_args.cache_image_embeddings and not omni_args.train_vision_tower:
        cache_dir = Path(data_args.image_embedding_cache_dir or Path(training_args.output_dir).parent / ".image_embedding_cache")
        for role, dataset in prepared.items():
            with training_args.main_process_first(desc=f"embedding {role} images"):
                prepared[role] = cached_image_embeddings(model, processor.image_processor, dataset, columns.image, cache_dir)

    trainer = OmniNegCLIPTrainer(
        model=model,
        args=training_args,
        train_dataset=prepared["train"],
        eval_dataset=prepared.get("eval"),
        data_collator=OmniNegCollator(processor.image_processor, columns, pad_token_id=processor.tokenizer.pad_token_id),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        record = provenance(seed=training_args.seed) | {
            "base_model": model_args.model_name_or_path,
            "datasets": [data_args.dataset_name] + ([data_args.mix_dataset_name] if data_args.mix_dataset_name else []),
            "omninegclip": model.settings(),
            "training_arguments": {k: v for k, v in training_args.to_dict().items() if not k.startswith("hub_token")},
        }
        Path(training_args.output_dir, "training_provenance.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        if "eval" in prepared:
            metrics = trainer.evaluate()
            trainer.save_metrics("eval", metrics)
        write_model_card(training_args.output_dir, base_model=model_args.model_name_or_path, datasets=record["datasets"])
    if training_args.push_to_hub:
        trainer.push_to_hub()
        if trainer.is_world_process_zero():
            # Trainer.push_to_hub rewrote README.md without our metadata: put the project's card back.
            from huggingface_hub import upload_file

            write_model_card(training_args.output_dir, base_model=model_args.model_name_or_path, datasets=record["datasets"])
            upload_file(
                path_or_fileobj=str(Path(training_args.output_dir) / "README.md"),
                path_in_repo="README.md",
                repo_id=trainer.hub_model_id,
                token=training_args.hub_token,
            )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
