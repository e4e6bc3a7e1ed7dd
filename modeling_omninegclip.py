"""Omni-NegCLIP: CLIP with presence- and absence-based negation losses (arXiv 2603.29258).

Everything the forward pass and the losses need lives in this file, the table of caption sets
(`CAPTION_SETS`) included: it imports nothing from the rest of the project, which builds on it. Its
checkpoints stay plain CLIP (`model_type: clip`, `architectures: ["CLIPModel"]`, the same keys as `CLIPModel`).

The objective
-------------
Notation of docs/method.md §1: v_i the image, t_i the original caption, p_i its presence-negated
caption (negates an object IN the image), a_i its absence-negated caption (negates a plausible object
NOT in the image), f_i its absence-affirmed caption (a_i with the object affirmed: false for the
image), all L2-normalised; s = exp(logit_scale); CE = cross-entropy. Each term averages over the rows
that carry its captions; the output field that reports it follows the name.

    L1      loss_presence_image    CE of image i over [t_1..t_B, p_1..p_B], target t_i
    L2      loss_presence_text     CE of caption t_i over the images, target v_i
    L3      loss_presence_pair     CE over [s v_i.t_i, s v_i.p_i], target 0
    L_pre   loss_presence          (L1 + L2 + L3) / 3                       (rows with p_i)
    L_neg   loss_absence_negated   symmetric InfoNCE between images and absence-negated captions
    L_orig  loss_absence_original  symmetric InfoNCE between images and original captions
    L_text  loss_absence_text      mean_i max(0, cos(t_i, a_i) + margin), no temperature
    L_abs   loss_absence           L_neg + lambda_orig L_orig + lambda_text L_text   (rows with a_i)
  Optional terms of ours, not in the paper (weight 0 by default: off, not computed, reported as 0):
    L_choice  loss_choice  CE over [s v_i.a_i, s v_i.p_i, s v_i.f_i], target a_i: the absence-negated
                           caption is the true option (rows with a_i and p_i or f_i; a missing option
                           leaves the softmax)
    L_keep    loss_keep    mean_i max(0, s v_i.t_i - s v_i.a_i): negating an absent object keeps the
                           match (rows with a_i)
    L_affirm  loss_affirm  CE over [s v_i.t_i, s v_i.f_i, s v_i.p_i], target t_i: the caption beats
                           its affirmed twin and its presence negation (rows with f_i or p_i)

    L = L_pre + lambda_abs L_abs + lambda_choice L_choice + lambda_keep L_keep + lambda_affirm L_affirm

A batch in which no row (of any process) carries a presence- or absence-negated caption is plain CLIP:
L = loss_clip, CLIP's symmetric InfoNCE between images and original captions, and the other terms are
None. Under several processes every term sees the global batch (all processes' rows) and each process
scores its own rows against all columns, so that the mean over processes equals one process's loss on
the global batch.

Public surface
--------------
- `OmniNegCLIPModel(CLIPModel)`: `forward` takes images (or their precomputed embeddings), the
  original captions and, optionally, the presence-negated, absence-negated and absence-affirmed
  captions with per-row masks; returns an `OmniNegCLIPOutput`.
- `OmniNegCLIPOutput`: the total loss, every term above, CLIP's logits and the L2-normalised
  embeddings of the images and of every caption set. `LOSS_TERM_NAMES`: its `loss_*` fields.
- `OmniNegCLIPLoss(config, rank, world_size)`: the objective in two steps, as open_clip's `ClipLoss`:
  `gather` (the one autograd-carrying all-gather, `all_gather_rows`, into a `GlobalBatch`: the
  global batch's embeddings and row masks by caption set), then `terms` over it.
- `OmniNegLossConfig`: loss weights and margin (defaults: the authors' released code);
  `caption_sets_read()`: the caption sets its active terms read (what the collator passes).
- `LOSS_TERMS`: each term of the total loss with its weight and the caption sets it reads.
- `TrainableConfig`, `resolve_text_blocks`, `apply_trainable`: which parameters train.
- The loss terms, pure functions of L2-normalised embeddings, the logit scale and row masks:
  `presence_loss`, `absence_loss`, `choice_loss`, `keep_match_loss`, `text_margin_loss`,
  `symmetric_infonce`, `masked_cross_entropy`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers.utils import ModelOutput

# The key of config.json (an attribute of the CLIP config) holding a run's settings: plain CLIP
# loaders ignore it, `OmniNegCLIPModel.from_pretrained` restores the loss and trainable settings.
SETTINGS_KEY = "omninegclip"
MODEL_TAGS = ["omni-negclip", "negation", "clip"]  # the Hub tags of a model trained here (`model_tags`)
LOGIT_SCALE_MAX = math.log(100.0)
TEXT_BLOCK_PRESETS = ("front", "middle", "back", "whole")
# Captions per text-encoder call in a training step (sorted by length, see `encode_texts`): large
# enough to keep the matmuls efficient, small enough that each bucket pads only a few tokens.
TEXT_BUCKET_ROWS = 64


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# The caption sets, declared once: every row has an original caption and, optionally, captions
# derived from it. Each `CaptionSet` names everything that carries one set through the project:
# the built dataset's column and the `train.py` flag naming it, the prepared token column and this
# model's forward arguments, its row mask and its output field. What derives from `CAPTION_SETS`:
# the builder's text columns, the column flags, the tokenized columns and the collator
# (`omninegclip.training.data`), the forward's caption arguments, the one all-gather of the global
# batch and the output's embedding fields. A new caption set is a new row here plus the loss term
# that reads it (`LOSS_TERMS`).
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionSet:
    """One caption set. `row_mask` None means every row has one (the original caption); a set with
    a row mask is optional per row and per dataset (its flag may say 'none')."""

    name: str  # how loss terms and `CaptionColumns` refer to it
    column: str  # the built dataset's column (`data_builder.py`), and the flag's default where `on_by_default`
    flag: str  # `train.py`'s argument naming the column in the user's data (--<flag>)
    input_ids: str  # forward argument with its token ids, and the prepared column that holds them
    attention_mask: str  # forward argument
    row_mask: str | None  # forward argument: (B,) bool, which rows carry one
    output: str  # `OmniNegCLIPOutput` field with its L2-normalised embeddings (zeros where a row has none)
    help: str  # the flag's help
    on_by_default: bool = True  # False: the flag defaults to 'none' (no such column)
    counted_as: str = (
        ""  # how `train.py`'s data line counts the rows with one ("with presence negation 12"); default: the name
    )

    @property
    def default_column(self) -> str:
        return self.column if self.on_by_default else "none"


CAPTION = CaptionSet(
    name="caption",
    column="caption",
    flag="caption_column",
    input_ids="input_ids",
    attention_mask="attention_mask",
    row_mask=None,
    output="text_embeds",
    help="Column with the original captions.",
)
PRESENCE = CaptionSet(
    name="presence",
    column="presence_negated",
    flag="presence_column",
    input_ids="presence_negated_input_ids",
    attention_mask="presence_negated_attention_mask",
    row_mask="presence_mask",
    output="presence_negated_embeds",
    counted_as="presence negation",
    help="Column with presence-negated captions (negate an object IN the image); 'none' for no such column.",
)
ABSENCE = CaptionSet(
    name="absence",
    column="absence_negated",
    flag="absence_column",
    input_ids="absence_negated_input_ids",
    attention_mask="absence_negated_attention_mask",
    row_mask="absence_mask",
    output="absence_negated_embeds",
    counted_as="absence negation",
    help="Column with absence-negated captions (negate a plausible object NOT in the image); "
    "'none' for no such column.",
)
AFFIRMED = CaptionSet(
    name="affirmed",
    column="absence_affirmed",
    flag="absence_affirmed_column",
    input_ids="absence_affirmed_input_ids",
    attention_mask="absence_affirmed_attention_mask",
    row_mask="absence_affirmed_mask",
    output="absence_affirmed_embeds",
    help="Column with absence-affirmed captions (the absence-negated caption with its object affirmed: false "
    "for the image), a third option of the --lambda_choice term; 'none' (default) for two options.",
    on_by_default=False,
    counted_as="absence-affirmed caption",
)
# The original caption first: it is the one every row has.
CAPTION_SETS: tuple[CaptionSet, ...] = (CAPTION, PRESENCE, ABSENCE, AFFIRMED)


@dataclass
class OmniNegLossConfig:
    """Loss weights and margin. Defaults are the authors' released code (docs/method.md §1)."""

    lambda_abs: float = 1.0
    lambda_orig: float = 1.0
    lambda_text: float = 1.0
    margin: float = 0.9
    # Not in the paper: a per-image multiple-choice term (NegBench-style) over the image's own
    # absence-negated caption (true) against its presence-negated caption and, where the data has
    # one, its absence-affirmed caption (false). 0 = off.
    lambda_choice: float = 0.0
    # Not in the paper: "absence-based negation must keep the match", as a hinge: an image's
    # absence-negated caption may not score below its original caption. 0 = off.
    lambda_keep: float = 0.0
    # Not in the paper: the affirmation counterpart of the choice term: per image, its original
    # caption (true) must beat its absence-affirmed caption and its presence-negated caption (both
    # false), so that what the choice term teaches about negations is not bought by reading every
    # affirmation as false. 0 = off.
    lambda_affirm: float = 0.0

    def __post_init__(self):
        for name in ("lambda_abs", "lambda_orig", "lambda_text", "lambda_choice", "lambda_keep", "lambda_affirm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.margin, (int, float)) and -1.0 <= self.margin <= 2.0):
            raise ValueError(f"margin must be a number in [-1, 2] (a cosine offset), got {self.margin!r}")

    def caption_sets_read(self) -> set[str]:
        """The caption sets (`CaptionSet.name`) that the active terms of `LOSS_TERMS` read; the
        collator leaves out the others."""
        return {name for term in LOSS_TERMS if term.active(self) for name in term.reads}


@dataclass
class TrainableConfig:
    """What trains. Text blocks: `text_blocks` (explicit indices) wins over `text_preset`, which
    wins over `front_blocks` (the first N). None of them given: the front half (6 of 12 for ViT-B/32)."""

    front_blocks: int | None = None
    text_preset: str | None = None
    text_blocks: list[int] | None = None
    train_token_embedding: bool = True
    train_position_embedding: bool = True
    train_final_layer_norm: bool = True
    train_text_projection: bool = True
    train_logit_scale: bool = True
    train_vision_tower: bool = False

    def __post_init__(self):
        if self.text_preset is not None and self.text_preset not in TEXT_BLOCK_PRESETS:
            raise ValueError(f"text_preset must be one of {TEXT_BLOCK_PRESETS}, got {self.text_preset!r}")
        if self.front_blocks is not None and self.front_blocks < 0:
            raise ValueError(f"front_blocks must be >= 0, got {self.front_blocks}")


def resolve_text_blocks(num_layers: int, trainable: TrainableConfig) -> list[int]:
    """The text transformer blocks that train, as sorted indices; validated against the model depth."""
    if trainable.text_blocks is not None:
        blocks = sorted(set(trainable.text_blocks))
        bad = [index for index in blocks if not 0 <= index < num_layers]
        if bad:
            raise ValueError(
                f"text_blocks {bad} out of range: the text encoder has {num_layers} blocks (0..{num_layers - 1})"
            )
        return blocks
    if trainable.text_preset is not None:
        third = num_layers / 3
        ranges = {
            "front": (0, num_layers // 2),
            "middle": (round(third), round(2 * third)),
            "back": (round(2 * third), num_layers),
            "whole": (0, num_layers),
        }
        start, stop = ranges[trainable.text_preset]
        return list(range(start, stop))
    front = num_layers // 2 if trainable.front_blocks is None else trainable.front_blocks
    if front > num_layers:
        raise ValueError(f"front_blocks={front} but the text encoder has only {num_layers} blocks")
    return list(range(front))


def apply_trainable(model: CLIPModel, trainable: TrainableConfig) -> list[str]:
    """Set `requires_grad` on every parameter as `trainable` says; return the names that train."""
    blocks = set(resolve_text_blocks(model.config.text_config.num_hidden_layers, trainable))
    text = model.text_model
    chosen: set[int] = set()

    def take(module: nn.Module | nn.Parameter):
        params = [module] if isinstance(module, nn.Parameter) else list(module.parameters())
        chosen.update(id(param) for param in params)

    for index, layer in enumerate(text.encoder.layers):
        if index in blocks:
            take(layer)
    if trainable.train_token_embedding:
        take(text.embeddings.token_embedding)
    if trainable.train_position_embedding:
        take(text.embeddings.position_embedding)
    if trainable.train_final_layer_norm:
        take(text.final_layer_norm)
    if trainable.train_text_projection:
        take(model.text_projection)
    if trainable.train_logit_scale:
        take(model.logit_scale)
    if trainable.train_vision_tower:
        take(model.vision_model)
        take(model.visual_projection)
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) in chosen)
        if param.requires_grad:
            names.append(name)
    return names


# ----------------------------------------------------------------------------------------------
# Loss terms: pure functions of L2-normalised embeddings, the logit scale s = exp(logit_scale) and masks
# ----------------------------------------------------------------------------------------------
#
# Conventions shared by every term. Embedding tensors hold the GLOBAL batch (G rows; one process:
# G = B). `rows` selects the rows this process scores (default: all); each row's target is its own
# global index. A term averages over the selected rows whose mask is on, normalised so that the
# mean over processes equals the single-process mean over the global batch: sum / global_count * world_size.
# Masked rows and masked columns contribute nothing and receive no gradient. No row on: the term is 0.


def _mean_over(
    per_row: torch.Tensor, row_mask: torch.Tensor, global_mask: torch.Tensor, world_size: int
) -> torch.Tensor:
    total = global_mask.sum().clamp(min=1).to(per_row.dtype)
    return torch.where(row_mask, per_row, torch.zeros_like(per_row)).sum() / total * world_size


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, column_mask: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy with masked columns removed from the softmax (finite, so no NaN)."""
    # -1e4 is far below any scaled cosine (|s * cos| <= 100) yet keeps every value finite.
    logits = logits.float().masked_fill(~column_mask.unsqueeze(0), -1e4)
    return F.cross_entropy(logits, targets, reduction="none")


def _targets(rows: slice, device) -> torch.Tensor:
    return torch.arange(rows.start, rows.stop, device=device)


def _all_rows(embeds: torch.Tensor, rows: slice | None) -> slice:
    return slice(0, embeds.shape[0]) if rows is None else rows


def symmetric_infonce(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    mask: torch.Tensor | None = None,
    rows: slice | None = None,
    world_size: int = 1,
) -> torch.Tensor:
    """CLIP's loss over the masked rows: (CE(image -> texts) + CE(text -> images)) / 2."""
    rows = _all_rows(image_embeds, rows)
    mask = torch.ones(image_embeds.shape[0], dtype=torch.bool, device=image_embeds.device) if mask is None else mask
    targets = _targets(rows, image_embeds.device)
    row_mask = mask[rows]
    image_to_text = masked_cross_entropy(logit_scale * image_embeds[rows] @ text_embeds.T, targets, mask)
    text_to_image = masked_cross_entropy(logit_scale * text_embeds[rows] @ image_embeds.T, targets, mask)
    per_row = (image_to_text + text_to_image) / 2
    return _mean_over(per_row, row_mask, mask, world_size)


def presence_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    presence_embeds: torch.Tensor,
    presence_mask: torch.Tensor,
    logit_scale: torch.Tensor,
    rows: slice | None = None,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
    """L1, L2, L3 and L_pre = (L1 + L2 + L3) / 3 over the rows that carry a presence negation.

    L1: image i against [t_1..t_G, p_1..p_G] (rows' own negations are extra hard negatives), target t_i.
    L2: caption t_i against the images, target v_i.
    L3: [s v_i.t_i, s v_i.p_i], target 0: the image's caption must beat its own negation."""
    rows = _all_rows(image_embeds, rows)
    targets = _targets(rows, image_embeds.device)
    row_mask = presence_mask[rows]
    images = image_embeds[rows]
    texts_and_negations = torch.cat([text_embeds, presence_embeds])
    l1 = masked_cross_entropy(logit_scale * images @ texts_and_negations.T, targets, presence_mask.repeat(2))
    l2 = masked_cross_entropy(logit_scale * text_embeds[rows] @ image_embeds.T, targets, presence_mask)
    pair_logits = logit_scale * torch.stack(
        [(images * text_embeds[rows]).sum(-1), (images * presence_embeds[rows]).sum(-1)], dim=1
    )
    l3 = F.cross_entropy(pair_logits.float(), torch.zeros_like(targets), reduction="none")
    terms = {
        "loss_presence_image": _mean_over(l1, row_mask, presence_mask, world_size),
        "loss_presence_text": _mean_over(l2, row_mask, presence_mask, world_size),
        "loss_presence_pair": _mean_over(l3, row_mask, presence_mask, world_size),
    }
    terms["loss_presence"] = sum(terms.values()) / 3
    return terms


def text_margin_loss(
    text_embeds: torch.Tensor,
    absence_embeds: torch.Tensor,
    absence_mask: torch.Tensor,
    margin: float,
    rows: slice | None = None,
    world_size: int = 1,
) -> torch.Tensor:
    """L_text = mean_i max(0, cos(t_i, a_i) + margin); no temperature. Zero once cos < -margin."""
    rows = _all_rows(text_embeds, rows)
    cosine = (text_embeds[rows] * absence_embeds[rows]).sum(-1)
    return _mean_over(F.relu(cosine + margin), absence_mask[rows], absence_mask, world_size)


def absence_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    absence_embeds: torch.Tensor,
    absence_mask: torch.Tensor,
    logit_scale: torch.Tensor,
    lambda_orig: float = 1.0,
    lambda_text: float = 1.0,
    margin: float = 0.9,
    rows: slice | None = None,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
    """L_neg, L_orig, L_text and L_abs = L_neg + lambda_orig L_orig + lambda_text L_text, over the
    rows that carry an absence negation."""
    common = dict(rows=rows, world_size=world_size)
    terms = {
        "loss_absence_negated": symmetric_infonce(image_embeds, absence_embeds, logit_scale, absence_mask, **common),
        "loss_absence_original": symmetric_infonce(image_embeds, text_embeds, logit_scale, absence_mask, **common),
        "loss_absence_text": text_margin_loss(text_embeds, absence_embeds, absence_mask, margin, **common),
    }
    terms["loss_absence"] = (
        terms["loss_absence_negated"]
        + lambda_orig * terms["loss_absence_original"]
        + lambda_text * terms["loss_absence_text"]
    )
    return terms


def choice_loss(
    image_embeds: torch.Tensor,
    absence_embeds: torch.Tensor,
    presence_embeds: torch.Tensor,
    mask: torch.Tensor,
    logit_scale: torch.Tensor,
    rows: slice | None = None,
    world_size: int = 1,
    affirmed_embeds: torch.Tensor | None = None,
    option_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multiple choice per image (NegBench-style): its absence-negated caption (true: negates an
    absent object) must beat its presence-negated caption (false: negates a present one) and, when
    given, its absence-affirmed caption (false: the same words with the absent object affirmed).

    mask: (G,) the rows that take part (an absence caption and at least one false option).
    option_mask: (G, 2) which of [presence, affirmed] each row has (default: every one given);
    a missing option leaves the softmax."""
    rows = _all_rows(image_embeds, rows)
    images = image_embeds[rows]
    options = [absence_embeds, presence_embeds] + ([affirmed_embeds] if affirmed_embeds is not None else [])
    logits = logit_scale * torch.stack([(images * option[rows]).sum(-1) for option in options], dim=1)
    present = torch.ones_like(logits, dtype=torch.bool)
    if option_mask is not None:
        present[:, 1:] = option_mask[rows][:, : len(options) - 1]
    logits = logits.float().masked_fill(~present, -1e4)
    per_row = F.cross_entropy(
        logits, torch.zeros(images.shape[0], dtype=torch.long, device=images.device), reduction="none"
    )
    return _mean_over(per_row, mask[rows], mask, world_size)


def keep_match_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    absence_embeds: torch.Tensor,
    absence_mask: torch.Tensor,
    logit_scale: torch.Tensor,
    rows: slice | None = None,
    world_size: int = 1,
) -> torch.Tensor:
    """mean_i max(0, s v_i.t_i - s v_i.a_i): negating an absent object must not lower the image's
    match below its original caption. Zero once the absence caption scores at least as high."""
    rows = _all_rows(image_embeds, rows)
    images = image_embeds[rows]
    gap = logit_scale * ((images * text_embeds[rows]).sum(-1) - (images * absence_embeds[rows]).sum(-1))
    return _mean_over(F.relu(gap.float()), absence_mask[rows], absence_mask, world_size)


# ----------------------------------------------------------------------------------------------
# The global batch: what every term of the total loss reads
# ----------------------------------------------------------------------------------------------


@dataclass
class GlobalBatch:
    """The L2-normalised embeddings of the global batch: G = world_size x B rows, every process's
    rows in rank order (one process: G = B, the batch itself).

    image:      (G, D) the images.
    embeds:     by `CaptionSet.name` ("caption", "presence", "absence", "affirmed"), (G, D) that
                set's embeddings, zeros where a row has none (every set of `CAPTION_SETS` is here).
    masks:      by `CaptionSet.name`, (G,) bool: which rows carry one of that set.
    rows:       the rows of G this process scores (its own: rank x B to (rank + 1) x B).
    world_size: how many processes score the batch (each term's mean is normalised by it)."""

    image: torch.Tensor
    embeds: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    rows: slice
    world_size: int = 1

    @property
    def local(self) -> dict:
        """The `rows` / `world_size` keywords every loss function takes."""
        return {"rows": self.rows, "world_size": self.world_size}


# ----------------------------------------------------------------------------------------------
# The total loss: its terms, the weight of each and the caption sets each reads
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossTerm:
    """One term of the total loss. `compute(batch, logit_scale, config)` returns its value under
    `name` and any parts it reports (each an `OmniNegCLIPOutput` field); the total adds the value
    times the config field `weight` (None: 1). `reads`: the caption sets it reads (`CaptionSet.name`).
    An `optional` term is off while its weight is 0: not computed, reported as 0, and the caption
    sets that only it reads are left out of the batch (`OmniNegLossConfig.caption_sets_read`)."""

    name: str
    reads: tuple[str, ...]
    compute: Callable[[GlobalBatch, torch.Tensor, OmniNegLossConfig], dict[str, torch.Tensor]]
    weight: str | None = None
    optional: bool = False

    def active(self, config: OmniNegLossConfig) -> bool:
        return not self.optional or getattr(config, self.weight) > 0


def _presence_term(batch: GlobalBatch, logit_scale: torch.Tensor, cfg: OmniNegLossConfig) -> dict[str, torch.Tensor]:
    return presence_loss(
        batch.image,
        batch.embeds["caption"],
        batch.embeds["presence"],
        batch.masks["presence"],
        logit_scale,
        **batch.local,
    )


def _absence_term(batch: GlobalBatch, logit_scale: torch.Tensor, cfg: OmniNegLossConfig) -> dict[str, torch.Tensor]:
    return absence_loss(
        batch.image,
        batch.embeds["caption"],
        batch.embeds["absence"],
        batch.masks["absence"],
        logit_scale,
        lambda_orig=cfg.lambda_orig,
        lambda_text=cfg.lambda_text,
        margin=cfg.margin,
        **batch.local,
    )


def _choice_term(batch: GlobalBatch, logit_scale: torch.Tensor, cfg: OmniNegLossConfig) -> dict[str, torch.Tensor]:
    # Rows without an affirmed caption (or data without any) keep the two-way choice.
    options = torch.stack([batch.masks["presence"], batch.masks["affirmed"]], dim=1)
    chooses = batch.masks["absence"] & options.any(dim=1)
    value = choice_loss(
        batch.image,
        batch.embeds["absence"],
        batch.embeds["presence"],
        chooses,
        logit_scale,
        **batch.local,
        affirmed_embeds=batch.embeds["affirmed"],
        option_mask=options,
    )
    return {"loss_choice": value}


def _affirm_term(batch: GlobalBatch, logit_scale: torch.Tensor, cfg: OmniNegLossConfig) -> dict[str, torch.Tensor]:
    # The same multiple choice with the caption as the true option: [caption | affirmed, presence].
    options = torch.stack([batch.masks["affirmed"], batch.masks["presence"]], dim=1)
    value = choice_loss(
        batch.image,
        batch.embeds["caption"],
        batch.embeds["affirmed"],
        options.any(dim=1),
        logit_scale,
        **batch.local,
        affirmed_embeds=batch.embeds["presence"],
        option_mask=options,
    )
    return {"loss_affirm": value}


def _keep_term(batch: GlobalBatch, logit_scale: torch.Tensor, cfg: OmniNegLossConfig) -> dict[str, torch.Tensor]:
    value = keep_match_loss(
        batch.image,
        batch.embeds["caption"],
        batch.embeds["absence"],
        batch.masks["absence"],
        logit_scale,
        **batch.local,
    )
    return {"loss_keep": value}


# L = L_pre + lambda_abs L_abs (+ lambda_choice L_choice + lambda_keep L_keep + lambda_affirm L_affirm).
# A batch in which no row carries a caption set that the non-optional terms read (besides the caption)
# gets CLIP's loss instead (`OmniNegCLIPLoss.terms`).
LOSS_TERMS: tuple[LossTerm, ...] = (
    LossTerm("loss_presence", ("caption", "presence"), _presence_term),
    LossTerm("loss_absence", ("caption", "absence"), _absence_term, weight="lambda_abs"),
    LossTerm("loss_choice", ("presence", "absence", "affirmed"), _choice_term, weight="lambda_choice", optional=True),
    LossTerm("loss_keep", ("caption", "absence"), _keep_term, weight="lambda_keep", optional=True),
    LossTerm("loss_affirm", ("caption", "presence", "affirmed"), _affirm_term, weight="lambda_affirm", optional=True),
)


# ----------------------------------------------------------------------------------------------
# The loss: gather the global batch, then every term of `LOSS_TERMS` over it
# ----------------------------------------------------------------------------------------------


def all_gather_rows(tensors: list[torch.Tensor], world_size: int) -> list[torch.Tensor]:
    """Every process's rows of each (B, ...) tensor, concatenated in rank order into (G, ...), with
    gradients flowing back to the process that owns each row (`torch.distributed.nn.functional.all_gather`).

    One collective for all of them: each flattened to (B, -1), laid side by side as float32, gathered,
    then split back, reshaped and cast to its own dtype (a bool mask travels as 0/1). Every process
    must pass the same list of shapes: the same B (drop-last batches) and the same tensors.
    world_size 1: no collective, the same packing and unpacking (one code path for every world size;
    it also keeps the memory layout of the gradients, and so the exact numbers, of earlier runs)."""
    rows = tensors[0].shape[0]
    flat = [tensor.reshape(rows, -1) for tensor in tensors]
    packed = torch.cat([tensor.float() for tensor in flat], dim=1)
    if world_size > 1:
        import torch.distributed.nn.functional as dist_fn

        packed = torch.cat(dist_fn.all_gather(packed.contiguous()), dim=0)
    pieces = packed.split([tensor.shape[1] for tensor in flat], dim=1)
    return [piece.reshape(-1, *tensor.shape[1:]).to(tensor.dtype) for piece, tensor in zip(pieces, tensors)]


class OmniNegCLIPLoss:
    """The Omni-NegCLIP objective (the module docstring lists every term), given this process's
    place among the processes that share the batch, as open_clip's `ClipLoss` is.

    Two steps: `gather` makes the `GlobalBatch` (one process: the batch itself; several: one
    all-gather that carries gradients, see `all_gather_rows`), and `terms` computes the total loss and
    every term of `LOSS_TERMS` over it. The semantics are open_clip's `local_loss=True`: each process
    scores its own B rows against the columns of all G rows (targets offset by rank x B), and each
    term's mean is normalised so that the mean over processes equals the loss of one process on the
    whole global batch (as DDP averages gradients).

    The terms, by the `OmniNegCLIPOutput` field that reports each (formulas: the module docstring):
        loss = loss_presence + lambda_abs loss_absence
               + lambda_choice loss_choice + lambda_keep loss_keep + lambda_affirm loss_affirm
        loss_presence = (loss_presence_image + loss_presence_text + loss_presence_pair) / 3
        loss_absence = loss_absence_negated + lambda_orig loss_absence_original + lambda_text loss_absence_text
    loss_choice, loss_keep and loss_affirm are optional: 0 while their weight is 0. In a global batch
    without presence- or absence-negated captions: loss = loss_clip (CLIP's symmetric InfoNCE) alone.

    config:     the weights and margin.
    rank:       this process's rank (0 for one process).
    world_size: how many processes share the batch (1: no collective)."""

    def __init__(self, config: OmniNegLossConfig, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.config = config
        self.rank = rank
        self.world_size = world_size

    def __call__(
        self,
        image_embeds: torch.Tensor,
        caption_embeds: dict[str, torch.Tensor],
        row_masks: dict[str, torch.Tensor],
        logit_scale: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`terms(gather(image_embeds, caption_embeds, row_masks), logit_scale)`."""
        return self.terms(self.gather(image_embeds, caption_embeds, row_masks), logit_scale)

    def gather(
        self, image_embeds: torch.Tensor, caption_embeds: dict[str, torch.Tensor], row_masks: dict[str, torch.Tensor]
    ) -> GlobalBatch:
        """This process's batch into the global one.

        image_embeds:   (B, D) L2-normalised image embeddings.
        caption_embeds: by `CaptionSet.name`, (B, D) L2-normalised embeddings, zeros where a row has none.
        row_masks:      by `CaptionSet.name`, (B,) bool: the rows that carry one.
        A set of `CAPTION_SETS` missing from these (the collator left it out) enters the global batch
        as zeros with no row on, so that every process gathers the same tensors."""
        rows = image_embeds.shape[0]
        no_rows = image_embeds.new_zeros(rows, dtype=torch.bool)
        names = [row.name for row in CAPTION_SETS]
        embeds = {name: caption_embeds.get(name, torch.zeros_like(image_embeds)) for name in names}
        masks = {name: row_masks.get(name, no_rows) for name in names}
        image_embeds, *gathered = all_gather_rows([image_embeds, *embeds.values(), *masks.values()], self.world_size)
        embeds = dict(zip(names, gathered[: len(names)]))
        masks = dict(zip(names, gathered[len(names) :]))
        own_rows = slice(self.rank * rows, (self.rank + 1) * rows)
        return GlobalBatch(image_embeds, embeds, masks, own_rows, self.world_size)

    def terms(self, batch: GlobalBatch, logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """The total loss ("loss") and every term over `batch`, by `OmniNegCLIPOutput` field name, each
        a 0-dim tensor. logit_scale: s, the exp of the model's `logit_scale` (shape (), or (1,) under
        FSDP / DeepSpeed).

        No row of the global batch carries a caption set that the paper's terms read (a presence- or
        absence-negated caption): CLIP's symmetric InfoNCE, as "loss" and "loss_clip", and no other term."""
        cfg = self.config
        paper_sets = sorted({name for term in LOSS_TERMS if not term.optional for name in term.reads} - {CAPTION.name})
        # One read on the host for all sets (a sync on a GPU; under torch.compile a graph break outside
        # any generator, so the terms below still compile), not one per set.
        if not bool(torch.stack([batch.masks[name].any() for name in paper_sets]).any()):
            loss_clip = symmetric_infonce(batch.image, batch.embeds[CAPTION.name], logit_scale, **batch.local)
            return {"loss_clip": loss_clip, "loss": loss_clip}
        terms, total = {}, None
        for term in LOSS_TERMS:
            values = (
                term.compute(batch, logit_scale, cfg) if term.active(cfg) else {term.name: logit_scale.new_zeros(())}
            )
            terms |= values
            weighted = values[term.name] if term.weight is None else getattr(cfg, term.weight) * values[term.name]
            total = weighted if total is None else total + weighted
        terms["loss"] = total
        return terms


# ----------------------------------------------------------------------------------------------
# The output
# ----------------------------------------------------------------------------------------------


@dataclass
class OmniNegCLIPOutput(ModelOutput):
    r"""
    What `OmniNegCLIPModel.forward` returns. B: this process's rows; D: the projection size
    (`config.projection_dim`). The loss and every term are 0-dim tensors over the global batch (the
    module docstring gives each formula); a term is None when the loss was not computed
    (`return_loss=False`), and in a batch without presence- or absence-negated captions every term but
    `loss_clip` is None. A term whose rows are absent from the batch, or an optional term whose weight
    is 0, is 0.

    loss (`torch.Tensor` of shape `()`, returned unless `return_loss=False`):
        The total loss, L = L_pre + lambda_abs L_abs + lambda_choice L_choice + lambda_keep L_keep
        + lambda_affirm L_affirm; CLIP's loss (`loss_clip`) in a batch without negations.
    loss_clip (`torch.Tensor` of shape `()`):
        CLIP's symmetric InfoNCE between images and original captions; only in a batch without negations.
    loss_presence_image (`torch.Tensor` of shape `()`):
        L1: each image against every original and presence-negated caption, target its own caption.
    loss_presence_text (`torch.Tensor` of shape `()`):
        L2: each original caption against the images, target its own image.
    loss_presence_pair (`torch.Tensor` of shape `()`):
        L3: each image's own caption against its own presence negation, target the caption.
    loss_presence (`torch.Tensor` of shape `()`):
        L_pre = (L1 + L2 + L3) / 3, over the rows with a presence-negated caption.
    loss_absence_negated (`torch.Tensor` of shape `()`):
        L_neg: symmetric InfoNCE between images and absence-negated captions.
    loss_absence_original (`torch.Tensor` of shape `()`):
        L_orig: symmetric InfoNCE between images and original captions, on the same rows.
    loss_absence_text (`torch.Tensor` of shape `()`):
        L_text: mean max(0, cos(caption, absence-negated caption) + margin).
    loss_absence (`torch.Tensor` of shape `()`):
        L_abs = L_neg + lambda_orig L_orig + lambda_text L_text, over the rows with an absence-negated caption.
    loss_choice (`torch.Tensor` of shape `()`):
        L_choice (optional, `lambda_choice`): per image, its absence-negated caption against its
        presence-negated and absence-affirmed captions.
    loss_keep (`torch.Tensor` of shape `()`):
        L_keep (optional, `lambda_keep`): mean max(0, s v.t - s v.a).
    loss_affirm (`torch.Tensor` of shape `()`):
        L_affirm (optional, `lambda_affirm`): per image, its original caption against its
        absence-affirmed and presence-negated captions.
    logits_per_image (`torch.Tensor` of shape `(B, B)`):
        s times the cosine of each image (row) with each original caption (column), this process's rows.
    logits_per_text (`torch.Tensor` of shape `(B, B)`):
        `logits_per_image` transposed: each original caption (row) with each image (column).
    text_embeds (`torch.Tensor` of shape `(B, D)`):
        The L2-normalised embeddings of the original captions.
    image_embeds (`torch.Tensor` of shape `(B, D)`):
        The L2-normalised image embeddings.
    presence_negated_embeds (`torch.Tensor` of shape `(B, D)`, *optional*):
        The L2-normalised embeddings of the presence-negated captions, zeros where a row has none;
        None when the batch carried none.
    absence_negated_embeds (`torch.Tensor` of shape `(B, D)`, *optional*):
        The same for the absence-negated captions.
    absence_affirmed_embeds (`torch.Tensor` of shape `(B, D)`, *optional*):
        The same for the absence-affirmed captions.
    """

    loss: torch.Tensor | None = None
    loss_clip: torch.Tensor | None = None
    loss_presence_image: torch.Tensor | None = None
    loss_presence_text: torch.Tensor | None = None
    loss_presence_pair: torch.Tensor | None = None
    loss_presence: torch.Tensor | None = None
    loss_absence_negated: torch.Tensor | None = None
    loss_absence_original: torch.Tensor | None = None
    loss_absence_text: torch.Tensor | None = None
    loss_absence: torch.Tensor | None = None
    loss_choice: torch.Tensor | None = None
    loss_keep: torch.Tensor | None = None
    loss_affirm: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    presence_negated_embeds: torch.Tensor | None = None
    absence_negated_embeds: torch.Tensor | None = None
    absence_affirmed_embeds: torch.Tensor | None = None


_OUTPUT_FIELDS = tuple(field.name for field in fields(OmniNegCLIPOutput))
# The terms the Trainer logs (`loss_clip` too, in a batch without negations).
LOSS_TERM_NAMES = tuple(name for name in _OUTPUT_FIELDS if name.startswith("loss_"))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


def caption_inputs(
    arguments: dict[str, torch.Tensor | None],
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """The caption sets among `forward`'s keyword arguments (`CaptionSet.input_ids`,
    `.attention_mask`, `.row_mask`), by name: (input ids, attention mask (default: all ones), row
    mask (default: every row; None for the original captions, which every row has))."""
    known = {name for row in CAPTION_SETS for name in (row.input_ids, row.attention_mask, row.row_mask) if name}
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise TypeError(f"OmniNegCLIPModel.forward() got unexpected keyword argument(s) {unknown}")
    if arguments.get(CAPTION.input_ids) is None:
        raise ValueError(f"OmniNegCLIPModel.forward needs {CAPTION.input_ids} (the original captions)")
    given = {}
    for row in CAPTION_SETS:
        ids = arguments.get(row.input_ids)
        if ids is None:
            continue
        attention, rows = arguments.get(row.attention_mask), arguments.get(row.row_mask) if row.row_mask else None
        if row.row_mask is not None:
            rows = (
                torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
                if rows is None
                else rows.to(ids.device).bool()
            )
        given[row.name] = (ids, torch.ones_like(ids) if attention is None else attention, rows)
    return given


def _row_positions(row_masks: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """The positions of the rows each (B,) mask keeps (None: every row), found once per set for both
    selecting the rows and scattering their embeddings back: one nonzero, a sync on a GPU. Its own
    function, so that torch.compile breaks the graph at this call and compiles what follows."""
    return [None if rows is None else rows.nonzero(as_tuple=True)[0] for rows in row_masks]


def _pad_to(ids: torch.Tensor, mask: torch.Tensor, length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - ids.shape[1]
    if extra == 0:
        return ids, mask
    return F.pad(ids, (0, extra), value=pad_id), F.pad(mask, (0, extra), value=0)


class OmniNegCLIPModel(CLIPModel):
    """`CLIPModel` plus the Omni-NegCLIP losses. No new parameters or buffers: the weights are CLIP's.

    Load any CLIP checkpoint with `OmniNegCLIPModel.from_pretrained(...)`; set `loss_config` and
    call `apply_trainable(model, TrainableConfig(...))`; after training, `save_pretrained` writes a
    plain CLIP checkpoint whose config.json records the settings used (`omninegclip`), restored by
    `from_pretrained`."""

    # `forward`'s **extra_caption_sets takes caption sets, no loss keyword (such as num_items_in_batch)
    # for the Trainer to pass: the loss is a mean, scaled for accumulation by the Trainer.
    accepts_loss_kwargs = False

    def __init__(
        self, config, loss_config: OmniNegLossConfig | None = None, text_bucket_rows: int | None = TEXT_BUCKET_ROWS
    ):
        super().__init__(config)
        # A checkpoint this project saved carries its run's settings in config.json (`omninegclip`).
        saved = getattr(config, SETTINGS_KEY, None) or {}
        self.loss_config = loss_config or OmniNegLossConfig(**(saved.get("loss") or {}))
        # What trained in the saved run (a record; `apply_trainable` is what freezes the rest).
        self.trainable_config: TrainableConfig | None = (
            TrainableConfig(**saved["trainable"]) if saved.get("trainable") else None
        )
        self.add_model_tags(MODEL_TAGS)
        # How many captions go through the text encoder together (sorted by length); None: all at once.
        self.text_bucket_rows = text_bucket_rows
        self.text_bucket_devices = ("cpu",)  # where the buckets are used (see encode_texts)

    def get_input_embeddings(self) -> nn.Module:
        """The text tower's token embedding. CLIPModel names none, and Accelerate's FSDP wrapping
        asks for it (to make it a shard unit of its own)."""
        return self.text_model.embeddings.token_embedding

    # -- encoding ------------------------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Projected, un-normalised image embeddings; precomputed ones pass through. A frozen image
        tower runs without an autograd graph."""
        if image_embeds is not None:
            return image_embeds
        if pixel_values is None:
            raise ValueError("OmniNegCLIPModel.forward needs pixel_values or image_embeds")
        vision_trains = any(param.requires_grad for param in self.vision_model.parameters())
        with torch.set_grad_enabled(vision_trains and torch.is_grad_enabled()):
            return self.get_image_features(pixel_values=pixel_values).pooler_output

    def encode_texts(self, caption_sets: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """All caption sets through the text encoder in one pass: the captions of every set together,
        sorted by length and encoded `text_bucket_rows` at a time, each bucket cut to its own longest
        caption, so that padding costs next to nothing (None, or a device not in
        `text_bucket_devices`: one call padded to the longest caption).
        Right padding never changes an embedding (causal attention, first-EOS pooling): only the cost
        depends on the bucketing, not the result."""
        pad_id = self.config.text_config.pad_token_id
        pad_id = self.config.text_config.eos_token_id if pad_id is None else pad_id
        length = max(ids.shape[1] for ids, _ in caption_sets)
        padded = [_pad_to(ids, mask, length, pad_id) for ids, mask in caption_sets]
        input_ids = torch.cat([ids for ids, _ in padded])
        attention_mask = torch.cat([mask for _, mask in padded])
        sizes = [ids.shape[0] for ids, _ in caption_sets]
        # Buckets pay on a CPU, where time follows FLOPs; on a GPU a step of small calls is bound by
        # kernel launches and host syncs instead (ViT-B/32, batch 256, bf16 on an H100: 0.29 s a step
        # in buckets of 64, slower than the plain step), so there the captions go through in one call.
        bucket_rows = self.text_bucket_rows if input_ids.device.type in self.text_bucket_devices else None
        if not bucket_rows or input_ids.shape[0] <= bucket_rows:
            embeds = self.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
            return list(embeds.split(sizes))
        extent = attention_mask.shape[1] - attention_mask.flip(1).argmax(dim=1)  # last attended position + 1
        order = torch.argsort(extent, stable=True)
        pieces = []
        for rows in order.split(bucket_rows):
            cut = int(extent[rows].max())
            features = self.get_text_features(
                input_ids=input_ids[rows, :cut], attention_mask=attention_mask[rows, :cut]
            )
            pieces.append(features.pooler_output)
        return list(torch.cat(pieces)[torch.argsort(order)].split(sizes))

    # -- forward -------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        presence_negated_input_ids: torch.LongTensor | None = None,
        presence_negated_attention_mask: torch.Tensor | None = None,
        presence_mask: torch.Tensor | None = None,
        absence_negated_input_ids: torch.LongTensor | None = None,
        absence_negated_attention_mask: torch.Tensor | None = None,
        absence_mask: torch.Tensor | None = None,
        absence_affirmed_input_ids: torch.LongTensor | None = None,
        absence_affirmed_attention_mask: torch.Tensor | None = None,
        absence_affirmed_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        return_loss: bool | None = None,
        **extra_caption_sets: torch.Tensor | None,
    ) -> OmniNegCLIPOutput:
        """One step of Omni-NegCLIP: encode, then the logits, then the loss (`OmniNegCLIPLoss`) over the
        global batch. B: this process's rows, L: tokens (each caption set may have its own L).

        input_ids (`(B, L)`), attention_mask (`(B, L)`, default all ones):
            The original captions; every row has one. These three may be positional, in
            `CLIPModel.forward`'s order (input_ids, pixel_values, attention_mask); the rest are keyword-only.
        pixel_values (`(B, 3, H, W)`), or image_embeds (`(B, D)`):
            The images, or their projected (un-normalised) embeddings precomputed by
            `get_image_features`: the fast path while the image tower is frozen.
        presence_negated_input_ids, presence_negated_attention_mask (`(B, L)`), presence_mask (`(B,)` bool):
            The presence-negated captions (negate an object IN the image) and which rows carry one
            (the ids of a row without one are ignored). Default mask: every row.
        absence_negated_input_ids, absence_negated_attention_mask (`(B, L)`), absence_mask (`(B,)` bool):
            The absence-negated captions (negate a plausible object NOT in the image), likewise.
        absence_affirmed_input_ids, absence_affirmed_attention_mask (`(B, L)`), absence_affirmed_mask (`(B,)` bool):
            The absence-affirmed captions (the absence-negated caption with its object affirmed),
            read only by the optional choice and affirmation terms; likewise.
        return_loss: False skips the loss; None or True computes it.
        extra_caption_sets: the arguments (`CaptionSet.input_ids`, `.attention_mask`, `.row_mask`) of a
            caption set appended to `CAPTION_SETS` beyond these four, whose embeddings the output carries
            under its `CaptionSet.output` key; any other name is a TypeError.

        Returns an `OmniNegCLIPOutput`: the logits and embeddings of this process's rows and, unless
        `return_loss=False`, the loss over the global batch with every term (`OmniNegCLIPLoss`):
            loss = loss_presence + lambda_abs loss_absence
                   + lambda_choice loss_choice + lambda_keep loss_keep + lambda_affirm loss_affirm,
            loss_presence from loss_presence_image, loss_presence_text, loss_presence_pair;
            loss_absence from loss_absence_negated, loss_absence_original, loss_absence_text;
            loss_choice, loss_keep, loss_affirm: optional (0 while their weight is 0);
            loss_clip: the loss instead of all these when no row carries a presence- or absence-negated caption.

        The argument names are the collator's keys (`CAPTION_SETS`). A caption set not given is left
        out of every term; every set given is encoded, each only for its rows whose mask is on (the
        collator leaves out the sets that no active loss term reads). All caption sets go through the
        text encoder in one pass (`encode_texts`)."""
        given = caption_inputs(
            dict(
                input_ids=input_ids,
                attention_mask=attention_mask,
                presence_negated_input_ids=presence_negated_input_ids,
                presence_negated_attention_mask=presence_negated_attention_mask,
                presence_mask=presence_mask,
                absence_negated_input_ids=absence_negated_input_ids,
                absence_negated_attention_mask=absence_negated_attention_mask,
                absence_mask=absence_mask,
                absence_affirmed_input_ids=absence_affirmed_input_ids,
                absence_affirmed_attention_mask=absence_affirmed_attention_mask,
                absence_affirmed_mask=absence_affirmed_mask,
            )
            | extra_caption_sets
        )
        images = self.encode_images(pixel_values, image_embeds)
        embeds, masks = self.encode_caption_sets(given)
        image_embeds = F.normalize(images.float(), dim=-1)
        logit_scale = self.logit_scale.exp()

        logits_per_text = logit_scale * embeds[CAPTION.name] @ image_embeds.T
        output = OmniNegCLIPOutput(
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=embeds[CAPTION.name],
            image_embeds=image_embeds,
            presence_negated_embeds=embeds.get(PRESENCE.name),
            absence_negated_embeds=embeds.get(ABSENCE.name),
            absence_affirmed_embeds=embeds.get(AFFIRMED.name),
        )
        for row in CAPTION_SETS:
            if row.name in embeds and row.output not in _OUTPUT_FIELDS:  # a caption set beyond the four above
                output[row.output] = embeds[row.name]

        if return_loss is not False:
            losses = self.make_loss()(image_embeds, embeds, masks, logit_scale)
            for name, value in losses.items():
                output[name] = value
        return output

    def make_loss(self) -> OmniNegCLIPLoss:
        """The loss with `loss_config`, given this process's rank and the world size when
        torch.distributed is initialised (one process otherwise)."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed:
            return OmniNegCLIPLoss(self.loss_config)
        return OmniNegCLIPLoss(
            self.loss_config, rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size()
        )

    def encode_caption_sets(self, given: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`caption_inputs`' sets through the text encoder in one pass (`encode_texts`), each only for
        its rows that carry one. Returns per set its L2-normalised (B, D) embeddings (zero where a row
        has none) and its (B,) row mask."""
        positions = _row_positions([rows for _, _, rows in given.values()])
        encoded = self.encode_texts(
            [
                (ids, mask) if where is None else (ids.index_select(0, where), mask.index_select(0, where))
                for (ids, mask, _), where in zip(given.values(), positions)
            ]
        )
        embeds, masks = {}, {}
        for (name, (ids, _, rows)), where, features in zip(given.items(), positions, encoded):
            features = F.normalize(features.float(), dim=-1)
            if rows is None:  # the original captions: every row
                embeds[name], masks[name] = (
                    features,
                    torch.ones(ids.shape[0], dtype=torch.bool, device=features.device),
                )
            else:
                full = features.new_zeros(ids.shape[0], features.shape[1])
                embeds[name], masks[name] = full.index_put((where,), features), rows
        return embeds, masks

    # -- training helpers ----------------------------------------------------------------------

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep s = exp(logit_scale) <= 100, as CLIP does after every optimiser step."""
        self.logit_scale.clamp_(max=LOGIT_SCALE_MAX)

    def make_logit_scale_shardable(self) -> None:
        """FSDP2 shards no 0-dim parameter (and DeepSpeed's start-up broadcast of one fails on the
        CPU): hold logit_scale with shape (1,), the same value (every loss broadcasts it).
        `save_pretrained` writes it back as CLIP's scalar."""
        if self.logit_scale.dim() == 0:
            self.logit_scale = nn.Parameter(
                self.logit_scale.detach().reshape(1), requires_grad=self.logit_scale.requires_grad
            )

    def settings(self) -> dict:
        """The Omni-NegCLIP settings used, as recorded beside the weights."""
        return {
            "loss": asdict(self.loss_config),
            "trainable": asdict(self.trainable_config) if self.trainable_config else None,
            "trainable_text_blocks": (
                resolve_text_blocks(self.config.text_config.num_hidden_layers, self.trainable_config)
                if self.trainable_config
                else None
            ),
        }

    def save_pretrained(self, save_directory, *args, extra_settings: dict | None = None, **kwargs):
        """Save as a plain `CLIPModel` checkpoint (`architectures: ["CLIPModel"]`: it loads anywhere
        without this file), with the settings used in config.json under `omninegclip`
        (`SETTINGS_KEY`), which `OmniNegCLIPModel.from_pretrained` restores. `extra_settings` (e.g.
        the LoRA settings) are recorded there too."""
        state_dict = kwargs.get("state_dict")
        if state_dict is None and self.logit_scale.dim() == 1:
            state_dict = self.state_dict()
        scale = None if state_dict is None else state_dict.get("logit_scale")
        if scale is not None and scale.dim() == 1:  # held as shape (1,) under FSDP / DeepSpeed
            kwargs["state_dict"] = state_dict | {"logit_scale": scale.reshape(())}  # CLIP's scalar
        recorded = dict(getattr(self.config, SETTINGS_KEY, None) or {})
        setattr(
            self.config,
            SETTINGS_KEY,
            json.loads(json.dumps(recorded | self.settings() | (extra_settings or {}), default=str)),
        )
        super().save_pretrained(save_directory, *args, **kwargs)
        config_path = (
            Path(save_directory) / "config.json"
        )  # save_pretrained names this class: CLIP's is the one to load
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            config["architectures"] = ["CLIPModel"]
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        self.config.architectures = ["CLIPModel"]
