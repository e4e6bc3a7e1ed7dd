"""Cards for what the project publishes on the Hub.

Dataset card (written by `data_builder.py` into every built dataset as README.md, and pushed with it):
- `render_dataset_card(summary, features, ...) -> str`: YAML metadata built with `DatasetCardData`
  (license, task, tags, size, `dataset_info` with the features and each split's rows and bytes) and
  a body that says where the rows come from, what each column means, how the negations were made,
  the build's counts (rows, skips by reason, the quality gate, texts longer than CLIP's context) and
  its provenance (seed, git commit, library versions). The card of the local `save_to_disk` folder
  declares `configs` for its own Arrow files (`{split}/data-*.arrow`; empty splits left out), so that
  `load_dataset(folder)` reads the table rather than the `images/` beside it (`save_to_disk_files`);
- `hub_dataset_card(text) -> DatasetCard`: the same card for the repo `DatasetDict.push_to_hub` writes,
  with `configs` for its `data/{split}-*` parquet shards. Pushed *before* the data: `push_to_hub` then
  reads it from the repo and writes its own `dataset_info` and `configs` into it, keeping the rest;
- `GENERATED_DATA_LICENSE`: the license of data the project generates (the repository's own, MIT).
"""

from __future__ import annotations

import json

from huggingface_hub import DatasetCard, DatasetCardData

GENERATED_DATA_LICENSE = "mit"

_DATASET_COLUMNS = {
    "image": "the image (RGB)",
    "caption": "the original caption",
    "presence_negated": "the caption with an object that IS in the image negated (false for the image); "
    "empty when none",
    "absence_negated": "the caption plus a negated plausible object that is NOT in the image (still true); "
    "empty when none",
    "absence_affirmed": "the caption with `absent_object` affirmed instead (false for the image): "
    "the wrong option of the optional choice term; empty when none",
    "present_objects": "objects known to be in the image",
    "negated_object": "the object `presence_negated` negates (one of `present_objects`)",
    "absent_object": "the object `absence_negated` negates (not in `present_objects`)",
    "presence_rewrite": "the template or source that wrote `presence_negated`",
    "absence_rewrite": "the template or source that wrote `absence_negated`",
    "source": "which source the row comes from",
    "image_id": "the image's id in its source (rows of one image share a split)",
    "source_index": "the row's position in its source",
}


def _dataset_info(features, rows_out: dict, num_bytes: dict):
    """`datasets`' own record of the splits (rows and bytes), to write into the card's `dataset_info`."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo

    splits = SplitDict()
    for split, count in rows_out.items():
        splits.add(SplitInfo(name=split, num_bytes=int(num_bytes.get(split, 0)), num_examples=count))
    size = sum(int(num_bytes.get(split, 0)) for split in rows_out)
    return DatasetInfosDict({"default": DatasetInfo(features=features, splits=splits, dataset_size=size)})


def hub_dataset_card(text: str) -> DatasetCard:
    """The card of a local dataset folder as it goes to the Hub: `configs` for the parquet shards
    `DatasetDict.push_to_hub` writes (`data/{split}-*`), so that `load_dataset(repo_id)` reads every split."""
    card = DatasetCard(text)
    splits = [split["name"] for split in (card.data.dataset_info or {}).get("splits", [])]
    card.data["configs"] = [
        {"config_name": "default", "data_files": [{"split": split, "path": f"data/{split}-*"} for split in splits]}
    ]
    return card


def _size_category(num_rows: int) -> str:
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ]
    return next((label for bound, label in bounds if num_rows < bound), "10M<n<100M")


def _cell(value: object) -> str:
    text = "" if value is None else (", ".join(map(str, value)) if isinstance(value, list) else str(value))
    return text.replace("|", "\\|").replace("\n", " ")


def _counts_table(counts: dict, heading: str) -> list[str]:
    if not counts:
        return ["None.", ""]
    lines = [f"| {heading} | count |", "|---|---:|"]
    lines += [
        f"| {_cell(key)} | {value} |" for key, value in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]
    return lines + [""]


def save_to_disk_files(rows_out: dict[str, int]) -> dict[str, str]:
    """Split -> its Arrow files in a `save_to_disk` folder; empty splits left out (`load_dataset` refuses them)."""
    return {split: f"{split}/data-*.arrow" for split, count in rows_out.items() if count}


def render_dataset_card(
    summary: dict,
    features,
    *,
    pretty_name: str | None = None,
    license: str = GENERATED_DATA_LICENSE,
    license_name: str | None = None,
    license_link: str | None = None,
    source_description: str = "",
    build_description: str = "",
    license_note: str = "",
    num_bytes: dict[str, int] | None = None,
    data_files: dict[str, str] | None = None,
) -> str:
    """A dataset card for a built Omni-NegCLIP dataset.

    `summary` is the builder's `build_summary.json` content (at least `source` and `rows_out`, a split ->
    row count mapping; `skips`, `negations`, `rewrites`, `quality_gate`, `examples`, `arguments` are
    shown when present); `features` the `datasets.Features` of the splits; `num_bytes` each split's
    size in bytes (the Arrow data); `build_description` says how the negations were made. `license:
    other` needs a `license_name` (and, where there is one, a `license_link`), as the Hub asks.
    `data_files`, when given, becomes the card's `configs` (`save_to_disk_files` for the local folder,
    whose `images/` would otherwise make `load_dataset(folder)` read it as an image folder).
    """
    if license == "other" and not license_name:
        raise ValueError("license 'other' needs a license_name (the Hub shows it instead of a license)")
    source = summary.get("source", "unknown")
    pretty_name = pretty_name or f"Omni-NegCLIP negation captions ({source})"
    metadata, rows_out = _card_metadata(
        summary, features, pretty_name, license, license_name, license_link, num_bytes, data_files
    )
    lines = [
        "---",
        metadata.to_yaml(),
        "---",
        "",
        f"# {pretty_name}",
        "",
        *_INTRO,
        "## Source",
        "",
        source_description or f"Source: `{source}`.",
        "",
    ]
    lines += _columns_lines(features) + _build_lines(summary, build_description) + _counts_lines(summary, rows_out)
    lines += _examples_lines(summary) + _provenance_lines(summary)
    lines += [
        "## License",
        "",
        f"`{license_name or license}`. "
        + (license_note or "The images and original captions keep the terms of their source."),
        "",
        "## Citation",
        "",
        "Omni-NegCLIP: *Enhancing CLIP with Front-Layer Contrastive Fine-Tuning for Comprehensive Negation "
        "Understanding*, arXiv:2603.29258. Cite the source dataset too.",
        "",
    ]
    return "\n".join(lines)


_INTRO = [
    "Image–caption pairs with *negated* captions for negation-aware CLIP fine-tuning "
    "([Omni-NegCLIP](https://arxiv.org/abs/2603.29258)). Each row may carry two negations:",
    "",
    "- **presence negation** (`presence_negated`): an object that *is* in the image is negated, so the "
    'caption becomes false ("a dog on a couch" → "there is no dog on the couch");',
    "- **absence negation** (`absence_negated`): a plausible object that is *not* in the image is added under a "
    'negation, so the caption stays true ("a dog on a couch, with no cats around").',
    "",
    "A row may have only one of them; the other is empty.",
    "",
]


def _card_metadata(
    summary: dict,
    features,
    pretty_name: str,
    license: str,
    license_name: str | None,
    license_link: str | None,
    num_bytes: dict[str, int] | None,
    data_files: dict[str, str] | None,
) -> tuple[DatasetCardData, dict]:
    """The card's YAML metadata, and the splits it shows (those of `data_files` where given)."""
    source = summary.get("source", "unknown")
    rows_out: dict = summary.get("rows_out", {})
    metadata = DatasetCardData(
        pretty_name=pretty_name,
        license=license,
        license_name=license_name,
        license_link=license_link,
        language=["en"],
        task_categories=["zero-shot-image-classification"],
        tags=["negation", "clip", "omni-negclip", "image-text", source],
        size_categories=[_size_category(sum(rows_out.values()))],
    )
    if data_files:  # then only the splits it lists (load_dataset expects every split that dataset_info names)
        metadata["configs"] = [
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": path} for split, path in data_files.items()],
            }
        ]
        rows_out = {split: count for split, count in rows_out.items() if split in data_files}
    _dataset_info(features, rows_out, num_bytes or {}).to_dataset_card_data(metadata)
    return metadata, rows_out


def _columns_lines(features) -> list[str]:
    columns = list(getattr(features, "keys", lambda: [])())
    return ["## Columns", "", "| column | meaning |", "|---|---|"] + [
        f"| `{name}` | {_DATASET_COLUMNS.get(name, '(source-specific)')} |" for name in columns
    ]


def _build_lines(summary: dict, build_description: str) -> list[str]:
    lines = ["", "## How it was built", ""]
    arguments = summary.get("arguments")
    if arguments:
        lines += [
            "Built with `python data_builder.py` and these settings:",
            "",
            "```json",
            json.dumps(arguments, indent=2, sort_keys=True),
            "```",
            "",
        ]
    return lines + [
        build_description or "See the source above.",
        "",
        "The quality gate checks every row: a presence-negated caption names `negated_object`, which is in "
        "`present_objects`; an absence-negated caption names `absent_object`, which is not; both hold a negation "
        "cue and differ from the caption.",
        "",
    ]


def _counts_lines(summary: dict, rows_out: dict) -> list[str]:
    """Rows per split, source rows read, negations, skips by reason, rewrites, the quality gate, texts
    over CLIP's context."""
    lines = ["## Counts", "", "| split | rows |", "|---|---:|"]
    lines += [f"| {split} | {count} |" for split, count in rows_out.items()]
    lines += [""]
    if "rows_in" in summary:
        lines += [f"Source rows read: {summary['rows_in']}.", ""]
    statements = summary.get("statements")
    if statements:
        lines += [
            f"Statement rows (`--statement_rate {statements['rate']}`): {statements['written']} extra training rows, "
            "each the same image as the row before it with its four texts said as NegBench-style statements "
            "(`statement` in the `*_rewrite` columns); the other rows are the source's.",
            "",
        ]
    for key, heading in (("negations", "Negations per row"), ("skips", "Skipped (by reason)")):
        if key in summary:
            lines += [f"### {heading}", ""] + _counts_table(summary[key], "reason" if key == "skips" else "kind")
    for kind in ("presence", "absence"):
        rewrites = summary.get("rewrites", {}).get(kind)
        if rewrites:
            lines += [f"### {kind.capitalize()} rewrites", ""] + _counts_table(rewrites, "rewrite")
    gate = summary.get("quality_gate", {}).get("total")
    if gate:
        lines += ["### Quality gate", "", "| negation | passed | none | failed |", "|---|---:|---:|---:|"]
        for kind in ("presence", "absence"):
            counts = gate[kind]
            lines.append(f"| {kind} | {counts['passed']} | {counts['missing']} | {sum(counts['failed'].values())} |")
        lines += [""]
    long = summary.get("over_context_length")
    if long:
        lines += [
            f"### Longer than CLIP's {long['limit']} tokens",
            "",
            "CLIP's text encoder reads only the start of these texts. A negation it would not see was not written "
            "(counted as `negation_beyond_context`).",
            "",
        ] + _counts_table(long["texts"], "column")
    return lines


def _examples_lines(summary: dict) -> list[str]:
    examples = summary.get("examples") or []
    if not examples:
        return []
    return (
        ["## Examples", "", "| caption | presence_negated | absence_negated |", "|---|---|---|"]
        + [
            f"| {_cell(row.get('caption'))} | {_cell(row.get('presence_negated'))} "
            f"| {_cell(row.get('absence_negated'))} |"
            for row in examples
        ]
        + [""]
    )


def _provenance_lines(summary: dict) -> list[str]:
    made_by = summary.get("provenance")
    if not made_by:
        return []
    versions = ", ".join(
        f"{name} {version}" for name, version in sorted((made_by.get("libraries") or {}).items()) if version
    )
    return [
        "## Provenance",
        "",
        f"Seed {made_by.get('seed')}; git commit `{made_by.get('git_commit') or 'unknown'}`; "
        f"Python {made_by.get('python')}; {versions}.",
        "",
    ]
