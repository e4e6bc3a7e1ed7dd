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
eval_which_object_accuracy, over the whole split (omninegclip/training/metrics.py); any of them can be
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

import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import datasets
from transformers import CLIPProcessor, HfArgumentParser, TrainingArguments, set_seed

from modeling_omninegclip import OmniNegCLIPModel, OmniNegLossConfig, TrainableConfig
from omninegclip.common.caption_sets import CAPTION_SETS
from omninegclip.common.checkpoints import HUB_ID, check_clip_checkpoint
from omninegclip.common.cli import Interrupted, UserError, run_cli
from omninegclip.common.clip import CONTEXT_LENGTH
from omninegclip.common.outputs import OutputLock, ensure_writable
from omninegclip.common.safe_load import first_line, load_pretrained_checked
from omninegclip.training.arguments import (
    check_numbers,
    check_report_to,
    parse_flags,
    parse_text_blocks,
    settle_training_arguments,
)
from omninegclip.training.callbacks import ProvenanceCallback
from omninegclip.training.checkpoints import check_output_and_resume, check_resume_settings, interrupted_message, training_record
from omninegclip.training.data import CaptionColumnArguments, CaptionColumns, OmniNegCollator
from omninegclip.training.lora import LORA_TARGET_MODULES
from omninegclip.training.model_card import load_widget_examples
from omninegclip.training.prepare import (
    check_negation_columns,
    make_trainable,
    negation_metrics,
    prepare_splits,
    warn_degenerate_training,
)
from omninegclip.training.saving import save_outputs_atomically
from omninegclip.training.trainer import OmniNegCLIPTrainer, end_process_group, ready_to_train


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
class DataArguments(CaptionColumnArguments):
    """The data flags; one column flag per caption set comes from `CaptionColumnArguments`."""

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
        return CaptionColumns.from_flags(self.image_column, *(getattr(self, row.flag) for row in CAPTION_SETS))


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
    lambda_affirm: float = field(
        default=0.0, metadata={"help": "Weight of the optional affirmation choice (the caption beats its absence-affirmed twin and its "
                                       "presence negation; needs --absence_affirmed_column or --presence_column); 0 = the paper."}
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
            return OmniNegLossConfig(self.lambda_abs, self.lambda_orig, self.lambda_text, self.margin, self.lambda_choice, self.lambda_keep,
                                     self.lambda_affirm)
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
        blocks = parse_text_blocks(self.text_blocks)
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
# Steps of main
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> Arguments:
    """Flags, or one YAML/JSON file of flags followed by flags that override it."""
    parser = HfArgumentParser((ModelArguments, DataArguments, OmniNegArguments, LoraArguments, CardArguments, TrainingArguments,
                               OutputArguments))
    parsed, where = parse_flags(parser, argv)
    arguments = Arguments(*parsed)
    check_numbers(arguments, where)
    return arguments


def load_model(model_args: ModelArguments) -> tuple[OmniNegCLIPModel, CLIPProcessor]:
    """The CLIP checkpoint as an OmniNegCLIPModel, and its processor; errors name the flag and the reason."""
    source = model_args.model_name_or_path
    check_clip_checkpoint(source, f"--model_name_or_path {source!r}", cache_dir=model_args.cache_dir)
    try:
        model = load_pretrained_checked(OmniNegCLIPModel, source, f"--model_name_or_path {source!r}", cache_dir=model_args.cache_dir)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"--model_name_or_path {source!r}: could not load a CLIP checkpoint: {first_line(error)}") from None
    processor_source = model_args.processor_name_or_path or source
    try:
        processor = CLIPProcessor.from_pretrained(processor_source, cache_dir=model_args.cache_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"no CLIP processor at {processor_source!r} (tokenizer and image processor files beside the weights, "
            f"or pass --processor_name_or_path): {first_line(error)}"
        ) from None
    return model, processor


def main(argv: list[str]) -> None:
    """Arguments, the checks that need no model or data, then the run under the output folder's lock."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    datasets.utils.logging.set_verbosity_warning()
    set_seed(args.training.seed)
    # Before anything slow: the Trainer's settings, the card's examples, the trackers, the folders.
    push = settle_training_arguments(args.training, args.lora.hub_adapter_id)
    widget = load_widget_examples(args.card.widget_examples) if args.card.widget_examples else None
    check_report_to(args.training)
    resume = check_output_and_resume(args.training, args.output.overwrite_output_dir, args.data.sources())
    if args.data.image_embedding_cache_dir:
        ensure_writable(args.data.image_embedding_cache_dir, "--image_embedding_cache_dir")
    try:
        if args.training.process_index != 0:  # the first process holds the lock for all
            return train_and_save(args, resume, push, widget)
        with OutputLock(args.training.output_dir, "--output_dir"):
            train_and_save(args, resume, push, widget)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(args.training.output_dir)) from None


def train_and_save(args: Arguments, resume: str | None, push: bool, widget: list | None) -> None:
    """The run itself, once the output folder is known to be writable and is locked: load, build, run, save."""
    model_args, data_args, omni_args, lora_args, card_args, training_args, output_args = args
    # Load the model and make the chosen parts trainable; prepare and check the data.
    model, processor = load_model(model_args)
    trained_model, lora_settings = make_trainable(model, omni_args, lora_args, model_args.model_name_or_path)
    check_negation_columns(data_args, model_args.cache_dir)
    prepared, packed, _, reports = prepare_splits(args, processor, model)
    warn_degenerate_training(training_args, reports, data_args.train_split)
    record = training_record(args, model, lora_settings, push, reports, resume)
    if resume:
        check_resume_settings(resume, record, data_args.train_split)
    # Build the Trainer and run it.
    trainer = OmniNegCLIPTrainer(
        model=trained_model,
        args=training_args,
        train_dataset=prepared["train"],
        eval_dataset=prepared.get("eval"),
        data_collator=OmniNegCollator(packed, caption_sets=model.loss_config.caption_sets_read()),
        processing_class=processor,
        compute_metrics=negation_metrics(args, prepared["eval"]) if "eval" in prepared else None,
        source_names=data_args.sources(),
        nan_check_steps=omni_args.nan_check_steps,
        callbacks=[ProvenanceCallback(record)],
    )
    ready_to_train(trainer, model, lora=lora_settings is not None, push=push)
    train_result = trainer.train(resume_from_checkpoint=resume)
    # Every process evaluates: the loss gathers embeddings across them.
    metrics = trainer.evaluate() if "eval" in prepared else None
    # Save (and push) the final checkpoint.
    save_outputs_atomically(args, trainer, processor, record, metrics, lora_settings, push, widget,
                            train_metrics=train_result.metrics)
    end_process_group()


def cli() -> None:
    """The console script's entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
