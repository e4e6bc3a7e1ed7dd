"""Measure proposed changes to the project's training step (b), one at a time.

    python -m bench.candidates [--batch 64] [--front-blocks 6] [--steps 3] [--only NAME,...]
                               [--wait-for-idle SECONDS] [--out DIR]

Every variant is the project's step (b) at ViT-B/32 geometry with one change (or a named
combination), applied by monkeypatching inside the measuring process, or by its environment, for
the measurement only: the change itself is proposed to the owners of the code (see bench/README.md).
Each variant runs in a fresh process (variants in one process disturb each other through the
allocator's state: freed memory, page faults), sequentially, the baseline first and again last; one
warm-up step (also the memory probe), then timed steps, medians. Reports the step time, samples/s,
speed-up over the baseline, peak step memory, the fraction of the matmul peak (of the variant's
own matmul dtype) and the cores other processes used meanwhile. Writes candidates.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
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
from bench.workload import (
    VIT_B_32,
    TrainStep,
    build_model,
    coco_like_captions,
    fast_batch,
    fast_loss_terms,
    text_train_flops,
    trainer_like_optimizer,
)
from modeling_omninegclip import TEXT_BUCKET_ROWS, TrainableConfig, apply_trainable, resolve_text_blocks
from omninegclip import REPO_ROOT
from omninegclip.common.cli import UserError, run_cli

# ----------------------------------------------------------------------------------------------
# The changes under test
# ----------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One change: patches applied to the model for the whole run, the optimiser settings, the
    forward's autocast dtype, the trainable selection, and environment variables for its process."""

    name: str
    description: str
    patches: tuple[Callable[[object], contextlib.AbstractContextManager], ...] = ()
    optimizer: dict | None = None
    autocast_dtype: torch.dtype | None = None
    trainable: TrainableConfig | None = None
    env: dict[str, str] = field(default_factory=dict)


# Keep freed memory in the process (glibc): every allocation from the heap, which is never trimmed,
# so no step pays for page faults and for zeroing fresh pages.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def _bucket_rows(rows: int | None) -> Callable[[object], contextlib.AbstractContextManager]:
    """A patch that sets the model's own `text_bucket_rows` (None: one call padded to the longest caption)."""

    @contextlib.contextmanager
    def set_rows(model) -> Iterator[None]:
        before, model.text_bucket_rows = model.text_bucket_rows, rows
        try:
            yield
        finally:
            model.text_bucket_rows = before

    return set_rows


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


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class CompiledQuickGELU(torch.nn.Module):
    """CLIP's quick GELU through `torch.compile`: one fused elementwise kernel forward and one backward
    (eager runs three passes forward and five back over the (tokens x 4d) activations)."""

    compiled = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if CompiledQuickGELU.compiled is None:
            CompiledQuickGELU.compiled = torch.compile(_quick_gelu, dynamic=True)
        return CompiledQuickGELU.compiled(x)


def _replace_activation(make: Callable[[], torch.nn.Module]):
    @contextlib.contextmanager
    def replace(model) -> Iterator[None]:
        layers = model.text_model.encoder.layers
        original = [layer.mlp.activation_fn for layer in layers]
        for layer in layers:
            layer.mlp.activation_fn = make()
        try:
            yield
        finally:
            for layer, activation in zip(layers, original):
                layer.mlp.activation_fn = activation

    return replace


_silu_activation = _replace_activation(QuickGELUAsSiLU)
_compiled_activation = _replace_activation(CompiledQuickGELU)


def variants(front_blocks: int, layers: int) -> list[Variant]:
    back = TrainableConfig(text_preset="back", train_token_embedding=False, train_position_embedding=False)
    first_back = resolve_text_blocks(layers, back)[0]
    return [
        Variant(
            "baseline",
            f"the project's step (b) as it is: one text pass in length-sorted buckets of {TEXT_BUCKET_ROWS} "
            "captions, fused AdamW",
        ),
        Variant(
            "adamw-forloop",
            "AdamW without fused/foreach (torch's default for CPU tensors)",
            optimizer={"fused": None, "foreach": False},
        ),
        Variant("adamw-foreach", "AdamW with foreach=True", optimizer={"fused": None, "foreach": True}),
        Variant(
            "frozen-token-embedding",
            "token embedding frozen (the most a sparse/row-wise embedding update could save)",
            trainable=TrainableConfig(front_blocks=front_blocks, train_token_embedding=False),
        ),
        Variant(
            "one-call",
            "text pass in one call padded to the longest caption (no buckets)",
            patches=(_bucket_rows(None),),
        ),
        Variant("buckets-32", "text pass in length-sorted buckets of 32 captions", patches=(_bucket_rows(32),)),
        Variant("buckets-96", "text pass in length-sorted buckets of 96 captions", patches=(_bucket_rows(96),)),
        Variant(
            "quick-gelu-as-silu",
            "quick GELU computed as silu(1.702 x) / 1.702 (fused kernels)",
            patches=(_silu_activation,),
        ),
        Variant(
            "compiled-quick-gelu",
            "quick GELU through torch.compile (fused kernels; compiled in the warm-up)",
            patches=(_compiled_activation,),
        ),
        Variant(
            "keep-freed-memory",
            "glibc keeps freed memory: " + " ".join(f"{k}={v}" for k, v in KEEP_FREED_MEMORY.items()),
            env=KEEP_FREED_MEMORY,
        ),
        Variant("eager-attention", "eager attention instead of SDPA", patches=(_eager_attention,)),
        Variant(
            "grad-checkpointing",
            "gradient checkpointing of every block (non-reentrant; recomputation not counted as FLOPs)",
            patches=(_checkpointing,),
        ),
        Variant(
            "bf16-autocast",
            "bf16 autocast on the CPU (train.py --bf16); % of the bf16 matmul peak",
            autocast_dtype=torch.bfloat16,
        ),
        Variant(
            "fp32-combined",
            "compiled-quick-gelu + keep-freed-memory",
            patches=(_compiled_activation,),
            env=KEEP_FREED_MEMORY,
        ),
        Variant(
            "bf16-combined",
            "fp32-combined + bf16 autocast",
            patches=(_compiled_activation,),
            env=KEEP_FREED_MEMORY,
            autocast_dtype=torch.bfloat16,
        ),
        Variant(
            "back-preset",
            f"blocks {first_back}..{layers - 1} train, embeddings frozen: autograd records nothing below",
            trainable=back,
        ),
        Variant(
            "back-preset+no_grad",
            f"the same, blocks below {first_back} run under explicit no_grad",
            patches=(lambda model: _no_grad_below(model, first_back),),
            trainable=back,
        ),
    ]


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def run_variant(variant: Variant, args) -> dict:
    """In this process: build the model, apply the variant, one warm-up step (the memory probe), then
    timed steps, each after waiting for other processes to go quiet."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    device = Device("cpu", None)
    model = build_model(VIT_B_32, args.front_blocks, args.seed)
    trainable = variant.trainable or TrainableConfig(front_blocks=args.front_blocks)
    model.trainable_config = trainable
    apply_trainable(model, trainable)
    generator = torch.Generator().manual_seed(args.seed + args.batch)
    batch = fast_batch(
        coco_like_captions(args.batch, generator),
        torch.randn(args.batch, VIT_B_32.projection_dim, generator=generator),
    )
    optimizer = trainer_like_optimizer(model, **(variant.optimizer or {"fused": True}))
    prime_optimizer(optimizer)
    step = TrainStep(model, fast_loss_terms, optimizer, variant.autocast_dtype)
    measured = StepMeasurement()
    with contextlib.ExitStack() as applied:
        for patch in variant.patches:
            applied.enter_context(patch(model))
        with record_text_shapes(model) as shapes:
            peak_bytes = peak_memory_of(lambda: step(batch), device)
        for _ in range(args.steps):
            wait_for_idle(args.wait_for_idle)
            measure_call(lambda: step(batch), device, measured)
    blocks = resolve_text_blocks(VIT_B_32.text_layers, trainable)
    embeddings_train = trainable.train_token_embedding or trainable.train_position_embedding
    flops = sum(
        text_train_flops(VIT_B_32, sequences, length, blocks, embeddings_train) for sequences, length in shapes
    )
    return {
        "variant": variant.name,
        "description": variant.description,
        "seconds": measured.seconds,
        "others_load": measured.others_load,
        "median_seconds": measured.median_seconds,
        "others": measured.median_others_load,
        "peak_mib": None if peak_bytes is None else peak_bytes / 2**20,
        "flops": flops,
        "text_shapes": shapes,
        "matmul_dtype": "bf16" if variant.autocast_dtype else "fp32",
    }


def _matmul_peaks(wait: float) -> dict[str, float]:
    wait_for_idle(wait)
    return {"fp32": matmul_peak_flops(Device("cpu", None)), "bf16": matmul_peak_flops(Device("cpu", torch.bfloat16))}


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--front-blocks", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--only", default=None, help="comma-separated variant names (the baseline always runs)")
    parser.add_argument(
        "--wait-for-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on a shared machine: before each timed step, wait up to this long for other processes to go quiet",
    )
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--worker", default=None, help=argparse.SUPPRESS
    )  # internal: measure one variant, JSON to stdout
    args = parser.parse_args(argv)
    if (
        args.batch < 1
        or args.steps < 1
        or args.wait_for_idle < 0
        or not 0 <= args.front_blocks <= VIT_B_32.text_layers
    ):
        raise UserError(
            f"--batch and --steps must be >= 1, --wait-for-idle >= 0 and --front-blocks in 0..{VIT_B_32.text_layers}"
        )
    return args


def _order(known: dict, only: str | None) -> list[str]:
    """The variants to run, the baseline first and again at the end (drift shows)."""
    names = list(known)
    if only:
        wanted = {name.strip() for name in only.split(",")}
        unknown = wanted - set(known)
        if unknown:
            raise UserError(f"--only: unknown variant(s) {sorted(unknown)}; known: {names}")
        names = ["baseline"] + [name for name in names if name in wanted and name != "baseline"]
    return names + ["baseline"]


def _run_each(order: list[str], known: dict, args: argparse.Namespace) -> list[dict]:
    """Each variant in a fresh process (its environment variables apply from the start)."""
    results = []
    common = [
        "--batch",
        str(args.batch),
        "--front-blocks",
        str(args.front_blocks),
        "--steps",
        str(args.steps),
        "--wait-for-idle",
        str(args.wait_for_idle),
        "--seed",
        str(args.seed),
    ]
    for name in tqdm(order, desc="variants (one process each)", unit="variant"):
        finished = subprocess.run(
            [sys.executable, "-m", "bench.candidates", "--worker", name, *common],
            cwd=REPO_ROOT,
            env=os.environ | known[name].env,
            capture_output=True,
            text=True,
        )
        if finished.returncode != 0:
            raise RuntimeError(f"variant {name} failed:\n{finished.stderr[-3000:]}")
        results.append(json.loads(finished.stdout.strip().splitlines()[-1]))
    return results


def _report(results: list[dict], peaks: dict, args: argparse.Namespace, seconds: float) -> str:
    baseline = statistics.median([s for row in results if row["variant"] == "baseline" for s in row["seconds"]])
    lines = [
        f"# Candidate changes to step (b): ViT-B/32, batch {args.batch}, N = {args.front_blocks}",
        "",
        f"Matmul peak (best of start and end): fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s. Each variant in a fresh process, 1 warm-up and {args.steps} "
        "timed steps, medians; the baseline first and last "
        f"(speed-ups are against both together). Took {seconds:.0f} s. Others: cores other processes "
        "kept busy during the timed steps (median); above ~0.1 the times are inflated.",
        "",
        "| variant | what changes | step s | samples/s | vs baseline | peak MiB | TFLOP | % peak (dtype) | others |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        row["speedup"] = baseline / row["median_seconds"]
        row["peak_fraction"] = row["flops"] / row["median_seconds"] / peaks[row["matmul_dtype"]]
        lines.append(
            f"| {row['variant']} | {row['description']} | {row['median_seconds']:.2f} "
            f"| {args.batch / row['median_seconds']:.2f} | "
            f"{row['speedup']:.2f}x | {_fmt(row['peak_mib'], ',.0f')} | {row['flops'] / 1e12:.3f} | "
            f"{100 * row['peak_fraction']:.0f} ({row['matmul_dtype']}) | {_fmt(row['others'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    args = _arguments(argv)
    known = {v.name: v for v in variants(args.front_blocks, VIT_B_32.text_layers)}
    if args.worker:
        print(json.dumps(run_variant(known[args.worker], args)))
        return
    order = _order(known, args.only)
    started = time.perf_counter()
    peaks = _matmul_peaks(args.wait_for_idle)
    results = _run_each(order, known, args)
    peaks = {dtype: max(peak, _matmul_peaks(args.wait_for_idle)[dtype]) for dtype, peak in peaks.items()}
    report = _report(results, peaks, args, time.perf_counter() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "candidates.md").write_text(report)
    meta = {"batch": args.batch, "front_blocks": args.front_blocks, "steps": args.steps, "peak_flops": peaks}
    (out / "candidates.json").write_text(json.dumps({"meta": meta, "variants": results}, indent=2) + "\n")
    print(report)


if __name__ == "__main__":
    run_cli(main)
