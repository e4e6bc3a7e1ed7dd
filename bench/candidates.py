"""Measure proposed changes to the project's training step (b), one against another, on one model.

    python bench/candidates.py [--batch 64] [--front-blocks 6] [--rounds 3] [--only NAME,...] [--allocator]
                               [--wait-for-idle SECONDS] [--out DIR]

Every variant is the project's step (b) at ViT-B/32 geometry with ONE change, applied by
monkeypatching inside this process for the measurement only (the change itself is proposed as a
patch under the owners' files; see bench/README.md). Variants run round-robin, one step each per
round, so all of them see the same machine load; a first round warms up and is not timed. Reports
the median step time, samples/s, peak step memory, the fraction of the matmul peak (of the variant's
own matmul dtype) and the speed-up over the baseline. Writes candidates.md and candidates.json.

`--allocator` also compares glibc's default allocator against one that keeps freed memory
(`MALLOC_MMAP_MAX_=0`, a large `MALLOC_TRIM_THRESHOLD_`: no page faults and zeroing of fresh pages
every step). An environment setting must be there when the process starts, so the baseline runs in
fresh processes, alternately with and without it (not interleaved step by step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bench.measure import (  # noqa: E402
    Device,
    StepMeasurement,
    matmul_peak_flops,
    measure_call,
    peak_memory_of,
    prime_optimizer,
    record_text_shapes,
    wait_for_idle,
)
from bench.workload import (  # noqa: E402
    VIT_B_32,
    TrainStep,
    build_model,
    coco_like_captions,
    fast_batch,
    fast_loss_terms,
    text_train_flops,
    trainer_like_optimizer,
)
from modeling_omninegclip import TrainableConfig, _pad_to, apply_trainable, resolve_text_blocks  # noqa: E402
from omninegclip.cli import UserError, run_cli  # noqa: E402


# ----------------------------------------------------------------------------------------------
# The changes under test
# ----------------------------------------------------------------------------------------------


def bucketed_encode_texts(model, caption_sets, bucket_rows: int) -> list[torch.Tensor]:
    """The text pass of bench_patches/encode_texts_length_buckets.patch: captions sorted by length,
    encoded `bucket_rows` at a time, each bucket cut to its own longest caption. Right padding never
    changes an embedding (causal attention, first-EOS pooling), so only the cost changes."""
    pad_id = model.config.text_config.pad_token_id
    pad_id = model.config.text_config.eos_token_id if pad_id is None else pad_id
    length = max(ids.shape[1] for ids, _ in caption_sets)
    padded = [_pad_to(ids, mask, length, pad_id) for ids, mask in caption_sets]
    input_ids = torch.cat([ids for ids, _ in padded])
    attention_mask = torch.cat([mask for _, mask in padded])
    sizes = [ids.shape[0] for ids, _ in caption_sets]
    extent = attention_mask.shape[1] - attention_mask.flip(1).argmax(dim=1)  # last attended position + 1
    order = torch.argsort(extent, stable=True)
    pieces = []
    for rows in order.split(bucket_rows):
        cut = int(extent[rows].max())
        features = model.get_text_features(input_ids=input_ids[rows, :cut], attention_mask=attention_mask[rows, :cut])
        pieces.append(features.pooler_output)
    return list(torch.cat(pieces)[torch.argsort(order)].split(sizes))


@dataclass
class Variant:
    """One change: a context manager that applies it to the model (and undoes it), the optimiser
    settings, the forward's autocast dtype, and the trainable selection it needs."""

    name: str
    description: str
    patch: Callable[[object], contextlib.AbstractContextManager] = lambda model: contextlib.nullcontext()
    optimizer: dict | None = None
    autocast_dtype: torch.dtype | None = None
    trainable: TrainableConfig | None = None


@contextlib.contextmanager
def bucketed_text_pass(model, bucket_rows: int) -> Iterator[None]:
    """While open, `model.encode_texts` is `bucketed_encode_texts` with `bucket_rows`."""
    model.encode_texts = lambda caption_sets: bucketed_encode_texts(model, caption_sets, bucket_rows)
    try:
        yield
    finally:
        del model.encode_texts


@contextlib.contextmanager
def _eager_attention(model) -> Iterator[None]:
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


@contextlib.contextmanager
def _checkpointing(model) -> Iterator[None]:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        model.gradient_checkpointing_disable()


@contextlib.contextmanager
def _no_grad_below(model, first_block: int) -> Iterator[None]:
    """Run the text blocks below `first_block` under no_grad explicitly."""
    layers = model.text_model.encoder.layers[:first_block]
    for layer in layers:
        layer.forward = torch.no_grad()(layer.forward)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


class QuickGELUAsSiLU(torch.nn.Module):
    """CLIP's quick GELU, x * sigmoid(1.702 x), computed as silu(1.702 x) / 1.702: the same function,
    with one fused kernel (and one fused backward) in place of a sigmoid and a product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(1.702 * x) / 1.702


@contextlib.contextmanager
def _silu_activation(model) -> Iterator[None]:
    layers = model.text_model.encoder.layers
    original = [layer.mlp.activation_fn for layer in layers]
    for layer in layers:
        layer.mlp.activation_fn = QuickGELUAsSiLU()
    try:
        yield
    finally:
        for layer, activation in zip(layers, original):
            layer.mlp.activation_fn = activation


def variants(front_blocks: int, layers: int) -> list[Variant]:
    back = TrainableConfig(text_preset="back", train_token_embedding=False, train_position_embedding=False)
    first_back = resolve_text_blocks(layers, back)[0]
    return [
        Variant("baseline", "the project's step (b) as it is: one text pass padded to the longest caption, fused AdamW"),
        Variant("adamw-forloop", "AdamW without fused/foreach (torch's default for CPU tensors)", optimizer={"fused": None, "foreach": False}),
        Variant("adamw-foreach", "AdamW with foreach=True", optimizer={"fused": None, "foreach": True}),
        Variant("frozen-token-embedding", "token embedding frozen (the most a sparse/row-wise embedding update could save)",
                trainable=TrainableConfig(front_blocks=front_blocks, train_token_embedding=False)),
        Variant("buckets-32", "text pass in length-sorted buckets of 32 captions", patch=lambda m: bucketed_text_pass(m, 32)),
        Variant("buckets-64", "text pass in length-sorted buckets of 64 captions", patch=lambda m: bucketed_text_pass(m, 64)),
        Variant("buckets-96", "text pass in length-sorted buckets of 96 captions", patch=lambda m: bucketed_text_pass(m, 96)),
        Variant("quick-gelu-as-silu", "quick GELU computed as silu(1.702 x) / 1.702 (fused kernels)", patch=_silu_activation),
        Variant("eager-attention", "eager attention instead of SDPA", patch=_eager_attention),
        Variant("grad-checkpointing", "gradient checkpointing of every block (non-reentrant; its recomputation is not counted as needed FLOPs)", patch=_checkpointing),
        Variant("bf16-autocast", "bf16 autocast on the CPU (train.py --bf16); % of the bf16 matmul peak", autocast_dtype=torch.bfloat16),
        Variant("bf16+buckets-64", "bf16 autocast and buckets of 64", patch=lambda m: bucketed_text_pass(m, 64), autocast_dtype=torch.bfloat16),
        Variant("back-preset", f"blocks {first_back}..{layers - 1} train, embeddings frozen: autograd records nothing below", trainable=back),
        Variant("back-preset+no_grad", f"the same, blocks below {first_back} run under explicit no_grad",
                patch=lambda m: _no_grad_below(m, first_back), trainable=back),
    ]


# Keep freed memory in the process: every allocation from the heap, which is never trimmed.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def allocator_comparison(args, pairs: int = 2) -> list[dict]:
    """The baseline step in fresh processes, alternately with glibc's defaults and KEEP_FREED_MEMORY."""
    settings = {"glibc defaults": {}, "keep freed memory": KEEP_FREED_MEMORY}
    runs: dict[str, list[dict]] = {label: [] for label in settings}
    for _ in range(pairs):
        for label, extra in settings.items():
            with tempfile.TemporaryDirectory() as out:
                command = [sys.executable, __file__, "--only", "baseline", "--rounds", str(args.rounds), "--batch", str(args.batch),
                           "--front-blocks", str(args.front_blocks), "--seed", str(args.seed), "--out", out,
                           "--wait-for-idle", str(args.wait_for_idle)]
                subprocess.run(command, env=os.environ | extra, check=True, capture_output=True, text=True)
                runs[label].append(json.loads((Path(out) / "candidates.json").read_text())["variants"][0])
    rows = []
    for label, found in runs.items():
        seconds = [s for run in found for s in run["seconds"]]
        others = [load for run in found for load in run["others_load"] if load is not None]
        rows.append({"setting": label, "env": settings[label], "median_seconds": statistics.median(seconds),
                     "others": statistics.median(others) if others else None, "peak_mib": max(run["peak_mib"] or 0 for run in found)})
    return rows


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def _matmul_peaks(wait: float) -> dict:
    wait_for_idle(wait)
    return {None: matmul_peak_flops(Device("cpu", None)), torch.bfloat16: matmul_peak_flops(Device("cpu", torch.bfloat16))}


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--front-blocks", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (one step of every variant each)")
    parser.add_argument("--only", default=None, help="comma-separated variant names (baseline always runs)")
    parser.add_argument("--allocator", action="store_true", help="also compare glibc's allocator settings (fresh processes)")
    parser.add_argument("--wait-for-idle", type=float, default=0.0, metavar="SECONDS",
                        help="on a shared machine: before each timed step, wait up to this long for other processes to go quiet")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.rounds < 1 or args.wait_for_idle < 0 or not 0 <= args.front_blocks <= VIT_B_32.text_layers:
        raise UserError(f"--batch and --rounds must be >= 1, --wait-for-idle >= 0 and --front-blocks in 0..{VIT_B_32.text_layers}")
    chosen = variants(args.front_blocks, VIT_B_32.text_layers)
    if args.only:
        names = {name.strip() for name in args.only.split(",")} | {"baseline"}
        unknown = names - {v.name for v in chosen}
        if unknown:
            raise UserError(f"--only: unknown variant(s) {sorted(unknown)}; known: {[v.name for v in chosen]}")
        chosen = [v for v in chosen if v.name in names]

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    started = time.perf_counter()
    peaks_at_start = _matmul_peaks(args.wait_for_idle)
    model = build_model(VIT_B_32, args.front_blocks, args.seed)
    generator = torch.Generator().manual_seed(args.seed + args.batch)
    captions = coco_like_captions(args.batch, generator)
    batch = fast_batch(captions, torch.randn(args.batch, VIT_B_32.projection_dim, generator=generator))
    device = Device("cpu", None)
    default_trainable = TrainableConfig(front_blocks=args.front_blocks)
    optimizers, steps, shapes, peak_bytes = {}, {}, {}, {}
    measured = {v.name: StepMeasurement() for v in chosen}

    def run(variant: Variant, timed: bool) -> None:
        trainable = variant.trainable or default_trainable
        model.trainable_config = trainable
        apply_trainable(model, trainable)
        if variant.name not in optimizers:
            optimizers[variant.name] = trainer_like_optimizer(model, **(variant.optimizer or {"fused": True}))
            prime_optimizer(optimizers[variant.name])
            steps[variant.name] = TrainStep(model, fast_loss_terms, optimizers[variant.name], variant.autocast_dtype)
        with variant.patch(model):
            if timed:
                if args.wait_for_idle:
                    wait_for_idle(args.wait_for_idle)
                measure_call(lambda: steps[variant.name](batch), device, measured[variant.name])
            else:  # warm-up: also the (untimed) memory probe
                with record_text_shapes(model) as seen:
                    peak_bytes[variant.name] = peak_memory_of(lambda: steps[variant.name](batch), device)
                shapes[variant.name] = (list(seen), resolve_text_blocks(VIT_B_32.text_layers, trainable), trainable)

    with tqdm(total=(args.rounds + 1) * len(chosen), unit="step") as progress:
        for round_index in range(args.rounds + 1):
            for variant in chosen:
                progress.set_description(f"round {round_index} {variant.name}")
                run(variant, timed=round_index > 0)
                progress.update(1)

    peaks_at_end = _matmul_peaks(args.wait_for_idle)
    peaks = {dtype: max(peak, peaks_at_end[dtype]) for dtype, peak in peaks_at_start.items()}
    baseline = statistics.median(measured["baseline"].seconds)
    rows = []
    for variant in chosen:
        measurement = measured[variant.name]
        seconds = measurement.median_seconds
        text_shapes, blocks, trainable = shapes[variant.name]
        embeddings_train = trainable.train_token_embedding or trainable.train_position_embedding
        flops = sum(text_train_flops(VIT_B_32, s, l, blocks, embeddings_train) for s, l in text_shapes)
        rows.append({
            "variant": variant.name, "description": variant.description, "seconds": measurement.seconds,
            "others_load": measurement.others_load, "median_seconds": seconds, "samples_per_second": args.batch / seconds,
            "speedup": baseline / seconds, "peak_mib": None if peak_bytes[variant.name] is None else peak_bytes[variant.name] / 2**20,
            "others": measurement.median_others_load, "tflop": flops / 1e12,
            "peak_fraction": flops / seconds / peaks[variant.autocast_dtype],
            "matmul_dtype": "bf16" if variant.autocast_dtype else "fp32", "text_shapes": text_shapes,
        })
    meta = {
        "batch": args.batch, "front_blocks": args.front_blocks, "rounds": args.rounds, "wait_for_idle": args.wait_for_idle,
        "peak_fp32_flops": peaks[None], "peak_bf16_flops": peaks[torch.bfloat16], "seconds": time.perf_counter() - started,
    }
    lines = [
        f"# Candidate changes to step (b): ViT-B/32, batch {args.batch}, N = {args.front_blocks}",
        "",
        f"Matmul peak (best of start and end): fp32 {peaks[None] / 1e9:,.0f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:,.0f} GFLOP/s. "
        f"{args.rounds} timed rounds (round-robin), medians; took {meta['seconds']:.0f} s. Others: cores other processes kept "
        "busy during the variant's timed steps (median); above ~0.1 its times are inflated.",
        "",
        "| variant | what changes | step s | samples/s | vs baseline | peak MiB | TFLOP | % peak (dtype) | others |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['description']} | {row['median_seconds']:.2f} | {row['samples_per_second']:.2f} | "
            f"{row['speedup']:.2f}x | {_fmt(row['peak_mib'], ',.0f')} | {row['tflop']:.3f} | "
            f"{100 * row['peak_fraction']:.0f} ({row['matmul_dtype']}) | {_fmt(row['others'], '.2f')} |"
        )
    if args.allocator:
        allocator = allocator_comparison(args)
        meta["allocator"] = allocator
        base = allocator[0]
        lines += ["", "Allocator (baseline step in fresh processes, alternating):", "",
                  "| setting | environment | step s | vs glibc defaults | others |", "|---|---|---:|---:|---:|"]
        for row in allocator:
            env = " ".join(f"{key}={value}" for key, value in row["env"].items()) or "-"
            lines.append(f"| {row['setting']} | {env} | {row['median_seconds']:.2f} | "
                         f"{base['median_seconds'] / row['median_seconds']:.2f}x | {_fmt(row['others'], '.2f')} |")
    report = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "candidates.md").write_text(report)
    (out / "candidates.json").write_text(json.dumps({"meta": meta, "variants": rows}, indent=2) + "\n")
    print(report)


if __name__ == "__main__":
    run_cli(main)
