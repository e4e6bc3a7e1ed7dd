"""What the Trainer's loop adds to a training step: step (c) of bench/bench_train.py, part by part.

    python -m bench.profile_trainer [--geometry default-small] [--batch 64] [--steps 40] [--threads 1]

Runs `OmniNegCLIPTrainer.train()` as the benchmark's step (c) does (`bench/trainer_loop.py`: step
(b)'s rows, collator and optimiser; one log per window) with a wall-clock timer around each part of
its loop, and prints the milliseconds a timed step spends in each and its share of the loop: the
batch's fetch and collation, the forward (`compute_loss`), the backward, grad clipping, the
optimiser, the learning-rate schedule, `model.zero_grad()`, `model.train()`, the callbacks, logging,
the Trainer's FLOP count. Everything but the forward, backward, clipping, optimiser and zero_grad
(which frees the gradients, as step (b)'s does) is the loop's own cost; the smaller the geometry,
the larger its share. Timers,
not cProfile: cProfile slows Python-heavy parts (`zero_grad`'s walk over the parameters) several
times more than the kernels and would misplace the cost. On CUDA nothing is synchronised: the
times are the host's, which is what bounds a launch-bound GPU step.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from accelerate.optimizer import AcceleratedOptimizer
from torch.optim.lr_scheduler import LRScheduler

from bench.bench_train import GEOMETRIES
from bench.measure import Device
from bench.trainer_loop import run_trainer, window_start
from bench.workload import build_model, coco_like_captions, packed_rows
from omninegclip.common.cli import run_cli

# part -> (the object that holds the method, its name); the objects are found on the Trainer.
PARTS = {
    "fetch + collate (DataLoader)": ("trainer", "get_batch_samples"),
    "forward (compute_loss)": ("trainer", "compute_loss"),
    "backward": ("accelerator", "backward"),
    "grad-norm clip": ("trainer", "_clip_grad_norm"),
    "optimiser step": (AcceleratedOptimizer, "step"),
    "learning-rate schedule": (LRScheduler, "step"),
    "model.zero_grad() (every parameter)": ("model", "zero_grad"),
    "model.train() (every module)": ("model", "train"),
    "callbacks": ("callback_handler", "call_event"),
    "log / save / evaluate": ("trainer", "_maybe_log_save_evaluate"),
    "FLOP count": ("trainer", "floating_point_ops"),
}
# What step (b) does too (its zero_grad frees the gradients as well): the rest is the loop's own.
OWN = ("forward (compute_loss)", "backward", "grad-norm clip", "optimiser step", "model.zero_grad() (every parameter)")


class Timers:
    """Wall seconds and calls per part, from wrappers put around the parts' methods."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.on = False
        self.restore: list[tuple[object, str, object]] = []

    def wrap(self, holder, name: str, part: str) -> None:
        original = getattr(holder, name)

        def timed(*args, **kwargs):
            if not self.on:
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
                self.calls[part] += 1

        setattr(holder, name, timed)
        self.restore.append((holder, name, original))

    def attach(self, trainer) -> None:
        holders = {
            "trainer": trainer,
            "accelerator": trainer.accelerator,
            "model": trainer.model,
            "callback_handler": trainer.callback_handler,
        }
        for part, (holder, name) in PARTS.items():
            self.wrap(holders.get(holder, holder), name, part)
        self.wrap(trainer, "_run_epoch", "loop")

    def detach(self) -> None:
        for holder, name, original in reversed(self.restore):
            if isinstance(holder, type):
                setattr(holder, name, original)
            else:
                delattr(holder, name)  # the instance's wrapper: the class's method shows through again


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", default="default-small", choices=list(GEOMETRIES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--front-blocks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40, help="timed steps (after the warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    geometry = GEOMETRIES[args.geometry]
    model = build_model(geometry, args.front_blocks)
    generator = torch.Generator().manual_seed(args.batch)
    captions = coco_like_captions(args.batch, generator, geometry.vocab_size)
    rows = packed_rows(captions, torch.randn(args.batch, geometry.projection_dim, generator=generator))

    timers = Timers()
    start = window_start(1, args.steps)

    class Switch:  # the timers run over the timed steps only (the epoch loop's own timer over all)
        def __call__(self, trainer):
            timers.attach(trainer)
            trainer.add_callback(Window())

    from transformers import TrainerCallback

    class Window(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            timers.on = state.global_step >= start and state.global_step < state.max_steps

    try:
        run = run_trainer(
            model, rows, args.batch, args.front_blocks, 1, args.steps, Device("cpu", None), 0, before_training=Switch()
        )
    finally:
        timers.detach()
    steps = len(run.measurement.seconds)
    step_ms = 1000 * sum(run.measurement.seconds) / steps
    parts = {part: timers.seconds[part] for part in PARTS}
    loop_own = sum(seconds for part, seconds in parts.items() if part not in OWN)
    print(
        f"{geometry.name}, batch {args.batch}, N = {args.front_blocks}, {args.threads} thread(s), {steps} timed "
        f"Trainer steps: {step_ms:.1f} ms a step; the loop's own parts {1000 * loop_own / steps:.2f} ms a step "
        f"({100 * loop_own / sum(run.measurement.seconds):.1f} %)\n"
    )
    print("| part | ms/step | share of the step | calls |\n|---|---:|---:|---:|")
    total = sum(run.measurement.seconds)
    for part, seconds in parts.items():
        print(f"| {part} | {1000 * seconds / steps:.3f} | {100 * seconds / total:.2f} % | {timers.calls[part]} |")
    rest = total - sum(parts.values())
    print(f"| the rest (untimed parts of the loop) | {1000 * rest / steps:.3f} | {100 * rest / total:.2f} % | |")


if __name__ == "__main__":
    run_cli(main)
