"""Data parallelism, for real: two gloo processes on the CPU (torchrun) give the same loss terms and
gradients as one process on the concatenated batch, and train.py under torchrun trains to the same
weights as one process with the same global batch, evaluates and saves once.

`accelerate launch --multi_gpu` does not start distributed processes without GPUs (DESIGN.md §3),
so the settings of configs/accelerate/ddp.yaml (its process count) are run through torchrun here,
with ACCELERATE_USE_CPU=1 so that Accelerate and the Trainer use the CPU."""

from __future__ import annotations

import ast
import json
import sys

import pytest
import torch
import yaml

import distributed_worker as worker
import train
from train_helpers import (  # noqa: F401  (single_thread: an autouse fixture)
    REPO,
    capture_trainers,
    color_rows,
    run_command,
    save_dataset,
    save_tiny_clip,
    single_thread,
    train_flags,
    weights,
)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    result = run_command(TORCHRUN + ["--nproc_per_node", "2", "tests/distributed_worker.py", tmp_path])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for scenario in worker.SCENARIOS:
        terms, grads = worker.step(worker.make_model(), worker.global_batch(scenario))
        for rank in ranks:
            got = rank[scenario]
            assert got["terms"].keys() == terms.keys()
            for name, value in terms.items():
                torch.testing.assert_close(got["terms"][name], value, rtol=1e-5, atol=1e-6, msg=f"{scenario} {name}")
            assert got["grads"].keys() == grads.keys()
            for name, value in grads.items():
                torch.testing.assert_close(got["grads"][name], value, rtol=1e-4, atol=1e-6, msg=f"{scenario} {name}")
        if scenario == "plain":
            assert "loss_clip" in terms
        else:
            assert terms["loss_presence"] > 0 and terms["loss_absence"] > 0
    # Both towers received gradients through the gather.
    grads = ranks[0]["mixed"]["grads"]
    assert grads["vision_model.embeddings.patch_embedding.weight"].abs().sum() > 0
    assert grads["text_model.encoder.layers.0.mlp.fc1.weight"].abs().sum() > 0


def test_train_py_under_torchrun_matches_one_process(tmp_path, processor, monkeypatch):
    ddp = yaml.safe_load((REPO / "configs/accelerate/ddp.yaml").read_text())
    assert ddp["distributed_type"] == "MULTI_GPU"
    processes = ddp["num_processes"]
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(32), color_rows(16, offset=32))
    # Same global batch of 8: 2 x 4 (sequential order, so both runs see the same rows per step).
    common = dict(max_steps=3, optim="sgd", learning_rate=0.5, train_sampling_strategy="sequential",
                  eval_strategy="steps", eval_steps=2)
    distributed = tmp_path / "ddp"
    flags = train_flags(model_dir, data, distributed, per_device_train_batch_size=8 // processes,
                        per_device_eval_batch_size=8 // processes, **common)
    result = run_command(TORCHRUN + ["--nproc_per_node", processes, "train.py", *flags], ACCELERATE_USE_CPU="1")
    assert result.returncode == 0, result.stderr[-3000:]
    single = tmp_path / "single"
    trainers = capture_trainers(monkeypatch)
    train.main(train_flags(model_dir, data, single, per_device_train_batch_size=8, per_device_eval_batch_size=8, **common))

    record = json.loads((distributed / "training_provenance.json").read_text())
    assert record["world_size"] == processes
    assert (result.stdout + result.stderr).count("wrote the checkpoint to") == 1  # saved by rank 0 only
    assert "terminate called" not in result.stderr
    expected, got = weights(single), weights(distributed)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(got["text_projection.weight"], weights(model_dir)["text_projection.weight"])
    # Every logged loss term is the global-batch term (rank 0 prints the mean over processes).
    logged = [ast.literal_eval(line) for line in result.stdout.splitlines() if line.startswith("{'loss'")]
    expected_logs = [entry for entry in trainers[0].state.log_history if "loss" in entry]
    assert len(logged) == len(expected_logs) == 3
    for got_entry, expected_entry in zip(logged, expected_logs):
        for name in ("loss", "loss_presence", "loss_absence", "loss_absence_text"):
            assert float(got_entry[name]) == pytest.approx(expected_entry[name], abs=2e-3), name
    eval_loss = json.loads((distributed / "eval_results.json").read_text())["eval_loss"]
    assert eval_loss == pytest.approx(json.loads((single / "eval_results.json").read_text())["eval_loss"], rel=1e-4)


@pytest.mark.parametrize("name", ["single_gpu", "ddp", "fsdp", "deepspeed_zero2"])
def test_accelerate_configs_are_valid_and_document_their_launch(name):
    """Each shipped config loads as an Accelerate config, every nested setting is one that
    `accelerate launch` knows (unknown ones would be ignored silently), and its header comment
    gives the command that uses it."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    path = REPO / "configs" / "accelerate" / f"{name}.yaml"
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.mixed_precision == "no"  # precision comes from train.py's flags, one source of truth
    known = vars(launch_command_parser().parse_args(["train.py"]))
    prefixes = {"fsdp_config": "fsdp_", "deepspeed_config": ""}
    for section, prefix in prefixes.items():
        for key in (getattr(config, section) or {}):
            flag = key if key.startswith(prefix) else prefix + key
            assert flag in known, f"{path.name}: {section}.{key} is not an accelerate launch setting"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"accelerate launch --config_file configs/accelerate/{name}.yaml train.py" in line for line in header)
