"""`--hub_strategy` as in transformers, through the Trainer's own push, with the Hub faked
(tests/test_hub.py's `FakeHub`): `end` pushes once; `all_checkpoints` keeps each checkpoint in its
folder; `checkpoint` keeps `last-checkpoint/`, from which a run on another machine (a fresh output
folder) resumes; `--hub_revision` and `--hub_private_repo` reach the Hub; with LoRA the repo's root
never holds adapter files. The Hub is checked before anything slow (the offline row of
tests/test_bad_input.py)."""

from __future__ import annotations

import json
import logging

from test_hub import USER, fake_the_hub
from train_helpers import color_rows, save_dataset, save_tiny_clip, single_thread, train_flags  # noqa: F401

import train

REPO = f"{USER}/tiny-omninegclip"


def run(tmp_path, processor, out, **flags):
    model = tmp_path / "clip"
    if not model.exists():
        save_tiny_clip(model, processor)
    data = tmp_path / "data"
    if not data.exists():
        save_dataset(data, color_rows(16))
    settings = dict(
        max_steps=2, save_strategy="steps", save_steps=1, push_to_hub="true", hub_model_id="tiny-omninegclip"
    )
    return train.main(train_flags(model, data, out, **(settings | flags)))


def files(commit) -> set[str]:
    return {path.relative_to(commit.folder).as_posix() for path in commit.folder.rglob("*") if path.is_file()}


def test_end_pushes_once_with_the_card(tmp_path, processor, monkeypatch):
    hub = fake_the_hub(monkeypatch, tmp_path / "hub")
    run(tmp_path, processor, tmp_path / "out", hub_strategy="end", hub_private_repo="true")
    assert [commit.message for commit in hub.commits] == ["End of training"]
    assert {"model.safetensors", "config.json", "README.md"} <= files(hub.commits[0])
    assert hub.created[0][1] is True  # --hub_private_repo reached the Hub, before training


def test_all_checkpoints_keeps_each_checkpoint_in_its_folder(tmp_path, processor, monkeypatch):
    hub = fake_the_hub(monkeypatch, tmp_path / "hub")
    run(tmp_path, processor, tmp_path / "out", hub_strategy="all_checkpoints")
    repo = hub.repos[(REPO, "main")]
    assert {"checkpoint-1/trainer_state.json", "checkpoint-2/optimizer.pt", "model.safetensors", "README.md"} <= set(
        repo
    )


def test_checkpoint_backs_up_last_checkpoint_and_another_machine_resumes_from_it(
    tmp_path, processor, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="omninegclip.train")
    hub = fake_the_hub(monkeypatch, tmp_path / "hub")
    run(tmp_path, processor, tmp_path / "first", hub_strategy="checkpoint", hub_revision="run-1")
    assert (REPO, "run-1") in hub.branches and all(commit.revision == "run-1" for commit in hub.commits)
    state = json.loads(hub.repos[(REPO, "run-1")]["last-checkpoint/trainer_state.json"].read_text())
    assert state["global_step"] == 2 and "last-checkpoint/training_provenance.json" in hub.repos[(REPO, "run-1")]
    # Another machine: a fresh output folder, the same flags, more steps, resumed from the Hub's backup.
    trainer, _ = run(
        tmp_path,
        processor,
        tmp_path / "second",
        hub_strategy="checkpoint",
        hub_revision="run-1",
        max_steps=3,
        resume_from_checkpoint="last-checkpoint",
    )
    assert (tmp_path / "second" / "last-checkpoint" / "trainer_state.json").is_file()  # fetched from the Hub
    assert f"resuming from {tmp_path / 'second' / 'last-checkpoint'} (step 2)" in caplog.text
    assert trainer.state.global_step == 3


def test_with_lora_the_root_never_holds_adapter_files(tmp_path, processor, monkeypatch):
    hub = fake_the_hub(monkeypatch, tmp_path / "hub")
    run(tmp_path, processor, tmp_path / "out", hub_strategy="checkpoint", lora_r=2, front_blocks=1)
    during, final = hub.commits[:-1], hub.commits[-1]
    assert during and all(name.startswith("last-checkpoint/") for commit in during for name in files(commit))
    assert "last-checkpoint/adapter_model.safetensors" in hub.repos[(REPO, "main")]
    assert final.message == "End of training" and "model.safetensors" in files(final)
    assert not any(name.startswith("adapter_") for name in files(final))
    config = json.loads((final.folder / "config.json").read_text())
    assert config["architectures"] == ["CLIPModel"] and config["omninegclip"]["lora"]["r"] == 2
