"""The offline image world: procedurally drawn scenes in which the presence and absence of every
object is known exactly, with captions that negate present or absent objects.

No pretrained CLIP and no real image data can be had offline, so the project's default pretrains a
small CLIP on this world and fine-tunes it with Omni-NegCLIP. A scene is 1-4 coloured objects of
distinct kinds on a pale background. Kinds fall into themes ("geometry", "sky", "symbols") and a
scene mostly draws from one theme, so "a plausible object that is absent" means something.

Captions mention SOME of the present objects, as real captions do (if silence meant absence,
ignoring negation would pass every absence test). Each caption is one of two template sets:
"train" phrasings (fine-tuning data) and "heldout" phrasings no fine-tuning row ever uses. The
pretraining captions (`pretrain_caption`, the stand-in for web captions) use every phrasing of
both sets and the MCQ phrasings, negating a present or an absent object with equal odds: the
base has seen every word the evaluation uses, never with what it means. A negated
object is always named without a colour ("no star"), so that its negation is simply "no star of any
colour".

Public surface
- vocabulary: `OBJECT_KINDS`, `COLOURS`, `COLOUR_RGB`, `THEMES`, `KIND_THEME`, `TEMPLATE_SETS`,
  `AFFIRMATIVE_FRAMES`, `NEGATION_TEMPLATES` (name -> `NegationTemplate`), `MCQ_PHRASES` (NegBench's
  question types `MCQ_GROUPS`), per template set; `phrasing_fingerprint()` (a hash of them all);
- co-occurrence: `COOCCURRENCE` (pairwise affinity table), `next_kind_probabilities(present_kinds)`
  = P(kind | present kinds), `dominant_theme(present_kinds)`, `plausible_absent(present_kinds, rng)`;
- scenes: `SceneObject`, `sample_scene(rng)`, `add_object(objects, kind, rng)`,
  `render_scene(objects, image_size=64, seed=None)`, `encode_scene(objects, seed, image_size)` /
  `decode_scene(text)` (the dataset's `scene` column), `scene_kinds(objects)`;
- captions: `Mention`, `Caption`, `choose_mentions(objects, rng)`, `full_mentions(objects)`,
  `affirmative_caption(mentions, template_set, rng)`, `negated_caption(mentions, negated_kind,
  template_set, rng)`, `presence_negated_caption(affirmative, present_kind, rng)`,
  `absence_negated_caption(affirmative, absent_kind, rng)`, `affirmed_twin(negated)`;
  pretraining: `pretrain_caption(objects, rng)` (the text of `draw_pretrain_caption`, a
  `PretrainCaption` that names its phrasing), `pretrain_phrasings()` (every phrasing it draws from);
  `Caption.holds_for(objects)` says whether a caption is true of a scene;
- the dataset: `build_world(num_train, num_validation, num_test, seed, image_size, progress,
  statement_rate)`, `world_row(split, index, seed, image_size)` (one row), `world_statement_row(row,
  seed, statement_rate)` (a training row's extra statement row), `WORLD_FEATURES` (its columns).

Every random choice takes a `random.Random`; the same seed gives a byte-identical dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import datasets
import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from omninegclip.building.rewrite import STATEMENT_AFFIRMS, STATEMENT_NEGATES, STATEMENT_RATE, statement_row

# ----- vocabulary --------------------------------------------------------------------------------

# Every kind and colour word is one token of the openai CLIP tokenizer (checked in the tests).
THEMES: dict[str, tuple[str, ...]] = {
    "geometry": ("circle", "square", "triangle"),
    "sky": ("star", "moon", "cloud"),
    "symbols": ("heart", "diamond", "cross", "arrow"),
}
OBJECT_KINDS: tuple[str, ...] = tuple(kind for kinds in THEMES.values() for kind in kinds)
KIND_THEME: dict[str, str] = {kind: theme for theme, kinds in THEMES.items() for kind in kinds}

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "blue": (31, 90, 220),
    "green": (34, 150, 52),
    "yellow": (236, 188, 0),
    "purple": (132, 52, 182),
    "orange": (246, 120, 14),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)

MIN_OBJECTS, MAX_OBJECTS = 1, 4
_OBJECT_COUNT_WEIGHTS = (0.15, 0.35, 0.30, 0.20)  # P(1..4 objects)
_MIN_SIZE, _MAX_SIZE = 0.22, 0.32  # side of an object's bounding square, as a fraction of the image
_MARGIN = 0.02  # free border of the image
_GAP = 0.015  # least free space between two objects' bounding squares

# ----- co-occurrence -----------------------------------------------------------------------------

SAME_THEME_AFFINITY = 1.0
CROSS_THEME_AFFINITY = 0.1
# COOCCURRENCE[a][b]: how readily kind b joins a scene that holds kind a. A scene is drawn one
# object at a time, P(next = k | present) proportional to the product of COOCCURRENCE[p][k].
COOCCURRENCE: dict[str, dict[str, float]] = {
    a: {b: (SAME_THEME_AFFINITY if KIND_THEME[a] == KIND_THEME[b] else CROSS_THEME_AFFINITY) for b in OBJECT_KINDS}
    for a in OBJECT_KINDS
}


def next_kind_probabilities(present_kinds: Sequence[str]) -> dict[str, float]:
    """P(kind | present kinds) over the absent kinds: the chance each would be the scene's next object."""
    _check_kinds(present_kinds)
    weights = {
        kind: math.prod(COOCCURRENCE[present][kind] for present in present_kinds)
        for kind in OBJECT_KINDS
        if kind not in present_kinds
    }
    total = sum(weights.values())
    return {kind: weight / total for kind, weight in weights.items()}


def dominant_theme(present_kinds: Sequence[str]) -> str:
    """The theme most present kinds belong to (ties: the theme of the earliest such kind)."""
    _check_kinds(present_kinds)
    if not present_kinds:
        raise ValueError("a scene without objects has no theme")
    counts = {theme: sum(KIND_THEME[kind] == theme for kind in present_kinds) for theme in THEMES}
    best = max(counts.values())
    return next(KIND_THEME[kind] for kind in present_kinds if counts[KIND_THEME[kind]] == best)


def plausible_absent(present_kinds: Sequence[str], rng: random.Random) -> str:
    """An absent kind that plausibly could have been there: from the scene's dominant theme, drawn
    with probability P(kind | present kinds). When that theme is all present, the absent kinds of
    highest P(kind | present kinds) are the candidates."""
    probabilities = next_kind_probabilities(present_kinds)
    theme = dominant_theme(present_kinds)
    candidates = [kind for kind in probabilities if KIND_THEME[kind] == theme]
    if not candidates:
        best = max(probabilities.values())
        candidates = [kind for kind, probability in probabilities.items() if probability >= best * (1 - 1e-9)]
    return rng.choices(candidates, weights=[probabilities[kind] for kind in candidates])[0]


def _check_kinds(kinds: Sequence[str]) -> None:
    unknown = [kind for kind in kinds if kind not in KIND_THEME]
    if unknown:
        raise ValueError(f"unknown object kinds {unknown}; known: {list(OBJECT_KINDS)}")


# ----- scenes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One object: its kind and colour, its centre (x, y) and the side of its bounding square (size),
    all three as fractions of the image side (y grows downwards)."""

    kind: str
    colour: str
    x: float
    y: float
    size: float

    def __post_init__(self):
        if self.kind not in KIND_THEME:
            raise ValueError(f"SceneObject kind {self.kind!r} is not one of {list(OBJECT_KINDS)}")
        if self.colour not in COLOUR_RGB:
            raise ValueError(f"SceneObject colour {self.colour!r} is not one of {list(COLOURS)}")
        if not 0 < self.size <= 1:
            raise ValueError(f"SceneObject size must be in (0, 1], got {self.size}")
        half = self.size / 2
        if not (half <= self.x <= 1 - half and half <= self.y <= 1 - half):
            raise ValueError(f"SceneObject at ({self.x}, {self.y}) with size {self.size} does not fit in the image")


def scene_kinds(objects: Sequence[SceneObject]) -> list[str]:
    return [obj.kind for obj in objects]


def _fits(x: float, y: float, size: float, objects: Sequence[SceneObject]) -> bool:
    # Bounding squares apart by at least _GAP along x or along y: objects never touch.
    return all(
        abs(x - other.x) >= (size + other.size) / 2 + _GAP or abs(y - other.y) >= (size + other.size) / 2 + _GAP
        for other in objects
    )


def _place(
    kind: str, colour: str, size: float, objects: Sequence[SceneObject], rng: random.Random, tries: int = 60
) -> SceneObject | None:
    low, high = _MARGIN + size / 2, 1 - _MARGIN - size / 2
    for _ in range(tries):
        x, y = round(rng.uniform(low, high), 4), round(rng.uniform(low, high), 4)
        if _fits(x, y, size, objects):
            return SceneObject(kind, colour, x, y, size)
    return None


def sample_scene(rng: random.Random) -> list[SceneObject]:
    """1-4 objects of distinct kinds and distinct colours that do not overlap; kinds drawn one at a
    time with `next_kind_probabilities`, so a scene mostly keeps to one theme."""
    count = rng.choices(range(MIN_OBJECTS, MAX_OBJECTS + 1), weights=_OBJECT_COUNT_WEIGHTS)[0]
    kinds = [rng.choice(OBJECT_KINDS)]
    while len(kinds) < count:
        probabilities = next_kind_probabilities(kinds)
        kinds.append(rng.choices(list(probabilities), weights=list(probabilities.values()))[0])
    colours = rng.sample(COLOURS, count)
    while True:  # rarely more than once: four objects of at most 0.32 fit easily
        objects: list[SceneObject] = []
        for kind, colour in zip(kinds, colours):
            placed = _place(kind, colour, round(rng.uniform(_MIN_SIZE, _MAX_SIZE), 3), objects, rng)
            if placed is None:
                break
            objects.append(placed)
        if len(objects) == count:
            return objects


def add_object(
    objects: Sequence[SceneObject], kind: str, rng: random.Random, colour: str | None = None
) -> list[SceneObject]:
    """The scene with one more object of `kind` (a colour no other object has, unless given) placed
    where it overlaps nothing; the other objects stay exactly as they were. Raises ValueError if
    `kind` is already present or there is no room."""
    _check_kinds([kind])
    if kind in scene_kinds(objects):
        raise ValueError(f"the scene already holds a {kind}")
    if colour is None:
        used = {obj.colour for obj in objects}
        colour = rng.choice([name for name in COLOURS if name not in used] or list(COLOURS))
    for size in (round(rng.uniform(_MIN_SIZE, _MAX_SIZE), 3), _MIN_SIZE, 0.18):
        placed = _place(kind, colour, size, objects, rng, tries=200)
        if placed is not None:
            return [*objects, placed]
    raise ValueError(f"no room for a {kind} in a scene of {len(objects)} objects")


def encode_scene(objects: Sequence[SceneObject], seed: int | None, image_size: int = 64) -> str:
    """The dataset's `scene` column: JSON with the objects, the background seed and the image size."""
    return json.dumps(
        {"image_size": image_size, "seed": seed, "objects": [asdict(obj) for obj in objects]}, sort_keys=True
    )


def decode_scene(text: str) -> tuple[list[SceneObject], int | None, int]:
    """(objects, background seed, image size) from a `scene` column value; `render_scene(*...)` redraws it."""
    data = json.loads(text)
    return [SceneObject(**obj) for obj in data["objects"]], data["seed"], data["image_size"]


# ----- drawing -----------------------------------------------------------------------------------

_SUPERSAMPLE = 4  # draw at 4x and box-downsample: smooth edges at 64 px


def _unit_polygon(points: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Scale a polygon to fill the unit square centred on 0 (extent 1 along its longer side)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    extent = max(max(xs) - min(xs), max(ys) - min(ys))
    return tuple(((px - cx) / extent, (py - cy) / extent) for px, py in points)


def _star() -> tuple[tuple[float, float], ...]:
    return _unit_polygon(
        [
            (
                math.sin(i * math.pi / 5) * (1 if i % 2 == 0 else 0.42),
                -math.cos(i * math.pi / 5) * (1 if i % 2 == 0 else 0.42),
            )
            for i in range(10)
        ]
    )


def _heart() -> tuple[tuple[float, float], ...]:
    steps = [2 * math.pi * i / 48 for i in range(48)]
    return _unit_polygon(
        [
            (16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
            for t in steps
        ]
    )


def _crescent() -> tuple[tuple[float, float], ...]:
    # The unit disc minus the unit disc shifted right by `shift`: outer arc on the left, inner arc back.
    shift = 0.62
    outer_start = math.acos(shift / 2)
    inner_start = math.acos(-shift / 2)
    outer = [outer_start + (2 * math.pi - 2 * outer_start) * i / 32 for i in range(33)]
    inner = [(2 * math.pi - inner_start) - (2 * math.pi - 2 * inner_start) * i / 24 for i in range(25)]
    return _unit_polygon(
        [(math.cos(a), math.sin(a)) for a in outer] + [(shift + math.cos(a), math.sin(a)) for a in inner]
    )


def _arrow() -> tuple[tuple[float, float], ...]:
    return _unit_polygon([(0, 0.38), (0.55, 0.38), (0.55, 0.1), (1, 0.5), (0.55, 0.9), (0.55, 0.62), (0, 0.62)])


_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "triangle": _unit_polygon([(0, -1), (0.94, 0.7), (-0.94, 0.7)]),
    "star": _star(),
    "heart": _heart(),
    "diamond": ((0, -0.5), (0.33, 0), (0, 0.5), (-0.33, 0)),
    "cross": _unit_polygon(
        [(-1, -3), (1, -3), (1, -1), (3, -1), (3, 1), (1, 1), (1, 3), (-1, 3), (-1, 1), (-3, 1), (-3, -1), (-1, -1)]
    ),
    "moon": _crescent(),
    "arrow": _arrow(),
}
# A cloud: discs (dx, dy, radius) on a flat base, in units of the bounding square.
_CLOUD_DISCS = ((-0.26, 0.1, 0.2), (0.0, -0.06, 0.27), (0.27, 0.08, 0.21))
_CLOUD_BASE = (-0.26, 0.1, 0.27, 0.3)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, canvas: int) -> None:
    fill = COLOUR_RGB[obj.colour]
    cx, cy, side = obj.x * canvas, obj.y * canvas, obj.size * canvas
    if obj.kind == "circle":
        radius = side * 0.48
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif obj.kind == "square":
        half = side * 0.42
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif obj.kind == "cloud":
        for dx, dy, radius in _CLOUD_DISCS:
            x, y, r = cx + dx * side, cy + dy * side, radius * side
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        left, top, right, bottom = _CLOUD_BASE
        draw.rectangle((cx + left * side, cy + top * side, cx + right * side, cy + bottom * side), fill=fill)
    else:
        draw.polygon([(cx + px * side, cy + py * side) for px, py in _POLYGONS[obj.kind]], fill=fill)


def _background(image_size: int, seed: int | None) -> Image.Image:
    """The pale background at the final resolution (the supersampled canvas repeats each pixel)."""
    if seed is None:
        return Image.new("RGB", (image_size, image_size), (240, 240, 236))
    rng = random.Random(seed)
    grey = rng.uniform(222, 246)
    base = np.array([grey + rng.uniform(-7, 7) for _ in range(3)], dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-0.5, 0.5, image_size, dtype=np.float32)
    # A gentle linear shading (at most ±4%) in a random direction.
    shading = 1 + rng.uniform(0.0, 0.08) * (math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None])
    pixels = np.clip(base[None, None, :] * shading[:, :, None], 0, 255).round().astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def render_scene(objects: Sequence[SceneObject], image_size: int = 64, seed: int | None = None) -> Image.Image:
    """Draw a scene as an RGB image of side `image_size`. `seed` picks the pale background's tint and
    shading (None: plain light grey). Deterministic: the same arguments give the same pixels."""
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    canvas = image_size * _SUPERSAMPLE
    image = _background(image_size, seed).resize((canvas, canvas), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw_object(draw, obj, canvas)
    return image.reduce(_SUPERSAMPLE)


# ----- captions ----------------------------------------------------------------------------------

TEMPLATE_SETS: tuple[str, ...] = ("train", "heldout")

# An affirmative caption is a frame (a prefix) followed by the mentioned objects.
AFFIRMATIVE_FRAMES: dict[str, tuple[str, ...]] = {
    "train": ("", "a picture of ", "an image of ", "a drawing of ", "a sketch of "),
    "heldout": ("this scene contains ", "we can see ", "a rendering of "),
}


@dataclass(frozen=True)
class NegationTemplate:
    """How to negate an object after (or around) the affirmed mentions. Placeholders: {frame},
    {mentions} ("a red circle and a star"), {kind} ("heart"), {a_kind} ("a heart").
    `alone` is the form when nothing else is mentioned (None: the template needs mentions).
    `affirmed` / `affirmed_alone`: the same words with the object affirmed instead ("… and no heart"
    -> "… and a heart"), the false twin of an absence negation (`affirmed_twin`)."""

    name: str
    with_mentions: str
    alone: str | None
    affirmed: str
    affirmed_alone: str | None


NEGATION_TEMPLATES: dict[str, dict[str, NegationTemplate]] = {
    "train": {
        template.name: template
        for template in (
            NegationTemplate(
                "and_no", "{frame}{mentions} and no {kind}", "no {kind}", "{frame}{mentions} and {a_kind}", "{a_kind}"
            ),
            NegationTemplate(
                "with_no",
                "{frame}{mentions}, with no {kind}",
                "a picture with no {kind}",
                "{frame}{mentions}, with {a_kind}",
                "a picture with {a_kind}",
            ),
            NegationTemplate(
                "but_no", "{frame}{mentions} but no {kind}", None, "{frame}{mentions} but also {a_kind}", None
            ),
            NegationTemplate(
                "without",
                "{frame}{mentions} without {a_kind}",
                "a picture without {a_kind}",
                "{frame}{mentions} with {a_kind}",
                "a picture with {a_kind}",
            ),
            NegationTemplate(
                "but_not", "{frame}{mentions}, but not {a_kind}", None, "{frame}{mentions}, and also {a_kind}", None
            ),
            NegationTemplate(
                "there_is_no",
                "there is no {kind} next to {mentions}",
                "there is no {kind}",
                "there is {a_kind} next to {mentions}",
                "there is {a_kind}",
            ),
        )
    },
    "heldout": {
        template.name: template
        for template in (
            NegationTemplate(
                "lacking",
                "{frame}{mentions}, lacking {a_kind}",
                "a scene lacking {a_kind}",
                "{frame}{mentions}, including {a_kind}",
                "a scene including {a_kind}",
            ),
            NegationTemplate(
                "free_of",
                "{frame}{mentions}, free of any {kind}",
                "a scene free of any {kind}",
                "{frame}{mentions}, plus {a_kind}",
                "a scene with {a_kind}",
            ),
            NegationTemplate(
                "minus", "{frame}{mentions}, minus any {kind}", None, "{frame}{mentions}, plus {a_kind}", None
            ),
            NegationTemplate(
                "missing",
                "{frame}{mentions}, with the {kind} missing",
                "a scene with the {kind} missing",
                "{frame}{mentions}, with the {kind} there",
                "a scene with the {kind} there",
            ),
            NegationTemplate(
                "absent",
                "{frame}{mentions}; {a_kind} is absent",
                "{a_kind} is absent from this scene",
                "{frame}{mentions}; {a_kind} is there",
                "{a_kind} is in this scene",
            ),
            NegationTemplate(
                "nowhere",
                "{frame}{mentions}, and nowhere is there {a_kind}",
                "nowhere is there {a_kind}",
                "{frame}{mentions}, and somewhere there is {a_kind}",
                "somewhere there is {a_kind}",
            ),
        )
    },
}

# NegBench's three question types, phrased per template set: (affirmation, negation, hybrid); the
# evaluation's MCQ (eval/world.py) asks them, pretraining captions use them as noise.
MCQ_GROUPS: tuple[str, ...] = ("affirmation", "negation", "hybrid")
MCQ_PHRASES: dict[str, tuple[str, str, str]] = {
    "train": (
        STATEMENT_AFFIRMS,
        STATEMENT_NEGATES,
        "This image shows {x} but not {y}.",
    ),  # the statement family's words
    "heldout": ("This image contains {x}.", "This image lacks {x}.", "This image contains {x} but lacks {y}."),
}

COLOUR_MENTION_RATE = 0.5  # how often a mention names the object's colour
PRETRAIN_NEGATION_RATE = 0.3  # how often a template pretraining caption carries an (uninformative) negation
PRETRAIN_MCQ_RATE = 0.15  # how often a pretraining caption is an MCQ phrasing instead


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


@dataclass(frozen=True)
class Mention:
    """An object named in a caption, with its colour or without (colour=None)."""

    kind: str
    colour: str | None = None

    @property
    def phrase(self) -> str:
        return _with_article(f"{self.colour} {self.kind}" if self.colour else self.kind)


@dataclass(frozen=True)
class Caption:
    """A caption and what it says: `mentions` are affirmed, `negated_kind` (if any) is negated;
    `frame` and `template` (the negation template's name) say how it was phrased."""

    text: str
    mentions: tuple[Mention, ...]
    template_set: str
    frame: str
    negated_kind: str | None = None
    template: str | None = None

    def holds_for(self, objects: Sequence[SceneObject]) -> bool:
        """True if the scene has every mentioned object (in its colour, if named) and no negated kind."""
        colour_of = {obj.kind: obj.colour for obj in objects}
        affirmed = all(m.kind in colour_of and m.colour in (None, colour_of[m.kind]) for m in self.mentions)
        return affirmed and self.negated_kind not in colour_of


def _check_template_set(template_set: str) -> None:
    if template_set not in TEMPLATE_SETS:
        raise ValueError(f"template_set must be one of {list(TEMPLATE_SETS)}, got {template_set!r}")


def _list_phrase(mentions: Sequence[Mention]) -> str:
    phrases = [mention.phrase for mention in mentions]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def choose_mentions(
    objects: Sequence[SceneObject],
    rng: random.Random,
    count: int | None = None,
    colour_rate: float = COLOUR_MENTION_RATE,
    exclude: Sequence[str] = (),
) -> list[Mention]:
    """A random subset of the scene's objects (1..all, or `count`; never the kinds in `exclude`), in
    random order, each naming its colour with probability `colour_rate`."""
    candidates = [obj for obj in objects if obj.kind not in exclude]
    if not candidates:
        raise ValueError("no objects left to mention")
    count = rng.randint(1, len(candidates)) if count is None else count
    if not 1 <= count <= len(candidates):
        raise ValueError(f"cannot mention {count} of {len(candidates)} objects")
    return [
        Mention(obj.kind, obj.colour if rng.random() < colour_rate else None) for obj in rng.sample(candidates, count)
    ]


def full_mentions(objects: Sequence[SceneObject]) -> list[Mention]:
    """Every object with its colour, in scene order: the most specific affirmative description."""
    return [Mention(obj.kind, obj.colour) for obj in objects]


def affirmative_caption(
    mentions: Sequence[Mention], template_set: str, rng: random.Random, frame: str | None = None
) -> Caption:
    """ "a picture of a red circle and a star": a random frame of `template_set` around the mentions."""
    _check_template_set(template_set)
    if not mentions:
        raise ValueError("an affirmative caption needs at least one mention")
    frame = rng.choice(AFFIRMATIVE_FRAMES[template_set]) if frame is None else frame
    return Caption(frame + _list_phrase(mentions), tuple(mentions), template_set, frame)


def negated_caption(
    mentions: Sequence[Mention],
    negated_kind: str,
    template_set: str,
    rng: random.Random,
    frame: str | None = None,
    template: str | None = None,
) -> Caption:
    """The mentions affirmed and `negated_kind` negated, e.g. "a red circle and a star but no heart"
    (random template of `template_set` unless named; with no mentions, a template's `alone` form)."""
    _check_template_set(template_set)
    _check_kinds([negated_kind])
    if negated_kind in {mention.kind for mention in mentions}:
        raise ValueError(f"cannot both affirm and negate {negated_kind!r}")
    templates = NEGATION_TEMPLATES[template_set]
    if template is None:
        eligible = [t for t in templates.values() if mentions or t.alone is not None]
        chosen = rng.choice(eligible)
    elif template not in templates:
        raise ValueError(f"unknown {template_set} negation template {template!r}; known: {list(templates)}")
    else:
        chosen = templates[template]
    frame = rng.choice(AFFIRMATIVE_FRAMES[template_set]) if frame is None else frame
    pattern = chosen.with_mentions if mentions else chosen.alone
    if pattern is None:
        raise ValueError(f"negation template {chosen.name!r} needs at least one affirmed mention")
    text = pattern.format(
        frame=frame,
        mentions=_list_phrase(mentions) if mentions else "",
        kind=negated_kind,
        a_kind=_with_article(negated_kind),
    )
    return Caption(text, tuple(mentions), template_set, frame, negated_kind, chosen.name)


def presence_negated_caption(
    affirmative: Caption, present_kind: str, rng: random.Random, template: str | None = None
) -> Caption:
    """Negate a mentioned (hence present) object of an affirmative caption, in the same frame:
    "a red circle and a star" -> "a red circle and no star" / "there is no star next to a red circle"."""
    if present_kind not in {mention.kind for mention in affirmative.mentions}:
        raise ValueError(f"{present_kind!r} is not mentioned in {affirmative.text!r}")
    rest = [mention for mention in affirmative.mentions if mention.kind != present_kind]
    return negated_caption(
        rest, present_kind, affirmative.template_set, rng, frame=affirmative.frame, template=template
    )


def absence_negated_caption(
    affirmative: Caption, absent_kind: str, rng: random.Random, template: str | None = None
) -> Caption:
    """The affirmative caption plus a negated absent object: "a red circle and a star, with no heart"."""
    return negated_caption(
        affirmative.mentions, absent_kind, affirmative.template_set, rng, frame=affirmative.frame, template=template
    )


def affirmed_twin(negated: Caption) -> Caption:
    """The same words with the negated object affirmed: "a star, with no heart" -> "a star, with a
    heart" (true only where the heart is there: the false twin of an absence negation)."""
    if negated.negated_kind is None or negated.template is None:
        raise ValueError(f"{negated.text!r} negates nothing: it has no affirmed twin")
    chosen = NEGATION_TEMPLATES[negated.template_set][negated.template]
    pattern = chosen.affirmed if negated.mentions else chosen.affirmed_alone
    text = pattern.format(
        frame=negated.frame,
        mentions=_list_phrase(negated.mentions) if negated.mentions else "",
        kind=negated.negated_kind,
        a_kind=_with_article(negated.negated_kind),
    )
    return Caption(
        text,
        (*negated.mentions, Mention(negated.negated_kind)),
        negated.template_set,
        negated.frame,
        None,
        chosen.name,
    )


@dataclass(frozen=True)
class PretrainCaption:
    """A pretraining caption, the phrasing it was drawn with ("{set}:frame:{frame}",
    "{set}:template:{name}" or "{set}:mcq:{affirmation|negation|hybrid}") and the kind it negates."""

    text: str
    phrasing: str
    negated_kind: str | None = None


def pretrain_phrasings() -> set[str]:
    """Every phrasing `draw_pretrain_caption` draws from: the affirmative frames, the negation
    templates and the MCQ phrasings of both template sets (what the evaluation uses)."""
    return {
        f"{template_set}:{part}"
        for template_set in TEMPLATE_SETS
        for part in (
            *(f"frame:{frame}" for frame in AFFIRMATIVE_FRAMES[template_set]),
            *(f"template:{name}" for name in NEGATION_TEMPLATES[template_set]),
            *(f"mcq:{group}" for group in MCQ_GROUPS),
        )
    }


def _negated_present_or_absent(objects: Sequence[SceneObject], rng: random.Random) -> tuple[str, list[SceneObject]]:
    """A kind to negate, present or absent with equal odds, and the objects left to affirm."""
    kinds = scene_kinds(objects)
    if rng.random() < 0.5:
        negated = rng.choice(kinds)
        return negated, [obj for obj in objects if obj.kind != negated]
    return rng.choice([kind for kind in OBJECT_KINDS if kind not in kinds]), list(objects)


def _pretrain_mcq_caption(objects: Sequence[SceneObject], template_set: str, rng: random.Random) -> PretrainCaption:
    """One of NegBench's phrasings about one or two objects: "This image shows a star.", "… does not
    show a star." (present or absent, equal odds), "… shows a star but not a moon." (the second
    object present or absent, equal odds; a one-object scene gets the negation phrasing instead)."""
    affirm, negate, hybrid = MCQ_PHRASES[template_set]
    group = rng.choice(MCQ_GROUPS if len(objects) > 1 else MCQ_GROUPS[:2])
    if group == "affirmation":
        return PretrainCaption(
            affirm.format(x=Mention(rng.choice(objects).kind).phrase), f"{template_set}:mcq:{group}"
        )
    negated, rest = _negated_present_or_absent(objects, rng)
    if group == "negation":
        return PretrainCaption(negate.format(x=Mention(negated).phrase), f"{template_set}:mcq:{group}", negated)
    shown = rng.choice(rest)
    return PretrainCaption(
        hybrid.format(x=Mention(shown.kind).phrase, y=Mention(negated).phrase), f"{template_set}:mcq:{group}", negated
    )


def draw_pretrain_caption(objects: Sequence[SceneObject], rng: random.Random) -> PretrainCaption:
    """A caption for the plain-CLIP pretraining that stands in for "pretrained CLIP", phrased with
    any phrasing the evaluation uses (either template set, or an MCQ phrasing with probability
    PRETRAIN_MCQ_RATE), as web captions carry "without", "lacking" and "free of": a mentioned
    subset, and with probability PRETRAIN_NEGATION_RATE a negation of a present or an absent object
    with equal odds, so every negation phrasing is familiar but carries no information."""
    template_set = rng.choice(TEMPLATE_SETS)
    if rng.random() < PRETRAIN_MCQ_RATE:
        return _pretrain_mcq_caption(objects, template_set, rng)
    if rng.random() >= PRETRAIN_NEGATION_RATE:
        caption = affirmative_caption(choose_mentions(objects, rng), template_set, rng)
        return PretrainCaption(caption.text, f"{template_set}:frame:{caption.frame}")
    negated, rest = _negated_present_or_absent(objects, rng)
    if len(rest) == len(objects):  # an absent kind: the whole scene stays available to mention
        mentions = choose_mentions(rest, rng)
    else:
        mentions = choose_mentions(rest, rng) if rest and rng.random() < 0.8 else []
    caption = negated_caption(mentions, negated, template_set, rng)
    return PretrainCaption(caption.text, f"{template_set}:template:{caption.template}", negated)


def pretrain_caption(objects: Sequence[SceneObject], rng: random.Random) -> str:
    """The text of `draw_pretrain_caption`: the world's `pretrain_caption` column."""
    return draw_pretrain_caption(objects, rng).text


def phrasing_fingerprint() -> str:
    """A short hash of every table the world's captions are drawn from (frames, negation templates,
    MCQ phrasings, the caption rates): caches of a world or of a model pretrained on it key on it,
    so a changed phrasing never reuses a stale world."""
    tables = {
        "frames": AFFIRMATIVE_FRAMES,
        "mcq": MCQ_PHRASES,
        "templates": {name: [asdict(t) for t in templates.values()] for name, templates in NEGATION_TEMPLATES.items()},
        "rates": [
            COLOUR_MENTION_RATE,
            PRETRAIN_NEGATION_RATE,
            PRETRAIN_MCQ_RATE,
            ONE_NEGATION_RATE,
            MATCHED_PAIR_RATE,
        ],
    }
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()[:16]


# ----- the dataset -------------------------------------------------------------------------------

ONE_NEGATION_RATE = 0.1  # rows that carry only one of the two negations (half each), as mixed real data does
MATCHED_PAIR_RATE = 0.5  # rows whose absence caption mirrors their presence caption (see world_row)

WORLD_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "presence_negated": datasets.Value("string"),
        "absence_negated": datasets.Value("string"),
        "absence_affirmed": datasets.Value("string"),
        "pretrain_caption": datasets.Value("string"),
        "present_objects": datasets.List(datasets.Value("string")),
        "negated_object": datasets.Value("string"),
        "absent_object": datasets.Value("string"),
        "presence_rewrite": datasets.Value("string"),
        "absence_rewrite": datasets.Value("string"),
        "scene": datasets.Value("string"),
        "source": datasets.Value("string"),
        "image_id": datasets.Value("string"),
    }
)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def world_row(split: str, index: int, seed: int, image_size: int = 64) -> dict:
    """Row `index` of `split`: a fresh scene, its PNG and its captions ("train" templates; the
    pretraining caption: any phrasing), from an rng seeded by (seed, split, index) alone."""
    rng = random.Random(f"omninegclip-shapes:{seed}:{split}:{index}")
    objects = sample_scene(rng)
    background_seed = rng.getrandbits(32)
    kinds = scene_kinds(objects)
    affirmative = affirmative_caption(choose_mentions(objects, rng), "train", rng)
    carries = rng.choices(
        ("both", "presence", "absence"), weights=(1 - ONE_NEGATION_RATE, ONE_NEGATION_RATE / 2, ONE_NEGATION_RATE / 2)
    )[0]
    presence = absence = None
    if carries in ("both", "presence"):
        presence = presence_negated_caption(affirmative, rng.choice(affirmative.mentions).kind, rng)
    if carries in ("both", "absence"):
        absence = absence_negated_caption(affirmative, plausible_absent(kinds, rng), rng)
    # Half the rows with both negations get a *matched* pair: the absence caption in the presence
    # caption's own words, negating the absent object instead of the present one ("a moon, with
    # no cross" / "a moon, with no star"). Only such a pair shows which object a negation may
    # name; the other half keeps the whole affirmative caption. A separate rng leaves every other
    # column of the row as it was.
    matched_rng = random.Random(f"omninegclip-shapes:{seed}:{split}:{index}:matched")
    if presence is not None and absence is not None and matched_rng.random() < MATCHED_PAIR_RATE:
        rest = [mention for mention in affirmative.mentions if mention.kind != presence.negated_kind]
        absence = negated_caption(
            rest, absence.negated_kind, "train", matched_rng, frame=affirmative.frame, template=presence.template
        )
    texts = {
        "caption": affirmative.text,
        "presence_negated": presence.text if presence else None,
        "absence_negated": absence.text if absence else None,
        "absence_affirmed": affirmed_twin(absence).text if absence else None,
    }
    rewrites = (presence.template if presence else None, absence.template if absence else None)
    return {
        "image": {"bytes": _png_bytes(render_scene(objects, image_size, background_seed)), "path": None},
        **texts,
        "pretrain_caption": pretrain_caption(objects, rng),
        "present_objects": kinds,
        "negated_object": presence.negated_kind if presence else None,
        "absent_object": absence.negated_kind if absence else None,
        "presence_rewrite": rewrites[0],
        "absence_rewrite": rewrites[1],
        "scene": encode_scene(objects, background_seed, image_size),
        "source": "shapes",
        "image_id": f"{split}-{index:06d}",
    }


def world_statement_row(row: dict, seed: int, statement_rate: float) -> dict | None:
    """The extra statement row of a training row (`rewrite.statement_row`, data_builder.py
    --statement_rate), or None. It has no pretraining caption: pretraining skips it and sees each
    scene once."""
    key = f"omninegclip-shapes:{seed}:{row['image_id']}:statement"
    extra = statement_row(row, key, statement_rate, phrase=lambda kind: Mention(kind).phrase)
    return None if extra is None else {**extra, "pretrain_caption": None}


def build_world(
    num_train: int = 16000,
    num_validation: int = 1000,
    num_test: int = 2000,
    seed: int = 0,
    image_size: int = 64,
    progress: bool = True,
    statement_rate: float = STATEMENT_RATE,
) -> datasets.DatasetDict:
    """The world as a DatasetDict with splits train / validation / test (scenes never shared between
    splits; every split captioned with the "train" templates; eval/world.py rephrases the test scenes
    with either template set). Columns: see WORLD_FEATURES. Same arguments => byte-identical data.
    The training split also gets the extra statement rows of `statement_rate` (`world_statement_row`),
    each right after its row; the scenes of validation and test stay one row each."""
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    for split, size in sizes.items():
        if size < 0:
            raise ValueError(f"num_{split} must be >= 0, got {size}")
    bar = tqdm(total=sum(sizes.values()), desc="drawing the shapes world", unit="image", disable=not progress)
    seen_scenes: set[str] = set()
    splits = {}
    for split, size in sizes.items():
        rows = []
        for index in range(size):
            row = world_row(split, index, seed, image_size)
            scene_objects = json.dumps(json.loads(row["scene"])["objects"])
            if (
                scene_objects in seen_scenes
            ):  # continuous positions: never seen in practice, but splits must be disjoint
                raise RuntimeError(f"scene of {row['image_id']} repeats an earlier scene; try another seed")
            seen_scenes.add(scene_objects)
            rows.append(row)
            extra = world_statement_row(row, seed, statement_rate) if split == "train" else None
            if extra is not None:
                rows.append(extra)
            bar.update()
        columns = {name: [row[name] for row in rows] for name in WORLD_FEATURES}
        dataset = datasets.Dataset.from_dict(columns, features=WORLD_FEATURES, split=split)
        # A fingerprint from the arguments (not a random one): the saved folder is byte-identical too.
        splits[split] = datasets.Dataset(
            dataset.data,
            info=dataset.info,
            split=dataset.split,
            fingerprint=f"shapes-{seed}-{image_size}-{split}-{size}-{statement_rate}-extra",
        )
    bar.close()
    return datasets.DatasetDict(splits)
