"""One rank of the data-parallel check in test_distributed.py, run as
`torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT_DIR` (gloo, CPU).

Also, as `torchrun ... tests/distributed_worker.py train <train.py flags>`: one rank of train.py on
the CPU under the engine that the Accelerate environment names (FSDP or DeepSpeed; see
`enable_engines_on_cpu`).

Every rank builds the same seeded model and the same global batch, takes its own rows, runs forward
and backward, and averages the gradients over ranks as DDP does; it saves the rank-averaged loss
terms and gradients to OUT_DIR/rank{r}.pt. The test compares them with one process on the whole
batch. The batch construction lives here so that the test builds exactly the same one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from conftest import tiny_clip_config

from modeling_omninegclip import LOSS_TERM_NAMES, OmniNegCLIPModel, OmniNegLossConfig, TrainableConfig, apply_trainable
from omninegclip.common.clip import BOS_TOKEN_ID as BOS
from omninegclip.common.clip import EOS_TOKEN_ID as EOS

GLOBAL_ROWS = 8
# Per scenario: which rows carry a presence / absence negation. Rank 0 holds rows 0-3, rank 1 rows 4-7.
SCENARIOS = {
    # unbalanced masks: 3 presence rows on rank 0, 1 on rank 1; rows with both feed the choice term
    "mixed": ([1, 1, 1, 0, 0, 1, 0, 0], [0, 1, 1, 1, 1, 0, 1, 1]),
    # each negation lives on one rank only: the other rank encodes none of it
    "one-sided": ([1, 1, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 0]),
    # no negations at all: plain CLIP loss
    "plain": ([0] * 8, [0] * 8),
}


def make_model() -> OmniNegCLIPModel:
    """Both towers train, so gradients flow back through every gathered embedding."""
    torch.manual_seed(0)
    model = OmniNegCLIPModel(tiny_clip_config(text_layers=3), loss_config=OmniNegLossConfig(lambda_choice=1.0))
    apply_trainable(model, TrainableConfig(text_preset="whole", train_vision_tower=True))
    return model.train()


def _captions(generator: torch.Generator, rows: int, length: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((rows, length), EOS)
    mask = torch.zeros(rows, length, dtype=torch.long)
    for row in range(rows):
        words = int(torch.randint(2, length - 2, (1,), generator=generator))
        ids[row, 0] = BOS
        ids[row, 1 : words + 1] = torch.randint(1, 49000, (words,), generator=generator)
        mask[row, : words + 2] = 1  # BOS, words, EOS; the rest is padding
    return ids, mask


def global_batch(scenario: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    presence, absence = (torch.tensor(flags, dtype=torch.bool) for flags in SCENARIOS[scenario])
    batch = {"pixel_values": torch.randn(GLOBAL_ROWS, 3, 30, 30, generator=generator)}
    batch["input_ids"], batch["attention_mask"] = _captions(generator, GLOBAL_ROWS)
    for kind, rows in (("presence", presence), ("absence", absence)):
        batch[f"{kind}_negated_input_ids"], batch[f"{kind}_negated_attention_mask"] = _captions(generator, GLOBAL_ROWS)
        batch[f"{kind}_mask"] = rows
    return batch


def rows_of(batch: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """A process's share of the batch, as the collator would build it: a negation that no row of
    the share carries is left out altogether."""
    local = {key: value[rows] for key, value in batch.items()}
    for kind in ("presence", "absence"):
        if not local[f"{kind}_mask"].any():
            for suffix in ("_negated_input_ids", "_negated_attention_mask", "_mask"):
                del local[kind + suffix]
    return local


def step(
    model: OmniNegCLIPModel, inputs: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Forward + backward; the loss terms and the gradients."""
    model.zero_grad()
    output = model(**inputs, return_loss=True)
    output.loss.backward()
    terms = {"loss": output.loss.detach()}
    terms |= {name: getattr(output, name).detach() for name in LOSS_TERM_NAMES if getattr(output, name) is not None}
    grads = {name: param.grad.detach().clone() for name, param in model.named_parameters() if param.grad is not None}
    return terms, grads


def main(out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    share = GLOBAL_ROWS // world
    results = {}
    for scenario in SCENARIOS:
        model = make_model()
        terms, grads = step(model, rows_of(global_batch(scenario), slice(rank * share, (rank + 1) * share)))
        for tensor in [*terms.values(), *grads.values()]:  # average over ranks, as DDP does for gradients
            dist.all_reduce(tensor)
            tensor /= world
        results[scenario] = {"terms": terms, "grads": grads}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def enable_engines_on_cpu() -> None:
    """Accelerate starts FSDP and DeepSpeed only on accelerators (without one, a torchrun process
    becomes a non-distributed one, or DDP with ACCELERATE_USE_CPU). Two changes let them run on
    the CPU with gloo, everything else as on GPUs: a torchrun process without an accelerator is a
    gloo CPU process (even when ACCELERATE_USE_CPU is unset, which DeepSpeed needs), and with
    ACCELERATE_USE_FSDP=true such a process uses FSDP, as it would on GPUs."""
    from accelerate import state
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    prepare_backend = state.PartialState._prepare_backend
    init_accelerator_state = state.AcceleratorState.__init__

    def cpu_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, kind = prepare_backend(self, cpu, sagemaker_dp, backend)
        if kind == DistributedType.NO and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return "gloo", DistributedType.MULTI_CPU
        return backend, kind

    def fsdp_on_cpu(self, *args, **kwargs):
        init_accelerator_state(self, *args, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
            self.distributed_type = DistributedType.FSDP
            if getattr(self, "fsdp_plugin", None) is None:
                self.fsdp_plugin = (
                    kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
                )  # reads the FSDP_* settings

    state.PartialState._prepare_backend = cpu_backend
    state.AcceleratorState.__init__ = fsdp_on_cpu
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        import deepspeed.ops

        # DeepSpeed would compile a shared-memory all-reduce for CPUs at start-up (a C++ toolchain
        # and a minute); gloo's does the same job.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def report_engine(model) -> dict:
    """What the engine made of the model: for FSDP2, its shard units (each a module that
    `fully_shard` wrapped) and the units that hold both trainable and frozen parameters."""
    from torch.distributed.fsdp import FSDPModule

    record = {"engine": type(model).__name__}
    if isinstance(model, FSDPModule):
        units = {name: module for name, module in model.named_modules() if isinstance(module, FSDPModule)}
        mixed = []
        for name, unit in units.items():
            # parameters this unit manages itself: those not inside a nested unit
            nested = [other for other in units if other != name and other.startswith(f"{name}." if name else "")]
            own = [
                param
                for pname, param in unit.named_parameters(prefix=name)
                if not any(pname.startswith(f"{other}.") for other in nested)
            ]
            if len({param.requires_grad for param in own}) > 1:
                mixed.append(name or "<root>")
        record |= {"engine": "FSDP2", "units": len(units), "mixed_requires_grad_units": mixed}
    elif hasattr(model, "zero_optimization_stage"):
        record |= {"engine": "DeepSpeed", "zero_stage": model.zero_optimization_stage()}
    return record


def train(argv: list[str]) -> None:
    """train.py on this rank; rank 0 prints what the engine made of the model (`report_engine`) as
    one line `engine: {...}` once training is set up."""
    import json

    import accelerate

    import train as train_script
    from omninegclip.common.cli import run_cli

    enable_engines_on_cpu()
    prepare = accelerate.Accelerator.prepare

    def reporting_prepare(self, *args, **kwargs):
        prepared = prepare(self, *args, **kwargs)
        models = [
            item
            for item in (prepared if isinstance(prepared, (tuple, list)) else (prepared,))
            if isinstance(item, torch.nn.Module)
        ]
        if models and self.is_main_process:
            print("engine: " + json.dumps(report_engine(models[0])), flush=True)
        return prepared

    accelerate.Accelerator.prepare = reporting_prepare
    torch.set_num_threads(1)
    run_cli(train_script.main, argv)


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(sys.argv[2:])
    else:
        main(sys.argv[1])
