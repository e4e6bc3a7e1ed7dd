"""Several processes, for real, on the CPU (gloo): two processes give the same loss terms and
gradients as one process on the concatenated batch; train.py trains to the same weights, logs the
same global loss terms, evaluates and saves once, as one process with the same global batch, under
each shipped engine: DDP (configs/accelerate/ddp.yaml), FSDP2 (fsdp.yaml), DeepSpeed ZeRO-2
(deepspeed_zero2.yaml, where DeepSpeed is installed) and two machines (multi_node.yaml, as two
torchrun nodes on this machine).

`accelerate launch` starts distributed processes only on GPUs, so each run goes
through torchrun with the environment `accelerate launch` would give its processes
(`accelerate_env`, computed by Accelerate's launcher code); DDP with ACCELERATE_USE_CPU=1, FSDP and
DeepSpeed through tests/distributed_worker.py, which lets Accelerate start them without a GPU."""

from __future__ import annotations

import ast
import json
import re
import socket
import subprocess
import sys

import distributed_worker as worker
import pytest
import torch
import yaml
from train_helpers import (  # noqa: F401  (single_thread: an autouse fixture)
    REPO,
    capture_trainers,
    color_rows,
    run_command,
    save_dataset,
    save_tiny_clip,
    single_thread,
    subprocess_env,
    train_flags,
    weights,
)
from transformers import CLIPModel

import train

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


def accelerate_env(config: str, processes: int) -> dict[str, str]:
    """The environment that `accelerate launch --config_file configs/accelerate/CONFIG.yaml` gives
    each process it starts, computed by Accelerate's own launcher code (so a setting of the config
    that Accelerate ignored would be ignored here too)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = REPO / "configs" / "accelerate" / f"{config}.yaml"
    args = launch_command_parser().parse_args(
        ["--config_file", str(path), "--num_processes", str(processes), "train.py"]
    )
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as `accelerate launch` does before it starts DeepSpeed's processes
        args.deepspeed_fields_from_accelerate_config = ",".join([*defaults.deepspeed_config, "mixed_precision"])
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    prefixes = ("ACCELERATE_", "FSDP_")
    return {key: value for key, value in env.items() if key.startswith(prefixes)}


COMMON = dict(
    max_steps=3,
    optim="sgd",
    learning_rate=0.5,
    train_sampling_strategy="sequential",
    eval_strategy="steps",
    eval_steps=2,
)


def check_matches_one_process(tmp_path, processor, monkeypatch, launch, processes: int, **extra) -> str:
    """Run train.py through `launch(flags, output_dir)` (a function that starts the processes and
    returns their joined stdout + stderr) with a global batch of 8 split over `processes`, and one
    process on the same batch of 8; the weights after 3 SGD steps, every logged loss term and the
    eval loss agree, the checkpoint is written once and is a plain CLIP. Returns the output."""
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(32), color_rows(16, offset=32))
    distributed = tmp_path / "distributed"
    flags = train_flags(
        model_dir,
        data,
        distributed,
        per_device_train_batch_size=8 // processes,
        per_device_eval_batch_size=8 // processes,
        **COMMON,
        **extra,
    )
    output = launch(flags)
    single = tmp_path / "single"
    trainers = capture_trainers(monkeypatch)
    train.main(
        train_flags(
            model_dir, data, single, per_device_train_batch_size=8, per_device_eval_batch_size=8, **COMMON, **extra
        )
    )

    record = json.loads((distributed / "training_provenance.json").read_text())
    assert record["world_size"] == processes
    assert output.count("wrote the checkpoint to") == 1  # saved by rank 0 only
    assert "terminate called" not in output
    expected, got, start = weights(single), weights(distributed), weights(model_dir)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].shape == expected[name].shape, name  # e.g. logit_scale stays CLIP's scalar
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(got["text_projection.weight"], start["text_projection.weight"])
    assert torch.equal(
        got["vision_model.encoder.layers.0.mlp.fc1.weight"], start["vision_model.encoder.layers.0.mlp.fc1.weight"]
    )
    assert set(got) == set(CLIPModel.from_pretrained(distributed).state_dict())  # a plain CLIP checkpoint
    # Every logged loss term is the global-batch term (rank 0 prints the mean over processes).
    logged = [ast.literal_eval(line) for line in output.splitlines() if line.startswith("{'loss'")]
    expected_logs = [entry for entry in trainers[0].state.log_history if "loss" in entry]
    assert len(logged) == len(expected_logs) == 3
    for got_entry, expected_entry in zip(logged, expected_logs):
        for name in ("loss", "loss_presence", "loss_absence", "loss_absence_text"):
            assert float(got_entry[name]) == pytest.approx(expected_entry[name], abs=2e-3), name
    eval_loss = json.loads((distributed / "eval_results.json").read_text())["eval_loss"]
    assert eval_loss == pytest.approx(json.loads((single / "eval_results.json").read_text())["eval_loss"], rel=1e-4)
    return output


def torchrun(command: list, processes: int, **env):
    def launch(flags: list[str]) -> str:
        result = run_command(TORCHRUN + ["--nproc_per_node", processes, *command, *flags], **env)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    return launch


def test_train_py_under_torchrun_matches_one_process(tmp_path, processor, monkeypatch):
    ddp = yaml.safe_load((REPO / "configs/accelerate/ddp.yaml").read_text())
    assert ddp["distributed_type"] == "MULTI_GPU"
    processes = ddp["num_processes"]
    check_matches_one_process(
        tmp_path, processor, monkeypatch, torchrun(["train.py"], processes, ACCELERATE_USE_CPU="1"), processes
    )


ENGINES = {
    # config: (what tests/distributed_worker.py reports about the prepared model, the library it needs)
    "fsdp": ({"engine": "FSDP2", "units": 5 + 2 + 1 + 1, "mixed_requires_grad_units": ["<root>"]}, None),
    "deepspeed_zero2": ({"engine": "DeepSpeed", "zero_stage": 2}, "deepspeed"),
}


@pytest.mark.parametrize("config", list(ENGINES))
def test_train_py_under_fsdp_and_deepspeed_matches_one_process(config, tmp_path, processor, monkeypatch):
    """The shipped FSDP / DeepSpeed ZeRO-2 config, in 2 gloo processes on the CPU (Accelerate starts
    these engines only on accelerators: tests/distributed_worker.py lifts that, nothing else), with
    the frozen image tower run every step (no embedding cache): the same training as one process.
    FSDP: each encoder block (text and image) and the token embedding are shard units; the root
    unit holds trainable (text projection, logit scale, ...) and frozen (image embeddings, visual
    projection) parameters, which FSDP2 shards one by one, so they train as without it."""
    expected_engine, library = ENGINES[config]
    if library:
        pytest.importorskip(library, reason=f"{library} is not installed (README: Several GPUs)")
    settings = yaml.safe_load((REPO / f"configs/accelerate/{config}.yaml").read_text())
    env = accelerate_env(config, settings["num_processes"]) | {"DS_ACCELERATOR": "cpu"}
    launch = torchrun(["tests/distributed_worker.py", "train"], settings["num_processes"], **env)
    output = check_matches_one_process(
        tmp_path, processor, monkeypatch, launch, settings["num_processes"], cache_image_embeddings="false"
    )
    engines = [
        json.loads(line.removeprefix("engine: ")) for line in output.splitlines() if line.startswith("engine: ")
    ]
    assert engines == [expected_engine]


def test_two_nodes_match_one_process(tmp_path, processor, monkeypatch):
    """configs/accelerate/multi_node.yaml's layout (2 machines x 1 process, static rendezvous at the
    first machine's address), run as two torchrun "nodes" on this machine."""
    settings = yaml.safe_load((REPO / "configs/accelerate/multi_node.yaml").read_text())
    nodes, processes = settings["num_machines"], settings["num_processes"]
    assert (nodes, processes, settings["rdzv_backend"]) == (2, 2, "static")
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def launch(flags: list[str]) -> str:
        runs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes",
                    str(nodes),
                    "--node_rank",
                    str(rank),
                    "--nproc_per_node",
                    str(processes // nodes),
                    "--master_addr",
                    "127.0.0.1",
                    "--master_port",
                    str(port),
                    "train.py",
                    *map(str, flags),
                ],
                cwd=REPO,
                env=subprocess_env(ACCELERATE_USE_CPU="1"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank in range(nodes)
        ]
        outputs = [run.communicate()[0] for run in runs]
        assert [run.returncode for run in runs] == [0] * nodes, outputs[0][-3000:] + outputs[1][-3000:]
        # Only machine 0 saves; every machine's first process prints the logs (--log_on_each_node).
        assert "wrote the checkpoint to" not in outputs[1]
        return outputs[0]

    check_matches_one_process(tmp_path, processor, monkeypatch, launch, processes)


@pytest.mark.parametrize("name", ["single_gpu", "ddp", "fsdp", "deepspeed_zero2", "multi_node"])
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
        for key in getattr(config, section) or {}:
            flag = key if key.startswith(prefix) else prefix + key
            assert flag in known, f"{path.name}: {section}.{key} is not an accelerate launch setting"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    launch = re.compile(rf"accelerate launch --config_file configs/accelerate/{name}\.yaml( --\w+ \S+)* train\.py")
    assert any(launch.search(line) for line in header)
