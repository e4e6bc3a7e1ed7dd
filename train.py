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

Push to the Hub with the Trainer's own path (Hub access is checked before anything slow; the final
push carries this project's model card; `--widget_examples` gives the card's widget its own images and
negation labels). `--hub_strategy every_save|checkpoint|all_checkpoints` also backs the run up at every
save, and `--resume_from_checkpoint last-checkpoint` resumes from the Hub's backup (LoRA: `end` only):

    python train.py <flags> --push_to_hub --hub_model_id you/omninegclip-vit-b32 --hub_strategy checkpoint
    # the card again, after `python -m eval`:
    python -m omninegclip.training.model_card runs/omninegclip --push_to_hub you/omninegclip-vit-b32

The same run from Python (a notebook): docs/trainer.md.

Data: any HF dataset (a Hub id, a `save_to_disk` folder, or local json/csv/parquet files) with an
image column, a caption column and presence-/absence-negated caption columns (`data_builder.py`
writes exactly these). A row may carry either negation, both or none (None or ""). To train as the
authors do, on a presence dataset (CC-Neg) and an absence dataset (COCO) at once, pass the second
with `--mix_dataset_name`: the smaller one is repeated to the larger one's length, and each
training batch of even size holds exactly half rows of each (reshuffled every epoch); each loss
term is computed on the rows that carry its inputs.

Data too large to prepare or copy (webdataset shards, a Hub id): `--streaming` reads it while training,
checks every row as it comes, embeds the images inside each step, and resumes where the stream stopped;
it needs --max_steps and trains without evaluation (docs/training.md, Streaming):

    python train.py <flags> --streaming --dataset_name 'shards/*.tar' --image_column jpg --max_steps 10000

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

import datasets
from transformers import CLIPProcessor, HfArgumentParser, set_seed

from modeling_omninegclip import OmniNegCLIPModel
from omninegclip.common.checkpoints import check_clip_checkpoint
from omninegclip.common.cli import Interrupted, UserError, run_cli
from omninegclip.common.outputs import OutputLock, ensure_writable
from omninegclip.common.safe_load import first_line, load_pretrained_checked
from omninegclip.training.arguments import check_report_to, parse_flags
from omninegclip.training.checkpoints import check_output_and_resume, interrupted_message
from omninegclip.training.config import DataArguments, ModelArguments, OmniNegCLIPConfig
from omninegclip.training.data import load_any_dataset
from omninegclip.training.streaming import check_streaming_settings
from omninegclip.training.trainer import OmniNegCLIPTrainer, end_process_group

logger = logging.getLogger("omninegclip.train")


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, OmniNegCLIPConfig]:
    """Flags, or one YAML/JSON file of flags followed by flags that override it."""
    parser = HfArgumentParser((ModelArguments, DataArguments, OmniNegCLIPConfig))
    (model_args, data_args, config), _ = parse_flags(parser, argv)
    return model_args, data_args, config


def load_model(model_args: ModelArguments) -> tuple[OmniNegCLIPModel, CLIPProcessor]:
    """The CLIP checkpoint as an OmniNegCLIPModel, and its processor; errors name the flag and the reason."""
    source = model_args.model_name_or_path
    check_clip_checkpoint(source, f"--model_name_or_path {source!r}", cache_dir=model_args.cache_dir)
    try:
        model = load_pretrained_checked(
            OmniNegCLIPModel, source, f"--model_name_or_path {source!r}", cache_dir=model_args.cache_dir
        )
    except (OSError, ValueError, KeyError) as error:
        raise UserError(
            f"--model_name_or_path {source!r}: could not load a CLIP checkpoint: {first_line(error)}"
        ) from None
    processor_source = model_args.processor_name_or_path or source
    try:
        processor = CLIPProcessor.from_pretrained(
            processor_source, cache_dir=model_args.cache_dir, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"no CLIP processor at {processor_source!r} (tokenizer and image processor files beside the weights, "
            f"or pass --processor_name_or_path): {first_line(error)}"
        ) from None
    return model, processor


def load_datasets(data_args: DataArguments, config: OmniNegCLIPConfig, cache_dir: str | None):
    """The training datasets and the evaluation datasets (dataset name -> split), each cut to
    --max_train_samples / --max_eval_samples rows."""
    if data_args.mix_dataset_name and data_args.mix_dataset_name == data_args.dataset_name:
        raise UserError(
            f"--mix_dataset_name {data_args.mix_dataset_name!r} is --dataset_name itself: every row would be "
            f"there twice (false in-batch negatives); leave --mix_dataset_name out or name another dataset"
        )

    def load(split: str, required: bool, limit: int | None, streaming: bool = False) -> dict[str, datasets.Dataset]:
        loaded = {
            name: load_any_dataset(
                name, split, data_args.dataset_config_name, cache_dir, required=required, streaming=streaming
            )
            for name in data_args.sources()
        }
        cut = {
            name: dataset.take(limit) if streaming else dataset.select(range(min(limit, len(dataset))))
            for name, dataset in loaded.items()
            if dataset is not None and limit is not None
        }
        return {name: cut.get(name, dataset) for name, dataset in loaded.items() if dataset is not None}

    train = load(data_args.train_split, True, data_args.max_train_samples, data_args.streaming)
    evaluation = {}
    # A streamed run does not evaluate while it trains (check_streaming_settings refused --eval_strategy).
    if config.eval_strategy != "no" and data_args.evaluates() and not data_args.streaming:
        evaluation = load(data_args.eval_split, False, data_args.max_eval_samples)
        if not evaluation:
            logger.warning(
                "no %r split in %s (--eval_split): evaluation skipped", data_args.eval_split, data_args.sources()
            )
            config.eval_strategy = "no"
    elif config.load_best_model_at_end:
        raise UserError(
            "--load_best_model_at_end needs evaluation: pass --eval_strategy steps (or epoch) and an --eval_split "
            "the data has"
        )
    return train, evaluation


def main(argv: list[str]) -> tuple[OmniNegCLIPTrainer, dict]:
    """Parse, build, train, evaluate, save (and push); return the Trainer and the metrics."""
    model_args, data_args, config = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    datasets.utils.logging.set_verbosity_warning()
    set_seed(config.seed)
    for folder, flag in (
        (config.image_embedding_cache_dir, "--image_embedding_cache_dir"),
        (config.prepared_data_cache_dir, "--prepared_data_cache_dir"),
    ):
        if folder:
            ensure_writable(folder, flag)
    # Before anything slow (the Trainer checks both again): the trackers, and the output folder
    # before the lock is taken in it.
    check_report_to(config)
    if data_args.streaming:
        check_streaming_settings(config)
    elif config.mix_probabilities:
        raise UserError(
            f"--mix_probabilities {config.mix_probabilities} sets the mix of streamed datasets: pass --streaming "
            "(without it, --mix_dataset_name mixes half and half in every batch)"
        )
    check_output_and_resume(config, config.overwrite_output_dir, data_args.sources(), model_args.model_name_or_path)
    try:
        if config.process_index != 0:  # the first process holds the lock for all
            return train_and_save(model_args, data_args, config)
        with OutputLock(config.output_dir, "--output_dir"):
            return train_and_save(model_args, data_args, config)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(config.output_dir)) from None


def train_and_save(
    model_args: ModelArguments, data_args: DataArguments, config: OmniNegCLIPConfig
) -> tuple[OmniNegCLIPTrainer, dict]:
    # 1. The model and the data.
    model, processor = load_model(model_args)
    train_datasets, eval_datasets = load_datasets(data_args, config, model_args.cache_dir)
    # 2. The Trainer prepares the data itself: rows checked, captions tokenized, images embedded once
    #    (streamed data: checked, tokenized and embedded batch by batch while training).
    trainer = OmniNegCLIPTrainer(
        model=model,
        args=config,
        train_dataset=train_datasets,
        eval_dataset=eval_datasets or None,
        processing_class=processor,
    )
    # 3. Train; every process evaluates (the loss gathers embeddings across them).
    train_result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    metrics = {"train": train_result.metrics}
    if trainer.eval_dataset is not None:
        metrics["eval"] = trainer.evaluate()
    # 4. Save the final checkpoint (and push it, with the project's card).
    trainer.save_final_model(eval_metrics=metrics.get("eval"), train_metrics=train_result.metrics)
    if config.push_to_hub:
        trainer.push_to_hub(revision=config.hub_revision)
    end_process_group()
    return trainer, metrics


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
