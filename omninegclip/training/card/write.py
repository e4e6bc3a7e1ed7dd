"""The card of a checkpoint folder, from the folder's own records (see `facts`) and its evaluation
results: an `EvalResults` given (the entry of one model in it), else the folder's
`eval/model_index.json` and `eval/results.md` (what `python -m eval --out FOLDER/eval` and the
built-in default's `attach_results` leave there).

`card_text` renders it and writes nothing; `write_model_card` writes it as the folder's README.md,
with the widget images and the card's inputs beside it (`widget/`, `model_card.json`). It never
writes over a README.md that this project did not write (one without `CARD_MARKER`: a card of the
user's own) unless told to (`overwrite=True`, the command line's `--overwrite`).

Public surface: `card_text(folder, ...) -> str`, `write_model_card(folder, ...) -> Path`,
`check_card_writable(folder, overwrite)`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from huggingface_hub import ModelCard

from omninegclip.common.cli import UserError
from omninegclip.common.results import EvalResults, results_markdown
from omninegclip.training.card.facts import CheckpointFacts, check_checkpoint_folder, checkpoint_facts
from omninegclip.training.card.render import is_project_card, render_model_card
from omninegclip.training.card.widget import WidgetExample, store_widget

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"


def check_card_writable(folder: str | Path, overwrite: bool = False) -> None:
    """A `UserError` unless `folder` has the records a card is made from and its README.md, if any,
    is a card this project wrote (or `overwrite`)."""
    folder = Path(folder)
    check_checkpoint_folder(folder)
    readme = folder / CARD_FILE
    if overwrite or not readme.is_file() or is_project_card(readme.read_text(errors="replace")):
        return
    raise UserError(
        f"{readme} exists and was not written by this tool (it lacks the line `<!-- omninegclip-card: ... -->` "
        "that every card of Omni-NegCLIP begins with): writing the card would replace it, its text and its "
        "metadata (license, tags) with the project's. Pass --overwrite (overwrite=True from Python) to replace "
        "it, or move it out of the folder first."
    )


def _model_index_entry(index: list[dict], model_name: str, folder: Path) -> list[dict] | None:
    """This model's entry of an eval `model_index.json` (one entry per evaluated model)."""
    names = {model_name, folder.name, str(folder), str(folder.resolve())}
    matching = [entry for entry in index if entry.get("name") in names]
    if not matching and len(index) == 1:
        matching = index
    if not matching:
        logger.warning(
            "eval/model_index.json in %s names %s, none of them this model: no model-index in the card",
            folder,
            [entry.get("name") for entry in index],
        )
        return None
    return [matching[0] | {"name": model_name}]


def _read_text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _render(
    folder: Path, facts: CheckpointFacts, namespace: str | None, results: EvalResults | None, results_model: str | None
) -> ModelCard:
    if results is not None:
        index, markdown = [results.model_index_entry(results_model or facts.model_name)], results_markdown(results)
    else:
        index_file = _read_text(folder / "eval" / "model_index.json")
        index, markdown = json.loads(index_file) if index_file else None, _read_text(folder / "eval" / "results.md")
    model_index = _model_index_entry(index, facts.model_name, folder) if index else None
    if model_index and namespace:
        bare = {name.split("/")[-1]: name for name in facts.dataset_ids}
        for result in model_index[0]["results"]:
            result["dataset"]["type"] = bare.get(result["dataset"]["type"], result["dataset"]["type"])
    return render_model_card(facts, model_index=model_index, results_markdown=markdown)


def card_text(
    folder: str | Path,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    repo_id: str | None = None,
    widget_examples: list[WidgetExample] | None = None,
    license: str | None = None,
    base_model_id: str | None = None,
    dataset_ids: list[str] | None = None,
    base_description: str | None = None,
    namespace: str | None = None,
    results: EvalResults | None = None,
    results_model: str | None = None,
) -> str:
    """The card `write_model_card` would write for `folder` with the same settings, as text; nothing
    is written (the widget images it names are where `write_model_card` copies them, `widget/`)."""
    folder = Path(folder)
    facts = checkpoint_facts(
        folder,
        repo_id=repo_id,
        base_model=base_model,
        datasets=datasets,
        base_model_id=base_model_id,
        dataset_ids=dataset_ids,
        widget_examples=widget_examples,
        base_description=base_description,
        namespace=namespace,
        license=license,
    )
    return str(_render(folder, facts, namespace, results, results_model))


def write_model_card(
    folder: str | Path,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    repo_id: str | None = None,
    widget_examples: list[WidgetExample] | None = None,
    license: str | None = None,
    base_model_id: str | None = None,
    dataset_ids: list[str] | None = None,
    base_description: str | None = None,
    namespace: str | None = None,
    results: EvalResults | None = None,
    results_model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Render the card of a checkpoint folder and write it as the folder's README.md (returned).

    Read from the folder (see `checkpoint_facts`): settings, base model and datasets (and their Hub
    ids), the widget examples stored by an earlier call, the license given earlier (default MIT).
    The eval results: `results` (an `EvalResults`; the entry of the model named `results_model` in
    it) where given, else the folder's `eval/model_index.json` and `eval/results.md`.
    `base_description` replaces the base model's name in the text (e.g. "a randomly initialised
    CLIP"); `namespace` is the owner the folder is pushed under. A `UserError`, before anything is
    written, for a folder without train.py's records or with a README.md this project did not write
    (unless `overwrite`)."""
    folder = Path(folder)
    check_card_writable(folder, overwrite)
    facts = checkpoint_facts(
        folder,
        repo_id=repo_id,
        base_model=base_model,
        datasets=datasets,
        base_model_id=base_model_id,
        dataset_ids=dataset_ids,
        widget_examples=widget_examples,
        base_description=base_description,
        namespace=namespace,
        license=license,
        remember=True,
    )
    store_widget(folder, facts.widget_examples)
    path = folder / CARD_FILE
    _render(folder, facts, namespace, results, results_model).save(path)
    return path
