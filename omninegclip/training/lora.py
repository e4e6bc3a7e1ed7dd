"""LoRA through PEFT as PEFT users expect it: what trains besides the adapters, and the adapter folder.

- `modules_to_save(trainable)`: the extra parts a `TrainableConfig` asks to train (token and position
  embeddings, final layer norm, text projection, image tower) as PEFT `modules_to_save` names. PEFT
  then trains a copy of each, saves it with the adapters in every checkpoint-* folder and loads it
  back on `--resume_from_checkpoint`, so a resumed run ends exactly where an uninterrupted one does;
  `merge_and_unload` puts the trained copies back in place.
- The logit scale cannot go that way: `modules_to_save` wraps *modules*, and CLIP's logit scale is
  a bare `nn.Parameter` of `CLIPModel` (PEFT 0.21's other per-parameter options do not fit a
  scalar either: `trainable_token_indices` is for embedding rows, `target_parameters` puts a
  low-rank update on 2-D/3-D weights). Unfrozen by hand, it would be missing from every checkpoint
  and from the adapter, so a resumed run and `PeftModel.from_pretrained` would silently use the
  base value: `LOGIT_SCALE_WITH_LORA` is the error train.py raises instead.
- `save_adapter(peft_model, folder, base_model_id)`: the adapter as `PeftModel.from_pretrained`
  reads it (adapter_config.json naming the base model, adapter_model.safetensors).
- `push_adapter(folder, repo_id, ...)`: that folder to its own Hub repo, in one commit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import create_repo, upload_folder

if TYPE_CHECKING:
    from modeling_omninegclip import TrainableConfig

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
# TrainableConfig flag -> the module's full name in CLIPModel (PEFT matches names by suffix: full
# names keep the text tower's embeddings apart from the image tower's `position_embedding`).
EXTRA_MODULES = {
    "train_token_embedding": ("text_model.embeddings.token_embedding",),
    "train_position_embedding": ("text_model.embeddings.position_embedding",),
    "train_final_layer_norm": ("text_model.final_layer_norm",),
    "train_text_projection": ("text_projection",),
    "train_vision_tower": ("vision_model", "visual_projection"),
}
LOGIT_SCALE_WITH_LORA = (
    "--train_logit_scale does not work with --lora_r: PEFT keeps extra trainable parts through modules_to_save, "
    "which wraps modules, and the logit scale is a bare parameter of CLIPModel, so neither a checkpoint-* folder "
    "(resume) nor the adapter could carry it; leave --train_logit_scale off with LoRA, or train without --lora_r"
)


def modules_to_save(trainable: TrainableConfig) -> list[str]:
    """The PEFT `modules_to_save` for what `trainable` asks to train besides the LoRA blocks."""
    return [name for flag, names in EXTRA_MODULES.items() if getattr(trainable, flag) for name in names]


def save_adapter(peft_model, folder: str | Path, base_model_id: str) -> Path:
    """Write the adapter (LoRA weights and the trained copies of `modules_to_save`) to `folder`,
    its config naming `base_model_id`: `PeftModel.from_pretrained(CLIPModel.from_pretrained(base_model_id), folder)`
    then reproduces the merged checkpoint. Call before `merge_and_unload`."""
    folder = Path(folder)
    config = peft_model.peft_config[peft_model.active_adapter]
    config.base_model_name_or_path = base_model_id
    peft_model.save_pretrained(folder)
    logger.info("wrote the LoRA adapter to %s", folder)
    return folder


def push_adapter(folder: str | Path, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Create (or reuse) the Hub repo and upload the adapter folder in one commit; return the full repo id."""
    full_id = create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    upload_folder(repo_id=full_id, folder_path=str(folder), commit_message="Omni-NegCLIP LoRA adapter", token=token)
    logger.info("pushed the LoRA adapter %s to %s", folder, full_id)
    return full_id
