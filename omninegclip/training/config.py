"""`OmniNegCLIPConfig`: the Trainer's settings for Omni-NegCLIP, a `TrainingArguments` subclass (as
trl's `DPOConfig` is), and `ModelArguments` / `DataArguments`, what `train.py` loads.

`OmniNegCLIPConfig` holds every method setting besides the Trainer's own: which text blocks train
(`front_blocks`, `text_preset`, `text_blocks`, `train_*`), the loss weights and margin, the
dataset's columns (one flag per caption set of `CAPTION_SETS`), how the data is prepared (token
limit, image-embedding cache, workers), LoRA, the model card and its widget. Its defaults are the
ones the method needs (`remove_unused_columns=False`, `label_names=[]`, the NaN check without a host
sync per step), and `__post_init__` refuses a bad value by name before anything slow runs.

    config = OmniNegCLIPConfig(output_dir="runs/x", lambda_abs=0.5, front_blocks=6, max_steps=100)

`train.py` parses the same class with `HfArgumentParser`: every field is a flag of the same name.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from modeling_omninegclip import CAPTION_SETS, OmniNegLossConfig, TrainableConfig
from omninegclip.common.checkpoints import HUB_ID
from omninegclip.common.cli import UserError
from omninegclip.common.clip import CONTEXT_LENGTH
from omninegclip.training.data import CaptionColumnArguments, CaptionColumns
from omninegclip.training.lora import LOGIT_SCALE_WITH_LORA, LORA_TARGET_MODULES
from omninegclip.training.metrics import ABSENCE_CHOICE_ACCURACY, PRESENCE_ACCURACY, WHICH_OBJECT_ACCURACY
from omninegclip.training.streaming import mix_weights

logger = logging.getLogger("omninegclip.train")

# What every evaluation reports (`metric_for_best_model` may name one, with or without "eval_").
EVALUATION_METRICS = ("loss", PRESENCE_ACCURACY, ABSENCE_CHOICE_ACCURACY, WHICH_OBJECT_ACCURACY)

# flag -> (lowest allowed value, whether that value itself is allowed); the loss weights and margin
# are checked by OmniNegLossConfig ("bad loss setting").
NUMERIC_FLAGS = {
    "learning_rate": (0.0, True),
    "weight_decay": (0.0, True),
    "max_grad_norm": (0.0, True),
    "warmup_steps": (0.0, True),
    "num_train_epochs": (0.0, True),
    "adam_beta1": (0.0, True),
    "adam_beta2": (0.0, True),
    "adam_epsilon": (0.0, False),
    "lora_alpha": (0.0, True),
    "gradient_accumulation_steps": (1, True),
}


def parse_text_blocks(text: str | None) -> list[int] | None:
    """The text block indices `--text_blocks` names ('0,1,2'), or None when it is not given."""
    if text is None:
        return None
    try:
        blocks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--text_blocks must be comma-separated integers like '0,1,2', got {text!r}") from None
    if not blocks:
        raise UserError(
            f"--text_blocks {text!r} selects no text block; expected comma-separated indices like '0,1,2' "
            f"(leave it out for the default, or --front_blocks 0 to train no block)"
        )
    return blocks


@dataclass
class ModelArguments:
    """The checkpoint `train.py` starts from."""

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
    """The datasets `train.py` loads (the Trainer takes the loaded `datasets.Dataset`s)."""

    dataset_name: str = field(
        default=None,
        metadata={"help": "Hub id, `save_to_disk` folder, or local data file(s) (comma-separated) to train on."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    mix_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A second dataset (same column names) mixed half and half into every batch, "
            "e.g. absence rows beside presence rows."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default="validation",
        metadata={
            "help": "Split for the evaluation loss and negation accuracies; 'none' to skip. Missing: skipped with a "
            "note."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep the first N training rows (debugging)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training data as a stream while training (Hub ids, data files, webdataset .tar shards): "
            "nothing is prepared or copied first, images are embedded inside each step; needs --max_steps, "
            "no evaluation during the run (docs/training.md, Streaming)."
        },
    )

    def __post_init__(self):
        if not self.dataset_name:
            raise UserError("--dataset_name is required: a Hub id, a save_to_disk folder or data files")
        for flag in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise UserError(f"--{flag} must be >= 1, got {value}")

    def sources(self) -> list[str]:
        return [self.dataset_name] + ([self.mix_dataset_name] if self.mix_dataset_name else [])

    def evaluates(self) -> bool:
        return bool(self.eval_split) and self.eval_split.lower() != "none"


@dataclass
class OmniNegCLIPConfig(TrainingArguments, CaptionColumnArguments):
    """`TrainingArguments` plus every Omni-NegCLIP setting (see the module's docstring)."""

    # --- what the method needs of the Trainer's own settings -----------------------------------
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Must stay false: the negation columns are inputs that the model's signature does not list."
        },
    )
    label_names: list[str] | None = field(
        default_factory=list, metadata={"help": "No labels: the contrastive losses need none (leave empty)."}
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Off: the Trainer's filter reads every step's loss on the host; --nan_check_steps stops a bad run "
            "instead."
        },
    )

    # --- the objective --------------------------------------------------------------------------
    lambda_abs: float = field(default=1.0, metadata={"help": "Weight of the absence objective L_abs."})
    lambda_orig: float = field(default=1.0, metadata={"help": "Weight of L_orig inside L_abs."})
    lambda_text: float = field(
        default=1.0, metadata={"help": "Weight of the caption/negation separation hinge L_text."}
    )
    margin: float = field(default=0.9, metadata={"help": "Margin m of L_text = max(0, cos(t, a) + m)."})
    lambda_choice: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the optional multiple-choice term (absence negation beats presence negation); 0 = the "
            "paper."
        },
    )
    lambda_keep: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the optional keep-the-match hinge (an absence negation may not score below its "
            "caption); "
            "0 = the paper."
        },
    )
    lambda_affirm: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the optional affirmation choice (the caption beats its absence-affirmed twin and its "
            "presence negation; needs --absence_affirmed_column or --presence_column); 0 = the paper."
        },
    )
    nan_check_steps: int = field(
        default=50,
        metadata={
            "help": "Check the losses for NaN/inf every N steps (and before every save, log, evaluation and the end), "
            "so that a GPU step never waits for the host; the error still names the first bad step and its rows."
        },
    )

    # --- what trains ----------------------------------------------------------------------------
    front_blocks: int | None = field(
        default=None,
        metadata={"help": "Train text blocks 0..N-1 (default: half the text depth, 6 of 12 for ViT-B/32)."},
    )
    text_preset: str | None = field(
        default=None, metadata={"help": "front | middle | back | whole (overrides --front_blocks)."}
    )
    text_blocks: str | None = field(
        default=None,
        metadata={"help": "Explicit comma-separated text block indices, e.g. '0,1,2' (overrides the others)."},
    )
    train_token_embedding: bool | None = field(
        default=None, metadata={"help": "Train the token embedding (default: yes; with LoRA: no)."}
    )
    train_position_embedding: bool | None = field(
        default=None, metadata={"help": "Train the position embedding (default: yes; with LoRA: no)."}
    )
    train_final_layer_norm: bool | None = field(
        default=None, metadata={"help": "Train the text tower's final layer norm (default: yes; with LoRA: no)."}
    )
    train_text_projection: bool | None = field(
        default=None, metadata={"help": "Train the text projection (default: yes; with LoRA: no)."}
    )
    train_logit_scale: bool | None = field(
        default=None, metadata={"help": "Train the logit scale, clamped to <= ln 100 (default: yes; not with LoRA)."}
    )
    train_vision_tower: bool = field(
        default=False, metadata={"help": "Also train the whole image tower (off in Omni-NegCLIP)."}
    )

    # --- the data (one column flag per caption set comes from CaptionColumnArguments) ------------
    image_column: str = field(default="image", metadata={"help": "Column with the images (PIL or datasets Image)."})
    max_caption_length: int = field(
        default=CONTEXT_LENGTH, metadata={"help": "Token limit per caption; longer ones are truncated and counted."}
    )
    cache_image_embeddings: bool = field(
        default=True,
        metadata={
            "help": "With a frozen image tower, embed each image once and reuse it every epoch (cached on disk)."
        },
    )
    image_embedding_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where cached image embeddings go (default: <output_dir>/../.image_embedding_cache)."},
    )
    prepared_data_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the tokenized training rows are stored, memory-mapped, for every process of the run and "
            "later launches on the same data (default: <output_dir>/../.prepared_data_cache)."
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Worker processes that tokenize the rows and decode and preprocess the images before training "
            "(each image once); default: the machine's cores. 0 does both in the main process."
        },
    )
    image_embedding_batch_size: int = field(
        default=256,
        metadata={"help": "Images per forward pass of the frozen image tower while embedding them before training."},
    )
    fast_image_decode: bool = field(
        default=True,
        metadata={
            "help": "Decode JPEGs with the decoder's own downscaling (draft mode) to no smaller than the resize "
            "target, and preprocess with PIL/numpy, when the image processor has CLIP's usual settings "
            "(within 0.03 of the processor's pixel values on average). false: full decode."
        },
    )

    mix_probabilities: str | None = field(
        default=None,
        metadata={
            "help": "With --streaming: the probability of drawing each dataset's next row, comma-separated in the "
            "order --dataset_name, --mix_dataset_name (e.g. '0.7,0.3'; default: equal)."
        },
    )

    # --- LoRA -----------------------------------------------------------------------------------
    lora_r: int = field(
        default=0, metadata={"help": "LoRA rank on the chosen text blocks; 0 = full fine-tuning of those blocks."}
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling alpha (default: 2 * lora_r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target: str = field(
        default="all",
        metadata={"help": "Which linear layers of the chosen blocks get adapters: attention | mlp | all."},
    )
    save_adapter: bool = field(
        default=False,
        metadata={
            "help": "Also write the PEFT adapter (for PeftModel.from_pretrained on the base model) to "
            "<output_dir>/adapter; "
            "with --push_to_hub it goes up in that subfolder of the model repo."
        },
    )
    hub_adapter_id: str | None = field(
        default=None,
        metadata={
            "help": "With --push_to_hub: push the adapter to this repo of its own as well (implies --save_adapter)."
        },
    )

    # --- the model card -------------------------------------------------------------------------
    widget_examples: str | None = field(
        default=None,
        metadata={
            "help": "JSON list of model-card widget examples {image, candidate_labels, title, expected_label} "
            "(default: built-in negation examples)."
        },
    )
    license: str = field(
        default="mit", metadata={"help": "License in the model card (the base model's terms still apply)."}
    )
    card_base_model: str | None = field(
        default=None,
        metadata={
            "help": "Hub id of the base model for the card's metadata, where --model_name_or_path is a local folder."
        },
    )
    card_datasets: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated Hub ids of the training data for the card's metadata, where the data are local."
        },
    )

    # --- the output folder ----------------------------------------------------------------------
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write into a non-empty --output_dir that this run does not resume (its files and old checkpoints "
            "are replaced; without this flag such a folder is refused)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.remove_unused_columns:
            raise UserError(
                "remove_unused_columns=True would drop the negation columns, which the model's forward takes "
                "as keyword inputs: leave it False (OmniNegCLIPConfig's default)"
            )
        if self.label_names:
            raise UserError(f"label_names={self.label_names!r}: the contrastive losses take no labels; leave it empty")
        self.label_names = []
        for flag, (lowest, inclusive) in NUMERIC_FLAGS.items():
            value = getattr(self, flag)
            if value is not None and (
                not math.isfinite(value) or value < lowest or (value == lowest and not inclusive)
            ):
                bound = f">= {lowest:g}" if inclusive else f"> {lowest:g}"
                raise UserError(f"--{flag} {value}: expected a finite number {bound}")
        if self.per_device_train_batch_size < 1:
            raise UserError(f"--per_device_train_batch_size must be >= 1, got {self.per_device_train_batch_size}")
        if self.nan_check_steps < 1:
            raise UserError(f"--nan_check_steps must be 1 or more, got {self.nan_check_steps}")
        if not 2 < self.max_caption_length <= CONTEXT_LENGTH:
            raise UserError(
                f"--max_caption_length must be in 3..{CONTEXT_LENGTH} (CLIP's context), got {self.max_caption_length}"
            )
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 0:
            raise UserError(f"--preprocessing_num_workers must be 0 or more, got {self.preprocessing_num_workers}")
        if self.image_embedding_batch_size < 1:
            raise UserError(f"--image_embedding_batch_size must be 1 or more, got {self.image_embedding_batch_size}")
        mix_weights(self.mix_probabilities)  # refuses a bad value now, by name
        self._check_lora()
        self._check_evaluation()
        self._check_precision()
        self.loss_config()  # refuses bad weights now, by name
        self.trainable_config()  # refuses bad blocks (--text_blocks included) now, by name

    def _check_lora(self) -> None:
        if self.lora_r < 0:
            raise UserError(f"--lora_r must be >= 0 (0 = no LoRA), got {self.lora_r}")
        if self.hub_adapter_id is not None:
            if not HUB_ID.match(self.hub_adapter_id):
                raise UserError(
                    f"--hub_adapter_id must be a Hub repo id like 'you/omninegclip-lora', got {self.hub_adapter_id!r}"
                )
            if not self.push_to_hub:
                raise UserError("--hub_adapter_id names where to push the adapter: it needs --push_to_hub")
            self.save_adapter = True
        if self.save_adapter and self.lora_r == 0:
            raise UserError(
                "--save_adapter/--hub_adapter_id need --lora_r > 0: without LoRA there is no adapter, only the full "
                "checkpoint"
            )
        if self.lora_target not in LORA_TARGET_MODULES:
            raise UserError(f"--lora_target must be one of {sorted(LORA_TARGET_MODULES)}, got {self.lora_target!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UserError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_alpha is None:
            self.lora_alpha = 2.0 * self.lora_r
        if self.lora and self.train_logit_scale:
            raise UserError(LOGIT_SCALE_WITH_LORA)

    def _check_evaluation(self) -> None:
        strategy = str(getattr(self.eval_strategy, "value", self.eval_strategy))
        if self.load_best_model_at_end and strategy == "no":
            raise UserError(
                "--load_best_model_at_end keeps the checkpoint with the best evaluation, but --eval_strategy is "
                "no: pass --eval_strategy steps (or epoch, as --save_strategy) and an --eval_split the data has"
            )
        if self.metric_for_best_model is not None:
            name = self.metric_for_best_model.removeprefix("eval_")
            if name not in EVALUATION_METRICS:
                raise UserError(
                    f"--metric_for_best_model {self.metric_for_best_model}: no evaluation reports it; the "
                    f"evaluation reports {', '.join('eval_' + metric for metric in EVALUATION_METRICS)} "
                    f"(eval_which_object_accuracy where the data names the negated objects)"
                )

    def _check_precision(self) -> None:
        """fp16/bf16 that the device cannot use are switched off with a warning (and recorded as off)."""
        if self.fp16 and self.device.type == "cpu":
            logger.warning(
                "--fp16 has no effect on the CPU: training runs in float32 (use --bf16 for a CPU that has it)"
            )
            self.fp16 = False

    @property
    def lora(self) -> bool:
        return self.lora_r > 0

    def columns(self) -> CaptionColumns:
        """The dataset's image column and, per caption set, the column holding it (or None)."""
        return CaptionColumns.from_flags(self.image_column, *(getattr(self, row.flag) for row in CAPTION_SETS))

    def loss_config(self) -> OmniNegLossConfig:
        try:
            return OmniNegLossConfig(
                self.lambda_abs,
                self.lambda_orig,
                self.lambda_text,
                self.margin,
                self.lambda_choice,
                self.lambda_keep,
                self.lambda_affirm,
            )
        except ValueError as error:
            raise UserError(f"bad loss setting: {error}") from None

    def blocks_choice(self) -> tuple[str, list[str]]:
        """(the flag that chooses the text blocks, the given flags it overrides): --text_blocks wins
        over --text_preset, which wins over --front_blocks (a config file's value may be overridden)."""
        given = [
            f"--{name} {value}"
            for name, value in (
                ("text_blocks", self.text_blocks),
                ("text_preset", self.text_preset),
                ("front_blocks", self.front_blocks),
            )
            if value is not None
        ]
        return (given[0], given[1:]) if given else ("the default (the front half)", [])

    def trainable_config(self) -> TrainableConfig:
        """What trains. Under LoRA the chosen blocks get adapters instead, and the other text parts
        stay frozen unless their flag is given."""
        default = not self.lora
        chosen = lambda flag: default if flag is None else flag  # noqa: E731
        try:
            return TrainableConfig(
                front_blocks=self.front_blocks,
                text_preset=self.text_preset,
                text_blocks=parse_text_blocks(self.text_blocks),
                train_token_embedding=chosen(self.train_token_embedding),
                train_position_embedding=chosen(self.train_position_embedding),
                train_final_layer_norm=chosen(self.train_final_layer_norm),
                train_text_projection=chosen(self.train_text_projection),
                train_logit_scale=chosen(self.train_logit_scale),
                train_vision_tower=self.train_vision_tower,
            )
        except ValueError as error:
            raise UserError(f"bad trainable setting: {error}") from None

    def dataset_ids(self) -> list[str] | None:
        return [name.strip() for name in self.card_datasets.split(",") if name.strip()] if self.card_datasets else None
