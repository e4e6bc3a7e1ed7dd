"""The project's model card and Hub upload: `model_card.md` rendered with the Hub metadata that makes
the zero-shot-image-classification widget work (`pipeline_tag`, `widget` with negation labels).

Public surface:
- `WidgetExample`, `DEFAULT_WIDGET`, `load_widget_examples(path)`: the card's widget examples. A local
  image is copied into the checkpoint (`widget/`), and `widget/examples.json` records every example
  with its local image and, where known, the label a negation-aware model must rank first;
- `render_model_card(...) -> huggingface_hub.ModelCard`;
- `write_model_card(folder, ...) -> Path`: the card of a checkpoint folder, as its README.md, from the
  folder's own records (`omninegclip_config.json`, `training_provenance.json`, `eval/model_index.json`,
  `eval/results.md`);
- `push_checkpoint(folder, repo_id, ...) -> str`: create the repo, write the card naming it, upload
  the folder (weights, processor, card; not `checkpoint-*`) in one commit;
- CLI: `python -m omninegclip.model_card CHECKPOINT [--push_to_hub REPO_ID]` re-renders the card (for
  instance after `python -m eval` wrote `CHECKPOINT/eval/`) and optionally pushes.

`Trainer.push_to_hub` would rewrite README.md without this metadata, so `train.py` never uses it:
it pushes with `push_checkpoint`, after the card is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder

from omninegclip.cli import UserError, run_cli

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "model_card.md"
WIDGET_FOLDER = "widget"
WIDGET_RECORD = "examples.json"
HUB_URL = "https://huggingface.co"
# Training checkpoints, logs and partial files stay local; the final weights, processor, card,
# settings, provenance, widget images and eval results are uploaded.
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.partial-*", "training_args.bin"]
COCO_SOFA_CATS = "http://images.cocodataset.org/val2017/000000039769.jpg"  # two cats on a pink sofa, no dog
CARD_TAGS = ["clip", "negation", "omni-negclip", "zero-shot-image-classification", "contrastive-learning"]


@dataclass
class WidgetExample:
    """One widget example. `image`: an http(s) URL, or a local image file (copied into the
    checkpoint and served from the Hub repo). `expected_label`: the candidate a negation-aware
    model must rank first, where the example has one (None: illustration only)."""

    image: str
    candidate_labels: list[str]
    title: str
    expected_label: str | None = None

    def __post_init__(self):
        if len(self.candidate_labels) < 2:
            raise ValueError(f"widget example {self.title!r}: needs at least 2 candidate labels, got {self.candidate_labels}")
        with_comma = [label for label in self.candidate_labels if "," in label or not label.strip()]
        if with_comma:
            # The Hub widget reads candidate_labels as one comma-separated string.
            raise ValueError(f"widget example {self.title!r}: labels must be non-empty and hold no comma, got {with_comma}")
        if self.expected_label is not None and self.expected_label not in self.candidate_labels:
            raise ValueError(
                f"widget example {self.title!r}: expected_label {self.expected_label!r} is not one of {self.candidate_labels}"
            )

    @property
    def is_url(self) -> bool:
        return self.image.startswith(("http://", "https://"))


DEFAULT_WIDGET = [
    WidgetExample(
        COCO_SOFA_CATS,
        ["two cats on a sofa with no dog", "a sofa with no cats", "two cats and a dog on a sofa"],
        "Absence negation: which object is missing?",
        expected_label="two cats on a sofa with no dog",
    ),
    WidgetExample(
        COCO_SOFA_CATS, ["a photo of cats", "a photo with no cats"], "Presence negation", expected_label="a photo of cats"
    ),
]


def load_widget_examples(path: str | Path) -> list[WidgetExample]:
    """Widget examples from a JSON list of {image, candidate_labels, title, expected_label?}; local
    image paths are relative to the JSON file's folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"widget examples file {path} does not exist")
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, list) or not entries:
            raise ValueError("expected a non-empty JSON list of examples")
        examples = [WidgetExample(**entry) for entry in entries]
    except (ValueError, TypeError) as error:
        raise UserError(
            f"widget examples file {path}: {error} (each example: image, candidate_labels (list), title, expected_label)"
        ) from None
    for example in examples:
        if not example.is_url:
            image = (path.parent / example.image).resolve()
            if not image.is_file():
                raise UserError(f"widget examples file {path}: image {example.image!r} of {example.title!r} does not exist")
            example.image = str(image)
    return examples


def _store_widget(folder: Path, examples: list[WidgetExample], repo_id: str) -> list[dict]:
    """Copy local widget images into `folder/widget/`, record the examples there, and return the
    card's `widget` metadata (local images served from the repo)."""
    widget_dir = folder / WIDGET_FOLDER
    stored, metadata = [], []
    for index, example in enumerate(examples):
        image = example.image
        if not example.is_url:
            source = Path(image)
            name = f"example-{index}{source.suffix.lower() or '.png'}"
            target = widget_dir / name
            if source.resolve() != target.resolve():
                widget_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            image = f"{WIDGET_FOLDER}/{name}"
        stored.append(asdict(example) | {"image": image})
        src = image if example.is_url else f"{HUB_URL}/{repo_id}/resolve/main/{image}"
        metadata.append({"src": src, "candidate_labels": ", ".join(example.candidate_labels), "example_title": example.title})
    widget_dir.mkdir(parents=True, exist_ok=True)
    (widget_dir / WIDGET_RECORD).write_text(json.dumps(stored, indent=2) + "\n")
    return metadata


def _stored_widget(folder: Path) -> list[WidgetExample] | None:
    record = folder / WIDGET_FOLDER / WIDGET_RECORD
    if not record.is_file():
        return None
    examples = [WidgetExample(**entry) for entry in json.loads(record.read_text())]
    for example in examples:
        if not example.is_url:
            example.image = str(folder / example.image)
    return examples


def _model_index_entry(index: list[dict], model_name: str, folder: Path) -> list[dict] | None:
    """This model's entry of an eval `model_index.json` (one entry per evaluated model)."""
    names = {model_name, folder.name, str(folder), str(folder.resolve())}
    matching = [entry for entry in index if entry.get("name") in names]
    if not matching and len(index) == 1:
        matching = index
    if not matching:
        logger.warning("eval/model_index.json in %s names %s, none of them this model: no model-index in the card",
                       folder, [entry.get("name") for entry in index])
        return None
    return [matching[0] | {"name": model_name}]


def render_model_card(
    base_model: str,
    datasets: list[str] | None = None,
    repo_id: str = "path/to/this-model",
    settings: dict | None = None,
    model_index: list[dict] | None = None,
    results_markdown: str | None = None,
    training_markdown: str | None = None,
    widget: list[dict] | None = None,
    license: str = "mit",
    base_model_id: str | None = None,
    dataset_ids: list[str] | None = None,
) -> ModelCard:
    """The card: Hub metadata (YAML) + `model_card.md` filled in. `widget`: metadata entries
    ({src, candidate_labels, example_title}); default: `DEFAULT_WIDGET`. Hub metadata takes Hub ids
    only: `base_model_id` / `dataset_ids` name them where `base_model` / `datasets` are local
    folders (which are still named in the text); otherwise the names that are not local paths are used."""
    settings = settings or {}
    model_name = repo_id.split("/")[-1]
    hub_datasets = dataset_ids or [name for name in (datasets or []) if "/" in name and not Path(name).exists()]
    base_model_id = base_model_id or (base_model if not Path(base_model).exists() else None)
    default_widget = [
        {"src": example.image, "candidate_labels": ", ".join(example.candidate_labels), "example_title": example.title}
        for example in DEFAULT_WIDGET
    ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        base_model=base_model_id,
        datasets=hub_datasets or None,
        license=license,
        tags=CARD_TAGS,
        widget=widget or default_widget,
    )
    card_dict = data.to_dict()
    if model_index:
        card_dict["model-index"] = model_index
    lora = settings.get("lora")
    trained = settings.get("trainable_text_blocks", "not recorded")
    if lora:
        layers = {"attention": "attention", "mlp": "MLP", "all": "attention and MLP"}.get(lora["target"], lora["target"])
        trained = f"{trained} (LoRA r={lora['r']} on their {layers} layers, merged into the weights)"
    vision_trained = (settings.get("trainable") or {}).get("train_vision_tower")
    image_tower = "the image tower was trained too" if vision_trained else "the image tower is the base model's"
    body = Template(TEMPLATE_PATH.read_text()).safe_substitute(
        model_name=model_name,
        repo_id=repo_id,
        base_model=base_model,
        datasets=", ".join(f"`{name}`" for name in datasets or []) or "not recorded",
        trained_blocks=trained,
        image_tower=image_tower,
        loss_settings=", ".join(f"{k}={v}" for k, v in (settings.get("loss") or {}).items()) or "not recorded",
        results=results_markdown or "No evaluation results were attached to this checkpoint; run `python -m eval` on it.",
        training=training_markdown
        or "See `training_provenance.json` beside the weights for every setting, the seed and library versions.",
    )
    import yaml

    return ModelCard(f"---\n{yaml.safe_dump(card_dict, sort_keys=False)}---\n\n{body}")


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_model_card(
    folder: str | Path,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    repo_id: str | None = None,
    widget_examples: list[WidgetExample] | None = None,
    license: str = "mit",
    base_model_id: str | None = None,
    dataset_ids: list[str] | None = None,
) -> Path:
    """Render the card of a checkpoint folder and write it as the folder's README.md.

    Read from the folder: settings (`omninegclip_config.json`), base model and datasets (and their
    Hub ids) when not given (`training_provenance.json`), results (`eval/model_index.json`, `eval/results.md`) and,
    when `widget_examples` is None, the examples stored by an earlier call (`widget/examples.json`)."""
    folder = Path(folder)
    provenance = _read_json(folder / "training_provenance.json") or {}
    base_model = base_model or provenance.get("base_model") or "unknown"
    datasets = datasets if datasets is not None else provenance.get("datasets")
    repo_id = repo_id or folder.resolve().name
    examples = widget_examples or _stored_widget(folder) or DEFAULT_WIDGET
    index = _read_json(folder / "eval" / "model_index.json")
    results = folder / "eval" / "results.md"
    card = render_model_card(
        base_model,
        datasets,
        repo_id=repo_id,
        settings=_read_json(folder / "omninegclip_config.json") or {},
        model_index=_model_index_entry(index, repo_id.split("/")[-1], folder) if index else None,
        results_markdown=results.read_text() if results.is_file() else None,
        widget=_store_widget(folder, examples, repo_id),
        license=license,
        base_model_id=base_model_id or provenance.get("base_model_id"),
        dataset_ids=dataset_ids or provenance.get("dataset_ids"),
    )
    path = folder / "README.md"
    card.save(path)
    return path


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Omni-NegCLIP checkpoint",
    also_ignore: list[str] | None = None,
    **card_kwargs,
) -> str:
    """Create (or reuse) the Hub repo, write the card naming it, and upload the folder in one commit
    (less `also_ignore`, patterns like UPLOAD_IGNORE's). Returns the full repo id. `card_kwargs` go to `write_model_card`."""
    folder = Path(folder)
    full_id = create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    write_model_card(folder, repo_id=full_id, **card_kwargs)
    upload_folder(
        repo_id=full_id, folder_path=str(folder), commit_message=commit_message, token=token,
        ignore_patterns=UPLOAD_IGNORE + list(also_ignore or []),
    )
    logger.info("pushed %s to %s/%s", folder, HUB_URL, full_id)
    return full_id


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="(Re)write a checkpoint's model card; optionally push the checkpoint.")
    parser.add_argument("checkpoint", help="a checkpoint folder written by train.py")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="push the folder to this Hub repo (name or owner/name)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--widget_examples", help="JSON list of widget examples (default: the folder's own, else built-in)")
    parser.add_argument("--license", default="mit")
    args = parser.parse_args(argv)
    folder = Path(args.checkpoint)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a checkpoint folder (no config.json)")
    examples = load_widget_examples(args.widget_examples) if args.widget_examples else None
    if args.push_to_hub:
        repo_id = push_checkpoint(folder, args.push_to_hub, private=args.private or None,
                                  widget_examples=examples, license=args.license)
        print(f"pushed to {HUB_URL}/{repo_id}")
    else:
        print(f"wrote {write_model_card(folder, widget_examples=examples, license=args.license)}")


if __name__ == "__main__":
    run_cli(main)
