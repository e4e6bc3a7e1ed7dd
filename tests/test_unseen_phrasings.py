"""Honest transfer: no unseen phrasing reaches fine-tuning.

The world's evaluation scores every task twice, in the training phrasings and in unseen ones
(`shapes.NEGATION_TEMPLATES["heldout"]`, its frames and its MCQ words). The unseen columns measure
transfer only if nothing the fine-tune reads says those words: not the training data the builders
write (the world with its statement rows, a COCO build), not the builders' tables (every rewrite
template of `omninegclip/building/rewrite.py`), not the recipe (its flags and loss terms carry no
text of their own). The pretraining captions are the exception by design: the base knows every word.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import yaml

import data_builder
from bench.coco_fixture import make_fixture
from omninegclip.building import rewrite, shapes
from omninegclip.building.storage import load_with_images
from pipeline.default import RECOMMENDED

REPO = Path(__file__).resolve().parent.parent
FINETUNING_COLUMNS = ("caption", "presence_negated", "absence_negated", "absence_affirmed")
# Words both phrasing sets share, and words every caption has: not markers of either.
FUNCTION_WORDS = {"a", "an", "the", "in", "of", "and", "is", "this", "there", "with", "but", "any", "from", "image"}


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def table_words(template_set: str) -> set[str]:
    """The words of one phrasing set: frames, negation templates (negated and affirmed forms), MCQ."""
    texts = [*shapes.AFFIRMATIVE_FRAMES[template_set], *shapes.MCQ_PHRASES[template_set]]
    for template in shapes.NEGATION_TEMPLATES[template_set].values():
        texts += [
            text
            for text in (template.with_mentions, template.alone, template.affirmed, template.affirmed_alone)
            if text
        ]
    return set().union(*(words(re.sub(r"\{[a-z_]+\}", " ", text)) for text in texts))


UNSEEN = table_words("heldout") - table_words("train") - FUNCTION_WORDS


def unseen_in(text: str) -> set[str]:
    return words(text) & UNSEEN


def test_the_unseen_words_are_the_heldout_negations_frames_and_mcq_words():
    # Computed from the tables: a change there that emptied the set would make every test below vacuous.
    assert {"lacking", "free", "minus", "missing", "absent", "nowhere", "contains", "lacks", "see"} <= UNSEEN
    assert not UNSEEN & table_words("train")


def test_the_world_training_split_with_its_statement_rows_says_no_unseen_word():
    world = shapes.build_world(num_train=300, num_validation=0, num_test=0, seed=5, progress=False, statement_rate=1)
    train = world["train"]
    assert "statement" in train["presence_rewrite"]  # the statement rows are read too
    for column in FINETUNING_COLUMNS:
        for text in train[column]:
            assert text is None or not unseen_in(text), (column, text)


def test_the_builders_rewrite_tables_add_no_unseen_word():
    """Every absence template, the presence templates (the clause ones directly, the in-caption ones
    through `presence_negate` under many seeds), the affirmed twin and the statements, on captions that
    name the object and captions that do not: the words a rewrite adds are never unseen ones."""
    captions = ["A dog lying on a couch.", "Two people riding horses on a beach", "a bowl of soup with a spoon"]
    objects = ["dog", "horse", "spoon", "cat", "umbrella", "pizza"]
    written, templates = 0, set()
    for caption in captions:
        for obj in objects:
            texts = [
                rewrite.absence_affirm(caption, obj),
                *rewrite.statements(obj, "cat").values(),
                *(text for name in rewrite.ABSENCE_TEMPLATES if (text := rewrite._absence_text(caption, obj, name))),
                # The templates for an object the caption does not name (presence_negate's second branch).
                *(rewrite._presence_clause(caption, obj, name) for name in rewrite.PRESENCE_TEMPLATES[4:]),
            ]
            for seed in range(12):  # the in-caption templates, one drawn per seed
                negated = rewrite.presence_negate(caption, obj, random.Random(seed))
                texts += [negated.text] if negated else []
                templates.add(negated.name if negated else None)
            for text in texts:
                assert not (words(text) - words(caption)) & UNSEEN, text
            written += len(texts)
    assert written > 100
    assert {"no_object", "not_verb", "with_to_without"} <= templates  # in-caption templates were reached


@pytest.fixture(scope="module")
def coco_builds(tmp_path_factory):
    """Two COCO builds of bench's fixture (realistic JPEGs, 5 captions an image): with the default
    flags, and with --statement_rate 0."""
    root = tmp_path_factory.mktemp("coco")
    fixture = make_fixture(root / "coco", images=30, progress=False)
    source = ["coco", "--captions", fixture.captions_file, "--instances", fixture.instances_file]
    source += ["--images", fixture.images_dir, "--captions_per_image", "0", "--no_progress"]
    builds = []
    for name, extra in (("default", []), ("without", ["--statement_rate", "0"])):
        summary = data_builder.main([*source, "--out", str(root / name), *extra])
        builds.append((summary, load_with_images(root / name)))
    return builds


@pytest.fixture(scope="module")
def coco_build(coco_builds):
    return coco_builds[0]


def test_a_coco_build_counts_each_phrasing_family_and_adds_statement_rows_by_default(coco_builds):
    (summary, built), (_, without) = coco_builds
    families = {kind: summary["rewrites"][kind] for kind in ("presence", "absence")}
    print("phrasing families of a default COCO build:", families)
    # The rewrite families of the tables are written, and the statement family besides (by default).
    assert len(set(families["absence"]) - {"statement"}) >= 5
    assert set(families["absence"]) <= {*rewrite.ABSENCE_TEMPLATES, "statement"}
    assert len(set(families["presence"]) - {"statement"}) >= 3
    assert set(families["presence"]) <= {*rewrite.PRESENCE_TEMPLATES, "statement"}
    statement_rows = families["presence"]["statement"]
    assert statement_rows == families["absence"]["statement"] == summary["statements"]["written"] > 0
    # Extra rows: every row of a build without them is there, unchanged, and the statement rows come on
    # top, in the training split only.
    for split in built:
        kept = [row for row in built[split].remove_columns("image") if row["presence_rewrite"] != "statement"]
        assert kept == list(without[split].remove_columns("image")), split
    assert statement_rows == sum(row["presence_rewrite"] == "statement" for row in built["train"])
    rate = data_builder.STATEMENT_RATE
    both = summary["statements"]["rows_with_both_negations"]
    assert abs(statement_rows / both - rate) < 0.15, (statement_rows, both)


def test_a_coco_build_adds_no_unseen_word(coco_build):
    _, built = coco_build
    for split in built.values():
        for row in split.remove_columns("image"):
            source = row["caption"] if row["presence_rewrite"] != "statement" else ""
            for column in FINETUNING_COLUMNS:
                if row[column]:
                    assert not (words(row[column]) - words(source)) & UNSEEN, (column, row[column])


def test_the_recommended_recipe_carries_no_text_of_its_own():
    """The recipe is loss weights, columns and switches: no value of its flags (in pipeline/default.py
    and in configs/) is a phrase, so it cannot carry a phrasing to the fine-tune."""
    config = yaml.safe_load((REPO / "configs" / "omni_choice.yaml").read_text())
    column_names = {"absence_affirmed", "none"}
    for flags in (RECOMMENDED.flags, config):
        for name, value in flags.items():
            if isinstance(value, str) and not re.fullmatch(r"[-+0-9.e]+|true|false", value):
                assert (
                    value in column_names
                    or "/" in value
                    or name.endswith("_strategy")
                    or name
                    in (
                        "lr_scheduler_type",
                        "report_to",
                    )
                ), (name, value)
            assert not unseen_in(str(value)), (name, value)
    # The recipe's flags are all in the config file that real-data users run, with the same values.
    for name, value in RECOMMENDED.flags.items():
        assert str(config[name]).lower() == str(value).lower(), name
