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
embeddings, final layer norm, projection and logit scale then stay frozen unless their
`--train_*` flag says otherwise); the saved checkpoint has the adapters merged, a plain CLIPModel:

    python train.py <flags> --lora_r 16 --lora_alpha 32 --lora_target attention

Push to the Hub (weights, processor and this project's model card, in one commit after training;
`--widget_examples` gives the card's widget its own images and negation labels):

    python train.py <flags> --push_to_hub --hub_model_id you/omninegclip-vit-b32
    python -m omninegclip.model_card runs/omninegclip --push_to_hub you/omninegclip-vit-b32  # again, after eval

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

Bad data never stops a run midway: before training, every row is checked (see omninegclip/data.py).
Rows with an empty caption or a missing, corrupt, truncated or oversized image are skipped and
counted; captions over the token limit are truncated and counted; one `data:` line reports it all,
and training_provenance.json keeps it. A caption that is not a string is an error naming the row.

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
import re
from dataclasses import asdict, dataclass, field, replace
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

from modeling_omninegclip import (
    LOSS_TERM_NAMES,
    OmniNegCLIPModel,
    OmniNegLossConfig,
    TrainableConfig,
    apply_trainable,
    resolve_text_blocks,
)
from omninegclip.cli import UserError, run_cli
from omninegclip.data import (
    SOURCE_COLUMN,
    SOURCE_ROW_COLUMN,
    BalancedSourceSampler,
    CaptionColumns,
    OmniNegCollator,
    SourceReport,
    cached_image_embeddings,
    load_any_dataset,
    prepare_dataset,
    summarize_reports,
)
from omninegclip.model_card import load_widget_examples, push_checkpoint, write_model_card
from omninegclip.provenance import provenance

logger = logging.getLogger("omninegclip.train")

CONFIG_FILE_SUFFIXES = (".json", ".yaml", ".yml")
PROVENANCE_FILE = "training_provenance.json"
# The Trainer writes it last into a checkpoint-* folder (after the weights, optimiser and RNG
# states, whatever their format: full, LoRA adapters, FSDP or DeepSpeed shards): a folder without it
# is a save that was interrupted.
TRAINER_STATE_FILE = "trainer_state.json"
LATEST_CHECKPOINT = ("latest", "last", "true")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
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
    absence_affirmed_column: str = field(
        default="none",
        metadata={"help": "Column with absence-affirmed captions (the absence-negated caption with its object affirmed: false "
                          "for the image), a third option of the --lambda_choice term; 'none' (default) for two options."},
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
    train_logit_scale: bool | None = field(default=None, metadata={"help": "Train the logit scale, clamped to <= ln 100 (default: yes; with LoRA: no)."})
    train_vision_tower: bool = field(default=False, metadata={"help": "Also train the whole image tower (off in Omni-NegCLIP)."})

    def loss_config(self) -> OmniNegLossConfig:
        try:
            return OmniNegLossConfig(self.lambda_abs, self.lambda_orig, self.lambda_text, self.margin, self.lambda_choice, self.lambda_keep)
        except ValueError as error:
            raise UserError(f"bad loss setting: {error}") from None

    def trainable_config(self, lora: bool = False) -> TrainableConfig:
        """What trains. Under LoRA the chosen blocks get adapters instead, and the other text parts
        stay frozen unless their flag is given."""
        blocks = None
        if self.text_blocks:
            try:
                blocks = [int(part) for part in self.text_blocks.split(",") if part.strip()]
            except ValueError:
                raise UserError(f"--text_blocks must be comma-separated integers like '0,1,2', got {self.text_blocks!r}") from None
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

    def __post_init__(self):
        if self.lora_r < 0:
            raise UserError(f"--lora_r must be >= 0 (0 = no LoRA), got {self.lora_r}")
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


class Arguments(NamedTuple):
    model: ModelArguments
    data: DataArguments
    omni: OmniNegArguments
    lora: LoraArguments
    card: CardArguments
    training: TrainingArguments


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

    def __init__(self, *args, source_names: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.add_callback(ClampLogitScaleCallback())
        self.source_names = list(source_names or [])
        self._term_sums: dict[str, float] = {}
        self._term_count = 0

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

    def _non_finite_error(self, model, terms: dict, row_ids) -> NonFiniteLossError:
        bad = [name for name, value in terms.items() if not torch.isfinite(value).all()] or ["loss"]
        rows = self.describe_rows(row_ids.tolist(), model.training) if row_ids is not None else "rows unknown"
        checkpoints = complete_checkpoints(self.args.output_dir)
        kept = (f"the last good checkpoint, {checkpoints[-1]}, is kept as it was; resume from it with "
                f"--resume_from_checkpoint {checkpoints[-1]} (e.g. with a lower --learning_rate)"
                if checkpoints else f"no checkpoint had been saved yet in {self.args.output_dir} (see --save_steps)")
        where = f"training step {self.state.global_step + 1}" if model.training else f"evaluation after step {self.state.global_step}"
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
        if not all(bool(torch.isfinite(value).all()) for value in checked.values()):
            raise self._non_finite_error(model, checked, row_ids)
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
        if self._term_count and "loss" in logs:  # every process logs at the same steps, with the same terms
            names = sorted(self._term_sums)
            means = torch.tensor([self._term_sums[name] for name in names], device=self.args.device) / self._term_count
            # Each process holds its share of a global-batch term: their mean is the term.
            means = self.accelerator.reduce(means, reduction="mean")
            logs.update({name: round(float(value), 4) for name, value in zip(names, means)})
            self._term_sums, self._term_count = {}, 0
        super().log(logs, *args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Steps of main
# ----------------------------------------------------------------------------------------------


def config_file_flags(path: Path) -> list[str]:
    """A YAML/JSON mapping of flag names to values, as command-line flags (so both go through the
    same parser): booleans as true/false, lists as several values, mappings as JSON, null skipped."""
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
        flags.append(f"--{key}")
        if isinstance(value, bool):
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
    parser = HfArgumentParser((ModelArguments, DataArguments, OmniNegArguments, LoraArguments, CardArguments, TrainingArguments))
    where = "command line"
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        where = f"config file {argv[0]} (or the flags after it)"
        argv = config_file_flags(Path(argv[0])) + argv[1:]

    def refuse(message: str):  # instead of argparse's usage dump and exit
        raise UserError(f"bad flag in the {where}: {message}; `python train.py --help` lists the flags")

    parser.error = refuse
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # TrainingArguments validates itself with ValueError
        raise UserError(f"bad training arguments in the {where}: {' '.join(str(error).split())}") from None
    if unknown:
        raise UserError(f"unknown flag(s) in the {where}: {unknown}; `python train.py --help` lists the flags")
    return Arguments(*parsed)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_clip_folder(path: Path, flag: str) -> None:
    if not path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a file; expected a CLIP checkpoint folder or a Hub id")
    config = path / "config.json"
    if not config.is_file():
        raise UserError(
            f"{flag} {str(path)!r} is not a CLIP checkpoint: it holds no config.json "
            f"(expected config.json of model_type 'clip', weights and processor files)"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError as error:
        raise UserError(f"{flag}: {config} is not valid JSON: {error}") from None
    if model_type != "clip":
        raise UserError(f"{flag} {str(path)!r} is not a CLIP checkpoint: its config.json has model_type {model_type!r}, expected 'clip'")


def load_model(model_args: ModelArguments) -> tuple[OmniNegCLIPModel, CLIPProcessor]:
    """The CLIP checkpoint as an OmniNegCLIPModel, and its processor; errors name the flag and the reason."""
    source = model_args.model_name_or_path
    path = Path(source).expanduser()
    if path.exists():
        _check_clip_folder(path, "--model_name_or_path")
    elif not HUB_ID.match(source):
        raise UserError(f"--model_name_or_path {source!r} does not exist (expected a CLIP checkpoint folder or a Hub id)")
    try:
        model = OmniNegCLIPModel.from_pretrained(source, cache_dir=model_args.cache_dir, trust_remote_code=False)
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


def check_output_and_resume(training_args: TrainingArguments) -> str | None:
    """Fail before anything slow on an --output_dir that is a file or a checkpoint to resume from
    that is not one; return the checkpoint folder to resume from (`latest`: the newest complete
    checkpoint-* in --output_dir), or None."""
    output_dir = Path(training_args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {str(output_dir)!r} is a file; expected a folder (created if missing)")
    if training_args.per_device_train_batch_size < 1:
        raise UserError(f"--per_device_train_batch_size must be >= 1, got {training_args.per_device_train_batch_size}")
    resume = training_args.resume_from_checkpoint
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


def lora_target_regex(blocks: list[int], target: str) -> str:
    """PEFT `target_modules` for the chosen text blocks only. PEFT full-matches it against module
    names, so the vision tower's `vision_model.encoder.layers.*` never match."""
    layers = "|".join(str(block) for block in blocks)
    modules = "|".join(re.escape(name) for name in LORA_TARGET_MODULES[target])
    return rf"text_model\.encoder\.layers\.({layers})\.({modules})"


def add_lora(model: OmniNegCLIPModel, trainable: TrainableConfig, lora_args: LoraArguments):
    """Wrap `model` in a PEFT model with LoRA adapters on the chosen text blocks; the other parameters
    train as `trainable` says (the blocks themselves stay frozen). Returns (peft model, settings)."""
    from peft import LoraConfig, get_peft_model

    blocks = resolve_text_blocks(model.config.text_config.num_hidden_layers, trainable)
    if not blocks:
        raise UserError("--lora_r > 0 needs at least one text block to adapt; --front_blocks/--text_preset/--text_blocks chose none")
    extras = set(apply_trainable(model, replace(trainable, text_blocks=[])))
    regex = lora_target_regex(blocks, lora_args.lora_target)
    config = LoraConfig(
        r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha, lora_dropout=lora_args.lora_dropout, target_modules=regex, bias="none"
    )
    peft_model = get_peft_model(model, config)
    # get_peft_model froze everything but the adapters: what the user asked for trains again.
    for name, param in model.named_parameters():
        if name in extras:
            param.requires_grad_(True)
    settings = {
        "r": lora_args.lora_r,
        "alpha": lora_args.lora_alpha,
        "dropout": lora_args.lora_dropout,
        "target": lora_args.lora_target,
        "target_modules": regex,
        "text_blocks": blocks,
        "merged": True,
    }
    return peft_model, settings


def prepare_splits(args: Arguments, processor: CLIPProcessor, model: OmniNegCLIPModel
                   ) -> tuple[dict[str, datasets.Dataset], list[SourceReport]]:
    """Load, validate, check and tokenize the training split (and the eval split, if any); cache the
    frozen image tower's embeddings. Logs one `data:` line (what was kept, skipped and truncated)
    and returns the reports behind it."""
    data_args, training_args = args.data, args.training
    columns = data_args.columns()
    if columns.affirmed and args.omni.lambda_choice == 0:
        logger.warning("--absence_affirmed_column %r is only read by the choice term, which is off (--lambda_choice 0)", columns.affirmed)
    splits = {"train": data_args.train_split}
    if training_args.eval_strategy != "no" and data_args.eval_split and data_args.eval_split.lower() != "none":
        splits["eval"] = data_args.eval_split
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
                processor.tokenizer, data_args.max_caption_length, limit, split=split,
            )
        reports += split_reports
    summary, noteworthy = summarize_reports(reports, data_args.max_caption_length)
    logger.log(logging.WARNING if noteworthy else logging.INFO, summary)

    if data_args.cache_image_embeddings and not args.omni.train_vision_tower:
        cache_dir = Path(data_args.image_embedding_cache_dir or Path(training_args.output_dir).parent / ".image_embedding_cache")
        for role, dataset in prepared.items():
            with training_args.main_process_first(desc=f"embedding {role} images"):
                prepared[role] = cached_image_embeddings(model, processor.image_processor, dataset, columns.image, cache_dir)
    return prepared, reports


def training_record(args: Arguments, model: OmniNegCLIPModel, lora_settings: dict | None, push: bool,
                    reports: list[SourceReport], resumed_from: str | None) -> dict:
    """What produced a checkpoint: versions, seed, git commit, data (with its skips) and every setting."""
    model_args, data_args, card_args, training_args = args.model, args.data, args.card, args.training
    return provenance(seed=training_args.seed) | {
        "base_model": model_args.model_name_or_path,
        "datasets": data_args.sources(),
        "base_model_id": card_args.card_base_model,
        "dataset_ids": card_args.dataset_ids(),
        "data": [asdict(report) for report in reports],
        "world_size": training_args.world_size,
        "resumed_from": resumed_from,
        "omninegclip": model.settings() | {"lora": lora_settings},
        "training_arguments": {k: v for k, v in training_args.to_dict().items() if not k.startswith("hub_token")}
        | {"push_to_hub": push},
    }


def write_provenance(folder: Path, record: dict) -> None:
    (folder / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")


def save_outputs(args: Arguments, trainer: OmniNegCLIPTrainer, processor: CLIPProcessor, record: dict,
                 metrics: dict | None, lora_settings: dict | None, push: bool, widget: list | None) -> None:
    """The checkpoint folder: plain CLIP weights (LoRA merged), processor, settings, provenance, eval
    metrics and model card; pushed to the Hub when asked. Written by the first process only."""
    model_args, card_args, training_args = args.model, args.card, args.training
    output_dir = Path(training_args.output_dir)
    if lora_settings is None:
        trainer.save_model()  # on every process: FSDP/DeepSpeed gather the full weights collectively
    else:
        merged = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(output_dir, extra_settings={"lora": lora_settings})
    if not trainer.is_world_process_zero():
        return
    processor.save_pretrained(output_dir)
    if metrics is not None:
        trainer.save_metrics("eval", metrics)
    write_provenance(output_dir, record | {"global_step": trainer.state.global_step})
    card = dict(base_model=model_args.model_name_or_path, datasets=record["datasets"], widget_examples=widget,
                license=card_args.license, base_model_id=card_args.card_base_model, dataset_ids=card_args.dataset_ids())
    if push:
        push_checkpoint(output_dir, training_args.hub_model_id or output_dir.resolve().name,
                        token=training_args.hub_token, private=training_args.hub_private_repo, **card)
    else:
        write_model_card(output_dir, repo_id=training_args.hub_model_id, **card)
    logger.info("wrote the checkpoint to %s", output_dir)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    model_args, data_args, omni_args, lora_args, card_args, training_args = args
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    datasets.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)
    # Negation columns are inputs the model's signature does not name: keep them.
    training_args.remove_unused_columns = False
    training_args.label_names = []
    if training_args.world_size > 1 and not training_args.dataloader_drop_last:
        logger.info("several processes: using drop-last batches (padded duplicate rows would be false negatives)")
        training_args.dataloader_drop_last = True
    # The Trainer's own push would rewrite README.md without the card's metadata (and push LoRA
    # adapters, not merged weights): the final folder is pushed once, below, with the card.
    push = training_args.push_to_hub
    training_args.push_to_hub = False
    widget = load_widget_examples(card_args.widget_examples) if card_args.widget_examples else None
    resume = check_output_and_resume(training_args)

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

    prepared, reports = prepare_splits(args, processor, model)
    record = training_record(args, model, lora_settings, push, reports, resume)
    trainer = OmniNegCLIPTrainer(
        model=trained_model,
        args=training_args,
        train_dataset=prepared["train"],
        eval_dataset=prepared.get("eval"),
        data_collator=OmniNegCollator(processor.image_processor, data_args.columns(), pad_token_id=processor.tokenizer.pad_token_id),
        processing_class=processor,
        source_names=data_args.sources(),
        callbacks=[ProvenanceCallback(record)],
    )
    if lora_settings is not None and trainer.is_fsdp_enabled:
        raise UserError("--lora_r does not work under FSDP (merging adapters needs unsharded weights): "
                        "launch with configs/accelerate/ddp.yaml or deepspeed_zero2.yaml instead")
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:  # neither takes CLIP's 0-dim logit_scale
        model.make_logit_scale_shardable()
    if push:
        logger.info("--push_to_hub: the final checkpoint is pushed once, after training (--hub_strategy is not used)")
    trainer.train(resume_from_checkpoint=resume)
    # Every process evaluates: the loss gathers embeddings across them.
    metrics = trainer.evaluate() if "eval" in prepared else None

    save_outputs(args, trainer, processor, record, metrics, lora_settings, push, widget)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
