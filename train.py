"""Fine-tune CLIP with Omni-NegCLIP: front text blocks only, presence- and absence-based negation.

Single process (CPU or one GPU):

    python train.py --model_name_or_path openai/clip-vit-base-patch32 \\
        --dataset_name data/coco-neg --output_dir runs/omninegclip \\
        --per_device_train_batch_size 128 --learning_rate 1e-6 --weight_decay 0.2 \\
        --warmup_steps 50 --lr_scheduler_type cosine --num_train_epochs 30 --bf16

Several GPUs: the same script and flags, under a launcher (configs/accelerate/*.yaml say which):

    accelerate launch --config_file configs/accelerate/ddp.yaml train.py <the same flags>
    torchrun --nproc_per_node 8 train.py <the same flags>

Every contrastive term then sees the GLOBAL batch (processes x --per_device_train_batch_size):
the model all-gathers the embeddings with gradients, batches are drop-last, and the result equals
one process on the concatenated batch (tests/test_distributed.py checks it on two CPU processes).

One YAML/JSON file may hold the flags (`key: value`, the flag names without `--`); flags after it
override it: `python train.py my_run.yaml --learning_rate 1e-5`.

LoRA instead of full fine-tuning of the chosen text blocks (adapters on those blocks only; the
embeddings, final layer norm and projection then stay frozen unless their `--train_*` flag says
otherwise, and train as PEFT's modules_to_save; the logit scale cannot train with LoRA); the saved
checkpoint has the adapters merged, a plain CLIPModel; `--save_adapter` also writes the PEFT
adapter to <output_dir>/adapter (`--hub_adapter_id` pushes it to a repo of its own):

    python train.py <flags> --lora_r 16 --lora_alpha 32 --lora_target attention

Every evaluation reports the loss and the negation accuracies eval_presence_accuracy,
eval_absence_choice_accuracy and (where the data names the negated objects)
eval_which_object_accuracy, over the whole split (eval/negation_metrics.py); any of them can be
--metric_for_best_model.

Push to the Hub (weights, processor and this project's model card, in one commit after training;
`--widget_examples` gives the card's widget its own images and negation labels):

    python train.py <flags> --push_to_hub --hub_model_id you/omninegclip-vit-b32
    python -m omninegclip.training.model_card runs/omninegclip --push_to_hub you/omninegclip-vit-b32  # again, after eval

Data: any HF dataset (a Hub id, a `save_to_disk` folder, or local json/csv/parquet files) with an
image column, a caption column and presence-/absence-negated caption columns (`data_builder.py`
writes exactly these). A row may carry either negation, both or none (None or ""). To train as the
authors do, on a presence dataset (CC-Neg) and an absence dataset (COCO) at once, pass the second
with `--mix_dataset_name`: the smaller one is repeated to the larger one's length, and each
training batch of even size holds exactly half rows of each (reshuffled every epoch); each loss
term is computed on the rows that carry its inputs.

The image tower is frozen by default; its embeddings are then computed once, before training, and
cached on disk keyed by the vision weights, the image processor and the data (so no random image
augmentation in that mode). Captions are padded per batch, and all caption sets of a batch go
through the text encoder in one call.

Bad data never stops a run midway: before training, every row is checked (see omninegclip/training/data.py).
Rows whose caption is missing, empty or not text, or whose image is missing, corrupt, truncated or
oversized, are skipped and counted (the rule of omninegclip/common/skips.py); captions over the
token limit are truncated and counted; one `data:` line reports it all, and training_provenance.json
keeps it. A missing column is an error naming it.

Interrupted? Resume with the same flags plus `--resume_from_checkpoint runs/x/checkpoint-500` (or
`latest`: the newest complete checkpoint-* in --output_dir): the run then ends with the same weights
as one that was never interrupted (same data order, optimiser, scheduler and RNG states). A loss
that becomes NaN or inf stops the run with the step, the rows of the batch and the terms that went
bad; the checkpoint-* folders saved before it stay as they were. Every checkpoint-* folder and the
final folder carry training_provenance.json: library versions, seed, git commit and all settings.
Add `--debug` (or OMNINEGCLIP_DEBUG=1) to see the traceback behind an error message.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

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

from eval.negation_metrics import NegationMetrics, stack_embeddings, which_object_rows
from modeling_omninegclip import (
    LOSS_TERM_NAMES,
    OmniNegCLIPModel,
    OmniNegLossConfig,
    TrainableConfig,
    apply_trainable,
    resolve_text_blocks,
)
from omninegclip.common.checkpoints import HUB_ID, check_clip_checkpoint
from omninegclip.common.cli import Interrupted, UserError, run_cli
from omninegclip.common.clip import CONTEXT_LENGTH
from omninegclip.common.outputs import LOCK_FILE, PROBE_PREFIX, OutputLock, ensure_writable, overlapping
from omninegclip.common.provenance import provenance
from omninegclip.common.safe_load import load_pretrained_checked
from omninegclip.training.data import (
    SOURCE_COLUMN,
    SOURCE_ROW_COLUMN,
    BalancedSourceSampler,
    CaptionColumns,
    OmniNegCollator,
    PackedRows,
    SourceReport,
    load_any_dataset,
    prepare_dataset,
    summarize_reports,
)
from omninegclip.training.images import ImageTransform, image_pass, pixel_values
from omninegclip.training.lora import ADAPTER_DIR, LOGIT_SCALE_WITH_LORA, push_adapter, save_adapter
from omninegclip.training.lora import modules_to_save as lora_modules_to_save
from omninegclip.training.model_card import load_widget_examples, push_checkpoint, write_model_card

logger = logging.getLogger("omninegclip.train")

CONFIG_FILE_SUFFIXES = (".json", ".yaml", ".yml")
PROVENANCE_FILE = "training_provenance.json"
# The Trainer writes it last into a checkpoint-* folder (after the weights, optimiser and RNG
# states, whatever their format: full, LoRA adapters, FSDP or DeepSpeed shards): a folder without it
# is a save that was interrupted.
TRAINER_STATE_FILE = "trainer_state.json"
LATEST_CHECKPOINT = ("latest", "last", "true")
LORA_TARGET_MODULES = {
    "attention": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
    "mlp": ("mlp.fc1", "mlp.fc2"),
}
LORA_TARGET_MODULES["all"] = LORA_TARGET_MODULES["attention"] + LORA_TARGET_MODULES["mlp"]


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
        metadata={"help": "A second dataset (same column names) mixed half and half into every batch, e.g. absence rows beside presence rows."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default="validation", metadata={"help": "Split for the evaluation loss and negation accuracies; 'none' to skip. Missing: skipped with a note."}
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
    absence_affirmed_column: str = field(
        default="none",
        metadata={"help": "Column with absence-affirmed captions (the absence-negated caption with its object affirmed: false "
                          "for the image), a third option of the --lambda_choice term; 'none' (default) for two options."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})
    max_caption_length: int = field(default=CONTEXT_LENGTH, metadata={"help": "Token limit per caption; longer ones are truncated and counted."})
    cache_image_embeddings: bool = field(
        default=True,
        metadata={"help": "With a frozen image tower, embed each image once and reuse it every epoch (cached on disk)."},
    )
    image_embedding_cache_dir: str | None = field(
        default=None, metadata={"help": "Where cached image embeddings go (default: <output_dir>/../.image_embedding_cache)."}
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={"help": "Worker processes that decode and preprocess the images before training (each image once); "
                          "default: the machine's cores. 0 decodes in the main process."},
    )
    image_embedding_batch_size: int = field(
        default=256, metadata={"help": "Images per forward pass of the frozen image tower while embedding them before training."}
    )
    fast_image_decode: bool = field(
        default=True,
        metadata={"help": "Decode JPEGs with the decoder's own downscaling (draft mode) to no smaller than the resize "
                          "target, and preprocess with PIL/numpy, when the image processor has CLIP's usual settings "
                          "(README: within 0.03 of the processor's pixel values on average). false: full decode."},
    )

    def __post_init__(self):
        if not self.dataset_name:
            raise UserError("--dataset_name is required: a Hub id, a save_to_disk folder or data files")
        if not 2 < self.max_caption_length <= CONTEXT_LENGTH:
            raise UserError(f"--max_caption_length must be in 3..{CONTEXT_LENGTH} (CLIP's context), got {self.max_caption_length}")
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 0:
            raise UserError(f"--preprocessing_num_workers must be 0 or more, got {self.preprocessing_num_workers}")
        if self.image_embedding_batch_size < 1:
            raise UserError(f"--image_embedding_batch_size must be 1 or more, got {self.image_embedding_batch_size}")
        for flag in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise UserError(f"--{flag} must be >= 1, got {value}")

    def sources(self) -> list[str]:
        return [self.dataset_name] + ([self.mix_dataset_name] if self.mix_dataset_name else [])

    def columns(self) -> CaptionColumns:
        return CaptionColumns.from_flags(
            self.image_column, self.caption_column, self.presence_column, self.absence_column, self.absence_affirmed_column
        )


@dataclass
class OmniNegArguments:
    lambda_abs: float = field(default=1.0, metadata={"help": "Weight of the absence objective L_abs."})
    lambda_orig: float = field(default=1.0, metadata={"help": "Weight of L_orig inside L_abs."})
    lambda_text: float = field(default=1.0, metadata={"help": "Weight of the caption/negation separation hinge L_text."})
    margin: float = field(default=0.9, metadata={"help": "Margin m of L_text = max(0, cos(t, a) + m)."})
    lambda_choice: float = field(
        default=0.0, metadata={"help": "Weight of the optional multiple-choice term (absence negation beats presence negation); 0 = the paper."}
    )
    lambda_keep: float = field(
        default=0.0, metadata={"help": "Weight of the optional keep-the-match hinge (an absence negation may not score below its caption); 0 = the paper."}
    )
    front_blocks: int | None = field(
        default=None, metadata={"help": "Train text blocks 0..N-1 (default: half the text depth, 6 of 12 for ViT-B/32)."}
    )
    text_preset: str | None = field(default=None, metadata={"help": "front | middle | back | whole (overrides --front_blocks)."})
    text_blocks: str | None = field(
        default=None, metadata={"help": "Explicit comma-separated text block indices, e.g. '0,1,2' (overrides the others)."}
    )
    train_token_embedding: bool | None = field(default=None, metadata={"help": "Train the token embedding (default: yes; with LoRA: no)."})
    train_position_embedding: bool | None = field(default=None, metadata={"help": "Train the position embedding (default: yes; with LoRA: no)."})
    train_final_layer_norm: bool | None = field(default=None, metadata={"help": "Train the text tower's final layer norm (default: yes; with LoRA: no)."})
    train_text_projection: bool | None = field(default=None, metadata={"help": "Train the text projection (default: yes; with LoRA: no)."})
    train_logit_scale: bool | None = field(default=None, metadata={"help": "Train the logit scale, clamped to <= ln 100 (default: yes; not with LoRA)."})
    train_vision_tower: bool = field(default=False, metadata={"help": "Also train the whole image tower (off in Omni-NegCLIP)."})
    nan_check_steps: int = field(
        default=50,
        metadata={"help": "Check the losses for NaN/inf every N steps (and before every save, log, evaluation and the end), "
                          "so that a GPU step never waits for the host; the error still names the first bad step and its rows."},
    )

    def __post_init__(self):
        if self.nan_check_steps < 1:
            raise UserError(f"--nan_check_steps must be 1 or more, got {self.nan_check_steps}")

    def loss_config(self) -> OmniNegLossConfig:
        try:
            return OmniNegLossConfig(self.lambda_abs, self.lambda_orig, self.lambda_text, self.margin, self.lambda_choice, self.lambda_keep)
        except ValueError as error:
            raise UserError(f"bad loss setting: {error}") from None

    def blocks_choice(self) -> tuple[str, list[str]]:
        """(the flag that chooses the text blocks, the given flags it overrides): --text_blocks wins
        over --text_preset, which wins over --front_blocks (a config file's value may be overridden)."""
        given = [f"--{name} {value}" for name, value in (("text_blocks", self.text_blocks), ("text_preset", self.text_preset),
                                                         ("front_blocks", self.front_blocks)) if value is not None]
        return (given[0], given[1:]) if given else ("the default (the front half)", [])

    def trainable_config(self, lora: bool = False) -> TrainableConfig:
        """What trains. Under LoRA the chosen blocks get adapters instead, and the other text parts
        stay frozen unless their flag is given."""
        blocks = None
        if self.text_blocks is not None:
            try:
                blocks = [int(part) for part in self.text_blocks.split(",") if part.strip()]
            except ValueError:
                raise UserError(f"--text_blocks must be comma-separated integers like '0,1,2', got {self.text_blocks!r}") from None
            if not blocks:
                raise UserError(f"--text_blocks {self.text_blocks!r} selects no text block; expected comma-separated indices like '0,1,2' "
                                f"(leave it out for the default, or --front_blocks 0 to train no block)")
        default = not lora
        chosen = lambda flag: default if flag is None else flag  # noqa: E731
        try:
            return TrainableConfig(
                front_blocks=self.front_blocks,
                text_preset=self.text_preset,
                text_blocks=blocks,
                train_token_embedding=chosen(self.train_token_embedding),
                train_position_embedding=chosen(self.train_position_embedding),
                train_final_layer_norm=chosen(self.train_final_layer_norm),
                train_text_projection=chosen(self.train_text_projection),
                train_logit_scale=chosen(self.train_logit_scale),
                train_vision_tower=self.train_vision_tower,
            )
        except ValueError as error:
            raise UserError(f"bad trainable setting: {error}") from None


@dataclass
class LoraArguments:
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the chosen text blocks; 0 = full fine-tuning of those blocks."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling alpha (default: 2 * lora_r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target: str = field(
        default="all", metadata={"help": "Which linear layers of the chosen blocks get adapters: attention | mlp | all."}
    )
    save_adapter: bool = field(
        default=False,
        metadata={"help": "Also write the PEFT adapter (for PeftModel.from_pretrained on the base model) to <output_dir>/adapter; "
                          "with --push_to_hub it goes up in that subfolder of the model repo."},
    )
    hub_adapter_id: str | None = field(
        default=None, metadata={"help": "With --push_to_hub: push the adapter to this repo of its own instead (implies --save_adapter)."}
    )

    def __post_init__(self):
        if self.lora_r < 0:
            raise UserError(f"--lora_r must be >= 0 (0 = no LoRA), got {self.lora_r}")
        if self.hub_adapter_id is not None:
            if not HUB_ID.match(self.hub_adapter_id):
                raise UserError(f"--hub_adapter_id must be a Hub repo id like 'you/omninegclip-lora', got {self.hub_adapter_id!r}")
            self.save_adapter = True
        if self.save_adapter and self.lora_r == 0:
            raise UserError("--save_adapter/--hub_adapter_id need --lora_r > 0: without LoRA there is no adapter, only the full checkpoint")
        if self.lora_target not in LORA_TARGET_MODULES:
            raise UserError(f"--lora_target must be one of {sorted(LORA_TARGET_MODULES)}, got {self.lora_target!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UserError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_alpha is None:
            self.lora_alpha = 2.0 * self.lora_r

    @property
    def enabled(self) -> bool:
        return self.lora_r > 0


@dataclass
class CardArguments:
    widget_examples: str | None = field(
        default=None,
        metadata={"help": "JSON list of model-card widget examples {image, candidate_labels, title, expected_label} "
                          "(default: built-in negation examples)."},
    )
    license: str = field(default="mit", metadata={"help": "License in the model card (the base model's terms still apply)."})
    card_base_model: str | None = field(
        default=None, metadata={"help": "Hub id of the base model for the card's metadata, where --model_name_or_path is a local folder."}
    )
    card_datasets: str | None = field(
        default=None, metadata={"help": "Comma-separated Hub ids of the training data for the card's metadata, where the data are local."}
    )

    def dataset_ids(self) -> list[str] | None:
        return [name.strip() for name in self.card_datasets.split(",") if name.strip()] if self.card_datasets else None


@dataclass
class OutputArguments:
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into a non-empty --output_dir that this run does not resume (its files are replaced; "
                          "without this flag such a folder is refused)."},
    )


class Arguments(NamedTuple):
    model: ModelArguments
    data: DataArguments
    omni: OmniNegArguments
    lora: LoraArguments
    card: CardArguments
    training: TrainingArguments
    output: OutputArguments


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------


def unwrap(model) -> OmniNegCLIPModel:
    """The OmniNegCLIPModel inside a DDP and/or PEFT wrapper."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ClampLogitScaleCallback(TrainerCallback):
    """exp(logit_scale) <= 100 after every optimiser step, as CLIP trains."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is not None:
            unwrap(model).clamp_logit_scale()


class FiniteLossCallback(TrainerCallback):
    """Checks the losses of the steps since the last check for NaN/inf once every
    `--nan_check_steps` steps, and always before a checkpoint is saved, the logs are written, an
    evaluation runs or training stops: one host sync per check instead of one per step, and no
    checkpoint ever holds weights updated by a bad step."""

    def __init__(self, trainer: "OmniNegCLIPTrainer", every: int):
        self.trainer, self.every = trainer, every

    def on_step_end(self, args, state, control, model=None, **kwargs):
        due = control.should_save or control.should_log or control.should_evaluate or control.should_training_stop
        if due or state.global_step % self.every == 0:
            self.trainer.check_finite(model)


class ProvenanceCallback(TrainerCallback):
    """Writes `record` (versions, seed, commit, settings) into every checkpoint-* folder, after the
    Trainer has written the rest of it."""

    def __init__(self, record: dict):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_provenance(folder, self.record | {"global_step": state.global_step})


class NonFiniteLossError(UserError):
    """A loss term became NaN or inf; the message names the step, the rows and the terms, and the
    last good checkpoint. A `UserError`, so the command line reports it as one paragraph."""


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoint-* folders of `output_dir` the Trainer finished writing, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [path for path in folder.glob("checkpoint-*") if path.is_dir() and path.name.split("-", 1)[1].isdigit()]
    return sorted((path for path in found if (path / TRAINER_STATE_FILE).is_file()), key=lambda path: int(path.name.split("-", 1)[1]))


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
        """The loss, and for `compute_metrics` (eval/negation_metrics.py) every row's image, caption and
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


# ----------------------------------------------------------------------------------------------
# Steps of main
# ----------------------------------------------------------------------------------------------


def _takes_one_value(action) -> bool:
    return action.nargs in (None, "?")


def _is_boolean(action) -> bool:
    return getattr(action.type, "__name__", "") == "string_to_bool" or action.nargs == 0


def config_file_flags(path: Path, parser=None) -> list[str]:
    """A YAML/JSON mapping of flag names to values, as command-line flags (so both go through the
    same parser): booleans as true/false, lists as several values, mappings as JSON, null skipped.
    With the `parser`, a list for a one-value flag is an error naming the key, and YAML's `no`/`yes`
    (read as booleans) stay the words for a flag that is not boolean (`save_strategy: no`)."""
    actions = {option: action for action in (parser._actions if parser is not None else []) for option in action.option_strings}
    import yaml

    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text())  # JSON is YAML
    except yaml.YAMLError as error:
        raise UserError(f"config file {path} is not valid YAML/JSON: {error}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of flag names to values, got {type(values).__name__}")
    flags = []
    for key, value in values.items():
        if value is None:
            continue
        action = actions.get(f"--{key}")
        if isinstance(value, list) and action is not None and _takes_one_value(action):
            if len(value) != 1:
                raise UserError(f"config file {path}: key {key!r} holds a list ({value}), but --{key} takes one value")
            value = value[0]  # report_to: [none]
        flags.append(f"--{key}")
        if isinstance(value, bool) and action is not None and not _is_boolean(action):
            flags.append("yes" if value else "no")  # YAML 1.1 reads an unquoted no/yes/off/on as a boolean
        elif isinstance(value, bool):
            flags.append(str(value).lower())
        elif isinstance(value, list):
            flags.extend(str(item) for item in value)
        elif isinstance(value, dict):
            flags.append(json.dumps(value))
        else:
            flags.append(str(value))
    return flags


def parse_args(argv: list[str]) -> Arguments:
    """Flags, or one YAML/JSON file of flags followed by flags that override it."""
    parser = HfArgumentParser((ModelArguments, DataArguments, OmniNegArguments, LoraArguments, CardArguments, TrainingArguments,
                               OutputArguments))
    where = "command line"
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        where = f"config file {argv[0]} (or the flags after it)"
        argv = config_file_flags(Path(argv[0]), parser) + argv[1:]

    def refuse(message: str):  # instead of argparse's usage dump and exit
        raise UserError(f"bad flag in the {where}: {message}; `python train.py --help` lists the flags")

    parser.error = refuse
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # TrainingArguments validates itself with ValueError
        raise UserError(f"bad training arguments in the {where}: {' '.join(str(error).split())}") from None
    if unknown:
        raise UserError(f"unknown flag(s) in the {where}: {unknown}; `python train.py --help` lists the flags")
    arguments = Arguments(*parsed)
    check_numbers(arguments, where)
    return arguments


# flag -> (where it lives, lowest allowed value, whether that value itself is allowed)
NUMERIC_FLAGS = {
    "learning_rate": ("training", 0.0, True), "weight_decay": ("training", 0.0, True), "max_grad_norm": ("training", 0.0, True),
    "warmup_steps": ("training", 0.0, True), "num_train_epochs": ("training", 0.0, True),
    "adam_beta1": ("training", 0.0, True), "adam_beta2": ("training", 0.0, True), "adam_epsilon": ("training", 0.0, False),
    "lora_alpha": ("lora", 0.0, True), "gradient_accumulation_steps": ("training", 1, True),
}  # the loss weights and margin: checked by OmniNegLossConfig ("bad loss setting")


def check_numbers(arguments: Arguments, where: str) -> None:
    """A `UserError` naming the flag for a number that would break training later with a torch
    traceback, or silently: NaN, infinity, a negative learning rate."""
    for flag, (group, lowest, inclusive) in NUMERIC_FLAGS.items():
        value = getattr(getattr(arguments, group), flag, None)
        if value is None:
            continue
        if not math.isfinite(value) or value < lowest or (value == lowest and not inclusive):
            bound = f">= {lowest:g}" if inclusive else f"> {lowest:g}"
            raise UserError(f"--{flag} {value} in the {where}: expected a finite number {bound}")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_model(model_args: ModelArguments) -> tuple[OmniNegCLIPModel, CLIPProcessor]:
    """The CLIP checkpoint as an OmniNegCLIPModel, and its processor; errors name the flag and the reason."""
    source = model_args.model_name_or_path
    check_clip_checkpoint(source, f"--model_name_or_path {source!r}", cache_dir=model_args.cache_dir)
    try:
        model = load_pretrained_checked(OmniNegCLIPModel, source, f"--model_name_or_path {source!r}", cache_dir=model_args.cache_dir)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"--model_name_or_path {source!r}: could not load a CLIP checkpoint: {_first_line(error)}") from None
    processor_source = model_args.processor_name_or_path or source
    try:
        processor = CLIPProcessor.from_pretrained(processor_source, cache_dir=model_args.cache_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"no CLIP processor at {processor_source!r} (tokenizer and image processor files beside the weights, "
            f"or pass --processor_name_or_path): {_first_line(error)}"
        ) from None
    return model, processor


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
    if train and not any(report.with_presence or report.with_absence or report.with_affirmed for report in train):
        warnings.append(f"no training row has a presence or an absence negation ({', '.join(repr(report.name) for report in train)}): "
                        f"this is plain CLIP fine-tuning, not Omni-NegCLIP; check --presence_column and --absence_column")
    for warning in warnings:
        logger.warning(warning)
    return warnings


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
        raise UserError(f"--resume_from_checkpoint: {path} cannot be read ({_first_line(error)})") from None
    before, now = _resume_identity(saved, train_split), _resume_identity(record, train_split)
    differences = [f"{name}: {before[name]!r} in the checkpoint, {now[name]!r} now" for name in now if before[name] != now[name]]
    if differences:
        raise UserError(f"--resume_from_checkpoint {checkpoint} was saved by a run with other settings: " + "; ".join(differences)
                        + ". Resume with the checkpoint's settings, or start a new run from its weights with "
                          f"--model_name_or_path {checkpoint} and another --output_dir")


def lora_target_regex(blocks: list[int], target: str) -> str:
    """PEFT `target_modules` for the chosen text blocks only. PEFT full-matches it against module
    names, so the vision tower's `vision_model.encoder.layers.*` never match."""
    layers = "|".join(str(block) for block in blocks)
    modules = "|".join(re.escape(name) for name in LORA_TARGET_MODULES[target])
    return rf"text_model\.encoder\.layers\.({layers})\.({modules})"


def add_lora(model: OmniNegCLIPModel, trainable: TrainableConfig, lora_args: LoraArguments):
    """Wrap `model` in a PEFT model with LoRA adapters on the chosen text blocks; the other parts
    `trainable` asks for train through PEFT's `modules_to_save` (saved with the adapters, so a resumed
    run restores them; see omninegclip/training/lora.py). Returns (peft model, settings)."""
    from peft import LoraConfig, get_peft_model

    blocks = resolve_text_blocks(model.config.text_config.num_hidden_layers, trainable)
    if not blocks:
        raise UserError("--lora_r > 0 needs at least one text block to adapt; --front_blocks/--text_preset/--text_blocks chose none")
    if trainable.train_logit_scale:
        raise UserError(LOGIT_SCALE_WITH_LORA)
    extras = lora_modules_to_save(trainable)
    regex = lora_target_regex(blocks, lora_args.lora_target)
    config = LoraConfig(
        r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha, lora_dropout=lora_args.lora_dropout, target_modules=regex, bias="none",
        modules_to_save=extras or None,
    )
    peft_model = get_peft_model(model, config)
    settings = {
        "r": lora_args.lora_r,
        "alpha": lora_args.lora_alpha,
        "dropout": lora_args.lora_dropout,
        "target": lora_args.lora_target,
        "target_modules": regex,
        "text_blocks": blocks,
        "modules_to_save": extras,
        "merged": True,
    }
    return peft_model, settings


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
    if columns.affirmed and args.omni.lambda_choice == 0:
        logger.warning("--absence_affirmed_column %r is only read by the choice term, which is off (--lambda_choice 0)", columns.affirmed)
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


# What `--report_to NAME` needs installed (tensorboard and trackio come with requirements.txt).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow",
                    "comet_ml": "comet_ml", "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive",
                    "codecarbon": "codecarbon", "dagshub": "dagshub", "azure_ml": "azureml-core", "flyte": "flytekit"}


def check_report_to(training_args: TrainingArguments) -> None:
    """Fail before anything slow on a `--report_to` tracker that is unknown or not installed (the
    Trainer would fail only after data preparation, with a traceback). Comma-separated names are
    split (`--report_to tensorboard,trackio` as `--report_to tensorboard trackio`)."""
    from transformers.integrations import get_reporting_integration_callbacks

    if isinstance(training_args.report_to, list):
        training_args.report_to = [name.strip() for entry in training_args.report_to for name in entry.split(",") if name.strip()]
    try:
        callbacks = get_reporting_integration_callbacks(training_args.report_to)
    except ValueError as error:
        raise UserError(f"--report_to {','.join(training_args.report_to)}: {error}") from None
    for name, callback in zip(training_args.report_to, callbacks):
        try:
            callback()
        except (RuntimeError, ImportError) as error:
            package = TRACKER_PACKAGES.get(name, name)
            raise UserError(f"--report_to {name}: the {name} tracker is not installed ({_first_line(error)}); install it with "
                            f"`pip install {package}`, or pass --report_to none") from None


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


FINAL_STAGING = ".final-partial"  # where the final checkpoint is written before it is moved into --output_dir


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


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    model_args, data_args, omni_args, lora_args, card_args, training_args, output_args = args
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    datasets.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)
    # Negation columns are inputs the model's signature does not name: keep them.
    training_args.remove_unused_columns = False
    training_args.label_names = []
    # The Trainer's NaN filter reads every step's loss on the host; FiniteLossCallback stops the run instead.
    training_args.logging_nan_inf_filter = False
    if training_args.world_size > 1 and not training_args.dataloader_drop_last:
        logger.info("several processes: using drop-last batches (padded duplicate rows would be false negatives)")
        training_args.dataloader_drop_last = True
    # The Trainer's own push would rewrite README.md without the card's metadata (and push LoRA
    # adapters, not merged weights): the final folder is pushed once, below, with the card.
    push = training_args.push_to_hub
    training_args.push_to_hub = False
    if lora_args.hub_adapter_id and not push:
        raise UserError("--hub_adapter_id names where to push the adapter: it needs --push_to_hub")
    widget = load_widget_examples(card_args.widget_examples) if card_args.widget_examples else None
    check_report_to(training_args)
    resume = check_output_and_resume(training_args, output_args.overwrite_output_dir, data_args.sources())
    if data_args.image_embedding_cache_dir:
        ensure_writable(data_args.image_embedding_cache_dir, "--image_embedding_cache_dir")
    try:
        if training_args.process_index != 0:  # the first process holds the lock for all
            return train_and_save(args, resume, push, widget)
        with OutputLock(training_args.output_dir, "--output_dir"):
            train_and_save(args, resume, push, widget)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(training_args.output_dir)) from None


def interrupted_message(output_dir: str) -> str:
    """What a Ctrl-C'd run kept and how to go on."""
    checkpoints = complete_checkpoints(output_dir)
    if checkpoints:
        return (f"the {len(checkpoints)} complete checkpoint-* folder(s) in {output_dir} are kept (newest: {checkpoints[-1].name}); "
                f"continue with the same flags plus --resume_from_checkpoint latest")
    return f"no checkpoint had been saved in {output_dir} yet (see --save_steps); run the same command again to start over"


def train_and_save(args: Arguments, resume: str | None, push: bool, widget: list | None) -> None:
    """The run itself, once the output folder is known to be writable and is locked."""
    model_args, data_args, omni_args, lora_args, card_args, training_args, output_args = args
    model, processor = load_model(model_args)
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
        raise UserError(f"bad trainable setting for {model_args.model_name_or_path!r}: {error}") from None
    log_text_blocks(model, omni_args, lora_args.enabled)
    check_negation_columns(data_args, model_args.cache_dir)

    prepared, packed, _, reports = prepare_splits(args, processor, model)
    warn_degenerate_training(training_args, reports, data_args.train_split)
    record = training_record(args, model, lora_settings, push, reports, resume)
    if resume:
        check_resume_settings(resume, record, data_args.train_split)
    trainer = OmniNegCLIPTrainer(
        model=trained_model,
        args=training_args,
        train_dataset=prepared["train"],
        eval_dataset=prepared.get("eval"),
        data_collator=OmniNegCollator(packed, leave_out=() if omni_args.lambda_choice else ("absence_affirmed_input_ids",)),
        processing_class=processor,
        compute_metrics=negation_metrics(args, prepared["eval"]) if "eval" in prepared else None,
        source_names=data_args.sources(),
        nan_check_steps=omni_args.nan_check_steps,
        callbacks=[ProvenanceCallback(record)],
    )
    if lora_settings is not None and trainer.is_fsdp_enabled:
        raise UserError("--lora_r does not work under FSDP (merging adapters needs unsharded weights): "
                        "launch with configs/accelerate/ddp.yaml or deepspeed_zero2.yaml instead")
    check_training_steps(trainer)
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:  # neither takes CLIP's 0-dim logit_scale
        model.make_logit_scale_shardable()
    if push:
        logger.info("--push_to_hub: the final checkpoint is pushed once, after training (--hub_strategy is not used)")
    train_result = trainer.train(resume_from_checkpoint=resume)
    # Every process evaluates: the loss gathers embeddings across them.
    metrics = trainer.evaluate() if "eval" in prepared else None

    save_outputs_atomically(args, trainer, processor, record, metrics, lora_settings, push, widget,
                            train_metrics=train_result.metrics)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def cli() -> None:
    """The console script's entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
