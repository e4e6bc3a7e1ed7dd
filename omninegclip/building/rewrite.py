"""Caption rewriters that negate one object, and the checks every negated caption must pass.

Two kinds of negation (docs/method.md):
- *presence* negation negates an object that IS in the image, so the new caption is false for it:
  "a dog on a couch" -> "no dog on a couch" / "there is no dog on a couch";
  "a man riding a horse" -> "a man not riding a horse"; "a man with an umbrella" -> "a man without an
  umbrella"; an object the caption does not name is negated in a clause: "a kitchen, but there is no oven";
- *absence* negation adds a negated object that is NOT in the image, so the caption stays true:
  "a dog on a couch, with no cats around" / "a dog, not a cat, on a couch" / "no cats, just a dog on a couch".

Public surface:
- `Rewrite(text, name)`: a rewritten caption and the template that made it (a tuple: `text, name = ...`);
- `presence_negate(caption, obj, rng, keep=None) -> Rewrite | None` and
  `absence_negate(caption, absent_obj, rng, keep=None) -> Rewrite | None`: pure and deterministic given
  the `random.Random`; `obj` is a COCO category ("dog", matched in the caption by any synonym or plural,
  "puppies") or any other noun ("hat"). None when no template gives a valid rewrite (empty caption,
  an absent object the caption already asserts, a presence object the caption names twice, ...).
  Every returned text names the object under a negation cue, never also outside one, and differs
  from the caption; any unicode string is accepted. `keep(text)`, when
  given, must also accept the text (the builder passes "the text encoder still sees the negation");
- `absence_affirm(caption, absent_obj) -> str`: the false twin of an absence negation, the caption
  with the absent object affirmed ("a dog on a couch" -> "a dog on a couch, with a cat");
- `statements(present_obj, absent_obj) -> dict`: the statement family (`data_builder.py
  --statement_rate`): the four texts of a row's extra statement row, caption-free statements in
  NegBench's multiple-choice form ("This image (does not) show(s) a dog.");
- `PRESENCE_TEMPLATES`, `ABSENCE_TEMPLATES`: the template names;
- `presence_problem(caption, text, obj, present_objects)` / `absence_problem(...)`: the quality gate
  for one row, None when the negation is good, else the reason ("object_not_mentioned", ...); a
  presence negation that negates one mention of its object and still affirms another ("no dog and
  another dog near a cat") fails as "object_still_affirmed"; with `strict=True` also that the
  negation governs the object (what the rewriters and the LLM check);
- `LLMRewriter`: the optional rewriter backed by a text-generation model (any callable
  prompt -> text, or `LLMRewriter.from_pretrained(model_id)`, which never runs a repository's own
  code: `trust_remote_code=False`); its outputs pass the strict check or it returns None, and the
  caller falls back to the rule-based rewrite.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from omninegclip.building.vocabulary import canonical_category, find_mentions, has_negation_cue, mentions, noun_forms

PRESENCE_TEMPLATES = (
    "no_object",
    "there_is_no",
    "with_to_without",
    "not_verb",
    "suffix_with_no",
    "suffix_but_there_is_no",
    "suffix_without_any",
)
ABSENCE_TEMPLATES = ("with_no", "with_no_around", "without_a", "not_apposition", "no_just", "and_there_is_no")

_DETERMINERS = frozenset(
    {
        "a",
        "an",
        "the",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "some",
        "several",
        "many",
        "few",
        "his",
        "her",
        "their",
        "its",
        "my",
        "our",
        "your",
        "this",
        "that",
        "these",
        "those",
        "another",
        "each",
        "every",
        "multiple",
        "numerous",
        "various",
        "any",
        "both",
    }
)
_COLLECTIVES = frozenset(
    {
        "group",
        "couple",
        "pair",
        "herd",
        "flock",
        "bunch",
        "lot",
        "lots",
        "number",
        "pack",
        "team",
        "crowd",
        "family",
        "line",
        "row",
        "pile",
        "stack",
        "set",
    }
)
_PREPOSITIONS = frozenset(
    {
        "on",
        "in",
        "at",
        "of",
        "with",
        "by",
        "near",
        "under",
        "over",
        "behind",
        "beside",
        "next",
        "to",
        "from",
        "into",
        "onto",
        "for",
        "across",
        "through",
        "along",
        "around",
        "inside",
        "outside",
        "above",
        "below",
        "between",
        "against",
        "toward",
        "towards",
        "up",
        "down",
        "off",
        "out",
        "past",
        "as",
        "like",
        "than",
    }
)
# Words that end a noun phrase when walking back from its noun (anything else may be a modifier: "a large brown dog").
_NOT_MODIFIERS = _PREPOSITIONS | {
    "and",
    "or",
    "but",
    "while",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "has",
    "have",
    "had",
    "there",
    "here",
    "who",
    "which",
    "that",
    "it",
    "he",
    "she",
    "they",
    "them",
    "no",
    "not",
    "without",
}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


class Rewrite(NamedTuple):
    text: str
    name: str  # the template (or "llm:<model>") that produced it


@dataclass(frozen=True)
class _NounPhrase:
    start: int  # where the phrase (determiner included) starts in the caption
    noun_start: int  # where the words kept after a new determiner start (modifiers, then the noun)
    end: int
    determiner: str  # "" for a bare noun
    plural: bool


def _article(word: str) -> str:
    lowered = word.lower()
    if re.match(r"(uni|use|usu|eu|one|once)", lowered):
        return "a"
    return "an" if re.match(r"[aeiou]|hour|honest", lowered) else "a"


def _with_article(obj: str) -> str:
    forms = noun_forms(obj)
    if not forms.countable:
        return f"any {forms.singular}"
    return f"{_article(forms.singular)} {forms.singular}"


def _no_form(obj: str) -> str:
    """What follows "no": the plural of a countable noun, the noun itself for a mass noun."""
    forms = noun_forms(obj)
    return forms.plural if forms.countable else forms.singular


def _clean(caption: str) -> str:
    """One line, no trailing full stop: the caption as the templates embed it."""
    return re.sub(r"[\s.!?。]+$", "", " ".join(caption.split()))


def _lower_first(text: str) -> str:
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def _match_case(template_start: str, original: str) -> str:
    return template_start[0].upper() + template_start[1:] if original[:1].isupper() else template_start


def _words_before(text: str, position: int) -> list[re.Match]:
    return list(_WORD.finditer(text, 0, position))


def _noun_phrase(text: str, start: int, end: int, plural: bool) -> _NounPhrase:
    """The noun phrase ending at a mention: its determiner ("a", "two", "a group of") and modifiers."""
    before = _words_before(text, start)

    # Anything but spaces between two words (a comma, a quote) ends the phrase.
    def adjacent(left: re.Match, right_start: int) -> bool:
        return text[left.end() : right_start].strip() == ""

    position, noun_start = start, start
    for distance, word in enumerate(reversed(before[-4:])):
        if not adjacent(word, position):
            break
        lowered = word.group(0).lower()
        if lowered in _DETERMINERS:
            return _NounPhrase(word.start(), position, end, lowered, plural)
        if lowered == "of" and len(before) >= distance + 3:
            quantity, article = before[-distance - 2], before[-distance - 3]
            if (
                quantity.group(0).lower() in _COLLECTIVES
                and article.group(0).lower() in _DETERMINERS
                and adjacent(article, quantity.start())
            ):
                return _NounPhrase(article.start(), position, end, "a " + quantity.group(0).lower() + " of", True)
        if lowered in _NOT_MODIFIERS or find_mentions(word.group(0)):
            break
        position = word.start()
        if not lowered.endswith("ing"):
            noun_start = word.start()  # a modifier of a bare noun ("brown dogs")
    if not text[:position].strip():
        noun_start = position  # "sleeping dogs on a bed": every word before the noun modifies it
    return _NounPhrase(noun_start, noun_start, end, "", plural)


def _presence_in_caption(caption: str, phrase: _NounPhrase, template: str) -> str | None:
    head, words, tail = caption[: phrase.start], caption[phrase.noun_start : phrase.end], caption[phrase.end :]
    if template == "no_object":
        return head + _match_case("no ", caption[phrase.start :]) + words + tail
    if template == "there_is_no":
        if head.strip():
            return None
        verb = "are" if phrase.plural else "is"
        return _match_case(f"there {verb} no ", caption[phrase.start :]) + _lower_first(words) + tail
    before = _words_before(caption, phrase.start)
    if template == "with_to_without":
        if (
            not before
            or before[-1].group(0).lower() != "with"
            or phrase.determiner not in ("", "a", "an", "the", "some", "any", "his", "her", "their", "its")
        ):
            return None
        with_word = before[-1]
        new_determiner = (
            "any " if phrase.determiner == "some" else (phrase.determiner + " " if phrase.determiner else "")
        )
        without = _match_case("without", with_word.group(0))
        return (
            caption[: with_word.start()]
            + without
            + caption[with_word.end() : phrase.start]
            + new_determiner
            + words
            + tail
        )
    if template == "not_verb":
        # "riding a horse" / "sitting on a couch" -> "not riding a horse" / "not sitting on a couch"
        candidates = before[-2:]
        for word in reversed(candidates):
            lowered = word.group(0).lower()
            if lowered.endswith("ing") and len(lowered) > 4:
                between = _WORD.findall(caption[word.end() : phrase.start])
                if all(token.lower() in _PREPOSITIONS for token in between):
                    preceding = _words_before(caption, word.start())
                    if preceding and preceding[-1].group(0).lower() in ("not", "no"):
                        return None
                    return caption[: word.start()] + "not " + caption[word.start() :]
            if lowered not in _PREPOSITIONS:
                break
        return None
    raise ValueError(f"unknown presence template {template!r}; expected one of {PRESENCE_TEMPLATES}")


def _presence_clause(caption: str, obj: str, template: str) -> str:
    forms = noun_forms(obj)
    if template == "suffix_with_no":
        return f"{caption} with no {_no_form(obj)}"
    if template == "suffix_but_there_is_no":
        return f"{caption}, but there is no {forms.singular}"
    if template == "suffix_without_any":
        return f"{caption}, without any {_no_form(obj)}"
    raise ValueError(f"unknown presence template {template!r}; expected one of {PRESENCE_TEMPLATES}")


def _negation_governs(text: str, obj: str) -> bool:
    return any(mention.negated for mention in find_mentions(text, [obj]))


def _still_affirmed(text: str, obj: str) -> bool:
    """One mention of `obj` negated and another not: "no dog and another dog near a cat"."""
    found = find_mentions(text, [obj])
    return any(mention.negated for mention in found) and not all(mention.negated for mention in found)


def presence_negate(
    caption: str, obj: str, rng: random.Random, keep: Callable[[str], bool] | None = None
) -> Rewrite | None:
    """Negate `obj`, an object present in the image; in the caption where the caption names it."""
    if not isinstance(caption, str) or not isinstance(obj, str) or not obj.strip():
        return None
    base = _clean(caption)
    if not base:
        return None
    named = [mention for mention in find_mentions(base, [obj]) if not mention.negated]
    if named:
        mention = named[0]
        phrase = _noun_phrase(base, mention.start, mention.end, mention.plural)
        attempts = [
            (name, lambda name=name: _presence_in_caption(base, phrase, name)) for name in PRESENCE_TEMPLATES[:4]
        ]
    else:
        attempts = [(name, lambda name=name: _presence_clause(base, obj, name)) for name in PRESENCE_TEMPLATES[4:]]
    candidates = {
        name: text
        for name, attempt in attempts
        if (text := attempt())
        and text != caption.strip()
        and _negation_governs(text, obj)
        and not _still_affirmed(text, obj)
    }
    if "not_verb" in candidates:
        candidates.pop("no_object", None)  # "a man not riding a horse", never "a man riding no horse"
    if keep is not None:
        candidates = {name: text for name, text in candidates.items() if keep(text)}
    if not candidates:
        return None
    name = rng.choice(sorted(candidates))
    return Rewrite(candidates[name], name)


def _anchor_end(caption: str) -> tuple[int, bool] | None:
    """End of the first asserted object's noun phrase (for "a dog, not a cat, on a couch"),
    skipping one that an "of" continues ("a bowl of soup" is not split)."""
    for mention in find_mentions(caption):
        if not mention.negated and not re.match(r"\s*(of\b|'s\b|-)", caption[mention.end :], re.IGNORECASE):
            return mention.end, mention.plural
    return None


def _absence_text(caption: str, obj: str, template: str) -> str | None:
    forms = noun_forms(obj)
    if template == "with_no":
        return f"{caption} with no {_no_form(obj)}"
    if template == "with_no_around":
        return f"{caption}, with no {_no_form(obj)} around"
    if template == "without_a":
        return f"{caption}, without {_with_article(obj)}"
    if template == "not_apposition":
        anchor = _anchor_end(caption)
        if anchor is None:
            return None
        end, plural = anchor
        negated = f"not {forms.plural}" if plural and forms.countable else f"not {_with_article(obj)}"
        tail = caption[end:]
        return f"{caption[:end]}, {negated}{',' if tail.strip() else ''}{tail}"
    if template == "no_just":
        return _match_case(f"no {_no_form(obj)}, just ", caption) + _lower_first(caption)
    if template == "and_there_is_no":
        return f"{caption}, and there is no {forms.singular} in sight"
    raise ValueError(f"unknown absence template {template!r}; expected one of {ABSENCE_TEMPLATES}")


def absence_negate(
    caption: str, absent_obj: str, rng: random.Random, keep: Callable[[str], bool] | None = None
) -> Rewrite | None:
    """Add a negated `absent_obj` (an object NOT in the image); None if the caption already names it."""
    if not isinstance(caption, str) or not isinstance(absent_obj, str) or not absent_obj.strip():
        return None
    base = _clean(caption)
    if not base or mentions(base, absent_obj):
        return None
    names = list(ABSENCE_TEMPLATES)
    rng.shuffle(names)
    for name in names:
        text = _absence_text(base, absent_obj, name)
        if (
            text
            and text != caption.strip()
            and _absence_strictly_negated(text, absent_obj)
            and (keep is None or keep(text))
        ):
            return Rewrite(text, name)
    return None


def _a_thing(obj: str) -> str:
    """One of `obj`: "a dog", "an apple", "some rice"."""
    forms = noun_forms(obj)
    return f"{_article(forms.singular)} {forms.singular}" if forms.countable else f"some {forms.singular}"


def absence_affirm(caption: str, absent_obj: str) -> str:
    """The caption with `absent_obj` affirmed: false for the image, the wrong option beside the
    absence negation in a multiple-choice term (a bag of words cannot tell the two apart)."""
    return f"{_clean(caption)}, with {_a_thing(absent_obj)}"


# The statement family: caption-free statements in NegBench's multiple-choice form. The world's MCQ
# (`omninegclip.building.shapes.MCQ_PHRASES`, training phrasings) asks in these words.
STATEMENT_AFFIRMS = "This image shows {x}."
STATEMENT_NEGATES = "This image does not show {x}."


# The share of the training rows with both negations that get an extra statement row, by default, for
# every source and the world (`statement_row`; docs/method.md, the statement family).
STATEMENT_RATE = 0.25


def statement_row(row: dict, key: str, rate: float, phrase: Callable[[str], str] = _a_thing) -> dict | None:
    """The statement family's extra row for `row` (a built row: its texts, `negated_object`,
    `absent_object`): with probability `rate`, drawn from an rng seeded by `key` alone (so the rate
    changes no other choice), a row with both negations gets a copy with its four texts said as
    statements (`statements`) and 'statement' in both `*_rewrite` columns; None otherwise. The row
    itself keeps its caption. `phrase` names one object."""
    if not (row.get("negated_object") and row.get("absent_object")):
        return None
    if random.Random(key).random() >= rate:
        return None
    texts = statements(row["negated_object"], row["absent_object"], phrase=phrase)
    return {**row, **texts, "presence_rewrite": "statement", "absence_rewrite": "statement"}


def statements(present_obj: str, absent_obj: str, phrase: Callable[[str], str] = _a_thing) -> dict[str, str]:
    """A row's four texts as statements, keyed by their columns: each frame once true and once
    false, so that neither "shows" nor "does not show" can be learnt as true or false by itself:
    caption "This image shows a dog." (true), presence_negated "… does not show a dog." (false),
    absence_negated "… does not show a cat." (true), absence_affirmed "… shows a cat." (false).
    `phrase` names one object ("a dog")."""
    return {
        "caption": STATEMENT_AFFIRMS.format(x=phrase(present_obj)),
        "presence_negated": STATEMENT_NEGATES.format(x=phrase(present_obj)),
        "absence_negated": STATEMENT_NEGATES.format(x=phrase(absent_obj)),
        "absence_affirmed": STATEMENT_AFFIRMS.format(x=phrase(absent_obj)),
    }


def _absence_strictly_negated(text: str, obj: str) -> bool:
    found = find_mentions(text, [obj])
    return bool(found) and all(mention.negated for mention in found)


def _same_object(obj: str, objects: Sequence[str]) -> bool:
    key = canonical_category(obj) or " ".join(obj.lower().split())
    return any((canonical_category(other) or " ".join(other.lower().split())) == key for other in objects)


def presence_problem(
    caption: str, text: str | None, obj: str | None, present_objects: Sequence[str], strict: bool = False
) -> str | None:
    """Why a presence-negated caption fails the quality gate (None: it passes)."""
    if not isinstance(text, str) or not text.strip():
        return "empty"
    if not obj:
        return "no_negated_object"
    if text.strip() == (caption or "").strip():
        return "unchanged"
    if not mentions(text, obj):
        return "object_not_mentioned"
    if not _same_object(obj, present_objects):
        return "object_not_present"
    if not has_negation_cue(text):
        return "no_negation_cue"
    if strict and not _negation_governs(text, obj):
        return "object_not_negated"
    if _still_affirmed(text, obj):
        return "object_still_affirmed"  # "no dog and another dog near a cat": still true of the image
    return None


def absence_problem(
    caption: str, text: str | None, obj: str | None, present_objects: Sequence[str], strict: bool = False
) -> str | None:
    """Why an absence-negated caption fails the quality gate (None: it passes)."""
    if not isinstance(text, str) or not text.strip():
        return "empty"
    if not obj:
        return "no_absent_object"
    if text.strip() == (caption or "").strip():
        return "unchanged"
    if not mentions(text, obj):
        return "object_not_mentioned"
    if _same_object(obj, present_objects):
        return "object_present"
    if not has_negation_cue(text):
        return "no_negation_cue"
    if strict and not _absence_strictly_negated(text, obj):
        return "object_asserted"
    return None


_PRESENCE_PROMPT = (
    "Rewrite the image caption so that it says the {obj} is NOT there. Keep the rest of the caption. "
    "Answer with the new caption only.\n"
    "Caption: a dog sleeping on a couch\nObject: dog\nNew caption: there is no dog sleeping on the couch\n"
    "Caption: a man riding a horse on the beach\nObject: horse\nNew caption: a man on the beach, not riding a horse\n"
    "Caption: {caption}\nObject: {obj}\nNew caption:"
)
_ABSENCE_PROMPT = (
    "Add to the image caption that there is no {obj}. Keep the rest of the caption. "
    "Answer with the new caption only.\n"
    "Caption: a dog sleeping on a couch\nObject: cat\nNew caption: a dog sleeping on a couch, with no cat around\n"
    "Caption: a woman riding a horse in a field\nObject: hat\n"
    "New caption: a woman not wearing a hat riding a horse in a field\n"
    "Caption: {caption}\nObject: {obj}\nNew caption:"
)


class LLMRewriter:
    """Negations written by a text-generation model, kept only when they pass the strict quality gate.

    `generate` maps a prompt to the model's continuation. Deterministic when `generate` is (greedy
    decoding in `from_pretrained`). `presence`/`absence` return None when the output fails; the
    caller then uses the rule-based rewrite and counts the fallback.
    """

    def __init__(self, generate: Callable[[str], str], name: str = "llm"):
        self.generate = generate
        self.name = name

    @classmethod
    def from_pretrained(cls, model_id: str, max_new_tokens: int = 40) -> LLMRewriter:
        """Load any Hugging Face text-generation model (Hub id or local folder)."""
        from transformers import pipeline

        generator = pipeline("text-generation", model=model_id, trust_remote_code=False)

        def generate(prompt: str) -> str:
            output = generator(prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
            return output[0]["generated_text"]

        return cls(generate, name=f"llm:{model_id}")

    def _ask(self, template: str, caption: str, obj: str) -> str:
        answer = self.generate(template.format(caption=_clean(caption), obj=noun_forms(obj).singular))
        lines = [line.strip() for line in str(answer).strip().splitlines() if line.strip()]
        return lines[0].strip().strip("\"'") if lines else ""

    def presence(self, caption: str, obj: str, present_objects: Sequence[str]) -> Rewrite | None:
        text = self._ask(_PRESENCE_PROMPT, caption, obj)
        return None if presence_problem(caption, text, obj, present_objects, strict=True) else Rewrite(text, self.name)

    def absence(self, caption: str, absent_obj: str, present_objects: Sequence[str]) -> Rewrite | None:
        text = self._ask(_ABSENCE_PROMPT, caption, absent_obj)
        if mentions(_clean(caption), absent_obj):
            return None
        return (
            None
            if absence_problem(caption, text, absent_obj, present_objects, strict=True)
            else Rewrite(text, self.name)
        )
