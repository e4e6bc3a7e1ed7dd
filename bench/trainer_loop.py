"""Step (c) of the training benchmark: the project's step as `OmniNegCLIPTrainer.train()` takes it.

The same model, batch and settings as step (b) (`bench/workload.py`): the batch's rows prepared as
the Trainer holds them (`PackedRows` and a table of `packed_row`s, the layout `PackedRows.from_splits`
gives), the real `OmniNegCollator`, the same trainable blocks, fused AdamW with the same learning
rate and weight decay, grad-norm clip 1.0; and everything the real loop adds around it: the
DataLoader (and its workers, on CUDA), `compute_loss` with its per-term sums, the callbacks (logit
scale clamp, NaN check, provenance), the learning-rate schedule, logging.

Timing (`TrainerClock`): steps 1 .. `start` are warm-up (step 1 creates the optimiser's state, step
2 is the memory probe); the timed window runs from the end of step `start` to the end of the last
step, the device synchronised at every step end, so every timed step is one full turn of the loop
(fetch and collate the batch, forward, backward, clip, optimiser, callbacks, the Trainer's logging).
`logging_steps` = the timed steps and `start` a multiple of it: each window holds exactly one log,
with its NaN check, at the rate of one per `timed` steps (a real run logs less often). The time of a
trainer step is the window's mean (the log is in one step of it). On a CPU, `between` runs the other
step kinds' timed steps between two Trainer steps, off the clock, so that all kinds see the same
machine load.

Public surface: `trainer_table`, `trainer_config`, `TrainerClock`, `TrainerRun`, `run_trainer`.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import datasets
import numpy as np
import torch
from transformers import TrainerCallback

from bench.measure import Device, PeakMemory, StepMeasurement, Stopwatch, record_text_shapes
from modeling_omninegclip import OmniNegCLIPModel
from omninegclip.training.config import OmniNegCLIPConfig
from omninegclip.training.data import (
    PACKED_ROW_COLUMN,
    SOURCE_COLUMN,
    SOURCE_ROW_COLUMN,
    OmniNegCollator,
    PackedRows,
)
from omninegclip.training.trainer import OmniNegCLIPTrainer

# DataLoader workers on CUDA, as bench/gpu_check.sh trains: started by forkserver, never forked
# from a process that has initialised CUDA.
CUDA_WORKERS = dict(
    dataloader_num_workers=4, dataloader_persistent_workers=True, dataloader_multiprocessing_context="forkserver"
)


def window_start(warmup: int, timed: int) -> int:
    """The last warm-up step: at least `warmup` + 1 (step 1 also creates the optimiser's state) and
    2 (the memory probe), rounded up to a multiple of `timed` so that the window holds one log."""
    return timed * math.ceil(max(2, warmup + 1) / timed)


def trainer_table(batch: int, steps: int) -> datasets.Dataset:
    """A prepared Trainer table of `steps` copies of the batch's rows in order: with the sequential
    sampler, every batch is the same `batch` rows in `fast_batch`'s order."""
    packed = np.tile(np.arange(batch, dtype=np.int64), steps)
    return datasets.Dataset.from_dict(
        {
            "row_id": np.arange(len(packed), dtype=np.int64),
            PACKED_ROW_COLUMN: packed,
            SOURCE_COLUMN: np.zeros(len(packed), dtype=np.int64),
            SOURCE_ROW_COLUMN: packed,
        }
    )


def trainer_config(
    output_dir: str,
    batch: int,
    front_blocks: int,
    steps: int,
    logging_steps: int,
    device: Device,
    seed: int,
    torch_compile: str | None = None,
) -> OmniNegCLIPConfig:
    """Step (b)'s settings as an `OmniNegCLIPConfig` (`trainer_like_optimizer`: fused AdamW, lr 1e-6,
    weight decay 0.2; constant learning rate; grad-norm clip 1.0), no saving, no evaluation.
    torch_compile: a `torch.compile` backend ("inductor", "aot_eager") for `--torch_compile`; None: eager."""
    return OmniNegCLIPConfig(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        max_steps=steps,
        front_blocks=front_blocks,
        learning_rate=1e-6,
        weight_decay=0.2,
        optim="adamw_torch_fused",
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        logging_steps=logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        seed=seed,
        use_cpu=device.type == "cpu",
        bf16=device.autocast_dtype is torch.bfloat16,
        torch_compile=torch_compile is not None,
        torch_compile_backend=torch_compile,
        **(CUDA_WORKERS if device.type == "cuda" else {}),
    )


@dataclass
class TrainerRun:
    """What a timed `train()` gave: the timed steps, one step's peak memory, the text-encoder calls
    of one step, the parameters the Trainer trained."""

    measurement: StepMeasurement
    peak_bytes: int | None
    shapes: list[tuple[int, int]]
    trained: list[str] = field(default_factory=list)


class TrainerClock(TrainerCallback):
    """Times the Trainer's steps after step `start` (see the module docstring), probes memory and
    records the text-encoder calls of step `probe`, and runs `between` before every timed step, off
    the clock."""

    def __init__(
        self, device: Device, model: OmniNegCLIPModel, start: int, probe: int, between: Callable[[], None] | None
    ):
        self.watch, self.memory = Stopwatch(device), PeakMemory(device)
        self.model, self.start, self.probe, self.between = model, start, probe, between
        self.measurement = StepMeasurement()
        self.peak_bytes: int | None = None
        self.shapes: list[tuple[int, int]] = []
        self.recording = contextlib.ExitStack()

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.watch.started is not None:
            self.watch.stop(self.measurement)
        if step == self.probe:
            self.peak_bytes = self.memory.stop()
            self.recording.close()
        if step == self.probe - 1:
            self.shapes = self.recording.enter_context(record_text_shapes(self.model))
            self.memory.start()
        if self.start <= step < state.max_steps:
            if self.between is not None:
                self.between()
            self.watch.start()


def run_trainer(
    model: OmniNegCLIPModel,
    rows: PackedRows,
    batch: int,
    front_blocks: int,
    warmup: int,
    timed: int,
    device: Device,
    seed: int,
    between: Callable[[], None] | None = None,
    torch_compile: str | None = None,
    before_training: Callable[[OmniNegCLIPTrainer], None] | None = None,
) -> TrainerRun:
    """`OmniNegCLIPTrainer.train()` on `rows` (one batch, repeated) for `window_start(warmup, timed)`
    warm-up and `timed` timed steps. `before_training(trainer)`: e.g. to put timers on its parts."""
    start = window_start(warmup, timed)
    clock = TrainerClock(device, model, start=start, probe=2, between=between)
    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as output_dir:
        config = trainer_config(output_dir, batch, front_blocks, start + timed, timed, device, seed, torch_compile)
        collator = OmniNegCollator(rows, caption_sets=config.loss_config().caption_sets_read())
        trainer = OmniNegCLIPTrainer(
            model, config, train_dataset=trainer_table(batch, start + timed), data_collator=collator, callbacks=[clock]
        )
        trained = [name for name, param in model.named_parameters() if param.requires_grad]
        if before_training is not None:
            before_training(trainer)
        try:
            trainer.train()
        finally:
            # Accelerate wraps the model's forward for autocast: give the next steps the model as it was.
            trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
            trainer.accelerator.free_memory()
    return TrainerRun(clock.measurement, clock.peak_bytes, list(clock.shapes), trained)
