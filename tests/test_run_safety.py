"""Focused checks behind the bad-input matrix rows of issue 14 (runs that would give a wrong artifact
silently): the arithmetic of the zero-step refusal under several processes, the output-folder lock,
image modes converted by content, and the other cases a CLI row cannot reach cheaply."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import train
from omninegclip.cli import UserError


def _trainer(rows: int, per_device: int, processes: int = 1, accumulation: int = 1, drop_last: bool = True,
             max_steps: int = -1, epochs: float = 1.0):
    args = SimpleNamespace(world_size=processes, gradient_accumulation_steps=accumulation, per_device_train_batch_size=per_device,
                           dataloader_drop_last=drop_last, max_steps=max_steps, num_train_epochs=epochs)
    return SimpleNamespace(args=args, train_dataset=range(rows), _get_train_sampler=lambda: range(rows))


def test_zero_steps_under_several_processes_names_rows_global_batch_and_forced_drop_last():
    with pytest.raises(UserError) as error:
        train.check_training_steps(_trainer(rows=20, per_device=16, processes=2, accumulation=2))
    message = str(error.value)
    assert "20 training rows, a global batch of 32 rows per forward pass (--per_device_train_batch_size 16 x 2 process(es))" in message
    assert "64 per optimiser step (x --gradient_accumulation_steps 2)" in message
    assert "--dataloader_drop_last (forced: several processes)" in message and "--per_device_train_batch_size <= 10" in message


def test_steps_counted_like_the_trainer():
    assert train.check_training_steps(_trainer(rows=20, per_device=8, processes=2, epochs=3)) == 3  # one batch per epoch
    assert train.check_training_steps(_trainer(rows=20, per_device=4, drop_last=False, accumulation=2, epochs=1)) == 3  # 5 batches
    assert train.check_training_steps(_trainer(rows=20, per_device=64, drop_last=False, max_steps=7)) == 7  # one short batch
    with pytest.raises(UserError, match="--num_train_epochs 0.0"):
        train.check_training_steps(_trainer(rows=20, per_device=4, epochs=0.0))
