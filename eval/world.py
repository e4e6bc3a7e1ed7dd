"""The offline image world's negation tasks, on held-out scenes (by default the `test` split).

`world_tasks` rephrases every scene with the "train" or the "heldout" templates (and MCQ phrasings,
`MCQ_PHRASES`) of `omninegclip.building.shapes` and returns one `TaskData` per family, named
`world_{template_set}/{family}`.
Two cheap strategies pass many negation tests without understanding negation (docs/method.md §2):
*bag of words* (score = mentioned objects that are present, negation words ignored) and *ignoring
the negated clause* (score the caption as if "… no B" were not there). For each family, what they do:

| family | item | bag of words | ignore the clause |
|---|---|---|---|
| `presence` | image: [affirmative, presence-negated] | tie | passes (CC-Neg-like) |
| `which_negated` | image with A, P present, B absent: ["A … no B", "A … no P"] | always wrong | tie |
| `absence_image` | "A … no B": [the image, the same image plus a B] | always wrong | tie |
| `absence_caption` | image: ["A … no B", "A … and a B"] | tie | passes |
| `mcq` | NegBench-style, 4 options, groups affirmation / negation / hybrid | wrong on negation | passes affirmation |
| `retrieval` | one full description per image, no scene's description fits another | — | — |
| `negated_retrieval` | "every object of S, no B" among S and S plus a B | prefers the twin | ties with the twin |

So `which_negated`, `absence_image` and MCQ negation are the scores only real negation lifts;
`absence_caption` only tells that "no B" is not read as "a B" (a bag of words ties there).
Every item has exactly one option that is true of its scene. Option order is random (seeded).
`which_negated` needs two objects (one-object scenes are skipped) and writes its two options with the
same template; the retrieval sets keep only the scenes whose text fits no other image of the set
(about a third of the 2,000 default test scenes); in `negated_retrieval` the twins (S plus a B) have
no text, so its image-to-text recall covers the targets only.
Skips are counted in each task's `notes`.

Image keys: `shapes:{split}:{image_id}` (the stored image, decoded lazily) and
`shapes:{split}:{image_id}+{kind}` (that scene with one more `kind`, rendered lazily; where it is
placed depends only on the image id and the kind, so every task and seed shares one such image).

Public surface: `FAMILIES`, `world_tasks(dataset, split, template_set, seed, max_scenes)`,
`variant_scene(scene, kind)`, `WorldScene`.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import datasets
from PIL import Image

from eval.items import ChoiceItem, RetrievalSet, TaskData
from omninegclip.building.shapes import (
    AFFIRMATIVE_FRAMES,
    MCQ_GROUPS,
    MCQ_PHRASES,
    NEGATION_TEMPLATES,
    OBJECT_KINDS,
    TEMPLATE_SETS,
    Caption,
    Mention,
    SceneObject,
    absence_negated_caption,
    add_object,
    affirmative_caption,
    choose_mentions,
    decode_scene,
    full_mentions,
    negated_caption,
    plausible_absent,
    presence_negated_caption,
    render_scene,
)
from omninegclip.common.cli import UserError
from omninegclip.common.safe_load import to_rgb

FAMILIES = ("presence", "which_negated", "absence_image", "absence_caption", "mcq", "retrieval", "negated_retrieval")
_REQUIRED_COLUMNS = ("image", "scene", "image_id")


@dataclass(frozen=True)
class WorldScene:
    row: int  # row in the split
    image_id: str
    objects: tuple[SceneObject, ...]
    seed: int | None
    image_size: int

    @property
    def kinds(self) -> list[str]:
        return [obj.kind for obj in self.objects]


def variant_scene(scene: WorldScene, kind: str) -> list[SceneObject]:
    """The scene plus one `kind`, placed by an rng seeded by (image id, kind) only. ValueError: no room."""
    return add_object(scene.objects, kind, random.Random(f"shapes-variant:{scene.image_id}+{kind}"))


# ----- loading -----------------------------------------------------------------------------------


def _load_split(dataset, split: str) -> datasets.Dataset:
    where = "the world dataset"
    if isinstance(dataset, (str, Path)):
        where = str(dataset)
        if not Path(dataset).exists():
            raise UserError(
                f"{dataset}: no such world dataset folder "
                f"(build one with: python data_builder.py shapes --out {dataset})"
            )
        try:
            dataset = datasets.load_from_disk(str(dataset))
        except FileNotFoundError as error:
            raise UserError(f"{where}: not a dataset saved with save_to_disk ({error})") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise UserError(f"{where}: no split {split!r} (splits: {list(dataset)})")
        dataset = dataset[split]
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"world_tasks needs a folder path, a DatasetDict or a Dataset, not {type(dataset).__name__}")
    missing = [column for column in _REQUIRED_COLUMNS if column not in dataset.column_names]
    if missing:
        raise UserError(
            f"{where}, split {split!r}: no column(s) {missing}; a world dataset has {list(_REQUIRED_COLUMNS)} "
            f"(columns found: {dataset.column_names})"
        )
    return dataset


def _read_scenes(dataset: datasets.Dataset, split: str, max_scenes: int | None) -> list[WorldScene]:
    count = len(dataset) if max_scenes is None else min(max_scenes, len(dataset))
    columns = dataset.select_columns(["image_id", "scene"]).select(range(count)).to_dict()
    scenes = []
    for row, (image_id, text) in enumerate(zip(columns["image_id"], columns["scene"])):
        try:
            objects, seed, image_size = decode_scene(text)
        except (TypeError, KeyError, ValueError) as error:
            raise UserError(
                f"world split {split!r}, row {row} ({image_id}), column 'scene': not a scene JSON ({error})"
            ) from None
        scenes.append(WorldScene(row, image_id, tuple(objects), seed, image_size))
    if len({scene.image_id for scene in scenes}) != len(scenes):
        raise UserError(f"world split {split!r}: column 'image_id' has repeated values; image keys must be unique")
    return scenes


def _stored_image(images: datasets.Dataset, row: int) -> Image.Image:
    return to_rgb(images[row]["image"])


def _rendered_variant(scene: WorldScene, kind: str) -> Image.Image:
    return render_scene(variant_scene(scene, kind), scene.image_size, scene.seed)


# ----- the task builder --------------------------------------------------------------------------


class _Builder:
    """Shared state of one `world_tasks` call: keys, loaders, per-scene seeded rngs, skip counts."""

    def __init__(self, images: datasets.Dataset, split: str, template_set: str, seed: int):
        self.images, self.split, self.template_set, self.seed = images, split, template_set, seed

    def rng(self, family: str, scene: WorldScene) -> random.Random:
        return random.Random(f"world:{self.seed}:{self.template_set}:{family}:{scene.image_id}")

    def key(self, scene: WorldScene, added_kind: str | None = None) -> str:
        base = f"shapes:{self.split}:{scene.image_id}"
        return base if added_kind is None else f"{base}+{added_kind}"

    def loader(self, scene: WorldScene, added_kind: str | None = None) -> Callable[[], Image.Image]:
        if added_kind is None:
            return functools.partial(_stored_image, self.images, scene.row)
        return functools.partial(_rendered_variant, scene, added_kind)

    def task(self, family: str) -> TaskData:
        return TaskData(name=f"world_{self.template_set}/{family}")

    def add_choice(
        self,
        task: TaskData,
        scene: WorldScene,
        rng: random.Random,
        right,
        wrong: Sequence,
        choose: str = "text",
        group: str = "all",
        anchor: str | None = None,
    ) -> None:
        """One item whose options are `right` and `wrong` in random order; options are texts, or
        (image key, loader) pairs when choose == "image"."""
        options = [right, *wrong]
        order = list(range(len(options)))
        rng.shuffle(order)
        answer = order.index(0)
        options = [options[index] for index in order]
        item_id = f"{self.split}:{scene.image_id}"
        if choose == "text":
            key = self.key(scene)
            task.images[key] = self.loader(scene)
            task.choices.append(ChoiceItem("text", [key], list(options), answer, group, item_id))
        else:
            for key, load in options:
                task.images[key] = load
            task.choices.append(ChoiceItem("image", [key for key, _ in options], [anchor], answer, group, item_id))


def _note(task: TaskData, skipped: Counter) -> None:
    parts = [f"{len(task.choices) or (len(task.retrieval.texts) if task.retrieval else 0)} items"]
    parts += [f"{count} scenes skipped ({reason})" for reason, count in sorted(skipped.items())]
    task.notes = "; ".join(parts)


def _absent_kinds(scene: WorldScene) -> list[str]:
    return [kind for kind in OBJECT_KINDS if kind not in scene.kinds]


def _presence(builder: _Builder, scenes: Sequence[WorldScene]) -> TaskData:
    task = builder.task("presence")
    for scene in scenes:
        rng = builder.rng("presence", scene)
        affirmative = affirmative_caption(choose_mentions(scene.objects, rng), builder.template_set, rng)
        negated = presence_negated_caption(affirmative, rng.choice(affirmative.mentions).kind, rng)
        builder.add_choice(task, scene, rng, affirmative.text, [negated.text])
    _note(task, Counter())
    return task


def _which_negated(builder: _Builder, scenes: Sequence[WorldScene]) -> TaskData:
    task, skipped = builder.task("which_negated"), Counter()
    for scene in scenes:
        if len(scene.objects) < 2:
            skipped["a single object: nothing left to affirm besides the negated one"] += 1
            continue
        rng = builder.rng("which_negated", scene)
        present = rng.choice(scene.kinds)
        mentions = choose_mentions(scene.objects, rng, exclude=[present])
        absent = plausible_absent(scene.kinds, rng)
        frame = rng.choice(AFFIRMATIVE_FRAMES[builder.template_set])
        template = rng.choice(list(NEGATION_TEMPLATES[builder.template_set]))
        right = negated_caption(mentions, absent, builder.template_set, rng, frame=frame, template=template)
        wrong = negated_caption(mentions, present, builder.template_set, rng, frame=frame, template=template)
        builder.add_choice(task, scene, rng, right.text, [wrong.text])
    _note(task, skipped)
    return task


def _absence_image(builder: _Builder, scenes: Sequence[WorldScene]) -> TaskData:
    task, skipped = builder.task("absence_image"), Counter()
    for scene in scenes:
        rng = builder.rng("absence_image", scene)
        mentions = choose_mentions(scene.objects, rng)
        absent = plausible_absent(scene.kinds, rng)
        try:
            variant_scene(scene, absent)
        except ValueError:
            skipped["no room to add the absent object"] += 1
            continue
        text = negated_caption(mentions, absent, builder.template_set, rng).text
        builder.add_choice(
            task,
            scene,
            rng,
            (builder.key(scene), builder.loader(scene)),
            [(builder.key(scene, absent), builder.loader(scene, absent))],
            choose="image",
            anchor=text,
        )
    _note(task, skipped)
    return task


def _absence_caption(builder: _Builder, scenes: Sequence[WorldScene]) -> TaskData:
    task = builder.task("absence_caption")
    for scene in scenes:
        rng = builder.rng("absence_caption", scene)
        affirmative = affirmative_caption(choose_mentions(scene.objects, rng), builder.template_set, rng)
        absent = plausible_absent(scene.kinds, rng)
        right = absence_negated_caption(affirmative, absent, rng)
        wrong = affirmative_caption(
            [*affirmative.mentions, Mention(absent)], builder.template_set, rng, frame=affirmative.frame
        )
        builder.add_choice(task, scene, rng, right.text, [wrong.text])
    _note(task, Counter())
    return task


def _mcq(builder: _Builder, scenes: Sequence[WorldScene]) -> TaskData:
    task = builder.task("mcq")
    affirm, negate, hybrid = MCQ_PHRASES[builder.template_set]

    def shows(x: str) -> str:
        return affirm.format(x=Mention(x).phrase)

    def lacks(x: str) -> str:
        return negate.format(x=Mention(x).phrase)

    def shows_but_not(x: str, y: str) -> str:
        return hybrid.format(x=Mention(x).phrase, y=Mention(y).phrase)

    for position, scene in enumerate(scenes):
        rng = builder.rng("mcq", scene)
        group = MCQ_GROUPS[position % len(MCQ_GROUPS)]
        present = rng.choice(scene.kinds)
        others = [kind for kind in scene.kinds if kind != present]
        other_present = rng.choice(others) if others else None
        absent = plausible_absent(scene.kinds, rng)
        other_absent = rng.choice([kind for kind in _absent_kinds(scene) if kind != absent])
        if group == "affirmation":
            right, wrong = shows(present), [shows(absent), lacks(present), shows_but_not(absent, present)]
        elif group == "negation":  # the distractors negate present objects (or affirm the absent one)
            right = lacks(absent)
            wrong = [
                lacks(present),
                shows(absent),
                lacks(other_present) if other_present else shows_but_not(absent, present),
            ]
        else:
            right = shows_but_not(present, absent)
            wrong = [
                shows_but_not(absent, present),
                shows_but_not(other_present, present) if other_present else shows_but_not(other_absent, absent),
                shows_but_not(other_absent, present),
            ]
        builder.add_choice(task, scene, rng, right, wrong, group=group)
    _note(task, Counter())
    return task


class _Gallery:
    """Images (as sets of (kind, colour)) and queries (`Caption`s) of a retrieval set, indexed so that
    "which images satisfy this query" and "which queries does this image satisfy" are cheap."""

    def __init__(self):
        self.images_with: dict[tuple[str, str], set[int]] = {}
        self.image_objects: list[tuple[SceneObject, ...]] = []
        self.queries_by_mentions: dict[frozenset, list[Caption]] = {}

    @staticmethod
    def _mention_set(caption: Caption) -> frozenset:
        return frozenset((mention.kind, mention.colour) for mention in caption.mentions)

    def satisfied_by_any(self, caption: Caption) -> bool:
        if any(mention.colour is None for mention in caption.mentions):
            raise ValueError("retrieval queries name every colour")
        candidates = None
        for element in self._mention_set(caption):
            found = self.images_with.get(element, set())
            candidates = found if candidates is None else candidates & found
        return any(caption.holds_for(self.image_objects[index]) for index in candidates or ())

    def satisfies_any(self, objects: Sequence[SceneObject]) -> bool:
        elements = [(obj.kind, obj.colour) for obj in objects]
        for size in range(1, len(elements) + 1):
            for subset in combinations(elements, size):
                if any(query.holds_for(objects) for query in self.queries_by_mentions.get(frozenset(subset), ())):
                    return True
        return False

    def add_image(self, objects: Sequence[SceneObject]) -> None:
        for obj in objects:
            self.images_with.setdefault((obj.kind, obj.colour), set()).add(len(self.image_objects))
        self.image_objects.append(tuple(objects))

    def add_query(self, caption: Caption) -> None:
        self.queries_by_mentions.setdefault(self._mention_set(caption), []).append(caption)


def _most_objects_first(scenes: Sequence[WorldScene]) -> list[WorldScene]:
    # A scene of few objects is a subset of many others: taken first, it would shut them all out.
    return sorted(scenes, key=lambda scene: -len(scene.objects))


def _retrieval(builder: _Builder, scenes: Sequence[WorldScene]) -> TaskData:
    """One full description per image; a scene is left out where its description would also fit an
    image already in the set, or an earlier description would fit it (captions are not exhaustive).
    Scenes are taken most objects first, which leaves out the fewest."""
    task, skipped, gallery = builder.task("retrieval"), Counter(), _Gallery()
    keys, texts = [], []
    for scene in _most_objects_first(scenes):
        rng = builder.rng("retrieval", scene)
        mentions = full_mentions(scene.objects)
        rng.shuffle(mentions)
        caption = affirmative_caption(mentions, builder.template_set, rng)
        if gallery.satisfied_by_any(caption) or gallery.satisfies_any(scene.objects):
            skipped["its description would also fit another image"] += 1
            continue
        gallery.add_image(scene.objects)
        gallery.add_query(caption)
        keys.append(builder.key(scene))
        task.images[keys[-1]] = builder.loader(scene)
        texts.append(caption.text)
    task.retrieval = RetrievalSet(keys, texts, list(range(len(keys))))
    _note(task, skipped)
    return task


def _negated_retrieval(builder: _Builder, scenes: Sequence[WorldScene]) -> TaskData:
    """Per scene S, with B a plausible absent kind: the query "every object of S … no B", the image S,
    and S plus a B as a near-duplicate with no text of its own. Only S satisfies its query among all
    images of the set (groups that would break this are left out; most objects first)."""
    task, skipped, gallery = builder.task("negated_retrieval"), Counter(), _Gallery()
    keys, texts, text_image = [], [], []
    for scene in _most_objects_first(scenes):
        rng = builder.rng("negated_retrieval", scene)
        absent = plausible_absent(scene.kinds, rng)
        try:
            twin = variant_scene(scene, absent)
        except ValueError:
            skipped["no room to add the absent object"] += 1
            continue
        mentions = full_mentions(scene.objects)
        rng.shuffle(mentions)
        query = negated_caption(mentions, absent, builder.template_set, rng)
        if gallery.satisfied_by_any(query) or gallery.satisfies_any(scene.objects) or gallery.satisfies_any(twin):
            skipped["its query would also fit another image"] += 1
            continue
        gallery.add_image(scene.objects)
        gallery.add_image(twin)
        gallery.add_query(query)
        text_image.append(len(keys))
        texts.append(query.text)
        for key, load in (
            (builder.key(scene), builder.loader(scene)),
            (builder.key(scene, absent), builder.loader(scene, absent)),
        ):
            keys.append(key)
            task.images[key] = load
    task.retrieval = RetrievalSet(keys, texts, text_image)
    _note(task, skipped)
    return task


_FAMILY_BUILDERS = {
    "presence": _presence,
    "which_negated": _which_negated,
    "absence_image": _absence_image,
    "absence_caption": _absence_caption,
    "mcq": _mcq,
    "retrieval": _retrieval,
    "negated_retrieval": _negated_retrieval,
}


def world_tasks(
    dataset, split: str = "test", template_set: str = "train", seed: int = 0, max_scenes: int | None = None
) -> list[TaskData]:
    """All families (`FAMILIES`) on the scenes of `split` (the first `max_scenes` rows, if given),
    phrased with `template_set` ("train" or "heldout"). `dataset`: a `save_to_disk` folder, a
    `DatasetDict` or a `Dataset` built by `omninegclip.building.shapes.build_world`. Deterministic by seed;
    images load lazily."""
    if template_set not in TEMPLATE_SETS:
        raise UserError(f"template_set must be one of {list(TEMPLATE_SETS)}, not {template_set!r}")
    if max_scenes is not None and max_scenes < 1:
        raise UserError(f"max_scenes must be a positive number of scenes, not {max_scenes}")
    split_data = _load_split(dataset, split)
    scenes = _read_scenes(split_data, split, max_scenes)
    builder = _Builder(split_data.select_columns(["image"]), split, template_set, seed)
    return [_FAMILY_BUILDERS[family](builder, scenes) for family in FAMILIES]
