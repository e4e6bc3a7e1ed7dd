"""The object vocabulary: COCO's 80 categories with synonyms and plurals, finding them in captions,
and the category co-occurrence statistics that make an absent object *plausible*.

Public surface:
- `COCO_CATEGORIES`: the 80 category names, in COCO's order;
- `noun_forms(obj) -> NounForms`: how to write an object (singular / plural / every surface form);
  works for any word, not only COCO categories;
- `canonical_category(word) -> str | None`: "puppies" -> "dog", "sofa" -> "couch";
- `find_mentions(text, objects=None) -> list[Mention]`: every mention of a category (longest match
  first, so "hot dog" is not a dog and "teddy bear" is not a bear), each marked `negated` when a
  negation cue ("no", "not", "without", ...) governs it;
- `detect_objects(text) -> list[str]`: categories the text asserts (mentions that are not negated);
- `mentions(text, obj) -> bool`: does the text name `obj` (any surface form, negated or not);
- `has_negation_cue(text) -> bool`;
- `CooccurrenceStats`: counts of objects and object pairs over a source's images, and
  `choose_absent(present, exclude, rng)`: a high-P(object | present objects) object that is not present.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Each category: "singular|plural" surface forms; the first pair is how generated text writes it.
_CATEGORY_FORMS: dict[str, list[str]] = {
    "person": [
        "person|people",
        "persons|persons",
        "man|men",
        "woman|women",
        "boy|boys",
        "girl|girls",
        "child|children",
        "kid|kids",
        "guy|guys",
        "lady|ladies",
        "gentleman|gentlemen",
        "adult|adults",
        "baby|babies",
        "toddler|toddlers",
        "teenager|teenagers",
        "player|players",
        "skier|skiers",
        "snowboarder|snowboarders",
        "surfer|surfers",
        "skateboarder|skateboarders",
        "rider|riders",
        "pedestrian|pedestrians",
        "chef|chefs",
        "worker|workers",
        "tourist|tourists",
        "batter|batters",
        "catcher|catchers",
        "umpire|umpires",
        "policeman|policemen",
        "biker|bikers",
        "cyclist|cyclists",
        "athlete|athletes",
        "student|students",
        "mother|mothers",
        "father|fathers",
        "friend|friends",
    ],
    "bicycle": ["bicycle|bicycles", "bike|bikes"],
    "car": ["car|cars", "sedan|sedans", "taxi|taxis", "cab|cabs", "automobile|automobiles", "suv|suvs"],
    "motorcycle": [
        "motorcycle|motorcycles",
        "motorbike|motorbikes",
        "scooter|scooters",
        "moped|mopeds",
        "dirt bike|dirt bikes",
    ],
    "airplane": [
        "airplane|airplanes",
        "plane|planes",
        "aeroplane|aeroplanes",
        "jet|jets",
        "airliner|airliners",
        "jetliner|jetliners",
        "aircraft|aircraft",
    ],
    "bus": ["bus|buses", "bus|busses"],
    "train": ["train|trains", "locomotive|locomotives"],
    "truck": ["truck|trucks", "lorry|lorries", "pickup truck|pickup trucks"],
    "boat": [
        "boat|boats",
        "ship|ships",
        "sailboat|sailboats",
        "canoe|canoes",
        "kayak|kayaks",
        "yacht|yachts",
        "ferry|ferries",
    ],
    "traffic light": [
        "traffic light|traffic lights",
        "stoplight|stoplights",
        "stop light|stop lights",
        "traffic signal|traffic signals",
    ],
    "fire hydrant": ["fire hydrant|fire hydrants", "hydrant|hydrants"],
    "stop sign": ["stop sign|stop signs"],
    "parking meter": ["parking meter|parking meters"],
    "bench": ["bench|benches"],
    "bird": [
        "bird|birds",
        "seagull|seagulls",
        "gull|gulls",
        "pigeon|pigeons",
        "duck|ducks",
        "parrot|parrots",
        "goose|geese",
        "swan|swans",
        "owl|owls",
    ],
    "cat": ["cat|cats", "kitten|kittens", "kitty|kitties"],
    "dog": ["dog|dogs", "puppy|puppies", "pup|pups", "doggy|doggies"],
    "horse": ["horse|horses", "pony|ponies", "foal|foals"],
    "sheep": ["sheep|sheep", "lamb|lambs"],
    "cow": ["cow|cows", "cattle|cattle", "bull|bulls", "calf|calves", "ox|oxen"],
    "elephant": ["elephant|elephants"],
    "bear": ["bear|bears"],
    "zebra": ["zebra|zebras"],
    "giraffe": ["giraffe|giraffes"],
    "backpack": ["backpack|backpacks", "rucksack|rucksacks"],
    "umbrella": ["umbrella|umbrellas", "parasol|parasols"],
    "handbag": ["handbag|handbags", "purse|purses"],
    "tie": ["tie|ties", "necktie|neckties", "bow tie|bow ties"],
    "suitcase": ["suitcase|suitcases", "luggage|luggage"],
    "frisbee": ["frisbee|frisbees"],
    "skis": ["pair of skis|skis", "ski|skis"],
    "snowboard": ["snowboard|snowboards"],
    "sports ball": [
        "ball|balls",
        "soccer ball|soccer balls",
        "tennis ball|tennis balls",
        "basketball|basketballs",
        "volleyball|volleyballs",
    ],
    "kite": ["kite|kites"],
    "baseball bat": ["baseball bat|baseball bats", "bat|bats"],
    "baseball glove": ["baseball glove|baseball gloves", "baseball mitt|baseball mitts", "mitt|mitts"],
    "skateboard": ["skateboard|skateboards", "skate board|skate boards"],
    "surfboard": ["surfboard|surfboards", "surf board|surf boards"],
    "tennis racket": ["tennis racket|tennis rackets", "racket|rackets", "racquet|racquets"],
    "bottle": ["bottle|bottles"],
    "wine glass": ["wine glass|wine glasses", "wineglass|wineglasses"],
    "cup": ["cup|cups", "mug|mugs"],
    "fork": ["fork|forks"],
    "knife": ["knife|knives"],
    "spoon": ["spoon|spoons"],
    "bowl": ["bowl|bowls"],
    "banana": ["banana|bananas"],
    "apple": ["apple|apples"],
    "sandwich": ["sandwich|sandwiches"],
    "orange": ["orange|oranges"],
    "broccoli": ["broccoli|broccoli"],
    "carrot": ["carrot|carrots"],
    "hot dog": ["hot dog|hot dogs", "hotdog|hotdogs"],
    "pizza": ["pizza|pizzas"],
    "donut": ["donut|donuts", "doughnut|doughnuts"],
    "cake": ["cake|cakes", "cupcake|cupcakes"],
    "chair": ["chair|chairs"],
    "couch": ["couch|couches", "sofa|sofas", "loveseat|loveseats"],
    "potted plant": ["potted plant|potted plants", "houseplant|houseplants", "plant|plants"],
    "bed": ["bed|beds"],
    "dining table": ["table|tables", "dining table|dining tables"],
    "toilet": ["toilet|toilets"],
    "tv": ["television|televisions", "tv|tvs"],
    "laptop": ["laptop|laptops"],
    "mouse": ["computer mouse|computer mice", "mouse|mice"],
    "remote": ["remote|remotes", "remote control|remote controls"],
    "keyboard": ["keyboard|keyboards"],
    "cell phone": [
        "cell phone|cell phones",
        "cellphone|cellphones",
        "phone|phones",
        "smartphone|smartphones",
        "mobile phone|mobile phones",
    ],
    "microwave": ["microwave|microwaves"],
    "oven": ["oven|ovens", "stove|stoves"],
    "toaster": ["toaster|toasters"],
    "sink": ["sink|sinks"],
    "refrigerator": ["refrigerator|refrigerators", "fridge|fridges"],
    "book": ["book|books"],
    "clock": ["clock|clocks"],
    "vase": ["vase|vases"],
    "scissors": ["pair of scissors|scissors"],
    "teddy bear": ["teddy bear|teddy bears", "teddy|teddies"],
    "hair drier": ["hair dryer|hair dryers", "hair drier|hair driers", "blow dryer|blow dryers"],
    "toothbrush": ["toothbrush|toothbrushes"],
}

COCO_CATEGORIES: tuple[str, ...] = tuple(_CATEGORY_FORMS)

# Mass nouns: "no broccoli", never "a broccoli".
UNCOUNTABLE = frozenset({"broccoli", "luggage", "cattle"})

NEGATION_CUES = frozenset(
    {"no", "not", "without", "never", "none", "nor", "neither", "nobody", "nothing", "lacking", "n't", "cannot"}
)
# Words after which an ambiguous adjective ("an orange cat", "a remote island") is still a noun.
_NOUN_FOLLOWERS = frozenset(
    {
        "and",
        "or",
        "with",
        "on",
        "in",
        "of",
        "at",
        "by",
        "is",
        "are",
        "was",
        "sitting",
        "lying",
        "next",
        "near",
        "beside",
        "for",
        "to",
        "from",
        "that",
        "which",
    }
)
_AMBIGUOUS_ADJECTIVES = frozenset({"orange", "remote"})
# Tokens that end the reach of a negation cue ("no dogs and a cat": the cat is asserted).
_CLAUSE_BREAKS = frozenset(
    {",", ";", ":", ".", "!", "?", "and", "but", "while", "whereas", "although", "yet", "just", "only"}
)
NEGATION_WINDOW = 4

_TOKEN = re.compile(r"n't|\w+|[^\w\s]")


@dataclass(frozen=True)
class NounForms:
    """How to write an object: `singular` and `plural` for generated text; `surface` every form to find."""

    singular: str
    plural: str
    surface: tuple[str, ...]
    countable: bool = True


@dataclass(frozen=True)
class Mention:
    category: str  # COCO category (or the free object searched for)
    start: int
    end: int
    text: str  # as written in the text
    plural: bool
    negated: bool  # a negation cue governs it ("no dogs", "not riding a horse", "without an umbrella")


def _normalize(word: str) -> str:
    return " ".join(word.lower().replace("-", " ").split())


@functools.lru_cache(maxsize=1)
def _surface_index() -> dict[str, tuple[str, bool]]:
    """surface form -> (category, is_plural); singular wins when a form is both ("sheep")."""
    index: dict[str, tuple[str, bool]] = {}
    for category, pairs in _CATEGORY_FORMS.items():
        for pair in pairs:
            singular, plural = pair.split("|")
            index.setdefault(plural, (category, plural != singular))
            index[singular] = (category, False)
    return index


def _pluralize(word: str) -> str:
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


@functools.lru_cache(maxsize=4096)
def noun_forms(obj: str) -> NounForms:
    """Forms of a COCO category (by its name or any surface form), or of any other noun ("hat" -> "hats")."""
    category = canonical_category(obj)
    if category is not None:
        singular, plural = _CATEGORY_FORMS[category][0].split("|")
        surface = tuple(form for pair in _CATEGORY_FORMS[category] for form in pair.split("|"))
        return NounForms(singular, plural, tuple(dict.fromkeys(surface)), countable=category not in UNCOUNTABLE)
    word = _normalize(obj)
    plural = _pluralize(word) if word else word
    return NounForms(word, plural, tuple(dict.fromkeys(form for form in (word, plural) if form)))


def canonical_category(word: str) -> str | None:
    """The COCO category a word names ("puppies" -> "dog", "dining table" -> "dining table"), else None."""
    word = _normalize(word)
    if word in _CATEGORY_FORMS:
        return word
    found = _surface_index().get(word)
    return found[0] if found else None


def _compile(forms: Iterable[str]) -> re.Pattern:
    alternatives = sorted(set(forms), key=lambda form: (-len(form), form))
    body = "|".join(r"[\s-]+".join(re.escape(part) for part in form.split()) for form in alternatives)
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def _vocabulary_pattern() -> re.Pattern:
    return _compile(_surface_index())


@functools.lru_cache(maxsize=1024)
def _free_pattern(obj: str) -> re.Pattern:
    return _compile(noun_forms(obj).surface)


def _is_negated(text: str, start: int) -> bool:
    """A negation cue among the few tokens before `start`, with no clause break in between."""
    tokens = _TOKEN.findall(text[:start].lower())
    for token in reversed(tokens[-NEGATION_WINDOW:]):
        if token in NEGATION_CUES:
            return True
        if token in _CLAUSE_BREAKS:
            return False
    return False


def _used_as_adjective(text: str, end: int) -> bool:
    following = re.match(r"\s+([A-Za-z]+)", text[end:])
    return following is not None and following.group(1).lower() not in _NOUN_FOLLOWERS


def find_mentions(text: str, objects: Sequence[str] | None = None) -> list[Mention]:
    """Mentions of COCO categories (or, with `objects`, of those objects only), left to right."""
    if not isinstance(text, str) or not text:
        return []
    targets = None if objects is None else {canonical_category(obj) or _normalize(obj) for obj in objects}
    found: list[Mention] = []
    index = _surface_index()
    for match in _vocabulary_pattern().finditer(text):
        written = match.group(0)
        category, plural = index[_normalize(written)]
        if written.lower() in _AMBIGUOUS_ADJECTIVES and _used_as_adjective(text, match.end()):
            continue
        if targets is None or category in targets:
            found.append(
                Mention(category, match.start(), match.end(), written, plural, _is_negated(text, match.start()))
            )
    # Objects outside the vocabulary ("hat", "tree") are found by their own forms.
    for obj in sorted(targets or ()):
        if obj in _CATEGORY_FORMS or not obj:
            continue
        for match in _free_pattern(obj).finditer(text):
            plural = _normalize(match.group(0)) != noun_forms(obj).singular
            found.append(
                Mention(obj, match.start(), match.end(), match.group(0), plural, _is_negated(text, match.start()))
            )
    return sorted(found, key=lambda mention: mention.start)


def detect_objects(text: str) -> list[str]:
    """Categories the text asserts (negated mentions left out), sorted."""
    return sorted({mention.category for mention in find_mentions(text) if not mention.negated})


def mentions(text: str, obj: str) -> bool:
    """Does the text name `obj` (a category by any of its forms, or any other noun by itself or its plural)?"""
    return bool(obj) and bool(find_mentions(text, [obj]))


def has_negation_cue(text: str) -> bool:
    return isinstance(text, str) and any(token in NEGATION_CUES for token in _TOKEN.findall(text.lower()))


@dataclass
class CooccurrenceStats:
    """How often each object, and each pair of objects, appears in the images of a source.

    P(b | a) = pair_count[a, b] / object_count[a]. The plausibility of an absent object b for an image
    whose present objects are S is the mean of P(b | a) over a in S (a small share of b's overall
    frequency breaks ties and covers objects never seen together).
    """

    num_images: int = 0
    object_count: Counter = field(default_factory=Counter)
    pair_count: Counter = field(default_factory=Counter)
    _ranked: dict = field(
        default_factory=dict, repr=False, compare=False
    )  # rank_absent's recent answers (the rows of one image ask alike)

    @classmethod
    def from_object_sets(cls, object_sets: Iterable[Iterable[str]]) -> CooccurrenceStats:
        stats = cls()
        for objects in object_sets:
            stats.add_image(objects)
        return stats

    def add_image(self, objects: Iterable[str]) -> None:
        unique = sorted(set(objects))
        self._ranked.clear()
        self.num_images += 1
        self.object_count.update(unique)
        for index, first in enumerate(unique):
            for second in unique[index + 1 :]:
                self.pair_count[first, second] += 1

    def conditional(self, obj: str, given: str) -> float:
        """P(obj present | given present)."""
        if not self.object_count[given]:
            return 0.0
        pair = (obj, given) if obj < given else (given, obj)
        return self.pair_count[pair] / self.object_count[given]

    def plausibility(self, obj: str, present: Sequence[str]) -> float:
        prior = self.object_count[obj] / max(self.num_images, 1)
        if not present:
            return prior
        return sum(self.conditional(obj, given) for given in present) / len(present) + 1e-3 * prior

    def rank_absent(self, present: Sequence[str], exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """Objects seen in the source, neither present nor excluded, most plausible first (ties by name)."""
        key = (tuple(present), frozenset(exclude))
        if key not in self._ranked:
            if (
                len(self._ranked) >= 1024
            ):  # rows of one image come together: a small cache suffices, memory stays bounded
                self._ranked.clear()
            banned = set(present) | set(exclude)
            scored = [(obj, self.plausibility(obj, present)) for obj in self.object_count if obj not in banned]
            self._ranked[key] = sorted((item for item in scored if item[1] > 0), key=lambda item: (-item[1], item[0]))
        return list(self._ranked[key])

    def choose_absent(
        self, present: Sequence[str], rng: random.Random, exclude: Iterable[str] = (), top_k: int = 5
    ) -> str | None:
        """One of the `top_k` most plausible absent objects, drawn in proportion to plausibility; None if none."""
        ranked = self.rank_absent(present, exclude)[:top_k]
        if not ranked:
            return None
        return rng.choices([obj for obj, _ in ranked], weights=[score for _, score in ranked], k=1)[0]
