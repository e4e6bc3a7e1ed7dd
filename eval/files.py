"""What every benchmark reader needs from the file system, in one place.

Public surface:
- `read_json(path)`: parsed JSON, or a `UserError` naming the file, line and column.
- `read_csv_rows(path, required)`: the rows of a CSV as dicts with their line numbers, after checking
  that the header has the required columns.
- `resolve_image(reference, root, where)`: the image file a dataset row points to. Published files
  carry paths from their authors' machines, so a reference is looked for under `root`: as written
  (if relative), then by its last folder and file name, then by its file name alone.
- `image_loader(path)` / `crop_loader(path, box)`: zero-argument functions for an `ImageStore` that
  open the image (or crop a box `x, y, w, h` out of it) as RGB, with `omninegclip.common.safe_load.open_rgb_image`:
  grayscale, palette and RGBA images are converted; a corrupt, truncated or oversized one raises
  `UnreadableImage` (the harness then leaves out the items that use it, counted).
- `SkipCounter`: counts rows left out, by reason, with the first few rows of each, and says so in
  one line for `TaskData.notes`.
- `usable_text(value, name, where, skips)`: a caption-like field as a string; an empty one (or None)
  is counted in `skips` as "empty <name>" and gives None; any other non-string is a `UserError`.
"""

from __future__ import annotations

import csv
import functools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from omninegclip.common.cli import UserError
from omninegclip.common.safe_load import open_rgb_image

EXAMPLES_PER_REASON = 3


def read_json(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: tolerate a byte-order mark
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from error
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error})") from error


def read_csv_rows(path: str | Path, required: list[list[str]]) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header and the rows `(line number, {column: value})` of a comma-separated file.

    `required` lists groups of acceptable column names; each group must be met by one column of the
    header (e.g. `[["image_path", "filepath"], ["correct_answer"]]`).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    handle = open(path, encoding="utf-8-sig", newline="")  # -sig: tolerate a byte-order mark
    reader = csv.DictReader(handle)
    try:
        header = list(reader.fieldnames or [])
    except (csv.Error, UnicodeDecodeError) as error:
        handle.close()
        raise UserError(f"{path}: cannot read the CSV header ({error})") from error
    for names in required:
        if not any(name in header for name in names):
            handle.close()
            wanted = " or ".join(repr(name) for name in names)
            raise UserError(f"{path}: the header has no column {wanted} (header: {header})")

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        with handle:
            try:
                for row in reader:
                    # csv.DictReader files extra fields under the key None and fills missing ones with None
                    extra = len(row.pop(None, []))
                    missing = sum(value is None for value in row.values())
                    if extra or missing:
                        raise UserError(f"{path}, line {reader.line_num}: {len(header) + extra - missing} fields, the header has {len(header)}")
                    yield reader.line_num, row
            except csv.Error as error:
                raise UserError(f"{path}, line {reader.line_num}: malformed CSV ({error})") from error
            except UnicodeDecodeError as error:
                raise UserError(f"{path}, after line {reader.line_num}: not UTF-8 text ({error})") from error

    return header, rows()


def resolve_image(reference: str, root: str | Path | None, where: str) -> Path:
    """The existing image file `reference` names; `where` (file and row) goes into the error."""
    if not isinstance(reference, str) or not reference.strip():
        raise UserError(f"{where}: the image path is empty or not a string ({reference!r})")
    written = Path(reference).expanduser()
    candidates = [written] if written.is_absolute() or root is None else []
    if root is not None:
        root = Path(root).expanduser()
        if not written.is_absolute():
            candidates.append(root / written)
        if len(written.parts) > 2:  # root may be the image folder's parent (ccneg_images/cc3m_subset_…/x.jpg)
            candidates.append(root / written.parent.name / written.name)
        candidates.append(root / written.name)
    for candidate in dict.fromkeys(candidates):
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(candidate) for candidate in dict.fromkeys(candidates))
    raise UserError(f"{where}: missing image {reference!r} (looked for {tried})")


def _open_rgb(path: Path) -> Image.Image:
    return open_rgb_image(path)


# Crops of one image come one after another in the harness's key order; keep the last few images open.
_open_rgb_cached = functools.lru_cache(maxsize=8)(_open_rgb)


def image_loader(path: Path) -> Callable[[], Image.Image]:
    return functools.partial(_open_rgb, path)


def crop_loader(path: Path, box: tuple[float, float, float, float]) -> Callable[[], Image.Image]:
    x, y, width, height = box
    return lambda: _open_rgb_cached(path).crop((x, y, x + width, y + height))


class SkipCounter(Counter):
    """Rows left out, counted by reason; `add(reason, where)` also keeps the first few places of each
    reason; `describe()` gives the one line a task's notes carry."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, where: str) -> None:
        self[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(where)

    def describe(self) -> str:
        if not self:
            return ""
        parts = []
        for reason, count in sorted(self.items()):
            shown = self.examples.get(reason, [])
            more = "; …" if count > len(shown) else ""
            parts.append(f"{reason}: {count}" + (f" [{'; '.join(shown)}{more}]" if shown else ""))
        return f"skipped {sum(self.values())} ({'; '.join(parts)})"


def usable_text(value, name: str, where: str, skips: SkipCounter) -> str | None:
    """`value` if it is a non-empty string; None (counted as "empty <name>") if empty or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        skips.add(f"empty {name}", where)
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: {name} must be a string, got {type(value).__name__} {value!r:.80}")
    return value
