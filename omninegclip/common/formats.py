"""Readers of published formats, shared by dataset building and evaluation.

Each format a source or a benchmark is published in is parsed here, once: `data_builder.py` (through
`omninegclip.building.sources`) and `eval/` both call these functions and then adapt the parsed rows
to what they need (a `Source` of `SourceItem`s, a `TaskData` of items) without parsing again. A
reader checks the published structure: a missing file, key or column, or a file that does not parse,
is a `UserError` naming the file, the place and what was expected. Text values are returned as they
are stored; whether one can be used is the caller's counted skip (`omninegclip.common.skips`).

Public surface:
- `read_json(path, what="", keep=None)`: the JSON value of a file (a byte-order mark tolerated); with
  `keep`, every object holds only those keys while it is parsed (memory: COCO's polygons);
- `read_csv(path, required=(), what="")` -> `(header, rows)`: a CSV (tab-separated for `.tsv`) with a
  header row; `rows` yields `(line number, {column: text})` lazily; `required` lists groups of
  acceptable column names, each of which one column must meet; a line with the wrong number of
  fields is an error naming it;
- `parse_list_cell(text)`: a cell holding a Python list literal ("['a dog', 'a puppy']", as NegBench
  writes lists of captions) as a list, else None; literals only, never code;
- `require(container, key, path, where, schema)`, `require_list(...)`, `describe_value(value)`: the
  schema checks every reader's errors share;
- CC-Neg (CoN-CLIP, github.com/jaisidhsingh/CoN-CLIP): `read_ccneg_file(path) -> list[CCNegEntry]`,
  `CCNEG_EVAL_SIZE`, `CCNEG_PATH_PREFIX`, `CCNEG_IMAGES_FOLDER`, `ccneg_image_candidates(raw, root)`.
  `ccneg_preprocessed.pt` is a dict with `image_paths` (absolute paths under
  `/workspace/datasets/cc3m/` on the authors' machine) and `annotations`, a parallel list of dicts:
  `["json"]["caption"]` the true caption, `["sop_data"]["negative-prompt"]` the negated caption,
  `["sop_data"]["sop_chosen_object"]` the negated object (optional); an optional `num_ops` index.
  The last 40,000 items are the evaluation split. It is loaded with `torch.load(weights_only=True)`
  (`omninegclip.common.safe_load.load_torch_file`): a file that would need arbitrary unpickling is
  refused, never run.
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from omninegclip.common.cli import UserError
from omninegclip.common.safe_load import load_torch_file

CCNEG_EVAL_SIZE = 40_000  # CoN-CLIP's `num_ccneg_eval_samples`: the last items of the file
CCNEG_PATH_PREFIX = "/workspace/datasets/cc3m/"
CCNEG_IMAGES_FOLDER = "ccneg_images"  # where CoN-CLIP's README has the image zip unpacked, inside the CC-Neg root
CCNEG_SCHEMA = (
    "CC-Neg: {image_paths: [...], annotations: [{json: {caption}, sop_data: {negative-prompt, sop_chosen_object}}]}"
)


def describe_value(value: object) -> str:
    text = repr(value)
    return f"a {type(value).__name__} ({text if len(text) <= 40 else text[:37] + '...'})"


def require(container: object, key: str, path: Path, where: str, schema: str) -> object:
    """`container[key]`, or a `UserError` naming the file, the place and the schema."""
    if not isinstance(container, dict):
        raise UserError(f"{path}: {where} is a {type(container).__name__}, expected an object ({schema})")
    if key not in container:
        raise UserError(f"{path}: {where} has no '{key}' key ({schema})")
    return container[key]


def require_list(container: object, key: str, path: Path, where: str, schema: str) -> list:
    value = require(container, key, path, where, schema)
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{path}: '{key}' in {where} is a {type(value).__name__}, expected a list ({schema})")
    return list(value)


def _keep_only(keys: frozenset[str]) -> Callable[[dict], dict]:
    """A json `object_hook` that keeps only `keys` of every object, so that what the reader never
    uses (COCO's segmentation polygons, areas, URLs, ...) is freed as soon as it is parsed."""

    def hook(value: dict) -> dict:
        return {key: item for key, item in value.items() if key in keys}

    return hook


def read_json(path: str | Path, what: str = "", keep: frozenset[str] | None = None) -> object:
    """The JSON value of a file; with `keep`, every object in it holds only those keys (memory)."""
    path = Path(path)
    expected = f"; expected {what}" if what else ""
    if not path.is_file():
        raise UserError(f"{path}: no such file" + (f" (expected {what})" if what else ""))
    try:
        with path.open(encoding="utf-8-sig") as handle:  # -sig: tolerate a byte-order mark
            return json.load(handle, object_hook=_keep_only(keep) if keep is not None else None)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}){expected}"
        ) from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}){expected}") from None


def read_csv(
    path: str | Path, required: Sequence[Sequence[str]] = (), what: str = "CSV with a header row"
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header and the rows `(line number, {column: value})` of a CSV file (tab-separated for `.tsv`).

    `required` lists groups of acceptable column names; each group must be met by one column of the
    header (e.g. `[["image_path", "filepath"], ["correct_answer"]]`). The rows are read lazily; a
    line whose number of fields differs from the header's, or that is not valid CSV, is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected {what})")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    handle = path.open(encoding="utf-8-sig", newline="")  # -sig: tolerate a byte-order mark
    reader = csv.reader(handle, delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except UnicodeDecodeError as error:  # (a small file is decoded at once, with its header)
        handle.close()
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); expected {what}") from None
    except csv.Error as error:
        handle.close()
        raise UserError(f"{path}: cannot read the header row ({error}); expected {what}") from None
    problem = (
        "empty, expected a header row naming the columns"
        if not header
        else f"the header names a column twice ({header})"
        if len(set(header)) < len(header)
        else next(
            (
                f"the header has no column {' or '.join(map(repr, names))} (header: {header})"
                for names in required
                if not any(name in header for name in names)
            ),
            None,
        )
    )
    if problem is not None:
        handle.close()
        raise UserError(f"{path}: {problem}")
    return header, _csv_rows(path, handle, reader, header, delimiter)


def _csv_rows(path: Path, handle, reader, header: list[str], delimiter: str) -> Iterator[tuple[int, dict[str, str]]]:
    with handle:
        try:
            for row in reader:
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    raise UserError(
                        f"{path}: line {reader.line_num} has {len(row)} fields, but the header has {len(header)} "
                        f"({', '.join(header)}); quote a field that holds '{delimiter}'"
                    )
                yield reader.line_num, dict(zip(header, row))
        except csv.Error as error:
            raise UserError(f"{path}: line {reader.line_num} is not valid CSV ({error})") from None
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: after line {reader.line_num}: not UTF-8 text (byte {error.start})") from None


def parse_list_cell(text: str) -> list | None:
    """The list a cell holds as a Python literal ("['a dog', 'a puppy']"), or None when it holds none."""
    text = text.strip()
    if len(text) < 2 or text[0] != "[" or text[-1] != "]":
        return None
    try:
        parsed = ast.literal_eval(text)  # literals only: never runs code
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return parsed if isinstance(parsed, list) else None


# ------------------------------------------------------------------------------------------ CC-Neg


@dataclass(frozen=True, slots=True)
class CCNegEntry:
    """One item of `ccneg_preprocessed.pt`, its values as stored (texts are checked by the caller)."""

    index: int  # position in the file (the evaluation split is the last CCNEG_EVAL_SIZE)
    where: str  # "<file> annotations[i]": for messages
    image_path: str  # as on the authors' machine
    caption: object  # ["json"]["caption"]
    negative: object  # ["sop_data"]["negative-prompt"], commas not yet removed
    chosen_object: object  # ["sop_data"]["sop_chosen_object"], None when not recorded


def read_ccneg_file(path: str | Path) -> list[CCNegEntry]:
    """Every item of CoN-CLIP's `ccneg_preprocessed.pt`, its structure checked (errors name the key)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected CoN-CLIP's ccneg_preprocessed.pt)")
    data = load_torch_file(path, hint="CoN-CLIP's ccneg_preprocessed.pt holds only lists, dicts, strings and numbers.")
    image_paths = require_list(data, "image_paths", path, "the top level", CCNEG_SCHEMA)
    annotations = require_list(data, "annotations", path, "the top level", CCNEG_SCHEMA)
    if len(image_paths) != len(annotations):
        raise UserError(
            f"{path}: 'image_paths' has {len(image_paths)} entries but 'annotations' has {len(annotations)}; "
            "they must be parallel lists"
        )
    entries = []
    for index, (image_path, annotation) in enumerate(zip(image_paths, annotations)):
        where = f"annotations[{index}]"
        caption = require(
            require(annotation, "json", path, where, CCNEG_SCHEMA), "caption", path, f"{where}['json']", CCNEG_SCHEMA
        )
        sop = require(annotation, "sop_data", path, where, CCNEG_SCHEMA)
        negative = require(sop, "negative-prompt", path, f"{where}['sop_data']", CCNEG_SCHEMA)
        if not isinstance(image_path, str) or not image_path.strip():
            raise UserError(f"{path}: image_paths[{index}] is {describe_value(image_path)}, expected a string path")
        entries.append(
            CCNegEntry(index, f"{path.name} {where}", image_path, caption, negative, sop.get("sop_chosen_object"))
        )
    return entries


def ccneg_image_candidates(image_path: str, root: Path) -> tuple[str, list[Path]]:
    """(image id, the files to look for, in order) for a path as stored in `ccneg_preprocessed.pt`:
    as stored under `root`; its last folder and name (`cc3m_subset_images_extracted_final/x.jpg`)
    under `root` and under `root/ccneg_images/` (where CoN-CLIP's README unzips them); the bare name."""
    relative = (
        image_path[len(CCNEG_PATH_PREFIX) :] if image_path.startswith(CCNEG_PATH_PREFIX) else image_path.lstrip("/")
    )
    parts = Path(relative).parts
    last_two = [Path(*parts[-2:])] if len(parts) >= 2 else []
    candidates = [
        root / relative,
        *(root / path for path in last_two),
        *(root / CCNEG_IMAGES_FOLDER / path for path in last_two),
        root / Path(relative).name,
    ]
    return relative, list(dict.fromkeys(candidates))
