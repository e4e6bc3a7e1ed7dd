"""The callbacks `OmniNegCLIPTrainer` runs: the logit scale clamped after every optimiser step, the
losses checked for NaN/inf a few steps at a time, the provenance written into every checkpoint-*
folder; and `unwrap` (the OmniNegCLIPModel inside DDP/PEFT wrappers)."""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer, TrainerCallback

from modeling_omninegclip import OmniNegCLIPModel
from omninegclip.training.checkpoints import write_provenance


def unwrap(model) -> OmniNegCLIPModel:
    """The OmniNegCLIPModel inside a DDP and/or PEFT wrapper."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ClampLogitScaleCallback(TrainerCallback):
    """exp(logit_scale) <= 100 after every optimiser step, as CLIP trains."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is not None:
            unwrap(model).clamp_logit_scale()


class FiniteLossCallback(TrainerCallback):
    """Checks the losses of the steps since the last check for NaN/inf once every
    `--nan_check_steps` steps, and always before a checkpoint is saved, the logs are written, an
    evaluation runs or training stops: one host sync per check instead of one per step, and no
    checkpoint ever holds weights updated by a bad step."""

    def __init__(self, trainer: Trainer, every: int):  # an OmniNegCLIPTrainer (it calls its check_finite)
        self.trainer, self.every = trainer, every

    def on_step_end(self, args, state, control, model=None, **kwargs):
        due = control.should_save or control.should_log or control.should_evaluate or control.should_training_stop
        if due or state.global_step % self.every == 0:
            self.trainer.check_finite(model)


class ProvenanceCallback(TrainerCallback):
    """Writes `record` (versions, seed, commit, settings) into every checkpoint-* folder, after the
    Trainer has written the rest of it."""

    def __init__(self, record: dict):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_provenance(folder, self.record | {"global_step": state.global_step})
