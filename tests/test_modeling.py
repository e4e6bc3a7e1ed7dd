"""The loss terms on hand-built tensors whose right answer is known, and the model's contract:
no new parameters, plain-CLIP behaviour without negations, masks, trainable selection."""

from __future__ import annotations

import inspect
import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TEXT_LAYERS, tiny_clip_config
from transformers import CLIPModel

import modeling_omninegclip
from modeling_omninegclip import (
    CAPTION_SETS,
    LOGIT_SCALE_MAX,
    LOSS_TERM_NAMES,
    OmniNegCLIPLoss,
    OmniNegCLIPModel,
    OmniNegCLIPOutput,
    OmniNegLossConfig,
    TrainableConfig,
    absence_loss,
    apply_trainable,
    choice_loss,
    keep_match_loss,
    presence_loss,
    resolve_text_blocks,
    symmetric_infonce,
    text_margin_loss,
)

S = torch.tensor(10.0)


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def same_rows(batch=4, dim=8):
    return F.normalize(torch.ones(batch, dim), dim=-1)


def on(*flags):
    return torch.tensor(flags, dtype=torch.bool)


# ---- equal embeddings: every softmax is uniform, so each CE is log(number of columns) ----------


def test_equal_embeddings_give_log_of_columns():
    v = same_rows()
    mask = on(1, 1, 1, 1)
    assert symmetric_infonce(v, v, S).item() == pytest.approx(math.log(4), abs=1e-5)
    terms = presence_loss(v, v, v, mask, S)
    assert terms["loss_presence_image"].item() == pytest.approx(math.log(8), abs=1e-5)  # B texts + B negations
    assert terms["loss_presence_text"].item() == pytest.approx(math.log(4), abs=1e-5)
    assert terms["loss_presence_pair"].item() == pytest.approx(math.log(2), abs=1e-5)
    expected_pre = (math.log(8) + math.log(4) + math.log(2)) / 3
    assert terms["loss_presence"].item() == pytest.approx(expected_pre, abs=1e-5)
    absence = absence_loss(v, v, v, mask, S, lambda_orig=1.0, lambda_text=1.0, margin=0.9)
    assert absence["loss_absence_negated"].item() == pytest.approx(math.log(4), abs=1e-5)
    assert absence["loss_absence_original"].item() == pytest.approx(math.log(4), abs=1e-5)
    assert absence["loss_absence_text"].item() == pytest.approx(1.0 + 0.9, abs=1e-5)  # cos = 1
    assert absence["loss_absence"].item() == pytest.approx(2 * math.log(4) + 1.9, abs=1e-5)


def test_masked_columns_leave_the_softmax():
    v = same_rows()
    # Only two rows carry a presence negation: L1 sees 2 texts + 2 negations, L2 two images.
    terms = presence_loss(v, v, v, on(1, 0, 1, 0), S)
    assert terms["loss_presence_image"].item() == pytest.approx(math.log(4), abs=1e-5)
    assert terms["loss_presence_text"].item() == pytest.approx(math.log(2), abs=1e-5)


def test_hand_computed_values_on_random_embeddings():
    image, text, negated = unit(3, 5, seed=1), unit(3, 5, seed=2), unit(3, 5, seed=3)
    mask = on(1, 1, 1)
    l1 = sum(-torch.log_softmax(S * image[i] @ torch.cat([text, negated]).T, dim=0)[i] for i in range(3)) / 3
    l2 = sum(-torch.log_softmax(S * text[i] @ image.T, dim=0)[i] for i in range(3)) / 3
    l3 = (
        sum(
            -torch.log_softmax(S * torch.stack([image[i] @ text[i], image[i] @ negated[i]]), dim=0)[0]
            for i in range(3)
        )
        / 3
    )
    terms = presence_loss(image, text, negated, mask, S)
    assert terms["loss_presence_image"].item() == pytest.approx(l1.item(), rel=1e-5)
    assert terms["loss_presence_text"].item() == pytest.approx(l2.item(), rel=1e-5)
    assert terms["loss_presence_pair"].item() == pytest.approx(l3.item(), rel=1e-5)

    i2t = sum(-torch.log_softmax(S * image[i] @ negated.T, dim=0)[i] for i in range(3)) / 3
    t2i = sum(-torch.log_softmax(S * negated[i] @ image.T, dim=0)[i] for i in range(3)) / 3
    hinge = torch.relu((text * negated).sum(-1) + 0.5).mean()
    absence = absence_loss(image, text, negated, mask, S, lambda_orig=0.25, lambda_text=2.0, margin=0.5)
    assert absence["loss_absence_negated"].item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-5)
    assert absence["loss_absence_text"].item() == pytest.approx(hinge.item(), rel=1e-5)
    expected = absence["loss_absence_negated"] + 0.25 * absence["loss_absence_original"] + 2.0 * hinge
    assert absence["loss_absence"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_harder_negative_gives_a_larger_loss():
    image = unit(4, 6, seed=4)
    text = image.clone()
    easy = -image  # the negation points away from the image
    hard = F.normalize(image + 0.05 * unit(4, 6, seed=5), dim=-1)  # the negation nearly matches the image
    mask = on(1, 1, 1, 1)
    assert (
        presence_loss(image, text, hard, mask, S)["loss_presence_pair"]
        > presence_loss(image, text, easy, mask, S)["loss_presence_pair"]
    )
    assert (
        presence_loss(image, text, hard, mask, S)["loss_presence_image"]
        > presence_loss(image, text, easy, mask, S)["loss_presence_image"]
    )
    assert choice_loss(image, easy, hard, mask, S) > choice_loss(image, hard, easy, mask, S)


def test_choice_loss_three_way_by_hand_and_a_missing_option_leaves_the_softmax():
    image = torch.tensor([[1.0, 0.0]])
    absence = torch.tensor([[0.6, 0.8]])  # cos 0.6 (the true option)
    presence = torch.tensor([[0.8, 0.6]])  # cos 0.8
    affirmed = torch.tensor([[0.0, 1.0]])  # cos 0.0
    logits = S * torch.tensor([0.6, 0.8, 0.0])
    by_hand = -(logits[0] - torch.logsumexp(logits, 0))
    got = choice_loss(image, absence, presence, on(1), S, affirmed_embeds=affirmed)
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # Without its affirmed caption the row is the two-way choice; without both options it drops out.
    two_way = choice_loss(image, absence, presence, on(1), S)
    masked = choice_loss(
        image, absence, presence, on(1), S, affirmed_embeds=affirmed, option_mask=torch.tensor([[True, False]])
    )
    assert masked.item() == pytest.approx(two_way.item(), rel=1e-4)
    assert two_way.item() < got.item()  # a third wrong option can only add to the loss
    only_affirmed = choice_loss(
        image, absence, presence, on(1), S, affirmed_embeds=affirmed, option_mask=torch.tensor([[False, True]])
    )
    by_hand = -(logits[0] - torch.logsumexp(logits[[0, 2]], 0))
    assert only_affirmed.item() == pytest.approx(by_hand.item(), rel=1e-4)


def test_hinge_is_zero_below_minus_margin_and_linear_above():
    text = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), dim=-1)
    opposite = -text  # cos = -1 < -0.9
    assert text_margin_loss(text, opposite, on(1, 1), margin=0.9).item() == 0.0
    orthogonal = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # cos = 0
    assert text_margin_loss(text, orthogonal, on(1, 1), margin=0.9).item() == pytest.approx(0.9)


def test_masked_rows_get_no_gradient():
    image = unit(4, 6, seed=6).requires_grad_()
    text = unit(4, 6, seed=7).requires_grad_()
    presence = unit(4, 6, seed=8).requires_grad_()
    absence = unit(4, 6, seed=9).requires_grad_()
    presence_mask, absence_mask = on(1, 1, 0, 0), on(0, 1, 1, 0)
    total = presence_loss(image, text, presence, presence_mask, S)["loss_presence"]
    total = total + absence_loss(image, text, absence, absence_mask, S)["loss_absence"]
    total = total + choice_loss(image, absence, presence, presence_mask & absence_mask, S)
    total.backward()
    assert torch.all(presence.grad[~presence_mask] == 0) and torch.any(presence.grad[presence_mask] != 0)
    assert torch.all(absence.grad[~absence_mask] == 0) and torch.any(absence.grad[absence_mask] != 0)
    # Row 3 carries no negation at all: it is in no term, so nothing of it gets a gradient.
    assert torch.all(image.grad[3] == 0) and torch.all(text.grad[3] == 0)
    assert torch.all(torch.isfinite(image.grad))


def test_no_rows_on_gives_zero_terms():
    v = unit(3, 4)
    off = on(0, 0, 0)
    assert presence_loss(v, v, v, off, S)["loss_presence"].item() == 0.0
    assert absence_loss(v, v, v, off, S)["loss_absence"].item() == 0.0


def test_local_rows_reproduce_the_global_mean():
    """Two 'processes' scoring their halves against all columns average to the global loss."""
    image, text, negated = unit(6, 5, seed=10), unit(6, 5, seed=11), unit(6, 5, seed=12)
    mask = on(1, 0, 1, 1, 1, 0)  # unbalanced across halves on purpose
    whole = presence_loss(image, text, negated, mask, S)["loss_presence"]
    halves = [
        presence_loss(image, text, negated, mask, S, rows=rows, world_size=2)["loss_presence"]
        for rows in (slice(0, 3), slice(3, 6))
    ]
    assert ((halves[0] + halves[1]) / 2).item() == pytest.approx(whole.item(), rel=1e-6)
    whole_abs = absence_loss(image, text, negated, mask, S)["loss_absence"]
    halves_abs = [
        absence_loss(image, text, negated, mask, S, rows=rows, world_size=2)["loss_absence"]
        for rows in (slice(0, 3), slice(3, 6))
    ]
    assert ((halves_abs[0] + halves_abs[1]) / 2).item() == pytest.approx(whole_abs.item(), rel=1e-6)


# ---- the loss, given rank and world size -------------------------------------------------------


def caption_set_batch(rows: int, dim: int = 5):
    """Unit image embeddings and every caption set's embeddings (zero where a row has none) with
    uneven row masks, by `CaptionSet.name`."""
    flags = {
        "caption": [1] * rows,
        "presence": [1, 0, 1, 1, 0, 0],
        "absence": [0, 1, 1, 0, 1, 1],
        "affirmed": [1, 1, 0, 0, 0, 1],
    }
    masks = {row.name: on(*flags[row.name][:rows]) for row in CAPTION_SETS}
    embeds = {
        row.name: unit(rows, dim, seed=30 + index) * masks[row.name][:, None] for index, row in enumerate(CAPTION_SETS)
    }
    return unit(rows, dim, seed=29), embeds, masks


def test_two_ranks_of_the_loss_average_to_one_process_on_the_global_batch(monkeypatch):
    """As open_clip tests its ClipLoss: the collective faked on the CPU (each rank "receives" both
    ranks' packed rows), every term of the two ranks' losses averages to one process's loss."""
    import torch.distributed.nn.functional as dist_fn

    config = OmniNegLossConfig(lambda_abs=0.7, lambda_choice=0.5, lambda_keep=0.3, lambda_affirm=0.2)
    image, embeds, masks = caption_set_batch(6)
    whole = OmniNegCLIPLoss(config)(image, embeds, masks, S)
    assert whole.keys() == set(LOSS_TERM_NAMES) - {"loss_clip"} | {"loss"}

    def share(rank):
        rows = slice(3 * rank, 3 * rank + 3)
        return (
            image[rows],
            {name: value[rows] for name, value in embeds.items()},
            {name: value[rows] for name, value in masks.items()},
        )

    sent = []

    def record(packed):  # what a rank puts into the collective
        sent.append(packed)
        return [packed, packed]

    monkeypatch.setattr(dist_fn, "all_gather", record)
    for rank in (0, 1):
        OmniNegCLIPLoss(config, rank=rank, world_size=2).gather(*share(rank))
    monkeypatch.setattr(dist_fn, "all_gather", lambda packed: sent)
    ranks = [OmniNegCLIPLoss(config, rank=rank, world_size=2) for rank in (0, 1)]
    batches = [loss.gather(*share(rank)) for rank, loss in enumerate(ranks)]
    assert [batch.rows for batch in batches] == [slice(0, 3), slice(3, 6)]
    torch.testing.assert_close(batches[1].image, image, rtol=0, atol=0)
    assert all(torch.equal(batches[1].masks[name], masks[name]) for name in masks)
    terms = [loss.terms(batch, S) for loss, batch in zip(ranks, batches)]
    for name, value in whole.items():
        assert ((terms[0][name] + terms[1][name]) / 2).item() == pytest.approx(value.item(), rel=1e-6, abs=1e-7), name


def test_the_loss_alone_is_the_global_batch_and_names_a_bad_rank():
    image, embeds, masks = caption_set_batch(4)
    del embeds["affirmed"], masks["affirmed"]  # a set the collator left out
    batch = OmniNegCLIPLoss(OmniNegLossConfig()).gather(image, embeds, masks)
    assert batch.rows == slice(0, 4) and batch.world_size == 1
    assert torch.equal(batch.image, image) and torch.equal(batch.embeds["presence"], embeds["presence"])
    assert torch.equal(batch.embeds["affirmed"], torch.zeros_like(image)) and not batch.masks["affirmed"].any()
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\), got 2"):
        OmniNegCLIPLoss(OmniNegLossConfig(), rank=2, world_size=2)


def test_without_negation_rows_the_loss_is_clip_alone():
    image, embeds, masks = caption_set_batch(4)
    masks = {name: value if name == "caption" else torch.zeros_like(value) for name, value in masks.items()}
    terms = OmniNegCLIPLoss(OmniNegLossConfig(lambda_choice=1.0))(image, embeds, masks, S)
    assert terms.keys() == {"loss", "loss_clip"}
    assert terms["loss"].item() == pytest.approx(symmetric_infonce(image, embeds["caption"], S).item())


# ---- the model ---------------------------------------------------------------------------------


def batch(tokenizer, captions, negated=None):
    encoded = tokenizer(captions, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def test_no_new_parameters_or_buffers():
    config = tiny_clip_config()
    plain, omni = CLIPModel(config), OmniNegCLIPModel(config)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in omni.named_parameters()]
    assert [n for n, _ in plain.named_buffers()] == [n for n, _ in omni.named_buffers()]


def test_without_negations_it_is_clip(tokenizer):
    torch.manual_seed(0)
    config = tiny_clip_config()
    omni = OmniNegCLIPModel(config).eval()
    plain = CLIPModel(config).eval()
    plain.load_state_dict(omni.state_dict())
    ids, mask = batch(tokenizer, ["a red circle", "a blue square and a star", "a heart"])
    pixels = torch.randn(3, 3, 30, 30)
    ours = omni(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    theirs = plain(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    assert torch.allclose(ours.logits_per_image, theirs.logits_per_image, atol=1e-5)
    assert ours.loss.item() == pytest.approx(theirs.loss.item(), rel=1e-5)
    assert ours.loss_presence is None and ours.loss_clip is not None


def test_forward_with_negations_matches_the_pure_functions(tokenizer):
    torch.manual_seed(0)
    model = OmniNegCLIPModel(tiny_clip_config(), OmniNegLossConfig(lambda_choice=0.5)).eval()
    captions = ["a red circle and a star", "a blue square", "a heart and a ring"]
    ids, mask = batch(tokenizer, captions)
    p_ids, p_mask = batch(tokenizer, ["a red circle and no star", "", "a heart and no ring, none at all"])
    a_ids, a_mask = batch(tokenizer, ["a red circle and a star, with no moon", "a blue square but no cross", ""])
    presence_rows, absence_rows = on(1, 0, 1), on(1, 1, 0)
    pixels = torch.randn(3, 3, 30, 30)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        presence_negated_input_ids=p_ids,
        presence_negated_attention_mask=p_mask,
        presence_mask=presence_rows,
        absence_negated_input_ids=a_ids,
        absence_negated_attention_mask=a_mask,
        absence_mask=absence_rows,
    )
    # Embeddings computed one caption set at a time, without the one-pass concatenation.
    features = lambda i, m: F.normalize(model.get_text_features(input_ids=i, attention_mask=m).pooler_output, dim=-1)  # noqa: E731
    image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    text, presence, absence = features(ids, mask), features(p_ids, p_mask), features(a_ids, a_mask)
    s = model.logit_scale.exp()
    expected = presence_loss(image, text, presence, presence_rows, s)
    expected |= absence_loss(image, text, absence, absence_rows, s)
    both = presence_rows & absence_rows
    expected["loss_choice"] = choice_loss(image, absence, presence, both, s)
    for name, value in expected.items():
        assert getattr(out, name).item() == pytest.approx(value.item(), rel=1e-4, abs=1e-5), name
    total = expected["loss_presence"] + expected["loss_absence"] + 0.5 * expected["loss_choice"]
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-4)
    # Rows without a negation have a zero embedding in the output, never an encoded empty caption.
    assert torch.all(out.presence_negated_embeds[1] == 0) and torch.all(out.absence_negated_embeds[2] == 0)


def forward_caption_sets(model, tokenizer, captions: dict[str, list[str]]):
    """The forward on random pixels with the given caption sets (by `CaptionSet.name`; an empty
    caption: the row has none), and the L2-normalised image and text embeddings computed apart."""
    pixels, given, embeds = torch.randn(len(captions["caption"]), 3, 30, 30), {}, {}
    for caption_set in CAPTION_SETS:
        if caption_set.name in captions:
            ids, mask = batch(tokenizer, captions[caption_set.name])
            given |= {caption_set.input_ids: ids, caption_set.attention_mask: mask}
            if caption_set.row_mask is not None:
                given[caption_set.row_mask] = torch.tensor([bool(text) for text in captions[caption_set.name]])
            features = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            embeds[caption_set.name] = F.normalize(features, dim=-1)
    image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    return model(pixel_values=pixels, **given), image, embeds


def choice_by_hand(scale, image, right, wrong_by_row) -> float:
    """Mean over the rows of the cross-entropy of picking `right` among it and the row's wrong options."""
    losses = []
    for row, wrong in wrong_by_row.items():
        logits = scale * torch.stack([image[row] @ right[row]] + [image[row] @ option[row] for option in wrong])
        losses.append(-(logits[0] - torch.logsumexp(logits, 0)))
    return torch.stack(losses).mean().item()


def test_forward_with_absence_affirmed_captions_takes_the_three_way_choice(tokenizer):
    torch.manual_seed(0)
    model = OmniNegCLIPModel(tiny_clip_config(), OmniNegLossConfig(lambda_choice=1.0)).eval()
    out, image, embeds = forward_caption_sets(
        model,
        tokenizer,
        {
            "caption": ["a red circle and a star", "a blue square", "a heart and a ring"],
            "presence": ["a red circle and no star", "", "a heart and no ring"],
            "absence": [
                "a red circle and a star, with no moon",
                "a blue square but no cross",
                "a heart and a ring and no star",
            ],
            "affirmed": ["a red circle and a star, with a moon", "a blue square but also a cross", ""],
        },
    )
    presence, affirmed = embeds["presence"], embeds["affirmed"]
    # Row 0: three options; row 1: absence vs affirmed; row 2: absence vs presence.
    options = {0: [presence, affirmed], 1: [affirmed], 2: [presence]}
    expected = choice_by_hand(model.logit_scale.exp(), image, embeds["absence"], options)
    assert out.loss_choice.item() == pytest.approx(expected, rel=1e-4)
    assert torch.all(out.absence_affirmed_embeds[2] == 0)


def test_the_affirmation_choice_makes_the_caption_beat_its_twin_and_its_presence_negation(tokenizer):
    torch.manual_seed(0)
    model = OmniNegCLIPModel(tiny_clip_config(), OmniNegLossConfig(lambda_affirm=2.0)).eval()
    assert model.loss_config.caption_sets_read() >= {"caption", "presence", "affirmed"}
    out, image, embeds = forward_caption_sets(
        model,
        tokenizer,
        {
            "caption": ["This image shows a star.", "a blue square", "a heart and a ring"],
            "presence": ["This image does not show a star.", "", "a heart and no ring"],
            "affirmed": ["This image shows a moon.", "a blue square, with a cross", ""],
        },
    )
    presence, affirmed = embeds["presence"], embeds["affirmed"]
    # Row 0: the caption against both; row 1: against its twin only; row 2: against its presence negation only.
    options = {0: [affirmed, presence], 1: [affirmed], 2: [presence]}
    expected = choice_by_hand(model.logit_scale.exp(), image, embeds["caption"], options)
    assert out.loss_affirm.item() == pytest.approx(expected, rel=1e-4)
    assert out.loss.item() == pytest.approx(
        (out.loss_presence + out.loss_absence + 2.0 * out.loss_affirm).item(), rel=1e-4
    )
    off = OmniNegCLIPModel(tiny_clip_config(), OmniNegLossConfig())
    assert "affirmed" not in off.loss_config.caption_sets_read()


def test_precomputed_image_embeddings_match_pixels(tokenizer):
    torch.manual_seed(0)
    model = OmniNegCLIPModel(tiny_clip_config()).eval()
    ids, mask = batch(tokenizer, ["a circle", "a square"])
    pixels = torch.randn(2, 3, 30, 30)
    embeds = model.get_image_features(pixel_values=pixels).pooler_output
    a = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, presence_negated_input_ids=ids)
    b = model(input_ids=ids, attention_mask=mask, image_embeds=embeds, presence_negated_input_ids=ids)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)


def test_resolve_text_blocks():
    assert resolve_text_blocks(12, TrainableConfig()) == [0, 1, 2, 3, 4, 5]
    assert resolve_text_blocks(12, TrainableConfig(text_preset="front")) == [0, 1, 2, 3, 4, 5]
    assert resolve_text_blocks(12, TrainableConfig(text_preset="middle")) == [4, 5, 6, 7]
    assert resolve_text_blocks(12, TrainableConfig(text_preset="back")) == [8, 9, 10, 11]
    assert resolve_text_blocks(12, TrainableConfig(text_preset="whole")) == list(range(12))
    assert resolve_text_blocks(6, TrainableConfig()) == [0, 1, 2]
    assert resolve_text_blocks(12, TrainableConfig(front_blocks=2, text_blocks=[7, 3])) == [3, 7]
    with pytest.raises(ValueError, match="front_blocks=13 but the text encoder has only 12"):
        resolve_text_blocks(12, TrainableConfig(front_blocks=13))
    with pytest.raises(ValueError, match=r"text_blocks \[12\] out of range"):
        resolve_text_blocks(12, TrainableConfig(text_blocks=[0, 12]))
    with pytest.raises(ValueError, match="text_preset must be one of"):
        TrainableConfig(text_preset="top")


def test_apply_trainable_selects_exactly():
    model = OmniNegCLIPModel(tiny_clip_config())
    names = set(apply_trainable(model, TrainableConfig(front_blocks=2, train_token_embedding=False)))
    assert any(n.startswith("text_model.encoder.layers.0.") for n in names)
    assert any(n.startswith("text_model.encoder.layers.1.") for n in names)
    for layer in range(2, TINY_TEXT_LAYERS):
        assert not any(n.startswith(f"text_model.encoder.layers.{layer}.") for n in names)
    assert not any(n.startswith(("vision_model.", "visual_projection")) for n in names)
    assert "text_model.embeddings.token_embedding.weight" not in names
    assert {
        "text_model.embeddings.position_embedding.weight",
        "text_projection.weight",
        "logit_scale",
        "text_model.final_layer_norm.weight",
    } <= names


def test_loss_config_validates():
    with pytest.raises(ValueError, match="lambda_abs must be a finite number >= 0"):
        OmniNegLossConfig(lambda_abs=-1)
    with pytest.raises(ValueError, match="margin must be"):
        OmniNegLossConfig(margin=5)


def test_clamp_logit_scale():
    model = OmniNegCLIPModel(tiny_clip_config())
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)


def test_keep_match_is_zero_when_the_absence_caption_scores_as_high():
    image = unit(3, 5, seed=13)
    text = unit(3, 5, seed=14)
    mask = on(1, 1, 1)
    # The absence caption equal to the image scores above any other caption: no penalty.
    assert keep_match_loss(image, text, image, mask, S).item() == 0.0
    # Equal to the caption: a zero gap, no penalty either.
    assert keep_match_loss(image, text, text, mask, S).item() == 0.0
    # Pointing away from the image: the penalty is the scaled gap, averaged over the rows.
    expected = (S * ((image * text).sum(-1) - (image * -image).sum(-1))).clamp(min=0).mean()
    assert keep_match_loss(image, text, -image, mask, S).item() == pytest.approx(expected.item(), rel=1e-6)


def test_keep_match_masked_rows_get_no_gradient():
    image, text = unit(4, 5, seed=15), unit(4, 5, seed=16)
    absence = (-image).clone().requires_grad_()
    mask = on(1, 0, 1, 0)
    keep_match_loss(image, text, absence, mask, S).backward()
    assert torch.all(absence.grad[~mask] == 0) and torch.any(absence.grad[mask] != 0)


def test_forward_names_every_caption_argument_and_the_output_every_field():
    """The collator's keys (`CAPTION_SETS`) are forward's named arguments; every output field is
    documented with its shape; every term of the objective is in the docstrings a reader opens."""
    parameters = inspect.signature(OmniNegCLIPModel.forward).parameters
    for row in CAPTION_SETS:
        for argument in (row.input_ids, row.attention_mask, row.row_mask):
            assert argument is None or parameters[argument].kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            ), argument
    names = [field.name for field in fields(OmniNegCLIPOutput)]
    assert {row.output for row in CAPTION_SETS} <= set(names)
    for name in names:
        assert f"    {name} (`torch.Tensor` of shape `(" in OmniNegCLIPOutput.__doc__, name
    for doc in (modeling_omninegclip.__doc__, OmniNegCLIPLoss.__doc__, OmniNegCLIPModel.forward.__doc__):
        for name in LOSS_TERM_NAMES:
            assert name in doc, name


def test_return_loss_false_gives_embeddings_and_logits_only(tokenizer):
    torch.manual_seed(0)
    model = OmniNegCLIPModel(tiny_clip_config()).eval()
    ids, mask = batch(tokenizer, ["a circle", "a square"])
    p_ids, p_mask = batch(tokenizer, ["no circle", "no square"])
    out = model(
        input_ids=ids,
        attention_mask=mask,
        image_embeds=torch.randn(2, tiny_clip_config().projection_dim),
        presence_negated_input_ids=p_ids,
        presence_negated_attention_mask=p_mask,
        return_loss=False,
    )
    assert out.loss is None and all(getattr(out, name) is None for name in LOSS_TERM_NAMES)
    assert out.logits_per_image.shape == (2, 2) and out.presence_negated_embeds.shape == (
        2,
        tiny_clip_config().projection_dim,
    )
    assert out.absence_negated_embeds is None
