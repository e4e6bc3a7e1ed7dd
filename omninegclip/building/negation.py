"""How a source row gets its negations (the rules data_builder.py applies per row): `BuildOptions`
(how captions are negated and split), `TokenWindow` (what of a text CLIP's text encoder reads: a
negation beyond it is refused), the choice of the object to negate or to call absent, the rewrite
(LLM first when given, else the rule-based templates) and its checks (`negation`), and the split
of an image (`split_for`, a stable hash of its id where the source has no split of its own).

The `report` these functions count into is data_builder.py's build report (`skips`,
`llm_fallbacks` counters)."""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from omninegclip.building.rewrite import (
    STATEMENT_RATE,
    LLMRewriter,
    Rewrite,
    absence_negate,
    absence_problem,
    presence_negate,
    presence_problem,
)
from omninegclip.building.sources import SPLITS, TRAIN_OR_VALIDATION, Source, SourceItem
from omninegclip.building.storage import DEFAULT_MAX_IMAGE_PIXELS
from omninegclip.building.vocabulary import CooccurrenceStats, detect_objects, find_mentions
from omninegclip.common.cli import UserError
from omninegclip.common.clip import CONTEXT_LENGTH


@dataclass
class BuildOptions:
    """How captions are negated and split (the source's files are the reader's business)."""

    seed: int = 0
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    max_rows: int | None = None  # the first N source rows only
    generate_presence: bool = True  # write rule-based presence negations (a negation the source ships is kept)
    generate_absence: bool = True
    absent_top_k: int = 5  # the absent object is drawn among the k most plausible
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger images are skipped (counted), never decoded
    context_length: int | None = CONTEXT_LENGTH  # a negation the text encoder would not see is refused; None: no check
    num_proc: int | None = None  # processes that check and store the images (None: the cores)
    statement_rate: float = STATEMENT_RATE  # share of the training rows with both negations that get a statement row
    progress: bool = True
    rewriter: LLMRewriter | None = field(default=None, repr=False)

    def __post_init__(self):
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"--{name} {value} must be in [0, 1)")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise UserError(
                f"--validation_fraction + --test_fraction = {self.validation_fraction + self.test_fraction} "
                "must leave rows for train (< 1)"
            )
        check_statement_rate(self.statement_rate)
        if self.max_rows is not None and self.max_rows < 1:
            raise UserError(f"--max_rows {self.max_rows} must be at least 1")
        if self.absent_top_k < 1:
            raise UserError(f"--absent_top_k {self.absent_top_k} must be at least 1")
        if self.max_image_pixels < 1:
            raise UserError(f"--max_image_pixels {self.max_image_pixels} must be at least 1")
        if self.num_proc is not None and self.num_proc < 1:
            raise UserError(f"--num_proc {self.num_proc} must be at least 1")
        if self.context_length is not None and self.context_length < 3:
            raise UserError(f"context_length {self.context_length} must be at least 3 (start, one token, end)")


def check_statement_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise UserError(
            f"--statement_rate {rate} must be in [0, 1] (the share of the training rows with both negations that get "
            "an extra statement row)"
        )


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    """The openai CLIP tokenizer (for counting tokens), or None when it cannot be built here."""
    try:
        from omninegclip.common.tokenization import build_clip_tokenizer

        tokenizer = build_clip_tokenizer()
    except (ImportError, OSError):  # no open_clip wheel with CLIP's BPE merges
        return None
    tokenizer.model_max_length = 10**9  # counting only: no "sequence too long" warning
    return tokenizer


class TokenWindow:
    """What of a text CLIP's text encoder sees: its first `context_length - 2` tokens (between start and end)."""

    def __init__(self, context_length: int | None = CONTEXT_LENGTH):
        self.context_length = context_length
        self.tokenizer = _clip_tokenizer() if context_length is not None else None
        self.content_tokens = (context_length or 0) - 2

    @property
    def available(self) -> bool:
        return self.tokenizer is not None

    def visible(self, text: str) -> str:
        """The start of `text` the encoder reads (all of it when it fits)."""
        if self.tokenizer is None or len(text.encode("utf-8", "surrogatepass")) <= self.content_tokens:
            return text  # every token covers at least one byte
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text if len(offsets) <= self.content_tokens else text[: offsets[self.content_tokens - 1][1]]

    def too_long(self, texts: list[str]) -> int:
        """How many of `texts` have more tokens than the encoder reads."""
        long = [
            text
            for text in texts
            if isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > self.content_tokens
        ]
        if self.tokenizer is None or not long:
            return 0
        return sum(
            len(ids) > self.content_tokens for ids in self.tokenizer(long, add_special_tokens=False)["input_ids"]
        )

    def negation_visible(self, caption: str, text: str, obj: str) -> bool:
        """Does the encoder still see the negation: the object under a negation cue, and a change from the caption?"""
        seen = self.visible(text)
        if seen == text:
            return True
        return seen != self.visible(caption) and any(mention.negated for mention in find_mentions(seen, [obj]))


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def split_for(image_id: str, source_split: str | None, validation_fraction: float, test_fraction: float) -> str:
    """The split of an image: the source's own, or one drawn by a stable hash of its id (seed-independent)."""
    if source_split in SPLITS:
        return source_split
    point = _unit_hash(image_id)
    if source_split == TRAIN_OR_VALIDATION:
        return "validation" if point < validation_fraction else "train"
    if point < test_fraction:
        return "test"
    return "validation" if point < test_fraction + validation_fraction else "train"


def _choose_negated(item: SourceItem, rng: random.Random, window: TokenWindow) -> str | None:
    """The present object to negate: one the caption names if any (within what the text encoder
    reads of a very long caption, if it names one there), else the most visible."""
    present = sorted(set(item.present_objects))
    named = sorted(set(present) & set(detect_objects(window.visible(item.caption)))) or sorted(
        set(present) & set(detect_objects(item.caption))
    )
    if named:
        return rng.choice(named)
    return min(present, key=lambda obj: (-item.salience.get(obj, 0.0), obj)) if present else None


def _rewrite(
    kind: str,
    item: SourceItem,
    obj: str,
    rng: random.Random,
    options: BuildOptions,
    report,
    keep: Callable[[str], bool],
) -> tuple[Rewrite | None, str]:
    """(a negation whose text `keep` accepts, or None with the reason)."""
    if options.rewriter is not None:
        ask = options.rewriter.presence if kind == "presence" else options.rewriter.absence
        rewrite = ask(item.caption, obj, item.present_objects)
        if rewrite is not None and keep(rewrite.text):
            return rewrite, ""
        report.llm_fallbacks[kind] += 1
    negate = presence_negate if kind == "presence" else absence_negate
    rewrite = negate(item.caption, obj, rng, keep=keep)
    if rewrite is None:
        # A negation exists but every one falls beyond what the text encoder reads (a very long caption)?
        if negate(item.caption, obj, random.Random(0)):
            return None, "negation_beyond_context"
        if kind == "presence" and len(find_mentions(item.caption, [obj])) > 1:
            return None, "object_still_affirmed"  # negating one mention would leave another: "no dog and another dog"
        return None, "rewrite_failed"
    return rewrite, ""


def _choose_absent(
    item: SourceItem, source: Source, stats: CooccurrenceStats, options: BuildOptions, rng: random.Random
) -> tuple[str | None, str]:
    """(a plausible object that is not in the image, or None with the reason)."""
    present = sorted(set(item.present_objects))
    if not present and not source.exhaustive_objects:
        return None, "no_detectable_object"  # nothing known about the image: any object could be in it
    exclude = set(item.also_mentioned) | {mention.category for mention in find_mentions(item.caption)}
    absent = stats.choose_absent(present, rng, exclude=exclude, top_k=options.absent_top_k)
    return absent, "no_plausible_absent_object"


def negation(
    kind: str,
    item: SourceItem,
    source: Source,
    stats: CooccurrenceStats,
    options: BuildOptions,
    report,
    rng: random.Random,
    window: TokenWindow,
) -> tuple[Rewrite, str] | None:
    """One negation of a row, (rewrite, object), checked by the quality gate and by what the text
    encoder reads of it; None (counted) when there is none."""
    given, skip = (item.presence, item.presence_skip) if kind == "presence" else (item.absence, item.absence_skip)
    if given is not None:
        rewrite, obj = Rewrite(given.text, given.rewrite), given.obj
    elif skip:
        report.skips.skip(f"{kind}:{skip}")
        return None
    elif not (options.generate_presence if kind == "presence" else options.generate_absence):
        return None
    else:
        if kind == "presence":
            obj = _choose_negated(item, rng, window)
            reason = "no_present_object" if source.exhaustive_objects else "no_detectable_object"
        else:
            obj, reason = _choose_absent(item, source, stats, options, rng)
        if obj:
            rewrite, reason = _rewrite(
                kind,
                item,
                obj,
                rng,
                options,
                report,
                keep=lambda text: window.negation_visible(item.caption, text, obj),
            )
        if not obj or rewrite is None:
            report.skips.skip(f"{kind}:{reason}")
            return None
    problem = (presence_problem if kind == "presence" else absence_problem)(
        item.caption, rewrite.text, obj, item.present_objects
    )
    if problem:
        report.skips.skip(f"{kind}:quality_gate:{problem}")
        return None
    if not window.negation_visible(item.caption, rewrite.text, obj):
        report.skips.skip(f"{kind}:negation_beyond_context")
        return None
    return rewrite, obj
