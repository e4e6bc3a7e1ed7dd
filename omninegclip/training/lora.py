"""LoRA through PEFT as PEFT users expect it: the adapters, what trains besides them, and the adapter folder.

- `add_lora(model, trainable, r, alpha, dropout, target)`: the model wrapped by PEFT with adapters on the chosen
  text blocks only (`lora_target_regex`: `--lora_target` attention | mlp | all of those blocks).
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
  base value: `LOGIT_SCALE_WITH_LORA` is the error `add_lora` raises instead.
- `save_adapter(peft_model, folder, base_model_id)`: the adapter as `PeftModel.from_pretrained`
  reads it (adapter_config.json naming the base model, adapter_model.safetensors).
- `push_adapter(folder, repo_id, ...)`: that folder to its own Hub repo, in one commit.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import create_repo, upload_folder

from modeling_omninegclip import resolve_text_blocks
from omninegclip.common.cli import UserError

if TYPE_CHECKING:
    from modeling_omninegclip import OmniNegCLIPModel, TrainableConfig

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
# --lora_target -> the linear layers of a text block that get adapters
LORA_TARGET_MODULES = {
    "attention": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
    "mlp": ("mlp.fc1", "mlp.fc2"),
}
LORA_TARGET_MODULES["all"] = LORA_TARGET_MODULES["attention"] + LORA_TARGET_MODULES["mlp"]
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


def lora_target_regex(blocks: list[int], target: str) -> str:
    """PEFT `target_modules` for the chosen text blocks only. PEFT full-matches it against module
    names, so the vision tower's `vision_model.encoder.layers.*` never match."""
    layers = "|".join(str(block) for block in blocks)
    modules = "|".join(re.escape(name) for name in LORA_TARGET_MODULES[target])
    return rf"text_model\.encoder\.layers\.({layers})\.({modules})"


def add_lora(
    model: OmniNegCLIPModel,
    trainable: TrainableConfig,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target: str = "all",
):
    """Wrap `model` in a PEFT model with LoRA adapters on the chosen text blocks; the other parts
    `trainable` asks for train through PEFT's `modules_to_save` (saved with the adapters, so a resumed
    run restores them; see above). Returns (peft model, settings)."""
    from peft import LoraConfig, get_peft_model

    blocks = resolve_text_blocks(model.config.text_config.num_hidden_layers, trainable)
    if not blocks:
        raise UserError(
            "--lora_r > 0 needs at least one text block to adapt; "
            "--front_blocks/--text_preset/--text_blocks chose none"
        )
    if trainable.train_logit_scale:
        raise UserError(LOGIT_SCALE_WITH_LORA)
    extras = modules_to_save(trainable)
    regex = lora_target_regex(blocks, target)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=regex,
        bias="none",
        modules_to_save=extras or None,
    )
    peft_model = get_peft_model(model, config)
    settings = {
        "r": r,
        "alpha": alpha,
        "dropout": dropout,
        "target": target,
        "target_modules": regex,
        "text_blocks": blocks,
        "modules_to_save": extras,
        "merged": True,
    }
    return peft_model, settings
