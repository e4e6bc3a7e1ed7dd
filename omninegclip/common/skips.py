"""What was left out of the input, and why: the one record of skips for building, training and evaluation.

The rule, the same in `data_builder.py`, `train.py` and `python -m eval`:
- **a counted skip**: a row whose *content* cannot be used: a text value (caption, negation,
  phrase) that is missing (None), empty or not text (`text_skip`); an image that is missing,
  corrupt, truncated or too large; a caption of an image the file does not list. The row is left
  out, counted under a reason, and the first places (file, row or line, column) are kept to be shown.
  Counted the same way: a negation the builder cannot make or that fails its quality gate (the
  negation is left out), and rows left out by choice (beyond `--captions_per_image`, VALSE samples
  the annotators did not validate);
- **an error** (`UserError`, exit status 2, nothing written): whatever makes the input not the
  format it claims or the command ambiguous: a missing file, folder, column or schema key; a file
  that does not parse (not JSON, a CSV line with the wrong number of fields); a structural value
  of the wrong type (an id, an image path, an answer index, a vote count); a bad flag; an input
  with no usable row left at all. One exception, on purpose: an evaluation image that is not on
  disk at all is an error (a benchmark is scored on all its items, and a missing file almost always
  means a wrong `--*_images` folder); one that is there but cannot be decoded is a counted skip.

One output format everywhere: `describe()` gives the line
`skipped N (reason: count [place; place; …]; reason: count [...])`, reasons in sorted order, with
the first `SHOWN` places of each and `…` when more places were kept (a place is named once,
however many of its rows were left out); `to_json()` gives
`{"skips": {reason: count}, "skip_examples": {reason: [place, ...]}}` (up to `KEPT` places each).
Reasons are snake_case words (`missing_caption`, `caption_not_text`, `empty_caption`,
`corrupt_image`, ...); a consumer that merges logs of several stages prefixes them (`source:`,
`row:`, `presence:`).

Public surface: `SkipLog`, `text_skip(value, name="caption")`, `KEPT`, `SHOWN`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

KEPT = 20  # places kept per reason (what build_summary.json lists)
SHOWN = 3  # places shown per reason in the one-line summary


def text_skip(value: object, name: str = "caption") -> str | None:
    """Why a text value of a row cannot be used: `missing_<name>` (None), `<name>_not_text` (a
    number, a list, ...), `empty_<name>` (blank); None when it is non-empty text."""
    if value is None:
        return f"missing_{name}"
    if not isinstance(value, str):
        return f"{name}_not_text"
    return None if value.strip() else f"empty_{name}"


@dataclass
class SkipLog:
    """Rows left out, counted by reason, with the first `KEPT` places of each (a place is named once)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str | None = None, count: int = 1) -> None:
        """Count `count` rows left out for `reason`; `where` names the place (file, row, column)."""
        self.counts[reason] += count
        if where is None:
            return
        shown = self.examples.setdefault(reason, [])
        if len(shown) < KEPT and where not in shown:
            shown.append(where)

    def text(self, value: object, where: str, name: str = "caption") -> str | None:
        """`value` when it is non-empty text; else None, counted (`text_skip`'s reason) at `where`."""
        reason = text_skip(value, name)
        if reason is not None:
            self.skip(reason, where)
            return None
        return value

    def update(self, other: SkipLog, prefix: str = "") -> None:
        """Add the counts and places of `other`, each reason prefixed with `prefix` (e.g. "source:")."""
        for reason, count in other.counts.items():
            self.counts[prefix + reason] += count
            for where in other.examples.get(reason, []):
                self.skip(prefix + reason, where, 0)

    def total(self, prefix: str = "") -> int:
        """Rows counted, over the reasons that start with `prefix`."""
        return sum(count for reason, count in self.counts.items() if reason.startswith(prefix))

    def __bool__(self) -> bool:
        return any(self.counts.values())

    def describe(self) -> str:
        """The one line: `skipped N (reason: count [place; …]; ...)`, or "" when nothing was skipped."""
        if not self:
            return ""
        parts = []
        for reason, count in sorted(self.counts.items()):
            places = self.examples.get(reason, [])
            shown, more = places[:SHOWN], "; …" if len(places) > SHOWN else ""
            parts.append(f"{reason}: {count}" + (f" [{'; '.join(shown)}{more}]" if shown else ""))
        return f"skipped {self.total()} ({'; '.join(parts)})"

    @classmethod
    def from_json(cls, data: dict) -> SkipLog:
        """The log `to_json` wrote (other keys of `data` are ignored)."""
        return cls(
            Counter(data.get("skips", {})),
            {reason: list(places) for reason, places in data.get("skip_examples", {}).items()},
        )

    def to_json(self) -> dict:
        return {
            "skips": dict(sorted(self.counts.items())),
            "skip_examples": {reason: list(places) for reason, places in sorted(self.examples.items())},
        }
