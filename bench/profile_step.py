"""Where the time of one training step goes: torch.profiler self time, grouped by kind of op.

    python -m bench.profile_step [--step project|plain] [--batch 64] [--front-blocks 6] [--buckets ROWS] [--bf16]

One warm-up step, then one profiled step of ViT-B/32 geometry (see bench/bench_train.py for the
steps). Prints the share of each group (matmuls, attention, the quick-GELU activation, layer norms,
the optimiser and grad clipping, the embedding gradient, copies, ...) and the top ops. The profiler
adds some overhead per op; shares, not absolute times, are the point.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bench.measure import prime_optimizer
from bench.workload import (
    VIT_B_32,
    TrainStep,
    build_model,
    coco_like_captions,
    fast_batch,
    fast_loss_terms,
    plain_batch,
    plain_loss_terms,
    trainer_like_optimizer,
)
from modeling_omninegclip import TEXT_BUCKET_ROWS
from omninegclip.common.cli import run_cli

# First match wins; op names as torch.profiler reports them.
GROUPS = [
    ("matmul (linear layers)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention (SDPA kernels)", ("scaled_dot_product", "flash_attention")),
    ("quick-GELU (sigmoid, mul)", ("aten::sigmoid", "aten::sigmoid_backward", "aten::mul")),
    ("layer norm", ("layer_norm",)),
    ("softmax / loss", ("softmax", "nll_loss", "cross_entropy")),
    (
        "optimiser + grad clip",
        ("adamw", "_foreach", "norm", "clamp", "aten::lerp", "addcdiv", "addcmul", "aten::sqrt"),
    ),
    ("embedding (lookup, gradient)", ("embedding", "index_add", "index_put", "aten::index")),
    ("copies / layout", ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::to", "_to_copy")),
    ("fill / zero", ("aten::fill_", "aten::zero_", "aten::zeros", "aten::empty")),
    ("other elementwise", ("aten::add", "aten::sub", "aten::div", "aten::where", "aten::sum", "aten::masked_fill")),
]


def group_of(name: str) -> str:
    for group, patterns in GROUPS:
        if any(pattern in name for pattern in patterns):
            return group
    return "other"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", choices=["project", "plain"], default="project")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--front-blocks", type=int, default=6)
    parser.add_argument(
        "--buckets",
        type=int,
        default=TEXT_BUCKET_ROWS,
        help="captions per text-encoder call in the length-sorted pass (0: one call padded to the longest caption)",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    model = build_model(VIT_B_32, args.front_blocks)
    generator = torch.Generator().manual_seed(args.batch)
    captions = coco_like_captions(args.batch, generator)
    if args.step == "project":
        batch, loss_terms = (
            fast_batch(captions, torch.randn(args.batch, VIT_B_32.projection_dim, generator=generator)),
            fast_loss_terms,
        )
    else:
        pixels = torch.randn(args.batch, 3, VIT_B_32.image_size, VIT_B_32.image_size, generator=generator)
        batch, loss_terms = plain_batch(captions, pixels), plain_loss_terms
    optimizer = trainer_like_optimizer(model)
    prime_optimizer(optimizer)
    step = TrainStep(model, loss_terms, optimizer, torch.bfloat16 if args.bf16 else None)
    model.text_bucket_rows = args.buckets or None
    step(batch)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(batch)
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    groups: dict[str, float] = defaultdict(float)
    for event in events:
        groups[group_of(event.key)] += event.self_cpu_time_total
    print(
        f"step {args.step}, ViT-B/32, batch {args.batch}, N = {args.front_blocks}, buckets {args.buckets}, "
        f"{'bf16' if args.bf16 else 'fp32'}: {total / 1e6:.2f} s of op self time (profiled)\n"
    )
    print("| group | share | s |\n|---|---:|---:|")
    for group, micros in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"| {group} | {100 * micros / total:.1f} % | {micros / 1e6:.2f} |")
    print("\n| op | group | share | calls |\n|---|---|---:|---:|")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        print(
            f"| {event.key} | {group_of(event.key)} | {100 * event.self_cpu_time_total / total:.1f} % "
            f"| {event.count} |"
        )


if __name__ == "__main__":
    run_cli(main)
