"""The project's model card: `model_card.md` rendered with Hub metadata that makes the
zero-shot-image-classification widget work (`pipeline_tag`, `widget` with negation labels).

`Trainer.push_to_hub` rewrites README.md without that metadata, so `train.py` writes this card
after it. Public surface: `render_model_card(...) -> huggingface_hub.ModelCard`, `write_model_card(folder, ...)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from huggingface_hub import ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "model_card.md"
COCO_SOFA_CATS = "http://images.cocodataset.org/val2017/000000039769.jpg"  # two cats on a pink sofa

DEFAULT_WIDGET = [
    {
        "src": COCO_SOFA_CATS,
        "candidate_labels": "two cats on a sofa, a sofa with no cats, two cats on a sofa with no dog",
        "example_title": "Negation: which object is missing?",
    },
    {
        "src": COCO_SOFA_CATS,
        "candidate_labels": "a photo of cats, a photo with no cats",
        "example_title": "Presence negation",
    },
]


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
) -> ModelCard:
    settings = settings or {}
    # Hub `datasets` metadata takes Hub ids only; local folders are still named in the text.
    hub_datasets = [name for name in (datasets or []) if "/" in name and not Path(name).exists()]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        base_model=base_model if not Path(base_model).exists() else None,
        datasets=hub_datasets or None,
        license=license,
        tags=["clip", "negation", "omni-negclip", "zero-shot-image-classification", "contrastive-learning"],
        widget=widget or DEFAULT_WIDGET,
        model_name=repo_id.split("/")[-1],
    )
    card_dict = data.to_dict()
    if model_index:
        card_dict["model-index"] = model_index
    body = Template(TEMPLATE_PATH.read_text()).safe_substitute(
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base_model,
        datasets=", ".join(f"`{name}`" for name in datasets or []) or "not recorded",
        trained_blocks=settings.get("trainable_text_blocks", "not recorded"),
        loss_settings=", ".join(f"{k}={v}" for k, v in (settings.get("loss") or {}).items()) or "not recorded",
        results=results_markdown or "No evaluation results were attached to this checkpoint; run `python -m eval` on it.",
        training=training_markdown or "See `training_provenance.json` beside the weights for every setting, the seed and library versions.",
    )
    import yaml

    return ModelCard(f"---\n{yaml.safe_dump(card_dict, sort_keys=False)}---\n\n{body}")


def write_model_card(folder: str | Path, base_model: str, datasets: list[str] | None = None, repo_id: str | None = None, **kwargs) -> Path:
    """Render the card for a checkpoint folder (reading its `omninegclip_config.json` and, if present,
    its `eval/model_index.json` and `eval/results.md`) and write it as the folder's README.md."""
    folder = Path(folder)
    settings_path = folder / "omninegclip_config.json"
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    index_path, table_path = folder / "eval" / "model_index.json", folder / "eval" / "results.md"
    kwargs.setdefault("model_index", json.loads(index_path.read_text()) if index_path.is_file() else None)
    kwargs.setdefault("results_markdown", table_path.read_text() if table_path.is_file() else None)
    card = render_model_card(base_model, datasets, repo_id=repo_id or folder.name, settings=settings, **kwargs)
    path = folder / "README.md"
    card.save(path)
    return path
