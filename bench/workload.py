"""What the training benchmark runs: model geometries, COCO-like batches, the two training steps
being compared, and the FLOP model they are scored against.

Public surface
--------------
- `Geometry`, `VIT_B_32`, `DEFAULT_SMALL`, `build_model(geometry, front_blocks, seed)`.
- `CaptionRows`, `coco_like_captions(batch, generator)`: token ids per row for the original,
  presence-negated and absence-negated captions, lengths drawn like real COCO captions.
- `packed_rows(...)`: a batch's rows as the Trainer holds prepared data (`PackedRows`);
  `fast_batch(...)`: the project's batch (the real `OmniNegCollator` over them: cached image embeddings,
  each caption set padded to its own longest caption); `plain_batch(...)`: pixel values and every
  caption set padded to 77 tokens, as `padding="max_length"` does.
- `fast_loss_terms(model, batch)`: the project's forward (one text pass); `plain_loss_terms(model,
  batch)`: the careful but plain forward (image tower every step under no_grad, one text-encoder
  call per caption set) through the same public loss functions. Both return every loss term.
- `trainer_like_optimizer(model, ...)`, `TrainStep`: forward, backward, grad-norm clip, AdamW step,
  logit-scale clamp, as `OmniNegCLIPTrainer` does one step.
- FLOP model: `text_train_flops`, `text_forward_flops`, `vision_forward_flops`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig
from transformers.trainer_pt_utils import get_parameter_names

from modeling_omninegclip import (
    OmniNegCLIPModel,
    TrainableConfig,
    absence_loss,
    apply_trainable,
    choice_loss,
    presence_loss,
    resolve_text_blocks,
)
from omninegclip.common import clip
from omninegclip.common.clip import BOS_TOKEN_ID, CONTEXT_LENGTH, EOS_TOKEN_ID, VOCAB_SIZE, ClipSize
from omninegclip.training.data import OmniNegCollator, PackedRows
from pipeline.default import SMALL_CLIP

# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry(ClipSize):
    """A named CLIP shape (`ClipSize`: intermediate (MLP) width 4x hidden in both towers, as in CLIP)."""

    name: str = "unnamed"
    vocab_size: int = VOCAB_SIZE

    def clip_config(self) -> CLIPConfig:
        return self.config()


VIT_B_32 = Geometry(**asdict(clip.VIT_B_32), name="ViT-B/32")
DEFAULT_SMALL = Geometry(**asdict(SMALL_CLIP), name="default-small")


def build_model(geometry: Geometry, front_blocks: int, seed: int = 0) -> OmniNegCLIPModel:
    """A randomly initialised `OmniNegCLIPModel` of this geometry, in train mode, with text blocks
    0..front_blocks-1 (plus embeddings, final norm, projection, logit scale) trainable."""
    torch.manual_seed(seed)
    model = OmniNegCLIPModel(geometry.clip_config())
    set_front_blocks(model, front_blocks)
    return model.train()


def set_front_blocks(model: OmniNegCLIPModel, front_blocks: int) -> list[str]:
    """Make text blocks 0..front_blocks-1 trainable, as `train.py --front_blocks` does."""
    model.trainable_config = TrainableConfig(front_blocks=front_blocks)
    return apply_trainable(model, model.trainable_config)


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


@dataclass
class CaptionRows:
    """Token ids (BOS ... EOS) per row of one batch, for each caption set."""

    original: list[list[int]]
    presence: list[list[int]]
    absence: list[list[int]]

    def sets(self) -> dict[str, list[list[int]]]:
        return {"original": self.original, "presence": self.presence, "absence": self.absence}

    def token_count(self) -> int:
        return sum(len(ids) for rows in self.sets().values() for ids in rows)


def coco_like_captions(batch: int, generator: torch.Generator, vocab_size: int = VOCAB_SIZE) -> CaptionRows:
    """Caption lengths like real COCO captions under CLIP's tokenizer: originals about 14 tokens
    (BOS and EOS included; 10-25); presence negations 2-5 tokens longer ("not", "with no X"),
    absence negations 3-6 longer (", with no dog"). Every row carries both negations."""
    originals = torch.normal(14.0, 3.0, (batch,), generator=generator).round().clamp(10, 25).long()
    presence = originals + torch.randint(2, 6, (batch,), generator=generator)
    absence = originals + torch.randint(3, 7, (batch,), generator=generator)

    def ids(lengths: torch.Tensor) -> list[list[int]]:
        rows = []
        for length in lengths.tolist():
            words = torch.randint(0, vocab_size - 2, (length - 2,), generator=generator).tolist()
            rows.append([BOS_TOKEN_ID, *words, EOS_TOKEN_ID])
        return rows

    return CaptionRows(ids(originals), ids(presence), ids(absence))


def packed_rows(captions: CaptionRows, image_embeds: torch.Tensor) -> PackedRows:
    """The batch's rows as the Trainer holds prepared data: token ids per caption set, cached image embeddings."""
    tokens = {
        "input_ids": captions.original,
        "presence_negated_input_ids": captions.presence,
        "absence_negated_input_ids": captions.absence,
    }
    return PackedRows(
        tokens, EOS_TOKEN_ID, image_index=np.arange(len(captions.original)), image_embeds=image_embeds.float()
    )


def fast_batch(captions: CaptionRows, image_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
    """The project's batch, built by the real collator from prepared rows with cached embeddings."""
    rows = packed_rows(captions, image_embeds)
    batch = OmniNegCollator(rows)([{"row_id": row, "packed_row": row} for row in range(len(captions.original))])
    batch.pop("row_ids")
    return batch


def pad_to_context(rows: list[list[int]], pad_token_id: int = EOS_TOKEN_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row padded to CLIP's 77-token context, as the tokenizer's `padding="max_length"` does."""
    input_ids = torch.full((len(rows), CONTEXT_LENGTH), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), CONTEXT_LENGTH), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def plain_batch(captions: CaptionRows, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The plain step's batch: pixel values, and each caption set padded to 77 tokens."""
    batch = {"pixel_values": pixel_values}
    for kind, rows in captions.sets().items():
        batch[f"{kind}_input_ids"], batch[f"{kind}_attention_mask"] = pad_to_context(rows)
    return batch


# ----------------------------------------------------------------------------------------------
# The two forwards
# ----------------------------------------------------------------------------------------------


def fast_loss_terms(model: OmniNegCLIPModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The project's forward: cached image embeddings, dynamic padding, one text-encoder call."""
    output = model(**batch, return_loss=True)
    return {name: value for name, value in output.items() if name.startswith("loss")}


def plain_loss_terms(model: OmniNegCLIPModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A careful but plain forward: the frozen image tower run on pixel values under no_grad, each
    caption set through its own text-encoder call, then the same public loss functions the model
    uses (every row carries both negations)."""
    with torch.no_grad():
        images = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    texts = {
        kind: model.get_text_features(
            input_ids=batch[f"{kind}_input_ids"], attention_mask=batch[f"{kind}_attention_mask"]
        ).pooler_output
        for kind in ("original", "presence", "absence")
    }
    image, text, presence, absence = (F.normalize(x.float(), dim=-1) for x in (images, *texts.values()))
    every_row = torch.ones(image.shape[0], dtype=torch.bool, device=image.device)
    scale = model.logit_scale.exp()
    cfg = model.loss_config
    terms = presence_loss(image, text, presence, every_row, scale)
    terms |= absence_loss(
        image,
        text,
        absence,
        every_row,
        scale,
        lambda_orig=cfg.lambda_orig,
        lambda_text=cfg.lambda_text,
        margin=cfg.margin,
    )
    terms["loss_choice"] = (
        choice_loss(image, absence, presence, every_row, scale) if cfg.lambda_choice > 0 else scale.new_zeros(())
    )
    terms["loss"] = (
        terms["loss_presence"] + cfg.lambda_abs * terms["loss_absence"] + cfg.lambda_choice * terms["loss_choice"]
    )
    return terms


# ----------------------------------------------------------------------------------------------
# One training step, as the Trainer takes it
# ----------------------------------------------------------------------------------------------


def trainer_like_optimizer(
    model: nn.Module,
    learning_rate: float = 1e-6,
    weight_decay: float = 0.2,
    fused: bool | None = True,
    foreach: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters as `Trainer.create_optimizer` builds it with the default
    `optim="adamw_torch_fused"`: weight decay on everything but biases and layer norms."""
    decay = set(
        get_parameter_names(model, [nn.LayerNorm], [r"bias", r"layernorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"])
    )
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    groups = [
        {"params": [param for name, param in named if name in decay], "weight_decay": weight_decay},
        {"params": [param for name, param in named if name not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, fused=fused, foreach=foreach)


@dataclass
class TrainStep:
    """forward -> backward -> clip grad norm (1.0) -> AdamW step -> zero grads -> clamp logit scale.
    `autocast_dtype` runs the forward under autocast (what `--bf16` does), parameters stay fp32."""

    model: OmniNegCLIPModel
    loss_terms: Callable[[OmniNegCLIPModel, dict], dict[str, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    autocast_dtype: torch.dtype | None = None
    max_grad_norm: float = 1.0

    def __call__(self, batch: dict[str, torch.Tensor]) -> float:
        device_type = next(self.model.parameters()).device.type
        with torch.autocast(
            device_type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
        ):
            loss = self.loss_terms(self.model, batch)["loss"]
        loss.backward()
        trainable = [param for param in self.model.parameters() if param.grad is not None]
        torch.nn.utils.clip_grad_norm_(trainable, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.clamp_logit_scale()
        return float(loss.detach())


# ----------------------------------------------------------------------------------------------
# FLOP model
# ----------------------------------------------------------------------------------------------
#
# A matmul of (m x k) by (k x n) costs 2*m*n*k FLOPs. Per transformer block over `tokens` tokens in
# `sequences` sequences of `length` (hidden d, MLP width 4d):
#   linear layers (q, k, v, out, fc1, fc2): 2 * tokens * (4 d^2 + 2 * d * 4d) = 24 * tokens * d^2
#   attention matmuls (scores Q K^T and weights x V, all heads): 2 * 2 * sequences * length^2 * d
# counted over the full length^2 (causal attention could skip half; the count is the usual one).
# Backward: the input gradient of a matmul costs what its forward did (attention: both operands need
# one, so 2x); the weight gradient of a linear layer costs what its forward did. Layer norms,
# softmax, activations, embeddings lookups, the loss and the optimiser are not counted: they are not
# matmuls and are bound by memory traffic.


def _block_linear_flops(tokens: int, hidden: int) -> int:
    return 2 * tokens * (4 * hidden * hidden + 2 * hidden * 4 * hidden)


def _block_attention_flops(sequences: int, length: int, hidden: int) -> int:
    return 2 * 2 * sequences * length * length * hidden


def text_forward_flops(geometry: Geometry, sequences: int, length: int) -> int:
    """Matmul FLOPs of the text tower's forward over `sequences` padded to `length`, projection included."""
    tokens = sequences * length
    d = geometry.text_hidden
    per_block = _block_linear_flops(tokens, d) + _block_attention_flops(sequences, length, d)
    return geometry.text_layers * per_block + 2 * sequences * d * geometry.projection_dim


def text_train_flops(
    geometry: Geometry, sequences: int, length: int, trainable_blocks: list[int], embeddings_train: bool = True
) -> int:
    """Matmul FLOPs one training step of the text tower needs: the forward; input gradients from the
    top block down to the first block whose parameters, or anything below it, train; weight
    gradients of the trainable blocks only (and of the projection, which trains)."""
    tokens = sequences * length
    d = geometry.text_hidden
    forward = text_forward_flops(geometry, sequences, length)
    lowest = 0 if embeddings_train else min(trainable_blocks, default=geometry.text_layers)
    backward_blocks = geometry.text_layers - lowest
    input_gradients = (
        backward_blocks * (_block_linear_flops(tokens, d) + 2 * _block_attention_flops(sequences, length, d))
        + 2 * sequences * d * geometry.projection_dim
    )
    weight_gradients = (
        len(trainable_blocks) * _block_linear_flops(tokens, d) + 2 * sequences * d * geometry.projection_dim
    )
    return forward + input_gradients + weight_gradients


def vision_forward_flops(geometry: Geometry, images: int) -> int:
    """Matmul FLOPs of the image tower's forward: patch embedding, blocks, projection."""
    length = geometry.patches + 1  # + class token
    d = geometry.vision_hidden
    patch_embedding = 2 * images * geometry.patches * (3 * geometry.patch_size**2) * d
    per_block = _block_linear_flops(images * length, d) + _block_attention_flops(images, length, d)
    return patch_embedding + geometry.vision_layers * per_block + 2 * images * d * geometry.projection_dim


def trainable_text_blocks(model: OmniNegCLIPModel) -> list[int]:
    return resolve_text_blocks(model.config.text_config.num_hidden_layers, model.trainable_config)
