"""The offline image world (omninegclip/building/shapes.py): vocabulary, scenes, drawing, captions, dataset."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re

import datasets
import numpy as np
import pytest
from PIL import Image

from omninegclip.building import shapes
from omninegclip.building.shapes import (
    AFFIRMATIVE_FRAMES,
    COLOUR_RGB,
    COLOURS,
    KIND_THEME,
    MCQ_PHRASES,
    NEGATION_TEMPLATES,
    OBJECT_KINDS,
    THEMES,
    Mention,
    SceneObject,
    add_object,
    affirmed_twin,
    build_world,
    decode_scene,
    negated_caption,
    next_kind_probabilities,
    plausible_absent,
    render_scene,
    sample_scene,
)

COLUMNS = [
    "image",
    "caption",
    "presence_negated",
    "absence_negated",
    "absence_affirmed",
    "pretrain_caption",
    "present_objects",
    "negated_object",
    "absent_object",
    "presence_rewrite",
    "absence_rewrite",
    "scene",
    "source",
    "image_id",
]
# Words and phrases of the held-out templates, written out here rather than read from the module.
HELDOUT_MARKERS = [
    "lacking",
    "free of",
    "minus",
    "missing",
    "absent",
    "nowhere",
    "this scene contains",
    "we can see",
    "a rendering of",
    "lacks",
    "contains",
]
TRAIN_NEGATION_WORDS = {"no", "not", "without"}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def overlaps(a: SceneObject, b: SceneObject) -> bool:
    reach = (a.size + b.size) / 2
    return abs(a.x - b.x) < reach and abs(a.y - b.y) < reach


@pytest.fixture(scope="module")
def world():
    return build_world(num_train=40, num_validation=10, num_test=30, seed=0, progress=False, statement_rate=0.0)


# ----- vocabulary and co-occurrence ---------------------------------------------------------------


def test_every_kind_and_colour_is_one_clip_token(tokenizer):
    assert 8 <= len(OBJECT_KINDS) <= 10 and len(set(OBJECT_KINDS)) == len(OBJECT_KINDS)
    assert len(COLOURS) == 6
    for word in (*OBJECT_KINDS, *COLOURS):
        assert tokenizer.tokenize(word) == [f"{word}</w>"], word
    assert sorted(kind for kinds in THEMES.values() for kind in kinds) == sorted(OBJECT_KINDS)


def test_next_kind_probabilities_favour_the_scene_theme():
    probabilities = next_kind_probabilities(["star"])
    assert set(probabilities) == set(OBJECT_KINDS) - {"star"}
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert probabilities["moon"] == probabilities["cloud"] == pytest.approx(10 * probabilities["circle"])
    # Product of affinities: with a circle and a star, sky and geometry kinds tie, symbols trail.
    mixed = next_kind_probabilities(["star", "circle"])
    assert mixed["moon"] == pytest.approx(mixed["square"]) and mixed["moon"] == pytest.approx(10 * mixed["heart"])
    assert shapes.COOCCURRENCE["star"]["moon"] > shapes.COOCCURRENCE["star"]["circle"]


def test_plausible_absent_is_absent_and_from_the_dominant_theme():
    rng = random.Random(0)
    for present in (["star"], ["heart", "cross"], ["circle", "moon", "square"]):
        for _ in range(30):
            kind = plausible_absent(present, rng)
            assert kind not in present
            assert KIND_THEME[kind] == shapes.dominant_theme(present)
    # A theme entirely present: the candidates are the most likely absent kinds (geometry, after the circle).
    drawn = {plausible_absent(["star", "moon", "cloud", "circle"], rng) for _ in range(50)}
    assert drawn == {"square", "triangle"}
    with pytest.raises(ValueError, match="unknown object kinds"):
        plausible_absent(["dragon"], rng)


# ----- scenes and drawing ------------------------------------------------------------------------


def test_sampled_scenes_are_valid_and_mostly_keep_to_one_theme():
    rng = random.Random(1)
    scenes = [sample_scene(rng) for _ in range(400)]
    sizes = [len(scene) for scene in scenes]
    assert min(sizes) == 1 and max(sizes) == 4
    for scene in scenes:
        assert len({obj.kind for obj in scene}) == len(scene)
        assert len({obj.colour for obj in scene}) == len(scene)
        assert not any(overlaps(a, b) for i, a in enumerate(scene) for b in scene[i + 1 :])
    pairs = [(a, b) for scene in scenes for i, a in enumerate(scene) for b in scene[i + 1 :]]
    same_theme = sum(KIND_THEME[a.kind] == KIND_THEME[b.kind] for a, b in pairs) / len(pairs)
    assert same_theme > 0.6  # uniform kinds would give about 0.27


def test_add_object_places_one_more_without_overlap():
    rng = random.Random(2)
    for _ in range(50):
        scene = sample_scene(rng)
        kind = next(k for k in OBJECT_KINDS if k not in {obj.kind for obj in scene})
        grown = add_object(scene, kind, rng)
        assert grown[:-1] == scene and grown[-1].kind == kind
        assert grown[-1].colour not in {obj.colour for obj in scene}
        assert not any(overlaps(grown[-1], obj) for obj in scene)
    with pytest.raises(ValueError, match="already holds"):
        add_object(scene, scene[0].kind, rng)


def test_render_draws_each_kind_in_its_colour_on_the_background():
    for index, kind in enumerate(OBJECT_KINDS):
        colour = COLOURS[index % len(COLOURS)]
        pixels = np.asarray(render_scene([SceneObject(kind, colour, 0.5, 0.5, 0.5)], image_size=64, seed=index))
        assert pixels.shape == (64, 64, 3)
        matching = (pixels == COLOUR_RGB[colour]).all(axis=-1)
        assert 60 < matching.sum() < 0.25 * 64 * 64, kind  # a solid shape of a sensible area
        if kind != "moon":  # a crescent is hollow at its centre
            assert matching[32, 32] or matching[31, 31], kind
        corner = pixels[2, 2].astype(int)
        assert corner.min() > 200  # pale background away from the object
    # Distinct shapes: no two kinds cover the same pixels.
    masks = {
        kind: (np.asarray(render_scene([SceneObject(kind, "red", 0.5, 0.5, 0.5)])) == COLOUR_RGB["red"]).all(-1)
        for kind in OBJECT_KINDS
    }
    for i, a in enumerate(OBJECT_KINDS):
        for b in OBJECT_KINDS[i + 1 :]:
            assert (masks[a] ^ masks[b]).sum() > 40, (a, b)


def test_render_is_deterministic_and_the_seed_only_changes_the_background():
    scene = [SceneObject("star", "blue", 0.3, 0.3, 0.3), SceneObject("heart", "red", 0.7, 0.7, 0.25)]
    first, again = np.asarray(render_scene(scene, seed=5)), np.asarray(render_scene(scene, seed=5))
    other = np.asarray(render_scene(scene, seed=6))
    assert (first == again).all()
    assert not (first == other).all()
    blue = (first == COLOUR_RGB["blue"]).all(-1)
    assert (blue == (other == COLOUR_RGB["blue"]).all(-1)).all()
    assert render_scene(scene, image_size=32).size == (32, 32) and render_scene(scene).mode == "RGB"


# ----- captions ----------------------------------------------------------------------------------


def test_every_template_tokenises_under_77_tokens(tokenizer):
    longest = [Mention(kind, "purple") for kind in ("triangle", "diamond", "cross", "arrow")]
    rng = random.Random(0)
    for template_set, templates in NEGATION_TEMPLATES.items():
        for frame in AFFIRMATIVE_FRAMES[template_set]:
            for name, template in templates.items():
                for mentions in (longest, []) if template.alone else (longest,):
                    text = negated_caption(
                        mentions,
                        "triangle" if not mentions else "circle",
                        template_set,
                        rng,
                        frame=frame,
                        template=name,
                    ).text
                    assert len(tokenizer(text)["input_ids"]) < 77, text


def test_affirmed_twin_of_every_template_affirms_what_the_negation_denied():
    scene = [SceneObject("circle", "red", 0.3, 0.3, 0.3), SceneObject("star", "blue", 0.7, 0.7, 0.3)]
    with_heart = [*scene, SceneObject("heart", "green", 0.3, 0.7, 0.3)]
    rng = random.Random(0)
    for template_set, templates in NEGATION_TEMPLATES.items():
        for name, template in templates.items():
            for mentions in (
                ([Mention("circle", "red"), Mention("star")], []) if template.alone else ([Mention("star")],)
            ):
                negated = negated_caption(mentions, "heart", template_set, rng, template=name)
                twin = affirmed_twin(negated)
                assert twin.text != negated.text and "heart" in words(twin.text), (name, twin.text)
                assert not {"no", "not", "without", "lacking", "free", "minus", "missing", "absent", "nowhere"} & set(
                    words(twin.text)
                )
                # The negation is true of the scene without a heart, its twin only of the one with it.
                assert negated.holds_for(scene) and not twin.holds_for(scene)
                assert twin.holds_for(with_heart) and not negated.holds_for(with_heart)
    with pytest.raises(ValueError, match="negates nothing"):
        affirmed_twin(shapes.affirmative_caption([Mention("star")], "train", rng))


def test_negated_caption_refuses_to_affirm_and_negate_one_object():
    with pytest.raises(ValueError, match="both affirm and negate"):
        negated_caption([Mention("star")], "star", "train", random.Random(0))
    with pytest.raises(ValueError, match="needs at least one affirmed mention"):
        negated_caption([], "star", "train", random.Random(0), template="but_no")
    with pytest.raises(ValueError, match="template_set"):
        negated_caption([Mention("star")], "moon", "test", random.Random(0))


def test_pretrain_captions_negate_present_and_absent_objects_alike():
    """Every negation in the pretraining captions, whatever its phrasing, is noise: the negated
    object is present as often as it is absent."""
    negated_present = negated_absent = plain = 0
    for index in range(1200):
        row = shapes.world_row("train", index, seed=7)
        text = row["pretrain_caption"]
        negated = [
            kind
            for kind in OBJECT_KINDS
            if re.search(
                rf"\b(no|not an?|without an?|not show an?|lacking an?|lacks an?|free of any|minus any|the) {kind}\b"
                rf"|\ban? {kind} is absent|nowhere is there an? {kind}\b",
                text,
            )
            and not re.search(rf"\bthe {kind} there\b", text)
        ]
        if not negated:
            plain += 1
            continue
        assert len(negated) == 1, text
        if negated[0] in row["present_objects"]:
            negated_present += 1
        else:
            negated_absent += 1
    assert 0.25 < (negated_present + negated_absent) / 1200 < 0.45
    assert 0.4 < negated_present / (negated_present + negated_absent) < 0.6


def test_pretrain_captions_cover_every_phrasing_of_both_sets_and_the_mcq():
    """The base stands in for a CLIP that has seen every phrasing the evaluation uses: each frame
    and negation template of both sets and each MCQ phrasing occurs, and negates present and absent
    objects alike (the phrasing tells nothing)."""
    from omninegclip.building.shapes import MCQ_PHRASES, TEMPLATE_SETS, draw_pretrain_caption

    expected = {
        f"{template_set}:{part}"
        for template_set in TEMPLATE_SETS
        for part in (
            [f"frame:{frame}" for frame in AFFIRMATIVE_FRAMES[template_set]]
            + [f"template:{name}" for name in NEGATION_TEMPLATES[template_set]]
            + ["mcq:affirmation", "mcq:negation", "mcq:hybrid"]
        )
    }
    assert expected == shapes.pretrain_phrasings()
    seen, present_by_phrasing, absent_by_phrasing = set(), {}, {}
    rng = random.Random(11)
    for _ in range(6000):
        objects = sample_scene(rng)
        caption = draw_pretrain_caption(objects, rng)
        seen.add(caption.phrasing)
        if caption.negated_kind is not None:
            tally = (
                present_by_phrasing if caption.negated_kind in [obj.kind for obj in objects] else absent_by_phrasing
            )
            tally[caption.phrasing] = tally.get(caption.phrasing, 0) + 1
    assert seen == expected
    negating = {
        phrasing
        for phrasing in expected
        if ":template:" in phrasing or phrasing.endswith(("mcq:negation", "mcq:hybrid"))
    }
    for phrasing in negating:
        assert present_by_phrasing.get(phrasing, 0) > 5 and absent_by_phrasing.get(phrasing, 0) > 5, phrasing
    # In words: every held-out marker and every MCQ phrasing occurs in some pretraining caption.
    texts = [shapes.world_row("train", index, seed=5)["pretrain_caption"] for index in range(1500)]
    padded = " ".join(f" {' '.join(words(text))} " for text in texts)
    assert [marker for marker in HELDOUT_MARKERS if f" {marker} " not in padded] == []
    for phrases in MCQ_PHRASES.values():
        for phrase in phrases:
            pattern = re.escape(phrase).replace(re.escape("{x}"), "an? [a-z]+").replace(re.escape("{y}"), "an? [a-z]+")
            assert any(re.fullmatch(pattern, text) for text in texts), phrase


def test_the_phrasing_fingerprint_follows_the_phrasing_tables(monkeypatch):
    before = shapes.phrasing_fingerprint()
    assert before == shapes.phrasing_fingerprint()
    monkeypatch.setitem(shapes.MCQ_PHRASES, "heldout", ("This image has {x}.", "This image lacks {x}.", "x {x} y {y}"))
    assert shapes.phrasing_fingerprint() != before
    monkeypatch.undo()
    monkeypatch.setattr(shapes, "PRETRAIN_MCQ_RATE", 0.5)
    assert shapes.phrasing_fingerprint() != before


# ----- the dataset -------------------------------------------------------------------------------


def test_world_columns_and_types(world):
    assert list(world) == ["train", "validation", "test"]
    assert [len(world[split]) for split in world] == [40, 10, 30]
    for split in world:
        assert world[split].column_names == COLUMNS
        assert isinstance(world[split].features["image"], datasets.Image)
    row = world["train"][0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (64, 64) and row["image"].mode == "RGB"
    assert isinstance(row["present_objects"], list) and all(kind in OBJECT_KINDS for kind in row["present_objects"])
    assert row["source"] == "shapes" and row["image_id"] == "train-000000"
    for name in ("caption", "pretrain_caption", "scene"):
        assert isinstance(row[name], str) and row[name]


def _image_bytes(dataset: datasets.Dataset) -> list[bytes]:
    return [value["bytes"] for value in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = build_world(num_train=40, num_validation=10, num_test=30, seed=0, progress=False, statement_rate=0.0)
    other = build_world(num_train=40, num_validation=10, num_test=30, seed=1, progress=False, statement_rate=0.0)
    for split in world:
        assert _image_bytes(world[split]) == _image_bytes(again[split])
        assert world[split].remove_columns("image").to_dict() == again[split].remove_columns("image").to_dict()
        assert _image_bytes(world[split]) != _image_bytes(other[split])
        assert world[split]["caption"] != other[split]["caption"]
    # The saved folders are byte-identical, fingerprints and all.
    world.save_to_disk(tmp_path / "a")
    again.save_to_disk(tmp_path / "b")
    digests = {
        name: {
            path.relative_to(tmp_path / name): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in (tmp_path / name).rglob("*")
            if path.is_file()
        }
        for name in ("a", "b")
    }
    assert digests["a"] == digests["b"]


def test_splits_hold_disjoint_scenes(world):
    ids = [image_id for split in world for image_id in world[split]["image_id"]]
    scenes = [json.dumps(json.loads(text)["objects"]) for split in world for text in world[split]["scene"]]
    assert len(set(ids)) == len(ids) == 80
    assert len(set(scenes)) == len(scenes)


def test_negation_columns_agree_with_the_scene(world):
    both = 0
    for split in world:
        for row in world[split].remove_columns("image"):
            objects, _, _ = decode_scene(row["scene"])
            kinds = [obj.kind for obj in objects]
            assert kinds == row["present_objects"]
            assert (
                (row["presence_negated"] is None)
                == (row["negated_object"] is None)
                == (row["presence_rewrite"] is None)
            )
            assert (
                (row["absence_negated"] is None) == (row["absent_object"] is None) == (row["absence_rewrite"] is None)
            )
            both += row["presence_negated"] is not None and row["absence_negated"] is not None
            caption_words = words(row["caption"])
            assert [kind for kind in OBJECT_KINDS if kind in caption_words]  # mentions something
            assert all(kind in kinds for kind in OBJECT_KINDS if kind in caption_words)  # only present objects
            if row["presence_negated"] is not None:
                assert row["negated_object"] in words(row["presence_negated"])
                assert row["negated_object"] in kinds and row["negated_object"] in caption_words
                assert row["presence_rewrite"] in NEGATION_TEMPLATES["train"]
                assert TRAIN_NEGATION_WORDS & set(words(row["presence_negated"]))
            assert (row["absence_affirmed"] is None) == (row["absence_negated"] is None)
            if row["absence_negated"] is not None:
                # The false twin: the same words, the absent object affirmed, no negation word left.
                affirmed = words(row["absence_affirmed"])
                assert row["absent_object"] in affirmed and not TRAIN_NEGATION_WORDS & set(affirmed)
                assert set(words(row["absence_negated"])) - TRAIN_NEGATION_WORDS - {"a", "an", "but"} <= set(affirmed)
                assert row["absent_object"] in words(row["absence_negated"])
                assert row["absent_object"] not in kinds
                assert row["absence_rewrite"] in NEGATION_TEMPLATES["train"]
                assert TRAIN_NEGATION_WORDS & set(words(row["absence_negated"]))
    assert both >= 0.7 * 80


def test_captions_mention_only_some_of_the_objects():
    partial = complete = 0
    for index in range(300):
        row = shapes.world_row("train", index, seed=3)
        if len(row["present_objects"]) < 2:
            continue
        mentioned = {kind for kind in row["present_objects"] if kind in words(row["caption"])}
        partial += len(mentioned) < len(row["present_objects"])
        complete += len(mentioned) == len(row["present_objects"])
    assert partial > 0.3 * (partial + complete) and complete > 0.2 * (partial + complete)


def test_stored_images_are_render_scene_of_the_scene_column(world):
    for split in world:
        for row in world[split].select(range(8)):
            objects, seed, image_size = decode_scene(row["scene"])
            redrawn = render_scene(objects, image_size, seed)
            assert (np.asarray(redrawn) == np.asarray(row["image"])).all()


def test_finetuning_columns_never_use_heldout_phrasings(world):
    """Fine-tuning data keeps to the training phrasings (only the pretraining captions use them all)."""
    columns = ("caption", "presence_negated", "absence_negated", "absence_affirmed")
    texts = [text for column in columns for split in world for text in world[split][column] if text is not None]
    texts += [
        text
        for index in range(200)
        for column in columns
        if (text := shapes.world_row("train", index, seed=9)[column]) is not None
    ]
    for text in texts:
        padded = f" {' '.join(words(text))} "
        assert not [marker for marker in HELDOUT_MARKERS if f" {marker} " in padded], text
    for split in world:
        rewrites = set(world[split]["presence_rewrite"]) | set(world[split]["absence_rewrite"])
        assert rewrites - {None} <= set(NEGATION_TEMPLATES["train"])


def test_stored_image_is_png(world):
    raw = _image_bytes(world["test"])[0]
    assert raw.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(raw)).size == (64, 64)


def test_half_of_the_double_negation_rows_are_matched_pairs():
    """A matched pair negates the absent object in the presence caption's own words, so only the
    negated object tells the two apart; the other rows keep the whole affirmative caption."""
    from omninegclip.building.shapes import world_row

    rows = [world_row("train", index, seed=3) for index in range(200)]
    both = [row for row in rows if row["presence_negated"] and row["absence_negated"]]
    matched = [
        row
        for row in both
        if row["absence_negated"].replace(row["absent_object"], "X")
        == row["presence_negated"].replace(row["negated_object"], "X")
    ]
    assert 0.35 < len(matched) / len(both) < 0.65
    for row in matched:
        assert row["absent_object"] not in row["present_objects"] and row["negated_object"] in row["present_objects"]


def test_statement_rows_are_extra_rows_that_say_all_four_texts_as_statements():
    from omninegclip.building.shapes import Caption, world_row, world_statement_row

    rows = [world_row("train", index, seed=3) for index in range(120)]
    extras = [(row, world_statement_row(row, seed=3, statement_rate=0.5)) for row in rows]
    extras = [(row, extra) for row, extra in extras if extra is not None]
    both = sum(bool(row["presence_negated"] and row["absence_negated"]) for row in rows)
    assert 0.3 < len(extras) / both < 0.7
    assert all(world_statement_row(row, seed=3, statement_rate=0.0) is None for row in rows)
    affirm, negate, _ = MCQ_PHRASES["train"]
    for before, after in extras:
        present, absent = after["negated_object"], after["absent_object"]
        assert after["caption"] == affirm.format(x=Mention(present).phrase)
        assert after["presence_negated"] == negate.format(x=Mention(present).phrase)
        assert after["absence_negated"] == negate.format(x=Mention(absent).phrase)
        assert after["absence_affirmed"] == affirm.format(x=Mention(absent).phrase)
        assert after["presence_rewrite"] == after["absence_rewrite"] == "statement"
        # True and false as the scene says: the caption and the absence statement hold, the other two do not.
        objects = decode_scene(after["scene"])[0]
        assert Caption(after["caption"], (Mention(present),), "train", "").holds_for(objects)
        assert not Caption(after["absence_affirmed"], (Mention(absent),), "train", "").holds_for(objects)
        for column in ("image", "scene", "present_objects", "negated_object", "absent_object", "image_id"):
            assert after[column] == before[column], column
        assert after["pretrain_caption"] is None  # pretraining skips the extra row: it sees each scene once


def test_statement_rows_follow_their_row_in_the_training_split_only():
    plain = build_world(num_train=40, num_validation=10, num_test=10, seed=0, progress=False, statement_rate=0.0)
    stated = build_world(num_train=40, num_validation=10, num_test=10, seed=0, progress=False, statement_rate=1.0)
    for split in ("validation", "test"):
        assert stated[split]["image_id"] == plain[split]["image_id"]
    train = stated["train"]
    originals = [row for row in train if row["presence_rewrite"] != "statement"]
    assert [row["caption"] for row in originals] == plain["train"]["caption"]
    for position, row in enumerate(train):
        if row["presence_rewrite"] == "statement":
            assert train[position - 1]["image_id"] == row["image_id"]
    both = sum(bool(row["presence_negated"] and row["absence_negated"]) for row in plain["train"])
    assert len(train) == 40 + both
