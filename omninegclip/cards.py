"""Cards for what the project publishes on the Hub.

Dataset card (written by `data_builder.py` into every built dataset as README.md, and pushed with it):
- `render_dataset_card(summary, features, ...) -> str`: YAML metadata that `huggingface_hub.DatasetCard`
  parses (license, task, tags, size, `configs` for the `push_to_hub` layout, `dataset_info` with the
  features and split sizes) and a body that says where the rows come from, what each column means,
  how the negations were made, the build's counts (rows, skips by reason, the quality gate, texts
  longer than CLIP's context) and its provenance (seed, git commit, library versions).
"""

from __future__ import annotations

import json

import yaml

_DATASET_COLUMNS = {
    "image": "the image (RGB)",
    "caption": "the original caption",
    "presence_negated": "the caption with an object that IS in the image negated (false for the image); empty when none",
    "absence_negated": "the caption plus a negated plausible object that is NOT in the image (still true); empty when none",
    "absence_affirmed": "the caption with `absent_object` affirmed instead (false for the image): the wrong option of the optional choice term; empty when none",
    "present_objects": "objects known to be in the image",
    "negated_object": "the object `presence_negated` negates (one of `present_objects`)",
    "absent_object": "the object `absence_negated` negates (not in `present_objects`)",
    "presence_rewrite": "the template or source that wrote `presence_negated`",
    "absence_rewrite": "the template or source that wrote `absence_negated`",
    "source": "which source the row comes from",
    "image_id": "the image's id in its source (rows of one image share a split)",
    "source_index": "the row's position in its source",
}


def _size_category(num_rows: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]
    return next((label for bound, label in bounds if num_rows < bound), "10M<n<100M")


def _cell(value: object) -> str:
    text = "" if value is None else (", ".join(map(str, value)) if isinstance(value, list) else str(value))
    return text.replace("|", "\\|").replace("\n", " ")


def _counts_table(counts: dict, heading: str) -> list[str]:
    if not counts:
        return ["None.", ""]
    lines = [f"| {heading} | count |", "|---|---:|"]
    lines += [f"| {_cell(key)} | {value} |" for key, value in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return lines + [""]


def hub_data_files(splits) -> dict[str, str]:
    """Split -> the files `push_to_hub` writes for it."""
    return {split: f"data/{split}-*" for split in splits}


def save_to_disk_files(rows_out: dict[str, int]) -> dict[str, str]:
    """Split -> its Arrow files in a `save_to_disk` folder; empty splits left out (`load_dataset` refuses them)."""
    return {split: f"{split}/data-*.arrow" for split, count in rows_out.items() if count}


def render_dataset_card(
    summary: dict,
    features,
    *,
    pretty_name: str | None = None,
    license: str = "other",
    source_description: str = "",
    build_description: str = "",
    license_note: str = "",
    data_files: dict[str, str] | None = None,
) -> str:
    """A dataset card for a built Omni-NegCLIP dataset.

    `summary` is the builder's `build_summary.json` content (at least `source` and `rows_out`, a split ->
    row count mapping; `skips`, `negations`, `rewrites`, `quality_gate`, `examples`, `arguments` are
    shown when present); `features` the `datasets.Features` of the splits; `build_description` says how
    the negations were made; `data_files` the files of each split (default `hub_data_files`: the layout
    `push_to_hub` writes; `save_to_disk_files` for a `save_to_disk` folder, so `load_dataset(folder)` reads it).
    """
    source = summary.get("source", "unknown")
    rows_out: dict = summary.get("rows_out", {})
    data_files = data_files or hub_data_files(rows_out)
    pretty_name = pretty_name or f"Omni-NegCLIP negation captions ({source})"
    metadata = {
        "pretty_name": pretty_name,
        "license": license,
        "language": ["en"],
        "task_categories": ["zero-shot-image-classification"],
        "tags": ["negation", "clip", "omni-negclip", "image-text", source],
        "size_categories": [_size_category(sum(rows_out.values()))],
        "configs": [{
            "config_name": "default",
            "data_files": [{"split": split, "path": path} for split, path in data_files.items()],
        }],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [{"name": split, "num_examples": count} for split, count in rows_out.items() if split in data_files],
        },
    }
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {pretty_name}",
        "",
        "Image–caption pairs with *negated* captions for negation-aware CLIP fine-tuning "
        "([Omni-NegCLIP](https://arxiv.org/abs/2603.29258)). Each row may carry two negations:",
        "",
        "- **presence negation** (`presence_negated`): an object that *is* in the image is negated, so the "
        "caption becomes false (\"a dog on a couch\" → \"there is no dog on the couch\");",
        "- **absence negation** (`absence_negated`): a plausible object that is *not* in the image is added under a "
        "negation, so the caption stays true (\"a dog on a couch, with no cats around\").",
        "",
        "A row may have only one of them; the other is empty.",
        "",
        "## Source",
        "",
        source_description or f"Source: `{source}`.",
        "",
        "## Columns",
        "",
        "| column | meaning |",
        "|---|---|",
    ]
    columns = list(getattr(features, "keys", lambda: [])())
    lines += [f"| `{name}` | {_DATASET_COLUMNS.get(name, '(source-specific)')} |" for name in columns]
    lines += ["", "## How it was built", ""]
    arguments = summary.get("arguments")
    if arguments:
        lines += ["Built with `python data_builder.py` and these settings:", "", "```json", json.dumps(arguments, indent=2, sort_keys=True), "```", ""]
    lines += [
        build_description or "See the source above.",
        "",
        "The quality gate checks every row: a presence-negated caption names `negated_object`, which is in "
        "`present_objects`; an absence-negated caption names `absent_object`, which is not; both hold a negation "
        "cue and differ from the caption.",
        "",
        "## Counts",
        "",
        "| split | rows |",
        "|---|---:|",
    ]
    lines += [f"| {split} | {count} |" for split, count in rows_out.items()]
    lines += [""]
    if "rows_in" in summary:
        lines += [f"Source rows read: {summary['rows_in']}.", ""]
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
        lines += [f"### Longer than CLIP's {long['limit']} tokens", "",
                  "CLIP's text encoder reads only the start of these texts. A negation it would not see was not written "
                  "(counted as `negation_beyond_context`).", ""] + _counts_table(long["texts"], "column")
    examples = summary.get("examples") or []
    if examples:
        lines += ["## Examples", "", "| caption | presence_negated | absence_negated |", "|---|---|---|"]
        lines += [f"| {_cell(row.get('caption'))} | {_cell(row.get('presence_negated'))} | {_cell(row.get('absence_negated'))} |" for row in examples]
        lines += [""]
    made_by = summary.get("provenance")
    if made_by:
        versions = ", ".join(f"{name} {version}" for name, version in sorted((made_by.get("libraries") or {}).items()) if version)
        lines += ["## Provenance", "", f"Seed {made_by.get('seed')}; git commit `{made_by.get('git_commit') or 'unknown'}`; "
                  f"Python {made_by.get('python')}; {versions}.", ""]
    lines += [
        "## License",
        "",
        f"`{license}`. " + (license_note or "The images and original captions keep the terms of their source."),
        "",
        "## Citation",
        "",
        "Omni-NegCLIP: *Enhancing CLIP with Front-Layer Contrastive Fine-Tuning for Comprehensive Negation "
        "Understanding*, arXiv:2603.29258. Cite the source dataset too.",
        "",
    ]
    return "\n".join(lines)
