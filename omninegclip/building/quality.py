"""The quality gate of a built dataset: every negation checked again, in worker processes, by the
rules of `omninegclip.building.rewrite` (`presence_problem`, `absence_problem`); counts per split
and in total. data_builder.py names the columns each check reads (`quality_gate(dataset_dict,
columns, checks)`: the `caption` and `present_objects` columns, and per check its negation
text and object columns)."""

from __future__ import annotations

from collections import Counter

import datasets

from omninegclip.building.parallel import fork_map
from omninegclip.common.cli import UserError

GATE_BATCH = 1000  # rows checked per task of a worker


def _gate_split(
    dataset: datasets.Dataset, columns: tuple, checks: tuple, progress: bool, desc: str, num_proc: int | None = 1
) -> dict:
    table = dataset.select_columns(list(columns))
    counts = {kind: {"passed": 0, "missing": 0, "failed": Counter()} for kind, *_ in checks}
    for part in fork_map(
        lambda index: _gate_batch(table[index * GATE_BATCH : (index + 1) * GATE_BATCH], checks),
        -(-len(dataset) // GATE_BATCH),
        num_proc,
        2,
        desc,
        progress,
        "batch",
    ):
        for kind, *_ in checks:
            counts[kind]["passed"] += part[kind]["passed"]
            counts[kind]["missing"] += part[kind]["missing"]
            counts[kind]["failed"].update(part[kind]["failed"])
    return {"rows": len(dataset), **counts}


def _gate_batch(batch: dict, checks: tuple) -> dict:
    counts = {kind: {"passed": 0, "missing": 0, "failed": Counter()} for kind, *_ in checks}
    for index, caption in enumerate(batch["caption"]):
        for kind, text_column, object_column, check in checks:
            text = batch[text_column][index]
            if text is None:
                counts[kind]["missing"] += 1
                continue
            problem = check(caption, text, batch[object_column][index], batch["present_objects"][index] or [])
            if problem:
                counts[kind]["failed"][problem] += 1
            else:
                counts[kind]["passed"] += 1
    return counts


def quality_gate(
    dataset_dict: datasets.DatasetDict, columns: tuple, checks: tuple, progress: bool = False, num_proc: int | None = 1
) -> dict:
    """Check every negation of a DatasetDict with the contract columns; counts per split and in total.

    presence_negated must name `negated_object`, which must be in `present_objects`; absence_negated must
    name `absent_object`, which must not be; both must hold a negation cue and differ from the caption.
    Returns {split: {"rows", "presence": {"passed", "missing", "failed": {reason: n}}, "absence": {...}},
    "total": {...}, "passed": no negation failed}. `num_proc` worker processes check batches of rows
    (None: the cores).
    """
    per_split = {}
    for split, dataset in dataset_dict.items():
        missing_columns = [column for column in columns if column not in dataset.column_names]
        if missing_columns:
            raise UserError(
                f"split {split!r} lacks the contract columns {missing_columns}; it has {dataset.column_names}"
            )
        per_split[split] = _gate_split(dataset, columns, checks, progress, f"quality gate {split}", num_proc)
    total = {"rows": sum(counts["rows"] for counts in per_split.values())}
    for kind, *_ in checks:
        total[kind] = {
            "passed": sum(counts[kind]["passed"] for counts in per_split.values()),
            "missing": sum(counts[kind]["missing"] for counts in per_split.values()),
            "failed": sum((counts[kind]["failed"] for counts in per_split.values()), Counter()),
        }
    result = {**per_split, "total": total}
    for counts in result.values():
        for kind, *_ in checks:
            counts[kind]["failed"] = dict(sorted(counts[kind]["failed"].items()))
    result["passed"] = not any(total[kind]["failed"] for kind, *_ in checks)
    return result
