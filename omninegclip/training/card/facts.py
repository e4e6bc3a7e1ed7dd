"""What a model card says about a checkpoint folder, read from the folder's own records: `config.json`
(input size, architecture), `training_provenance.json` (what train.py started from, its data and
settings, the negated captions it actually used), config.json's `omninegclip` entry (the loss and the trained
blocks), `widget/examples.json` (the widget examples stored by an earlier card) and `model_card.json`
(the card's inputs given once, e.g. Hub ids, and the training data found, kept for later re-renders
even where the data folders are gone).

A card describes a run of train.py: a folder without `training_provenance.json` (a plain or untrained
CLIP) gets no card, with an error that says why, rather than one that invents its training.

Public surface: `CheckpointFacts`, `checkpoint_facts(folder, ...)`, `check_checkpoint_folder(folder)`,
`CARD_RECORD`. Other pages published beside a model (a demo Space's README) use the facts to say the
same things.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omninegclip.common.cli import UserError
from omninegclip.training.card.names import is_hub_id, public_name, qualified
from omninegclip.training.card.widget import DEFAULT_WIDGET, WidgetExample, stored_widget, world_widget_examples

CARD_RECORD = "model_card.json"  # card inputs given once (and the training data found), reused on every re-render
TRAINING_RECORD = "training_provenance.json"  # what train.py writes beside the weights
DEFAULT_LICENSE = "mit"


@dataclass
class CheckpointFacts:
    """What the card says about a checkpoint folder, read from its own files. Public so that other
    pages published beside the model (e.g. a demo Space's README) say the same things."""

    model_name: str
    repo_id: str
    base_model: str | None  # shown in the text: a Hub id or a local folder's name; None: not recorded
    base_description: str | None  # shown instead, where given (e.g. "a randomly initialised CLIP")
    base_model_id: str | None  # Hub metadata
    datasets: list[str]  # shown in the text
    dataset_ids: list[str]  # Hub metadata
    negation_training: bool  # an Omni-NegCLIP fine-tune (False: plain CLIP contrastive training)
    image_size: int | None
    architecture: dict
    training_data: list[dict]  # data_builder.py datasets found: {name, source, rows}
    widget_examples: list[WidgetExample]
    provenance: dict
    settings: dict
    license: str = DEFAULT_LICENSE  # the Hub license id: given once, then remembered

    @property
    def synthetic_world(self) -> bool:
        return any(entry.get("source") == "shapes" for entry in self.training_data)


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def check_checkpoint_folder(folder: str | Path) -> None:
    """A `UserError` unless `folder` is a model folder with train.py's record of how it was trained."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a checkpoint folder (no config.json)")
    if not (folder / TRAINING_RECORD).is_file():
        raise UserError(
            f"{folder} has no {TRAINING_RECORD}, so nothing in it says how this model was trained (a plain or "
            "untrained CLIP, or weights saved by other code). The card describes a checkpoint written by "
            "train.py: what it started from, its data, its settings and whether it was fine-tuned with "
            "Omni-NegCLIP; written here it would claim a training that never happened. Train the model with "
            "train.py, or write this folder's README.md yourself."
        )


def _describe_training_data(names: list[str]) -> list[dict]:
    """The data_builder.py datasets among `names` (local folders with a build_summary.json)."""
    found = []
    for name in names:
        summary_path = Path(name) / "build_summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        found.append(
            {
                "name": Path(name).name,
                "source": summary.get("source"),
                "rows": (summary.get("rows_out") or {}).get("train"),
            }
        )
    return found


def checkpoint_facts(
    folder: str | Path,
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    base_model_id: str | None = None,
    dataset_ids: list[str] | None = None,
    widget_examples: list[WidgetExample] | None = None,
    base_description: str | None = None,
    namespace: str | None = None,
    remember: bool = False,
    license: str | None = None,
) -> CheckpointFacts:
    """Everything the card of `folder` says, from its files (see the module docstring) and the
    arguments, which win. With `remember` (as `write_model_card` does), the arguments given and the
    training data found are written to `model_card.json`, so that a later re-render keeps them (even
    where the data folders are gone). `namespace`: the owner the folder is pushed under; bare repo
    names are qualified with it. A `UserError` for a folder without train.py's records
    (`check_checkpoint_folder`)."""
    folder = Path(folder)
    check_checkpoint_folder(folder)
    record = _read_json(folder / CARD_RECORD) or {}
    provenance = _read_json(folder / TRAINING_RECORD) or {}
    given = {
        key: value
        for key, value in dict(
            repo_id=repo_id,
            base_model_id=base_model_id,
            dataset_ids=dataset_ids,
            base_description=base_description,
            license=license,
        ).items()
        if value
    }
    record = record | given
    data_names = datasets if datasets is not None else provenance.get("datasets") or []
    training_data = _describe_training_data(data_names) or record.get("training_data") or []
    record["training_data"] = training_data
    if remember:
        (folder / CARD_RECORD).write_text(json.dumps(record, indent=2) + "\n")

    repo_id = qualified(record.get("repo_id") or folder.resolve().name, namespace)
    base = base_model or provenance.get("base_model")
    base_model_id = (
        record.get("base_model_id") or provenance.get("base_model_id") or (base if is_hub_id(base) else None)
    )
    hub_datasets = (
        record.get("dataset_ids") or provenance.get("dataset_ids") or [name for name in data_names if is_hub_id(name)]
    )
    config = _read_json(folder / "config.json") or {}
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    train_reports = [report for report in provenance.get("data") or [] if report.get("split", "train") == "train"]
    negation = (
        any(report.get("with_presence") or report.get("with_absence") for report in train_reports)
        if train_reports
        else True
    )
    return CheckpointFacts(
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=public_name(base) if base else None,
        base_description=record.get("base_description"),
        base_model_id=qualified(base_model_id, namespace) if base_model_id else None,
        datasets=[public_name(name) for name in data_names],
        dataset_ids=[qualified(name, namespace) for name in hub_datasets],
        negation_training=negation,
        image_size=vision.get("image_size"),
        architecture={
            "vision_layers": vision.get("num_hidden_layers"),
            "vision_hidden": vision.get("hidden_size"),
            "patch_size": vision.get("patch_size"),
            "text_layers": text.get("num_hidden_layers"),
            "text_hidden": text.get("hidden_size"),
            "projection_dim": config.get("projection_dim"),
        },
        training_data=training_data,
        widget_examples=widget_examples
        or stored_widget(folder)
        or (
            world_widget_examples()
            if any(entry.get("source") == "shapes" for entry in training_data)
            else DEFAULT_WIDGET
        ),
        provenance=provenance,
        settings=(_read_json(folder / "config.json") or {}).get("omninegclip") or {},
        license=record.get("license") or DEFAULT_LICENSE,
    )
