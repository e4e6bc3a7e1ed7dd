"""The caption sets, declared once: every row of a training dataset has an original caption and,
optionally, captions derived from it (presence-negated, absence-negated, absence-affirmed). Each
`CaptionSet` names everything that carries one set through the project: the built dataset's
column and the `train.py` flag that names it, the prepared token column and `OmniNegCLIPModel.forward`'s
arguments, its row mask and its output field.

What derives from `CAPTION_SETS`: the builder's text columns (`data_builder.py`), `train.py`'s
column flags, `CaptionColumns` and the tokenized columns (`omninegclip.training.data`), the
collator's keyword arguments, the forward's caption arguments, the one all-gather of the global
batch (`modeling_omninegclip.GlobalBatch`) and the output's embedding fields. A new caption set is
a new row here plus the loss term that reads it (`modeling_omninegclip.LOSS_TERMS`).

Imports nothing from the project: the top-level `modeling_omninegclip.py` and the training layer
both read it.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    counted_as: str = ""  # how `train.py`'s data line counts the rows with one ("with presence negation 12"); default: the name

    @property
    def default_column(self) -> str:
        return self.column if self.on_by_default else "none"


CAPTION = CaptionSet(
    name="caption", column="caption", flag="caption_column", input_ids="input_ids", attention_mask="attention_mask",
    row_mask=None, output="text_embeds", help="Column with the original captions.",
)
PRESENCE = CaptionSet(
    name="presence", column="presence_negated", flag="presence_column",
    input_ids="presence_negated_input_ids", attention_mask="presence_negated_attention_mask",
    row_mask="presence_mask", output="presence_negated_embeds", counted_as="presence negation",
    help="Column with presence-negated captions (negate an object IN the image); 'none' for no such column.",
)
ABSENCE = CaptionSet(
    name="absence", column="absence_negated", flag="absence_column",
    input_ids="absence_negated_input_ids", attention_mask="absence_negated_attention_mask",
    row_mask="absence_mask", output="absence_negated_embeds", counted_as="absence negation",
    help="Column with absence-negated captions (negate a plausible object NOT in the image); 'none' for no such column.",
)
AFFIRMED = CaptionSet(
    name="affirmed", column="absence_affirmed", flag="absence_affirmed_column",
    input_ids="absence_affirmed_input_ids", attention_mask="absence_affirmed_attention_mask",
    row_mask="absence_affirmed_mask", output="absence_affirmed_embeds",
    help="Column with absence-affirmed captions (the absence-negated caption with its object affirmed: false "
         "for the image), a third option of the --lambda_choice term; 'none' (default) for two options.",
    on_by_default=False, counted_as="absence-affirmed caption",
)
# The original caption first: it is the one every row has.
CAPTION_SETS: tuple[CaptionSet, ...] = (CAPTION, PRESENCE, ABSENCE, AFFIRMED)

