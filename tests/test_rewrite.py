"""Rule-based negation rewriters, the object vocabulary, the per-row quality gate and the LLM rewriter."""

from __future__ import annotations

import random

import pytest

from omninegclip.building.rewrite import (
    ABSENCE_TEMPLATES,
    PRESENCE_TEMPLATES,
    LLMRewriter,
    Rewrite,
    absence_negate,
    absence_problem,
    presence_negate,
    presence_problem,
)
from omninegclip.building.vocabulary import (
    COCO_CATEGORIES,
    CooccurrenceStats,
    canonical_category,
    detect_objects,
    find_mentions,
    mentions,
    noun_forms,
)


def all_rewrites(function, caption, obj, draws=40):
    return {function(caption, obj, random.Random(seed)) for seed in range(draws)}


def test_vocabulary_synonyms_plurals_and_longest_match():
    assert len(COCO_CATEGORIES) == 80
    assert (
        canonical_category("Puppies") == "dog"
        and canonical_category("sofa") == "couch"
        and canonical_category("women") == "person"
    )
    assert canonical_category("hat") is None
    assert detect_objects("A hot dog and two puppies on a sofa.") == ["couch", "dog", "hot dog"]
    assert detect_objects("a teddy-bear next to a TV") == ["teddy bear", "tv"]
    assert detect_objects("an orange cat beside an orange") == ["cat", "orange"]  # the colour is not the fruit
    assert detect_objects("a street with no cars and a bus") == ["bus"]  # negated mentions are not asserted
    assert (
        noun_forms("hat").plural == "hats"
        and noun_forms("bus").plural == "buses"
        and noun_forms("person").plural == "people"
    )
    assert (
        mentions("no brown puppies here", "dog")
        and not mentions("a hot dog", "dog")
        and not mentions("a hatter", "hat")
    )


def test_negation_scope_stops_at_clause_breaks():
    negated = {
        mention.category: mention.negated for mention in find_mentions("a dog, not a cat, on a couch and no people")
    }
    assert negated == {"dog": False, "cat": True, "couch": False, "person": True}
    assert [m.negated for m in find_mentions("a man not riding a horse")] == [False, True]


@pytest.mark.parametrize(
    "caption, obj, expected",
    [
        (
            "A dog on a couch.",
            "dog",
            {("No dog on a couch", "no_object"), ("There is no dog on a couch", "there_is_no")},
        ),
        ("a man riding a horse", "horse", {("a man not riding a horse", "not_verb")}),
        (
            "a man with an umbrella in the rain",
            "umbrella",
            {
                ("a man without an umbrella in the rain", "with_to_without"),
                ("a man with no umbrella in the rain", "no_object"),
            },
        ),
        (
            "Two brown puppies playing",
            "dog",
            {("No brown puppies playing", "no_object"), ("There are no brown puppies playing", "there_is_no")},
        ),
        (
            "a group of people near a bus",
            "person",
            {("no people near a bus", "no_object"), ("there are no people near a bus", "there_is_no")},
        ),
        (
            "a kitchen with a stove",
            "refrigerator",
            {
                ("a kitchen with a stove with no refrigerators", "suffix_with_no"),
                ("a kitchen with a stove, but there is no refrigerator", "suffix_but_there_is_no"),
                ("a kitchen with a stove, without any refrigerators", "suffix_without_any"),
            },
        ),
    ],
)
def test_presence_negate_templates(caption, obj, expected):
    assert all_rewrites(presence_negate, caption, obj) == expected


def test_presence_negate_is_deterministic_given_the_rng():
    first = [
        presence_negate("A cat sitting on a sofa next to a dog", "dog", random.Random(seed)) for seed in range(10)
    ]
    again = [
        presence_negate("A cat sitting on a sofa next to a dog", "dog", random.Random(seed)) for seed in range(10)
    ]
    assert first == again


def test_absence_negate_templates():
    rewrites = all_rewrites(absence_negate, "A dog on a couch.", "cat")
    assert rewrites == {
        Rewrite("A dog on a couch with no cats", "with_no"),
        Rewrite("A dog on a couch, with no cats around", "with_no_around"),
        Rewrite("A dog on a couch, without a cat", "without_a"),
        Rewrite("A dog, not a cat, on a couch", "not_apposition"),
        Rewrite("No cats, just a dog on a couch", "no_just"),
        Rewrite("A dog on a couch, and there is no cat in sight", "and_there_is_no"),
    }
    assert {rewrite.name for rewrite in rewrites} == set(ABSENCE_TEMPLATES)
    assert Rewrite("two dogs, not cats, on a couch", "not_apposition") in all_rewrites(
        absence_negate, "two dogs on a couch", "cat"
    )
    assert Rewrite("a bowl of broccoli, not a fork", "not_apposition") in all_rewrites(
        absence_negate, "a bowl of broccoli", "fork"
    )
    assert Rewrite("a plate with no broccoli", "with_no") in all_rewrites(
        absence_negate, "a plate", "broccoli"
    )  # mass noun


def test_rewriters_refuse_what_they_cannot_negate():
    rng = random.Random(0)
    assert absence_negate("a dog and a cat", "cat", rng) is None  # the caption already names it: not absent
    assert presence_negate("", "dog", rng) is None and presence_negate("   ...", "dog", rng) is None
    assert presence_negate("a dog", "", rng) is None and absence_negate("a dog", " ", rng) is None


def test_every_presence_template_is_reachable():
    names = set()
    for caption, obj in [
        ("A dog on a couch", "dog"),
        ("a man with an umbrella", "umbrella"),
        ("a man riding a horse", "horse"),
        ("a kitchen", "oven"),
    ]:
        names |= {rewrite.name for rewrite in all_rewrites(presence_negate, caption, obj)}
    assert names == set(PRESENCE_TEMPLATES)


def test_quality_gate_reasons():
    present = ["dog", "couch"]
    assert presence_problem("a dog on a couch", "no dog on a couch", "dog", present) is None
    assert presence_problem("a dog on a couch", "no puppy on a couch", "dog", present) is None  # synonyms count
    assert presence_problem("a dog on a couch", "a couch with nothing", "dog", present) == "object_not_mentioned"
    assert presence_problem("a dog on a couch", "no cat on a couch", "cat", present) == "object_not_present"
    assert presence_problem("a dog on a couch", "a dog on a couch", "dog", present) == "unchanged"
    assert presence_problem("a dog on a couch", "a dog on a red couch", "dog", present) == "no_negation_cue"
    assert presence_problem("a dog on a couch", None, "dog", present) == "empty"
    assert (
        presence_problem("a dog on a couch", "no cats, a dog on a couch", "dog", present, strict=True)
        == "object_not_negated"
    )
    assert absence_problem("a dog on a couch", "a dog on a couch with no cats", "cat", present) is None
    assert absence_problem("a dog on a couch", "a dog on a couch with no sofa", "couch", present) == "object_present"
    assert (
        absence_problem("a dog on a couch", "a dog on a couch with no cats", "bird", present) == "object_not_mentioned"
    )
    assert (
        absence_problem("a dog on a couch", "a cat, not a bird, and a dog", "cat", present, strict=True)
        == "object_asserted"
    )


def test_cooccurrence_prefers_objects_seen_with_the_present_ones():
    stats = CooccurrenceStats.from_object_sets(
        [("dog", "couch"), ("dog", "couch", "cat"), ("dog", "frisbee"), ("car", "bus"), ("car", "bus")]
    )
    assert stats.conditional("couch", given="dog") == pytest.approx(2 / 3)
    ranked = stats.rank_absent(["dog"])
    assert [obj for obj, _ in ranked][:3] == ["couch", "cat", "frisbee"] and "dog" not in dict(ranked)
    assert stats.choose_absent(["dog"], random.Random(0), exclude=["couch", "cat", "frisbee"], top_k=1) in (
        "bus",
        "car",
    )
    draws = {stats.choose_absent(["dog"], random.Random(seed), top_k=1) for seed in range(20)}
    assert draws == {"couch"}
    assert stats.choose_absent(["dog", "couch", "cat", "frisbee", "car", "bus"], random.Random(0)) is None


def test_llm_rewriter_keeps_valid_outputs_and_rejects_the_rest():
    prompts = []

    def fake_model(prompt):
        prompts.append(prompt)
        return (
            " a dog on a couch with no cat nearby\nCaption: ignored"
            if "Object: cat" in prompt
            else "a dog on a red couch"
        )

    rewriter = LLMRewriter(fake_model, name="llm:fake")
    assert rewriter.absence("a dog on a couch.", "cat", ["dog", "couch"]) == Rewrite(
        "a dog on a couch with no cat nearby", "llm:fake"
    )
    assert rewriter.presence("a dog on a couch", "dog", ["dog", "couch"]) is None  # no negation: the caller falls back
    assert "Caption: a dog on a couch\nObject: cat\nNew caption:" in prompts[0]


def test_llm_rewriter_loads_a_local_text_generation_model(tmp_path):
    """The real loading path (transformers pipeline) on a tiny random causal LM made here: its babble
    fails the gate."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "a", "dog", "on", "couch", "no", "cat", "caption", ":", "object", "new"]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    ).save_pretrained(tmp_path)
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(words), n_embd=16, n_layer=1, n_head=2, n_positions=512, bos_token_id=1, eos_token_id=1
        )
    ).save_pretrained(tmp_path)
    rewriter = LLMRewriter.from_pretrained(str(tmp_path), max_new_tokens=4)
    assert rewriter.name == f"llm:{tmp_path}" and isinstance(rewriter.generate("Caption: a dog\nNew caption:"), str)
    assert rewriter.absence("a dog on a couch", "cat", ["dog", "couch"]) is None


def test_absence_affirm_affirms_the_absent_object_after_the_whole_caption():
    from omninegclip.building.rewrite import absence_affirm
    from omninegclip.building.vocabulary import find_mentions

    assert absence_affirm("A dog sleeping on a couch.", "cat") == "A dog sleeping on a couch, with a cat"
    assert absence_affirm("  a man  on a bench ", "umbrella") == "a man on a bench, with an umbrella"
    twin = absence_affirm("A plate of food.", "broccoli")
    assert twin.startswith("A plate of food, with") and not any(m.negated for m in find_mentions(twin, ["broccoli"]))
    assert find_mentions(twin, ["broccoli"])


def test_gate_rejects_a_presence_negation_that_still_affirms_its_object():
    from omninegclip.building.rewrite import presence_problem

    assert (
        presence_problem(
            "a dog and another dog near a cat", "no dog and another dog near a cat", "dog", ["dog", "cat"]
        )
        == "object_still_affirmed"
    )
    assert (
        presence_problem(
            "a dog and another dog near a cat", "there is no dog and no other dog near a cat", "dog", ["dog", "cat"]
        )
        is None
    )
    assert presence_problem("a dog near a cat", "no dog near a cat", "dog", ["dog", "cat"]) is None
