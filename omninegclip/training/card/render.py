"""The card itself: Hub metadata (YAML, built with `ModelCardData`: `pipeline_tag` and `widget` for the
zero-shot-image-classification widget, `base_model` / `datasets`, `model-index` with one entry per
eval task) above the template `model_card.md` (the repository's top-level file; the package ships it
through a link) filled in from a checkpoint's facts.

Every card begins with `CARD_MARKER`, an HTML comment the Hub does not show: it says which tool wrote
the card, and that tool rewrites a README.md only where the marker is (`is_project_card`).

Public surface: `render_model_card(facts, model_index=None, results_markdown=None, widget=None,
license=None) -> huggingface_hub.ModelCard`, `CARD_TAGS`, `CARD_MARKER`, `is_project_card(text)`,
`TEMPLATE_PATH`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from string import Template

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from omninegclip.training.card.citations import citations_markdown
from omninegclip.training.card.facts import CheckpointFacts
from omninegclip.training.card.names import HUB_URL, public_text
from omninegclip.training.card.widget import stored_image, widget_metadata

# The top-level model_card.md, through the link beside this module; a wheel carries its content
# as package data (pyproject.toml).
TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card.md"
CARD_TAGS = ["clip", "negation", "omni-negclip", "zero-shot-image-classification", "contrastive-learning"]
_MARKER_START = "<!-- omninegclip-card:"
CARD_MARKER = (
    f"{_MARKER_START} written by python -m omninegclip.training.model_card, which rewrites this file; "
    "delete this line to keep your edits -->"
)

HYPERPARAMETERS = (
    ("learning_rate", "learning rate"),
    ("per_device_train_batch_size", "batch size per device"),
    ("gradient_accumulation_steps", "gradient accumulation steps"),
    ("num_train_epochs", "epochs"),
    ("max_steps", "max steps"),
    ("warmup_steps", "warmup steps"),
    ("lr_scheduler_type", "learning-rate schedule"),
    ("weight_decay", "weight decay"),
    ("optim", "optimizer"),
    ("max_grad_norm", "gradient clipping (max norm)"),
    ("bf16", "bf16"),
    ("fp16", "fp16"),
    ("seed", "seed"),
)


def _demote_headings(markdown: str, top: int = 3) -> str:
    """Shift the headings of embedded markdown so that its shallowest one is level `top` (a results
    file's `# ...` would otherwise sit as an H1 under the card's `## Evaluation`)."""
    levels = [len(match.group(1)) for match in re.finditer(r"^(#{1,6}) ", markdown, flags=re.MULTILINE)]
    if not levels:
        return markdown
    shift = top - min(levels)
    return re.sub(r"^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + shift) + " ", markdown, flags=re.MULTILINE)


def _without_title(markdown: str) -> str:
    """Embedded markdown without its own leading H1 (`# Evaluation results` under `## Evaluation`)."""
    lines = markdown.strip().splitlines()
    return "\n".join(lines[1:]).strip() if lines and lines[0].startswith("# ") else markdown.strip()


def _intro(facts: CheckpointFacts) -> str:
    size = f"{facts.image_size}×{facts.image_size}-pixel" if facts.image_size else "its base model's"
    if facts.synthetic_world:
        domain = (
            f"It is a small CLIP for {size} images, trained on the Omni-NegCLIP **image world**: procedurally "
            "drawn synthetic scenes of coloured shapes (circles, squares, stars, hearts, ...) on a plain "
            "background, whose captions name exactly what is drawn. It understands captions about such "
            "shapes only; it has never seen a photograph."
        )
    else:
        domain = f"It reads {size} images."
    if not facts.negation_training:
        return (
            "A CLIP model trained with the **plain CLIP contrastive loss** (InfoNCE in both directions), "
            "no negation objective. " + domain + " In the Omni-NegCLIP project it is the *pretrained* model that "
            "negation fine-tuning starts from; its captions may contain negation words, which this loss does "
            "not teach it to read."
        )
    return (
        "A CLIP model fine-tuned with **Omni-NegCLIP** ([arXiv 2603.29258](https://arxiv.org/abs/2603.29258)) "
        "so that it understands negation: a caption that negates an object *in* the image (presence-based "
        "negation) must no longer match it, and a caption that adds a negated object that is *not* in the "
        "image (absence-based negation) must still match it. " + domain + " The checkpoint is a plain "
        "`CLIPModel`: no custom code is needed to use it."
    )


def _details(facts: CheckpointFacts) -> str:
    settings = facts.settings
    arch = facts.architecture
    started = facts.base_description or (f"`{facts.base_model}`" if facts.base_model else "not recorded")
    lines = [
        f"- **Started from:** {started}"
        + (
            f" (Hub: [`{facts.base_model_id}`]({HUB_URL}/{facts.base_model_id}))"
            if facts.base_model_id and "/" in facts.base_model_id
            else ""
        )
    ]
    data = ", ".join(f"`{name}`" for name in facts.dataset_ids or facts.datasets) or "not recorded"
    built = [
        f"`{entry['name']}` (`data_builder.py {entry['source']}`"
        + (f", {entry['rows']} training rows)" if entry.get("rows") is not None else ")")
        for entry in facts.training_data
    ]
    lines.append(f"- **Training data:** {data}" + (f" — built with {', '.join(built)}" if built else ""))
    if facts.image_size:
        lines.append(
            f"- **Input:** {facts.image_size}×{facts.image_size} RGB images; ViT with {arch['patch_size']}-px "
            f"patches, {arch['vision_layers']} vision / {arch['text_layers']} text layers "
            f"(widths {arch['vision_hidden']} / {arch['text_hidden']}), {arch['projection_dim']}-d embeddings"
        )
    if facts.negation_training:
        lora = settings.get("lora")
        trained = settings.get("trainable_text_blocks", "not recorded")
        if lora:
            layers = {"attention": "attention", "mlp": "MLP", "all": "attention and MLP"}.get(
                lora["target"], lora["target"]
            )
            trained = f"{trained} (LoRA r={lora['r']} on their {layers} layers, merged into the weights)"
        vision_trained = (settings.get("trainable") or {}).get("train_vision_tower")
        lines.append(
            f"- **Trained text blocks:** {trained}; "
            + ("the image tower was trained too" if vision_trained else "the image tower is the base model's")
        )
        lines.append(
            "- **Loss settings:** "
            + (", ".join(f"{k}={v}" for k, v in (settings.get("loss") or {}).items()) or "not recorded")
        )
    else:
        lines.append("- **Objective:** CLIP's contrastive loss on the caption column only (no negated captions)")
    return "\n".join(lines)


def _usage(facts: CheckpointFacts) -> str:
    """Code that runs the card's first widget example (one with an expected answer if any)."""
    example = next((e for e in facts.widget_examples if e.expected_label), facts.widget_examples[0])
    labels = json.dumps(example.candidate_labels)
    if example.is_url:
        load = (
            "import requests\nfrom PIL import Image\n\n"
            f"image = Image.open(requests.get({json.dumps(example.image)}, stream=True).raw)"
        )
    else:
        name = stored_image(facts.widget_examples.index(example), example)
        load = (
            "from huggingface_hub import hf_hub_download\nfrom PIL import Image\n\n"
            f'image = Image.open(hf_hub_download("{facts.repo_id}", "{name}"))'
        )
    answer = (
        f"  # a negation-aware model ranks {json.dumps(example.expected_label)} first"
        if example.expected_label
        else ""
    )
    return (
        f"The widget's example *{example.title}*, in code:\n\n"
        f"```python\n{load}  # {example.title}\n\n"
        "from transformers import pipeline\n\n"
        f'classifier = pipeline("zero-shot-image-classification", model="{facts.repo_id}")\n'
        f"print(classifier(image, candidate_labels={labels})){answer}\n\n"
        "# or the model itself\nimport torch\nfrom transformers import CLIPModel, CLIPProcessor\n\n"
        f'model = CLIPModel.from_pretrained("{facts.repo_id}")\n'
        f'processor = CLIPProcessor.from_pretrained("{facts.repo_id}")\n'
        f'inputs = processor(text={labels}, images=image, return_tensors="pt", padding=True)\n'
        "with torch.no_grad():\n    probs = model(**inputs).logits_per_image.softmax(dim=-1)\n```"
    )


def _training(facts: CheckpointFacts) -> str:
    provenance = facts.provenance
    arguments = provenance.get("training_arguments") or {}
    if not arguments:
        return "Not recorded (no training arguments in a `training_provenance.json` beside the weights)."
    shown = [key for key, _ in HYPERPARAMETERS if key in arguments and arguments[key] not in (None, -1)]
    if "max_steps" in shown and "num_train_epochs" in shown:  # a step budget overrides the epochs
        shown.remove("num_train_epochs")
    rows = [(label, arguments[key]) for key, label in HYPERPARAMETERS if key in shown]
    world = provenance.get("world_size") or 1
    batch = arguments.get("per_device_train_batch_size")
    if batch:
        rows.append(
            (
                "global batch (processes × per device × accumulation)",
                f"{world} × {batch} × {arguments.get('gradient_accumulation_steps', 1)} = "
                f"{world * batch * arguments.get('gradient_accumulation_steps', 1)}",
            )
        )
    if provenance.get("global_step") is not None:
        rows.append(("optimizer steps", provenance["global_step"]))
    lines = ["### Hyperparameters", "", "| setting | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    libraries = provenance.get("libraries") or {}
    lines += ["", "### Framework versions", "", f"- Python {provenance.get('python', 'not recorded')}"]
    lines += [f"- {name} {version}" for name, version in sorted(libraries.items()) if version]
    commit = provenance.get("git_commit")
    lines += [
        "",
        "Every setting, the seed"
        + (f" and the code's git commit (`{commit}`)" if commit else "")
        + " are in `training_provenance.json` beside the weights; the Trainer's log history is in "
        "`trainer_state.json`, its summary in `train_results.json` / `all_results.json`.",
    ]
    return "\n".join(lines)


def _limitations(facts: CheckpointFacts) -> str:
    if facts.synthetic_world:
        return (
            "A demonstration model: it was trained on synthetic shapes at "
            f"{facts.image_size or 'low'} px and is meaningless on photographs or on captions about anything else. "
            "Phrasings far from the world's training templates are understood less well (the results above "
            "separate training and unseen phrasings)."
        )
    return (
        "Negation understanding is measured on the benchmarks above; phrasings far from the training "
        "templates may be understood less well, and the model inherits the base CLIP's biases."
    )


def render_model_card(
    facts: CheckpointFacts,
    model_index: list[dict] | None = None,
    results_markdown: str | None = None,
    widget: list[dict] | None = None,
    license: str | None = None,
) -> ModelCard:
    """The card: Hub metadata (YAML, built with `ModelCardData`) + `model_card.md` filled in from
    `facts`. `model_index`: the `model-index` metadata (one model's entry); `results_markdown`: the
    results table shown under Evaluation; `widget`: the `widget` metadata (default: `facts`' examples
    where the folder stores them); `license`: default `facts.license`. Local absolute paths never
    reach the card (`public_text`)."""
    if widget is None:
        widget = widget_metadata(facts.widget_examples, facts.repo_id)
    tags = CARD_TAGS + (["synthetic-data"] if facts.synthetic_world else [])
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        base_model=facts.base_model_id,
        datasets=facts.dataset_ids or None,
        license=license or facts.license,
        tags=tags
        if facts.negation_training
        else [tag for tag in tags if tag not in ("negation", "omni-negclip")] + ["omni-negclip"],
        widget=widget,
        model_name=facts.model_name if model_index else None,
        eval_results=model_index_to_eval_results(model_index)[1] if model_index else None,
    )
    benchmarks = [result["dataset"]["type"] for entry in model_index or [] for result in entry["results"]]
    pushed = "/" in facts.repo_id
    body = Template(TEMPLATE_PATH.read_text()).safe_substitute(
        model_name=facts.model_name,
        intro=_intro(facts),
        details=_details(facts),
        usage=_usage(facts),
        widget_note=""
        if pushed
        else (
            "> This card was written for a local folder whose Hub repo is not known yet: the widget's images are "
            "named by their path in the folder (`widget/...`). "
            "`python -m omninegclip.training.model_card FOLDER --push_to_hub OWNER/NAME` rewrites them as "
            "`https://huggingface.co/OWNER/NAME/resolve/main/widget/...` (and puts bare "
            "repo names under OWNER) when it pushes.\n"
        ),
        results=_demote_headings(_without_title(results_markdown))
        if results_markdown
        else "No evaluation results were attached to this checkpoint; run `python -m eval` on it.",
        training=_training(facts),
        limitations=_limitations(facts),
        citation=citations_markdown(benchmarks),
    )
    return ModelCard(public_text(f"---\n{data.to_yaml()}\n---\n\n{CARD_MARKER}\n\n{body}"))


def is_project_card(text: str) -> bool:
    """Whether a README.md's `text` is a card this project wrote (and may rewrite): it holds `CARD_MARKER`."""
    return _MARKER_START in text
