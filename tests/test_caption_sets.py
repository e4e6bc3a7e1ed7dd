"""The caption sets are declared once (`CAPTION_SETS` in modeling_omninegclip.py): every consumer derives
from the table, a new set is a new row plus the loss term that reads it, and the collator (not the
model) leaves out the sets that no active loss term reads."""

from __future__ import annotations

import sys
from dataclasses import fields

import numpy as np
import pytest
import torch
from conftest import tiny_clip_config
from train_helpers import run_command

import data_builder
import modeling_omninegclip as modeling
from modeling_omninegclip import AFFIRMED, CAPTION_SETS
from omninegclip.training.data import CaptionColumnArguments, CaptionColumns, OmniNegCollator, PackedRows


def test_a_fifth_caption_set_is_one_row_and_its_loss_term():
    """In a fresh process: one new row in CAPTION_SETS and one LossTerm, then the builder's schema,
    train.py's flag, preparation, the collator, the forward, the global batch and the output carry it."""
    result = run_command([sys.executable, "tests/fifth_caption_set.py"])
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr


def test_every_consumer_has_each_row():
    output_fields = {field.name for field in fields(modeling.OmniNegCLIPOutput)}
    arguments = {field.name for field in fields(CaptionColumnArguments)}
    for row in CAPTION_SETS:
        assert row.output in output_fields and row.flag in arguments, row
        assert row.column in data_builder.TEXT_COLUMNS and row.column in data_builder.contract_features()
    names = {row.name for row in CAPTION_SETS}
    for term in modeling.LOSS_TERMS:
        assert set(term.reads) <= names, term
        assert term.weight is None or hasattr(modeling.OmniNegLossConfig(), term.weight), term
        assert term.name in output_fields, term
    # The output keeps the field names that users and checkpoints' code read.
    assert {
        "text_embeds",
        "image_embeds",
        "presence_negated_embeds",
        "absence_negated_embeds",
        "absence_affirmed_embeds",
        "logits_per_image",
        "loss_choice",
        "loss_keep",
    } <= output_fields


def test_caption_columns_from_flags():
    columns = CaptionColumns.from_flags("image", "caption", "p", "None")
    assert (columns.caption, columns.presence, columns.absence, columns.affirmed) == ("caption", "p", None, None)
    assert columns.text_columns() == ["caption", "p"]
    assert columns.flags() == {"image": "--image_column", "caption": "--caption_column", "p": "--presence_column"}
    with pytest.raises(AttributeError):
        columns.scene  # noqa: B018
    with pytest.raises(TypeError, match="caption sets"):
        CaptionColumns.from_flags("image", *["c"] * (len(CAPTION_SETS) + 1))


def test_the_collator_leaves_out_what_no_active_term_reads():
    """The affirmed captions are read only by the optional choice term: off, the collator leaves
    them out (and the model, given them anyway, encodes them: it encodes what it is given)."""
    rows = [[49406, 320 + row, 49407] for row in range(4)]
    tokens = {row.input_ids: rows for row in CAPTION_SETS}
    packed = PackedRows(
        tokens, 49407, image_index=np.arange(4), image_embeds=torch.randn(4, tiny_clip_config().projection_dim)
    )
    items = [{"row_id": row, "packed_row": row} for row in range(4)]
    off, on = modeling.OmniNegLossConfig(), modeling.OmniNegLossConfig(lambda_choice=0.5)
    assert AFFIRMED.name not in off.caption_sets_read() and AFFIRMED.name in on.caption_sets_read()
    without = OmniNegCollator(packed, off.caption_sets_read())(items)
    with_affirmed = OmniNegCollator(packed, on.caption_sets_read())(items)
    affirmed_keys = {AFFIRMED.input_ids, AFFIRMED.attention_mask, AFFIRMED.row_mask}
    assert not affirmed_keys & set(without) and affirmed_keys <= set(with_affirmed)
    assert set(with_affirmed) - set(without) == affirmed_keys
    torch.manual_seed(0)
    model = modeling.OmniNegCLIPModel(tiny_clip_config(), loss_config=off).eval()
    with torch.no_grad():
        given = model(**{key: value for key, value in with_affirmed.items() if key != "row_ids"})
        plain = model(**{key: value for key, value in without.items() if key != "row_ids"})
    assert given.absence_affirmed_embeds is not None and plain.absence_affirmed_embeds is None
    assert given.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)  # nothing active reads them


def test_forward_names_an_unknown_caption_argument():
    model = modeling.OmniNegCLIPModel(tiny_clip_config())
    ids = torch.tensor([[49406, 320, 49407]])
    with pytest.raises(TypeError, match="presence_negated_input_idz"):
        model(
            input_ids=ids,
            image_embeds=torch.randn(1, tiny_clip_config().projection_dim),
            presence_negated_input_idz=ids,
        )
