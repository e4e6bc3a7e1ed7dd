"""The image world's tasks (eval/world.py), checked by construction: a scene-annotation oracle gets
every item right, and the two cheap strategies (bag of words, ignoring the negated clause) do no
better than chance where the module says they cannot.

Captions are read here with a small parser of our own (negation cues near an object word), not with
the module's own bookkeeping, so the texts themselves are what is checked."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from eval.items import ChoiceItem, TaskData
from eval.world import FAMILIES, variant_scene, world_tasks
from omninegclip.building.shapes import COLOURS, OBJECT_KINDS, SceneObject, build_world, decode_scene
from omninegclip.common.cli import UserError
from omninegclip.common.embedding import embed_images

NEGATION_BEFORE = {"no", "not", "without", "lacking", "lacks", "minus", "nowhere", "free"}  # up to 4 words before
NEGATION_AFTER = {"missing", "absent"}  # up to 2 words after
TRAIN_NEGATION_WORDS = {"no", "not", "without"}


def read_caption(text: str) -> tuple[dict[str, str | None], set[str]]:
    """(affirmed kind -> named colour or None, negated kinds) of a caption, from its words alone."""
    words = re.findall(r"[a-z]+", text.lower())
    affirmed, negated = {}, set()
    for index, word in enumerate(words):
        if word not in OBJECT_KINDS:
            continue
        before = []
        for previous in reversed(words[max(0, index - 4) : index]):
            if previous in OBJECT_KINDS:
                break
            before.append(previous)
        after = []
        for following in words[index + 1 : index + 3]:
            if following in OBJECT_KINDS:
                break
            after.append(following)
        if NEGATION_BEFORE & set(before) or NEGATION_AFTER & set(after):
            negated.add(word)
        else:
            affirmed[word] = words[index - 1] if index and words[index - 1] in COLOURS else None
    assert affirmed or negated, f"no object in {text!r}"
    assert not set(affirmed) & negated, f"{text!r} affirms and negates one kind"
    return affirmed, negated


def is_true(text: str, objects: list[SceneObject]) -> bool:
    colour_of = {obj.kind: obj.colour for obj in objects}
    affirmed, negated = read_caption(text)
    return all(
        kind in colour_of and colour in (None, colour_of[kind]) for kind, colour in affirmed.items()
    ) and not negated & set(colour_of)


def bag_of_words(text: str, objects: list[SceneObject]) -> int:
    affirmed, negated = read_caption(text)
    return len((set(affirmed) | negated) & {obj.kind for obj in objects})


def ignore_negated_clause(text: str, objects: list[SceneObject]) -> int:
    affirmed, _ = read_caption(text)
    kinds = {obj.kind for obj in objects}
    return sum(1 if kind in kinds else -1 for kind in affirmed)


def oracle(text: str, objects: list[SceneObject]) -> int:
    return int(is_true(text, objects))


@pytest.fixture(scope="module")
def world():
    return build_world(num_train=6, num_validation=4, num_test=60, seed=3, progress=False)


@pytest.fixture(scope="module")
def scenes_by_key(world):
    """Image key -> the scene's objects (variants: the module's own placement of the added kind)."""
    from eval.world import WorldScene

    table = {}
    for row, (image_id, text) in enumerate(zip(world["test"]["image_id"], world["test"]["scene"])):
        objects, seed, size = decode_scene(text)
        scene = WorldScene(row, image_id, tuple(objects), seed, size)
        table[f"shapes:test:{image_id}"] = objects
        for kind in OBJECT_KINDS:
            if kind not in scene.kinds:
                try:
                    table[f"shapes:test:{image_id}+{kind}"] = variant_scene(scene, kind)
                except ValueError:
                    pass
    return table


@pytest.fixture(scope="module")
def tasks(world):
    return {
        template_set: {task.name.split("/")[1]: task for task in world_tasks(world, template_set=template_set, seed=0)}
        for template_set in ("train", "heldout")
    }


def choice_accuracy(items: list[ChoiceItem], scenes_by_key, scorer) -> Fraction:
    """Mean credit; ties share it (the right option among k tied best options earns 1/k)."""
    credit = Fraction(0)
    for item in items:
        if item.choose == "text":
            scores = [scorer(text, scenes_by_key[item.images[0]]) for text in item.texts]
        else:
            scores = [scorer(item.texts[0], scenes_by_key[key]) for key in item.images]
        best = [index for index, score in enumerate(scores) if score == max(scores)]
        credit += Fraction(1, len(best)) if item.answer in best else 0
    return credit / len(items)


def test_all_families_are_built_with_names_and_items(tasks):
    for template_set, by_family in tasks.items():
        assert list(by_family) == list(FAMILIES)
        for family, task in by_family.items():
            assert task.name == f"world_{template_set}/{family}"
            assert task.notes.split(" ")[0].isdigit()
            size = len(task.choices) if task.choices else len(task.retrieval.texts)
            assert size >= 20, (task.name, task.notes)
            for item in task.choices:
                assert set(item.images) <= set(task.images)
    assert len(tasks["train"]["presence"].choices) == 60
    assert {item.group for item in tasks["train"]["mcq"].choices} == {"affirmation", "negation", "hybrid"}
    assert all(len(item.texts) == 4 for item in tasks["train"]["mcq"].choices)
    # Options are shuffled: the right one is not always first.
    answers = {item.answer for item in tasks["train"]["which_negated"].choices}
    assert answers == {0, 1}


def test_the_oracle_gets_every_choice_item_and_exactly_one_option_is_true(tasks, scenes_by_key):
    for by_family in tasks.values():
        for family in ("presence", "which_negated", "absence_image", "absence_caption", "mcq"):
            items = by_family[family].choices
            for item in items:
                if item.choose == "text":
                    truths = [is_true(text, scenes_by_key[item.images[0]]) for text in item.texts]
                else:
                    truths = [is_true(item.texts[0], scenes_by_key[key]) for key in item.images]
                assert truths.count(True) == 1 and truths[item.answer], (family, item)
            assert choice_accuracy(items, scenes_by_key, oracle) == 1


@pytest.mark.parametrize("template_set", ["train", "heldout"])
def test_cheap_strategies_fail_where_the_module_says(tasks, scenes_by_key, template_set):
    by_family = tasks[template_set]

    def accuracy(family, scorer, group=None):
        items = [item for item in by_family[family].choices if group is None or item.group == group]
        return choice_accuracy(items, scenes_by_key, scorer)

    # Only real negation passes these: a bag of words always picks wrong, ignoring the clause ties.
    for family in ("which_negated", "absence_image"):
        assert accuracy(family, bag_of_words) == 0
        assert accuracy(family, ignore_negated_clause) == Fraction(1, 2)
    assert accuracy("mcq", bag_of_words, "negation") == 0
    # What the other families do not defeat, as documented.
    assert accuracy("presence", bag_of_words) == Fraction(1, 2)
    assert accuracy("presence", ignore_negated_clause) == 1
    assert accuracy("absence_caption", bag_of_words) == Fraction(1, 2)
    assert accuracy("absence_caption", ignore_negated_clause) == 1


def test_which_negated_options_share_template_and_differ_only_in_the_negated_object(tasks):
    for by_family in tasks.values():
        for item in by_family["which_negated"].choices:
            first, second = item.texts
            kinds_first = [w for w in re.findall(r"[a-z]+", first) if w in OBJECT_KINDS]
            kinds_second = [w for w in re.findall(r"[a-z]+", second) if w in OBJECT_KINDS]
            differing = [(a, b) for a, b in zip(kinds_first, kinds_second) if a != b]
            assert len(differing) == 1 and len(kinds_first) == len(kinds_second)
            a, b = differing[0]

            def blank(text: str, kind: str) -> str:
                return re.sub(rf"\b(an? )?{kind}\b", "<X>", text)

            assert blank(first, a) == blank(second, b)


def test_absence_image_pairs_differ_only_by_the_added_object(tasks):
    task = tasks["train"]["absence_image"]
    for item in task.choices[:10]:
        base_key = item.images[item.answer]
        twin_key = item.images[1 - item.answer]
        assert twin_key.startswith(base_key + "+")
        kind = twin_key.split("+")[1]
        assert kind in read_caption(item.texts[0])[1]
        base, twin = (np.asarray(task.images[key]()) for key in (base_key, twin_key))
        changed = (base != twin).any(axis=-1).mean()
        assert 0.01 < changed < 0.2  # the added object only; the background and other objects are identical


def test_retrieval_texts_fit_only_their_own_image(tasks, scenes_by_key):
    for by_family in tasks.values():
        for family in ("retrieval", "negated_retrieval"):
            retrieval = by_family[family].retrieval
            assert len(set(retrieval.texts)) == len(retrieval.texts) >= 20
            for text, target in zip(retrieval.texts, retrieval.text_image):
                fitting = [index for index, key in enumerate(retrieval.images) if is_true(text, scenes_by_key[key])]
                assert fitting == [target], (family, text)
    negated = tasks["train"]["negated_retrieval"].retrieval
    for text, target in zip(negated.texts, negated.text_image):
        assert negated.images[target + 1] == f"{negated.images[target]}+{sorted(read_caption(text)[1])[0]}"
        # A bag of words ranks the twin (every mentioned object, plus the negated one) first.
        scores = [bag_of_words(text, scenes_by_key[key]) for key in negated.images]
        assert scores[target + 1] > scores[target]


def test_heldout_tasks_use_only_heldout_negation_words(tasks):
    for by_family in tasks["heldout"].values():
        texts = [text for item in by_family.choices for text in item.texts]
        texts += by_family.retrieval.texts if by_family.retrieval else []
        for text in texts:
            assert not TRAIN_NEGATION_WORDS & set(re.findall(r"[a-z]+", text.lower())), text


def test_deterministic_by_seed_and_same_from_a_saved_folder(world, tmp_path):
    def texts(task_list: list[TaskData]) -> list:
        return [
            (
                task.name,
                [(item.texts, item.images, item.answer) for item in task.choices],
                task.retrieval and (task.retrieval.texts, task.retrieval.images),
            )
            for task in task_list
        ]

    world.save_to_disk(tmp_path / "world")
    from_folder = world_tasks(tmp_path / "world", seed=0, max_scenes=25)
    from_dict = world_tasks(world, seed=0, max_scenes=25)
    from_dataset = world_tasks(world["test"], seed=0, max_scenes=25)
    assert texts(from_folder) == texts(from_dict) == texts(from_dataset)
    assert texts(world_tasks(world, seed=1, max_scenes=25)) != texts(from_dict)
    assert len(from_dict[0].choices) == 25


def test_bad_inputs_are_user_errors(world, tmp_path):
    with pytest.raises(UserError, match="no such world dataset folder"):
        world_tasks(tmp_path / "missing")
    with pytest.raises(UserError, match="no split 'dev'"):
        world_tasks(world, split="dev")
    with pytest.raises(UserError, match="template_set"):
        world_tasks(world, template_set="test")
    with pytest.raises(UserError, match="no column"):
        world_tasks(world["test"].remove_columns("scene"))


def test_a_tiny_clip_embeds_the_image_store(tasks, tiny_clip, processor):
    store = {}
    for by_family in tasks.values():
        for task in by_family.values():
            store.update(task.images)
    keys = sorted(store)[:12] + [key for key in sorted(store) if "+" in key][:12]
    images = [store[key]() for key in keys]
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (64, 64) for image in images)
    embeds = embed_images(tiny_clip, processor.image_processor, images, batch_size=8, progress=False)
    assert embeds.shape == (len(keys), 16)
    assert torch.isfinite(embeds).all()
    assert torch.allclose(embeds.norm(dim=-1), torch.ones(len(keys)), atol=1e-5)
