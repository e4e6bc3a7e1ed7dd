"""Training and evaluation speed of Omni-NegCLIP: the project's step against a careful plain one.

    python -m bench.bench_train                 # about 6 minutes on 2 idle CPU cores
    python -m bench.bench_train --quick         # about 1.5 minutes: a subset
    python -m bench.bench_train --full          # the whole grid for both steps (half an hour on 2 cores)
    python -m bench.bench_train --device cuda --dtype bf16    # GPU, bf16 autocast, batch up to 256
    python -m bench.bench_train --wait-for-idle 300           # on a shared machine: time only quiet moments

Three training steps, measured in one run on the same model, their timed steps interleaved so
that all see the same machine load:
  (a) plain:   the frozen image tower run every step (under no_grad), each caption set (original,
               presence-negated, absence-negated) through its own text-encoder call, padded to 77
               tokens as `padding="max_length"` does, then the same loss functions;
  (b) project: cached image embeddings, the real collator's dynamic padding, ONE text pass, through
               `OmniNegCLIPModel.forward`.
Both then take the Trainer's step: backward, grad-norm clip 1.0, fused AdamW (the Trainer's default)
over the parameters `apply_trainable` selects, logit-scale clamp.
  (c) trainer: step (b) as `OmniNegCLIPTrainer.train()` runs it, on the same rows prepared as the
               Trainer holds them, with its DataLoader, collator, callbacks, NaN check and logging
               (`bench/trainer_loop.py`).
Warm-up steps are excluded; the numbers are medians of the timed steps ((c): their mean, over a
window that holds one log), each with the cores other processes used meanwhile (a shared machine
inflates times: OpenMP threads spin at barriers). Random weights at two geometries (ViT-B/32; the
built-in default's small CLIP), caption lengths drawn like COCO's (`bench/workload.py`), every row
carrying both negations. Also: evaluation throughput through `omninegclip.common.embedding`
(images/s with preprocessing, texts/s with tokenization), the machine's matmul peak (a large
`torch.mm`: fp32 on CPU, bf16 on GPU) and the fraction of it each step reaches under the FLOP model
of `bench/workload.py` (matmuls of the shapes the step runs; and of the real tokens only).

Writes into --out (default bench/results/): results.md (tables), results.json (every timing),
samples_per_second.png (samples/s against batch size). `bench/candidates.py` measures proposed
changes to the step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from bench.measure import (
    Device,
    StepMeasurement,
    matmul_peak_flops,
    measure_call,
    peak_memory_of,
    prime_optimizer,
    record_text_shapes,
    wait_for_idle,
)
from bench.trainer_loop import run_trainer
from bench.workload import (
    DEFAULT_SMALL,
    VIT_B_32,
    Geometry,
    TrainStep,
    build_model,
    coco_like_captions,
    fast_batch,
    fast_loss_terms,
    packed_rows,
    plain_batch,
    plain_loss_terms,
    set_front_blocks,
    text_train_flops,
    trainable_text_blocks,
    trainer_like_optimizer,
    vision_forward_flops,
)
from omninegclip import REPO_ROOT
from omninegclip.common.cli import UserError, run_cli

STEP_LABELS = {"plain": "(a) plain", "project": "(b) project", "trainer": "(c) trainer"}
# (c)/(b): the Trainer's loop may cost at most 10 % of the step's samples/s.
TARGET = dict(geometry=VIT_B_32.name, batch=64, front_blocks=6, speedup=5.0, peak_fraction=0.60, trainer_ratio=0.9)
# On a GPU: batch 256 and >= 40 % of the bf16 matmul peak (bench/gpu_check.sh runs this row).
TARGETS = {"cpu": TARGET, "cuda": TARGET | dict(batch=256, peak_fraction=0.40)}
GEOMETRIES = {geometry.name: geometry for geometry in (VIT_B_32, DEFAULT_SMALL)}
BUSY_CORES = 0.1  # other processes' load above which a timing is flagged


# ----------------------------------------------------------------------------------------------
# What to run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One measured point: which steps, at which batch size and trainable depth, for how many timed steps."""

    geometry: Geometry
    batch: int
    front_blocks: int
    steps: tuple[str, ...]  # "plain", "project", "trainer"
    timed: int


@dataclass(frozen=True)
class Plan:
    configs: list[Config]
    warmup: int
    eval_images: dict[str, int]
    eval_texts: dict[str, int]
    wait_for_idle: float = 0.0  # seconds to wait, before each timed step, for other processes to go quiet
    torch_compile: str | None = None  # step (c) with --torch_compile and this backend


BOTH = ("plain", "project", "trainer")  # every step kind: where (b) is compared with (a) and (c)


def _capped(geometry: Geometry, blocks: list[int]) -> list[int]:
    return sorted({min(n, geometry.text_layers) for n in blocks})


def make_plan(
    mode: str, device: Device, batch_sizes: list[int] | None, front_blocks: list[int], timed: int | None
) -> Plan:
    """The grid. CPU default (about 6 minutes on 2 idle cores): the project's step at every batch size
    and N for the small CLIP, and at ViT-B/32 on a cross through the target point (batch 32/64/128
    at N = 6; N = 2/6/12 at batch 64); the plain step at batch 64 (ViT-B/32: N = 6 only). Points
    that compare with the plain step get 3 timed steps, ViT-B/32's others 2. --full: every point for
    both steps, 3 timed steps. --quick: batch 32 (or the first of --batch-sizes), N = 6, both steps, 2
    timed. CUDA: every point, 10 timed. Wherever the plain step runs, the Trainer's (c) runs too."""
    if device.type == "cuda":
        configs = [
            Config(g, b, n, BOTH, timed or 10)
            for g in (VIT_B_32, DEFAULT_SMALL)
            for n in _capped(g, front_blocks)
            for b in batch_sizes or [64, 128, 256]
        ]
        everything = {g.name: 1024 for g in (VIT_B_32, DEFAULT_SMALL)}
        return Plan(
            configs,
            warmup=3,
            eval_images=everything,
            eval_texts={name: 4 * count for name, count in everything.items()},
        )
    if mode == "quick":
        quick_batch = (batch_sizes or [32])[0]
        configs = [Config(g, quick_batch, min(6, g.text_layers), BOTH, timed or 2) for g in (VIT_B_32, DEFAULT_SMALL)]
        return Plan(
            configs,
            warmup=1,
            eval_images={VIT_B_32.name: 16, DEFAULT_SMALL.name: 64},
            eval_texts={VIT_B_32.name: 64, DEFAULT_SMALL.name: 256},
        )
    configs = []
    for geometry in (VIT_B_32, DEFAULT_SMALL):
        target_blocks = min(TARGET["front_blocks"], geometry.text_layers)
        for n in _capped(geometry, front_blocks):
            for b in batch_sizes or [32, 64, 128]:
                if mode == "full":
                    configs.append(Config(geometry, b, n, BOTH, timed or 3))
                elif geometry is DEFAULT_SMALL:
                    configs.append(Config(geometry, b, n, BOTH if b == TARGET["batch"] else ("project",), timed or 3))
                elif b == TARGET["batch"] and n == target_blocks:
                    configs.append(Config(geometry, b, n, BOTH, timed or 3))
                elif b == TARGET["batch"] or n == target_blocks:
                    configs.append(Config(geometry, b, n, ("project",), timed or 2))
    return Plan(
        configs,
        warmup=1,
        eval_images={VIT_B_32.name: 64, DEFAULT_SMALL.name: 256},
        eval_texts={VIT_B_32.name: 256, DEFAULT_SMALL.name: 1024},
    )


# ----------------------------------------------------------------------------------------------
# Training steps
# ----------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    geometry: str
    batch: int
    front_blocks: int
    step: str
    seconds: list[float]
    others_load: list[float | None]
    peak_mib: float | None
    flops: int
    useful_flops: int
    text_shapes: list[tuple[int, int]]
    statistic: str = "median"  # of `seconds`: "median" ((a), (b)), "mean" ((c): a window holding one log)
    samples_per_second: float = 0.0
    peak_fraction: float = 0.0
    useful_peak_fraction: float = 0.0

    @property
    def step_seconds(self) -> float:
        return statistics.mean(self.seconds) if self.statistic == "mean" else statistics.median(self.seconds)

    def finish(self, peak_flops: float) -> "StepResult":
        """samples/s and the fraction of the matmul peak (shapes run; real tokens only) of `step_seconds`."""
        seconds = self.step_seconds
        self.samples_per_second = self.batch / seconds
        self.peak_fraction = self.flops / seconds / peak_flops
        self.useful_peak_fraction = self.useful_flops / seconds / peak_flops
        return self

    @property
    def median_others_load(self) -> float | None:
        known = [load for load in self.others_load if load is not None]
        return statistics.median(known) if known else None


def _step_flops(
    geometry: Geometry, step: str, shapes: list[tuple[int, int]], lengths: list[int], batch: int, blocks: list[int]
) -> tuple[int, int]:
    """(FLOPs of the shapes the step ran, FLOPs of the real tokens only)."""
    executed = sum(text_train_flops(geometry, sequences, length, blocks) for sequences, length in shapes)
    useful = sum(text_train_flops(geometry, 1, length, blocks) for length in lengths)
    if step == "plain":
        executed += vision_forward_flops(geometry, batch)
        useful += vision_forward_flops(geometry, batch)
    return executed, useful


def run_configs(plan: Plan, device: Device, seed: int, progress: tqdm) -> list[StepResult]:
    results: list[StepResult] = []
    by_geometry: dict[str, list[Config]] = {}
    for config in plan.configs:
        by_geometry.setdefault(config.geometry.name, []).append(config)
    for configs in by_geometry.values():
        geometry = configs[0].geometry
        progress.set_description(f"building {geometry.name}")
        model = build_model(geometry, configs[0].front_blocks, seed).to(device.torch)
        for config in configs:
            results.extend(_run_config(model, config, plan, device, seed, progress))
        del model
    return results


def _run_config(model, config: Config, plan: Plan, device: Device, seed: int, progress: tqdm) -> list[StepResult]:
    geometry = config.geometry
    set_front_blocks(model, config.front_blocks)
    blocks = trainable_text_blocks(model)
    optimizer = trainer_like_optimizer(model, fused=True)
    generator = torch.Generator().manual_seed(seed + config.batch)
    captions = coco_like_captions(config.batch, generator, geometry.vocab_size)
    pixel_values = torch.randn(config.batch, 3, geometry.image_size, geometry.image_size, generator=generator)
    with torch.no_grad():  # the cache: computed once, outside every timed step
        image_embeds = model.get_image_features(pixel_values=pixel_values.to(device.torch)).pooler_output.float().cpu()
    to_device = lambda batch: {key: value.to(device.torch) for key, value in batch.items()}  # noqa: E731
    batches = {
        "plain": to_device(plain_batch(captions, pixel_values)),
        "project": to_device(fast_batch(captions, image_embeds)),
    }
    losses = {"plain": plain_loss_terms, "project": fast_loss_terms}
    steps = {name: TrainStep(model, losses[name], optimizer, device.autocast_dtype) for name in losses}
    steps = {name: step for name, step in steps.items() if name in config.steps}
    lengths = [len(ids) for rows in captions.sets().values() for ids in rows]
    label = f"{geometry.name} b{config.batch} N{config.front_blocks}"

    prime_optimizer(optimizer)
    shapes: dict[str, list[tuple[int, int]]] = {}
    peak_bytes: dict[str, int | None] = {}
    for name, step in steps.items():
        progress.set_description(f"{label} {name} warm-up")
        for index in range(plan.warmup):
            with record_text_shapes(model) as seen:
                if index == plan.warmup - 1:  # the last warm-up step is the (untimed) memory probe
                    peak_bytes[name] = peak_memory_of(lambda: step(batches[name]), device)
                else:
                    step(batches[name])
            shapes[name] = list(seen)
    measured = {name: StepMeasurement() for name in steps}

    def timed_round() -> None:
        for name, step in steps.items():  # interleaved: every kind sees the same machine load
            progress.set_description(f"{label} {name}")
            if plan.wait_for_idle:
                wait_for_idle(plan.wait_for_idle)
            measure_call(lambda: step(batches[name]), device, measured[name])
            progress.update(1)

    if "trainer" in config.steps:
        # On a CPU the other kinds' timed steps run between the Trainer's (a shared machine's load
        # then falls on all alike); on a GPU, a machine of its own, before them: there the Trainer's
        # DataLoader workers would prefetch during the others' steps and flatter step (c).
        interleave = device.type == "cpu"
        if not interleave:
            for _ in range(config.timed):
                timed_round()
        progress.set_description(f"{label} trainer")
        trained_by_steps = {name for name, param in model.named_parameters() if param.requires_grad}
        trainer_run = run_trainer(
            model,
            packed_rows(captions, image_embeds),
            config.batch,
            config.front_blocks,
            plan.warmup,
            config.timed,
            device,
            seed,
            between=timed_round if interleave else None,
            torch_compile=plan.torch_compile,
        )
        progress.update(config.timed)
        if set(trainer_run.trained) != trained_by_steps:
            differ = sorted(set(trainer_run.trained) ^ trained_by_steps)
            raise RuntimeError(f"the Trainer trained other parameters than steps (a) and (b): {differ}")
        measured["trainer"] = trainer_run.measurement
        shapes["trainer"], peak_bytes["trainer"] = trainer_run.shapes, trainer_run.peak_bytes
        if not shapes["trainer"]:  # compiled: the hook is traced into the graph; the eager calls have its shapes
            with record_text_shapes(model) as seen, torch.no_grad():
                fast_loss_terms(model, to_device(fast_batch(captions, image_embeds)))
            shapes["trainer"] = list(seen)
    else:
        for _ in range(config.timed):
            timed_round()
    results = []
    for name, measurement in measured.items():
        flops, useful = _step_flops(geometry, name, shapes[name], lengths, config.batch, blocks)
        peak_mib = None if peak_bytes.get(name) is None else peak_bytes[name] / 2**20
        results.append(
            StepResult(
                geometry.name,
                config.batch,
                config.front_blocks,
                name,
                measurement.seconds,
                measurement.others_load,
                peak_mib,
                flops,
                useful,
                shapes[name],
                statistic="mean" if name == "trainer" else "median",
            )
        )
    optimizer.zero_grad(set_to_none=True)
    return results


# ----------------------------------------------------------------------------------------------
# Evaluation throughput
# ----------------------------------------------------------------------------------------------

_WORDS = {
    "subject": [
        "a man",
        "a woman",
        "two dogs",
        "a cat",
        "a young boy",
        "a group of people",
        "a large bus",
        "a red car",
    ],
    "verb": ["sitting on", "standing next to", "riding", "walking along", "looking at", "parked near", "playing with"],
    "object": ["a wooden bench", "the beach", "a busy street", "a kitchen counter", "a grassy field", "a snowy hill"],
    "tail": ["", " in the sun", " at night", " with a blue umbrella", " while it rains", " near some trees"],
}


def coco_like_texts(count: int, seed: int) -> list[str]:
    """Caption strings of COCO's length (about 10 words): the text side of evaluation."""
    rng = np.random.default_rng(seed)
    pick = lambda part: _WORDS[part][rng.integers(len(_WORDS[part]))]  # noqa: E731
    return [f"{pick('subject')} {pick('verb')} {pick('object')}{pick('tail')}." for _ in range(count)]


@dataclass
class EvalResult:
    geometry: str
    images: int
    texts: int
    images_per_second: float
    texts_per_second: float


def run_eval(plan: Plan, device: Device, seed: int, progress: tqdm) -> list[EvalResult]:
    """images/s (decode-free PIL images -> preprocessing -> tower -> projection) and texts/s
    (strings -> tokenizer -> tower -> projection) through `omninegclip.common.embedding`."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from omninegclip.common.embedding import embed_images, embed_texts
    from omninegclip.common.tokenization import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    results = []
    for geometry in (VIT_B_32, DEFAULT_SMALL):
        if geometry.name not in plan.eval_images:
            continue
        progress.set_description(f"evaluation throughput {geometry.name}")
        model = build_model(geometry, 0, seed).to(device.torch).eval()
        if device.autocast_dtype is not None:
            model = model.to(device.autocast_dtype)
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": geometry.image_size},
            crop_size={"height": geometry.image_size, "width": geometry.image_size},
        )
        rng = np.random.default_rng(seed)
        # COCO-sized photos for ViT-B/32 (640x480), native-size images for the small world.
        width, height = (640, 480) if geometry.image_size >= 224 else (geometry.image_size, geometry.image_size)
        count = plan.eval_images[geometry.name]
        images = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]
        texts = coco_like_texts(plan.eval_texts[geometry.name], seed)
        embed_images(model, processor, images[:8], batch_size=8, progress=False)  # warm-up
        embed_texts(model, tokenizer, texts[:32], progress=False)
        device.synchronize()
        start = time.perf_counter()
        embed_images(model, processor, images, batch_size=64, progress=False)
        device.synchronize()
        image_seconds = time.perf_counter() - start
        start = time.perf_counter()
        embed_texts(model, tokenizer, texts, batch_size=256, progress=False)
        device.synchronize()
        text_seconds = time.perf_counter() - start
        results.append(
            EvalResult(geometry.name, len(images), len(texts), len(images) / image_seconds, len(texts) / text_seconds)
        )
        progress.update(1)
        del model
    return results


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def speedups(results: list[StepResult]) -> list[dict]:
    """Per point where (b) ran beside (a) or (c): (b)/(a) in samples/s, (a)/(b) in peak memory,
    (c)/(b) in samples/s (None where a kind did not run)."""
    index = {(r.geometry, r.batch, r.front_blocks, r.step): r for r in results}
    rows = []
    for (geometry, batch, blocks, step), project in index.items():
        plain = index.get((geometry, batch, blocks, "plain"))
        trainer = index.get((geometry, batch, blocks, "trainer"))
        if step != "project" or (plain is None and trainer is None):
            continue
        rows.append(
            {
                "geometry": geometry,
                "batch": batch,
                "front_blocks": blocks,
                "speedup": None if plain is None else project.samples_per_second / plain.samples_per_second,
                "memory_ratio": (plain.peak_mib / project.peak_mib)
                if plain is not None and plain.peak_mib and project.peak_mib
                else None,
                "trainer_ratio": None if trainer is None else trainer.samples_per_second / project.samples_per_second,
            }
        )
    return rows


def _verdict(value: float, target: float) -> str:
    return "met" if value >= target else f"MISSED by {100 * (1 - value / target):.0f} %"


def target_verdict(results: list[StepResult], device: str = "cpu") -> list[str]:
    target = TARGETS[device]
    ratios = {(r["geometry"], r["batch"], r["front_blocks"]): r for r in speedups(results)}
    key = (target["geometry"], target["batch"], target["front_blocks"])
    where = f"{key[0]}, batch {key[1]}, N = {key[2]}"
    project = next((r for r in results if (r.geometry, r.batch, r.front_blocks, r.step) == (*key, "project")), None)
    lines = []
    speedup = ratios.get(key, {}).get("speedup")
    if speedup is not None:
        lines.append(
            f"(b)/(a) at {where}: {speedup:.2f}x "
            f"(target >= {target['speedup']:.0f}x: {_verdict(speedup, target['speedup'])})"
        )
    trainer_ratio = ratios.get(key, {}).get("trainer_ratio")
    if trainer_ratio is not None:
        lines.append(
            f"(c)/(b) at {where}: {trainer_ratio:.2f}x (the Trainer's loop; target >= {target['trainer_ratio']:.1f}x: "
            f"{_verdict(trainer_ratio, target['trainer_ratio'])})"
        )
    if project is not None:
        lines.append(
            f"step (b) at {where}: {100 * project.peak_fraction:.0f} % of the matmul peak, "
            f"{100 * project.useful_peak_fraction:.0f} % counting real tokens only (target >= "
            f"{100 * target['peak_fraction']:.0f} %: {_verdict(project.peak_fraction, target['peak_fraction'])})"
        )
    busy = [r for r in results if (r.median_others_load or 0) > BUSY_CORES]
    if busy:
        lines.append(
            f"{len(busy)} of {len(results)} rows ran while other processes kept more than {BUSY_CORES} cores busy "
            "(column 'others'): their times are inflated; run again on an idle machine (or with --wait-for-idle)"
        )
    if not lines:
        lines.append(f"the target point ({where}) was not in this run")
    return lines


def markdown(meta: dict, results: list[StepResult], evals: list[EvalResult]) -> str:
    lines = [
        "# Training and evaluation speed",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} threads; device {meta['device']}, "
        f"{meta['dtype']}. Matmul peak (best large `torch.mm`, {meta['peak_dtype']}): "
        f"{meta['matmul_peak_flops'] / 1e9:,.0f} GFLOP/s (start {meta['peak_start'] / 1e9:,.0f}, "
        f"end {meta['peak_end'] / 1e9:,.0f}). {meta['warmup']} warm-up step(s) per step kind and point "
        f"((c): more, see bench/trainer_loop.py). Run took {meta['seconds']:.0f} s ({meta['mode']})."
        + (f" Step (c) compiled: torch.compile, backend {meta['torch_compile']}." if meta["torch_compile"] else ""),
        "",
        "(a) plain = image tower every step + one text call per caption set padded to 77; "
        "(b) project = cached image embeddings + dynamic padding + one text pass; (c) trainer = (b) as "
        "`OmniNegCLIPTrainer.train()` runs it (DataLoader, collator, callbacks, NaN check, logging). Same model, "
        "same losses, same optimiser (fused AdamW, grad clip 1.0); timed steps interleaved on a CPU; medians for "
        "(a) and (b), for (c) the mean over a window of steps holding one log. "
        "N = trainable front text blocks. Peak MiB: one step's peak above what was resident before it "
        "(activations, gradients, temporaries). % peak: matmul FLOPs of the shapes run / time / matmul peak "
        "(real tokens only in brackets). Others: cores other processes kept busy during the timed steps "
        "(median); above ~0.1 the times are inflated.",
        "",
        "| geometry | batch | N | step | samples/s | step s (k) | peak MiB | TFLOP/step | % peak | others |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        others = "n/a" if r.median_others_load is None else f"{r.median_others_load:.2f}"
        lines.append(
            f"| {r.geometry} | {r.batch} | {r.front_blocks} | {STEP_LABELS[r.step]} | {r.samples_per_second:,.2f} | "
            f"{r.step_seconds:.3f} ({len(r.seconds)}) | {_mib(r.peak_mib)} | {r.flops / 1e12:.3f} | "
            f"{100 * r.peak_fraction:.0f} ({100 * r.useful_peak_fraction:.0f}) | {others} |"
        )
    ratio_rows = speedups(results)
    if ratio_rows:
        lines += [
            "",
            "| geometry | batch | N | (b)/(a) samples/s | (a)/(b) peak memory | (c)/(b) samples/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        ratio = lambda value: "n/a" if value is None else f"{value:.2f}x"  # noqa: E731
        for row in ratio_rows:
            lines.append(
                f"| {row['geometry']} | {row['batch']} | {row['front_blocks']} | {ratio(row['speedup'])} | "
                f"{ratio(row['memory_ratio'])} | {ratio(row['trainer_ratio'])} |"
            )
    growth = growth_lines(results)
    if growth:
        lines += ["", "Growth of step (b) time:", ""] + growth
    if evals:
        lines += ["", "| geometry | images/s (with preprocessing) | texts/s (with tokenization) |", "|---|---:|---:|"]
        for e in evals:
            lines.append(
                f"| {e.geometry} | {e.images_per_second:,.1f} ({e.images} images) | "
                f"{e.texts_per_second:,.1f} ({e.texts} texts) |"
            )
    lines += ["", "Targets:", ""] + [f"- {line}" for line in target_verdict(results, meta["device"])]
    return "\n".join(lines) + "\n"


def growth_lines(results: list[StepResult]) -> list[str]:
    """Step time of (b) relative to the smallest batch (same N) and to the smallest N (same batch)."""
    project = [r for r in results if r.step == "project"]
    lines = []
    for geometry in dict.fromkeys(r.geometry for r in project):
        seconds = {
            (r.batch, r.front_blocks): r.batch / r.samples_per_second for r in project if r.geometry == geometry
        }
        for n in sorted({n for _, n in seconds}):
            series = sorted((b, t) for (b, m), t in seconds.items() if m == n)
            if len(series) > 1:
                lines.append(
                    f"- {geometry}, N = {n}: "
                    + ", ".join(f"batch {b}: {t / series[0][1]:.2f}x" for b, t in series)
                    + f" the time of batch {series[0][0]}"
                )
        for b in sorted({b for b, _ in seconds}):
            series = sorted((m, t) for (bb, m), t in seconds.items() if bb == b)
            if len(series) > 1:
                lines.append(
                    f"- {geometry}, batch {b}: "
                    + ", ".join(f"N = {m}: {t / series[0][1]:.2f}x" for m, t in series)
                    + f" the time of N = {series[0][0]}"
                )
    return lines


def plot(results: list[StepResult], path: Path) -> bool:
    """The samples/s plot; False (and no file) where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    geometries = list(dict.fromkeys(r.geometry for r in results))
    figure, axes = plt.subplots(1, len(geometries), figsize=(6 * len(geometries), 4.2), squeeze=False)
    for axis, geometry in zip(axes[0], geometries):
        rows = [r for r in results if r.geometry == geometry]
        for step, marker, style in (("project", "o", "-"), ("plain", "s", "--"), ("trainer", "^", ":")):
            for n in sorted({r.front_blocks for r in rows if r.step == step}):
                series = sorted(
                    (r.batch, r.samples_per_second) for r in rows if r.step == step and r.front_blocks == n
                )
                if series:
                    xs, ys = zip(*series)
                    axis.plot(xs, ys, style, marker=marker, label=f"{STEP_LABELS[step]}, N = {n}")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(sorted({r.batch for r in rows}))
        axis.set_xticklabels([str(b) for b in sorted({r.batch for r in rows})])
        axis.set_xlabel("batch size")
        axis.set_ylabel("training samples / s")
        axis.set_title(geometry)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="about 1.5 minutes: batch 32, N = 6, few steps")
    size.add_argument("--full", action="store_true", help="every batch size and N for both steps (long on a CPU)")
    parser.add_argument(
        "--out", default=str(REPO_ROOT / "bench" / "results"), help="folder for results.md/json and the plot"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "bf16"],
        help="fp32, or bf16 autocast (parameters stay fp32, as --bf16 trains). Default: fp32 on CPU, bf16 on CUDA",
    )
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated, e.g. 32,64,128 (default: 32,64,128 on CPU; 64,128,256 on CUDA)",
    )
    parser.add_argument(
        "--geometries",
        default=",".join(GEOMETRIES),
        help=f"comma-separated model geometries to run (default: all of {', '.join(GEOMETRIES)})",
    )
    parser.add_argument(
        "--front-blocks", default="2,6,12", help="trainable front text blocks N, comma-separated (capped at the depth)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps per step kind and point (default by mode)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per step kind and point (default: by mode and point)"
    )
    parser.add_argument(
        "--kinds",
        default=",".join(STEP_LABELS),
        help=f"comma-separated step kinds to run where the plan runs them (default: all of {', '.join(STEP_LABELS)})",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation throughput")
    parser.add_argument(
        "--wait-for-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on a shared machine: before each timed step, wait up to this long for other processes to go quiet",
    )
    parser.add_argument(
        "--torch-compile",
        default=None,
        metavar="BACKEND",
        help="step (c) with the Trainer's --torch_compile and this backend (inductor, aot_eager); its warm-up "
        "steps then include the compilation",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the cores this process may use)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers like 32,64,128, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise UserError(f"{flag} needs positive integers, got {text!r}")
    return values


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    try:
        device = Device(args.device, torch.bfloat16 if dtype == "bf16" else None)
    except ValueError as error:
        raise UserError(str(error)) from None
    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes else None
    front_blocks = _int_list(args.front_blocks, "--front-blocks")
    mode = "quick" if args.quick else "full" if args.full else "default"
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 1):
        raise UserError(
            "--steps and --warmup must be >= 1 (the last warm-up step probes memory), "
            f"got --steps {args.steps} --warmup {args.warmup}"
        )
    if args.wait_for_idle < 0:
        raise UserError(f"--wait-for-idle must be >= 0 seconds, got {args.wait_for_idle}")
    geometries = [name.strip() for name in args.geometries.split(",") if name.strip()]
    unknown = [name for name in geometries if name not in GEOMETRIES]
    if unknown or not geometries:
        raise UserError(f"--geometries: unknown {unknown or args.geometries!r}; known: {', '.join(GEOMETRIES)}")
    kinds = [name.strip() for name in args.kinds.split(",") if name.strip()]
    if not kinds or any(name not in STEP_LABELS for name in kinds):
        raise UserError(f"--kinds: expected some of {', '.join(STEP_LABELS)}, got {args.kinds!r}")
    plan = make_plan(mode, device, batch_sizes, front_blocks, args.steps)
    configs = [replace(c, steps=tuple(k for k in c.steps if k in kinds)) for c in plan.configs]
    plan = Plan(
        [config for config in configs if config.geometry.name in geometries and config.steps],
        args.warmup if args.warmup is not None else plan.warmup,
        {} if args.no_eval else {k: v for k, v in plan.eval_images.items() if k in geometries},
        {} if args.no_eval else {k: v for k, v in plan.eval_texts.items() if k in geometries},
        args.wait_for_idle,
        args.torch_compile,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    started = time.perf_counter()
    peaks = []  # at the start and the end, each after waiting for quiet: the best is the machine's
    wait_for_idle(plan.wait_for_idle)
    peaks.append(matmul_peak_flops(device))
    units = sum(c.timed * len(c.steps) for c in plan.configs) + len(plan.eval_images)
    with tqdm(total=units, unit="step", dynamic_ncols=True) as progress:
        results = run_configs(plan, device, args.seed, progress)
        evals = run_eval(plan, device, args.seed, progress) if plan.eval_images else []
    wait_for_idle(plan.wait_for_idle)
    peaks.append(matmul_peak_flops(device))
    for result in results:
        result.finish(max(peaks))
    meta = {
        "mode": mode,
        "device": device.type,
        "dtype": dtype,
        "threads": threads,
        "peak_dtype": str(device.matmul_dtype).replace("torch.", ""),
        "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "matmul_peak_flops": max(peaks),
        "peak_start": peaks[0],
        "peak_end": peaks[1],
        "seconds": time.perf_counter() - started,
        "warmup": plan.warmup,
        "wait_for_idle": plan.wait_for_idle,
        "torch_compile": plan.torch_compile,
    }
    report = markdown(meta, results, evals)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "steps": [asdict(r) for r in results],
                "speedups": speedups(results),
                "eval": [asdict(e) for e in evals],
            },
            indent=2,
        )
        + "\n"
    )
    plotted = plot(results, out / "samples_per_second.png")
    print(report)
    print(
        f"wrote {out / 'results.md'}, {out / 'results.json'}"
        + (f", {out / 'samples_per_second.png'}" if plotted else " (no plot: matplotlib is not installed)")
    )


if __name__ == "__main__":
    run_cli(main)
