"""Layer-wise analysis: one value per text block, cosine 1 for identical texts, pairs read from CSV and
dataset folders with rows lacking a negation counted out of that kind only."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import TINY_TEXT_LAYERS

from eval.layerwise import NegationPairs, eos_positions, layerwise_cosines, plot_layerwise, read_negation_pairs
from omninegclip.common.cli import UserError
from omninegclip.common.results import LayerwiseResult, layerwise_markdown


def test_identical_caption_and_negation_give_cosine_1_at_every_block(tiny_clip, tokenizer):
    captions = ["a dog on a sofa", "two cats", "a red ball next to a long blue box on the floor"]
    pairs = NegationPairs(captions, {"presence": list(captions), "absence": list(captions)})
    result = layerwise_cosines(tiny_clip, tokenizer, pairs, batch_size=2, progress=False)
    for kind in ("presence", "absence"):
        assert len(result.cosines[kind]) == TINY_TEXT_LAYERS
        assert result.cosines[kind] == pytest.approx([1.0] * TINY_TEXT_LAYERS, abs=1e-5)
    assert result.pairs == {"presence": 3, "absence": 3}


def test_cosines_are_the_mean_over_pairs_of_eos_states_after_each_block(tiny_clip, tokenizer):
    captions, negations = ["a dog on a sofa", "two cats"], ["a sofa with no dog", "no cats"]
    result = layerwise_cosines(tiny_clip, tokenizer, NegationPairs(captions, {"presence": negations}), progress=False)
    with torch.no_grad():
        expected = []
        for caption, negation in zip(captions, negations):
            states = []
            for text in (caption, negation):  # one text at a time: no padding at all
                encoded = tokenizer([text], return_tensors="pt")
                hidden = tiny_clip.text_model(**encoded, output_hidden_states=True).hidden_states
                states.append(torch.stack([h[0, -1] for h in hidden[1:]]))  # EOS is the last token here
            expected.append(torch.nn.functional.cosine_similarity(states[0], states[1], dim=-1))
    assert result.cosines["presence"] == pytest.approx(torch.stack(expected).mean(0).tolist(), abs=1e-5)
    assert all(value < 0.9999 for value in result.cosines["presence"])
    assert "absence" not in result.cosines


def test_eos_position_is_the_first_eos_token_or_the_highest_id_for_legacy_configs():
    ids = torch.tensor([[49406, 320, 1929, 49407, 49407, 49407], [49406, 49407, 49407, 49407, 49407, 49407]])
    assert eos_positions(ids, 49407).tolist() == [3, 1]
    assert eos_positions(torch.tensor([[0, 5, 9, 2, 0]]), 2).tolist() == [2]


def test_pairs_from_a_csv_and_a_dataset_folder_skip_rows_without_a_negation_per_kind(tmp_path, tiny_clip, tokenizer):
    with open(tmp_path / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption", "presence_negated", "absence_negated"])
        writer.writerows(
            [["a dog", "no dog", "a dog and no cat"], ["a cat", "", "a cat, not a bird"], ["a bird", "no bird", ""]]
        )
    pairs = read_negation_pairs(tmp_path / "pairs.csv")
    assert pairs.count("presence") == 2 and pairs.count("absence") == 2
    result = layerwise_cosines(tiny_clip, tokenizer, pairs, progress=False)
    assert result.pairs == {"presence": 2, "absence": 2}

    import datasets

    rows = {
        "caption": ["a dog", "a cat"],
        "presence_negated": ["no dog", None],
        "absence_negated": [None, "a cat, no dog"],
    }
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "world"))
    pairs = read_negation_pairs(tmp_path / "world", max_items=1)
    assert pairs.captions == ["a dog"] and pairs.negations == {"presence": ["no dog"], "absence": [None]}
    with pytest.raises(UserError, match=r"no split 'train'"):
        read_negation_pairs(tmp_path / "world", split="train")


def test_markdown_has_a_row_per_block_and_the_plot_is_written(tmp_path):
    results = {
        "base": LayerwiseResult({"presence": [0.99, 0.9], "absence": [0.98, 0.95]}, {"presence": 4, "absence": 3}),
        "tuned": LayerwiseResult({"presence": [0.9, 0.5], "absence": [0.97, 0.7]}, {"presence": 4, "absence": 3}),
    }
    table = layerwise_markdown(results)
    lines = table.strip().splitlines()
    assert (
        lines[0] == "| block | base presence (n=4) | base absence (n=3) | tuned presence (n=4) | tuned absence (n=3) |"
    )
    assert lines[2:] == ["| 0 | 0.9900 | 0.9800 | 0.9000 | 0.9700 |", "| 1 | 0.9000 | 0.9500 | 0.5000 | 0.7000 |"]
    plot_layerwise(results, tmp_path / "layerwise.png")
    assert (tmp_path / "layerwise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
