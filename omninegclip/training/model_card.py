"""The project's model card and Hub upload: `model_card.md` rendered with the Hub metadata that makes
the zero-shot-image-classification widget work (`pipeline_tag`, `widget` with negation labels),
`base_model` / `datasets`, and `model-index` with one entry per eval task.

Public surface:
- `WidgetExample`, `DEFAULT_WIDGET`, `load_widget_examples(path)`, `world_widget_examples()`: the
  card's widget examples. A local image is copied into the checkpoint (`widget/`), and
  `widget/examples.json` records every example with its local image and, where known, the label a
  negation-aware model must rank first;
- `CheckpointFacts`, `checkpoint_facts(folder, ...)`: what a card says about a checkpoint folder
  (repo id, base model and datasets with their Hub ids, plain-CLIP or Omni-NegCLIP training, input
  size, image-world data, widget examples, provenance), from the folder's own files. Other pages
  published beside a model (a demo Space's README) use it to say the same things;
- `public_text(text)`: text with absolute local paths reduced to their last component;
- `citations_markdown(benchmark_types)`: BibTeX of the method, CLIP and the benchmarks evaluated on;
- `render_model_card(facts, ...) -> huggingface_hub.ModelCard`;
- `write_model_card(folder, ..., results=None, results_model=None) -> Path`: the card of a checkpoint
  folder, as its README.md, from the folder's own records (`config.json`, `omninegclip_config.json`,
  `training_provenance.json`, `model_card.json`) and the eval results: an `EvalResults` given, else
  the folder's `eval/model_index.json` and `eval/results.md`;
- `push_checkpoint(folder, repo_id, ...) -> str`: create the repo, write the card naming it (widget
  URLs inside the repo, bare repo names under its owner), upload the folder (weights, processor,
  card, Trainer state and metrics, tracker logs; not `checkpoint-*`) in one commit;
- CLI: `python -m omninegclip.training.model_card CHECKPOINT [--push_to_hub REPO_ID]` re-renders the card (for
  instance after `python -m eval` wrote `CHECKPOINT/eval/`) and optionally pushes.

`Trainer.push_to_hub` would rewrite README.md without this metadata, so `train.py` never uses it:
it pushes with `push_checkpoint`, after the card is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id

from omninegclip.common.cli import UserError, run_cli
from omninegclip.common.results import EvalResults, results_markdown

logger = logging.getLogger(__name__)

# The top-level model_card.md; a wheel carries it as package data (pyproject.toml).
TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card.md"
WIDGET_FOLDER = "widget"
WIDGET_RECORD = "examples.json"
HUB_URL = "https://huggingface.co"
# Training checkpoints and partial files stay local; the final weights, processor, card, settings,
# provenance, widget images, eval results, the Trainer's state and metrics and the tracker logs
# (`runs/`, as the Trainer's own push uploads them) are uploaded.
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.partial-*", "training_args.bin"]
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


def _widget_src(image: str, is_url: bool, repo_id: str) -> str:
    """The widget's image URL: an http(s) image as it is; an image of the folder from the repo it is
    pushed to. Without a namespace (a local folder whose repo is not known yet) the path inside the
    repo: `push_checkpoint` rewrites the card with the full URL when it pushes."""
    if is_url:
        return image
    return f"{HUB_URL}/{repo_id}/resolve/main/{image}" if "/" in repo_id else image


def _stored_name(index: int, image: str) -> str:
    """The file name of the `index`-th widget example's local image inside `widget/`."""
    return f"example-{index}{Path(image).suffix.lower() or '.png'}"


def _store_widget(folder: Path, examples: list[WidgetExample], repo_id: str) -> list[dict]:
    """Copy local widget images into `folder/widget/`, record the examples there, and return the
    card's `widget` metadata (local images served from the repo)."""
    widget_dir = folder / WIDGET_FOLDER
    stored, metadata = [], []
    for index, example in enumerate(examples):
        image = example.image
        if not example.is_url:
            source = Path(image)
            name = _stored_name(index, image)
            target = widget_dir / name
            if source.resolve() != target.resolve():
                widget_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            image = f"{WIDGET_FOLDER}/{name}"
        stored.append(asdict(example) | {"image": image})
        metadata.append({"src": _widget_src(image, example.is_url, repo_id), "candidate_labels": ", ".join(example.candidate_labels),
                         "example_title": example.title})
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


# ---------------------------------------------------------------------------------------------- text


# Absolute paths of this machine ("/home/x/runs/a", "~/data", "C:\\x"), not the path of a URL.
_LOCAL_PATH = re.compile(r"(?<![\w/:.~-])(?:~|[A-Za-z]:\\|/)(?:[\w.@+-]+[/\\])+[\w.@+-]*")


def public_text(text: str) -> str:
    """`text` with every absolute local path replaced by its last component: a card is public, and a
    path of the machine that wrote it means nothing to its readers."""
    return _LOCAL_PATH.sub(lambda match: Path(match.group(0).rstrip("/\\")).name or match.group(0), text)


def _public_name(name: str) -> str:
    """A Hub id as it is, a local path by its folder name."""
    return Path(name).name if Path(name).expanduser().exists() or Path(name).is_absolute() else name


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


def _is_hub_id(name: str | None) -> bool:
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _qualified(name: str, namespace: str | None) -> str:
    """A bare repo name (one of the project's own repos, e.g. the default's `omninegclip-world`) in
    `namespace`, the owner the checkpoint is pushed under; a name with an owner as it is."""
    return f"{namespace}/{name}" if namespace and "/" not in name else name


CITATIONS = {
    # key: (what it is, BibTeX). Fields that could not be verified are left out and said so.
    "omninegclip": ("the method", """@misc{omninegclip,
  title         = {Omni-NegCLIP: Enhancing CLIP with Front-Layer Contrastive Fine-Tuning for Comprehensive Negation Understanding},
  note          = {author list: see the arXiv page},
  eprint        = {2603.29258},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2603.29258}
}"""),
    "clip": ("the CLIP architecture", """@inproceedings{radford2021clip,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and Krueger, Gretchen and Sutskever, Ilya},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning (ICML)},
  year      = {2021},
  eprint    = {2103.00020},
  archivePrefix = {arXiv}
}"""),
    "ccneg": ("CC-Neg (CoN-CLIP)", """@inproceedings{singh2025conclip,
  title     = {Learning the Power of ``No'': Foundation Models with Negations},
  author    = {Singh, Jaisidh and Shrivastava, Ishaan and Vatsa, Mayank and Singh, Richa and Bharati, Aparna},
  booktitle = {Proceedings of the Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2025},
  pages     = {7991--8001},
  eprint    = {2403.20312},
  archivePrefix = {arXiv}
}"""),
    "negbench": ("NegBench", """@misc{alhamoud2025negbench,
  title         = {Vision-Language Models Do Not Understand Negation},
  author        = {Alhamoud, Kumail and Alshammari, Shaden and Tian, Yonglong and Li, Guohao and Torr, Philip and Kim, Yoon and Ghassemi, Marzyeh},
  year          = {2025},
  eprint        = {2501.09425},
  archivePrefix = {arXiv}
}"""),
    "negrefcocog": ("NegRefCOCOg (NegationCLIP)", """@misc{park2025negationclip,
  title         = {Know ``No'' Better: A Data-Driven Approach for Enhancing Negation Awareness in CLIP},
  author        = {Park, Junsung and Lee, Jungbeom and Song, Jongyoon and Yu, Sangwon and Jung, Dahuin and Yoon, Sungroh},
  year          = {2025},
  eprint        = {2501.10913},
  archivePrefix = {arXiv}
}"""),
    "valse": ("VALSE", """@inproceedings{parcalabescu2022valse,
  title     = {{VALSE}: A Task-Independent Benchmark for Vision and Language Models Centered on Linguistic Phenomena},
  author    = {Parcalabescu, Letitia and Cafagna, Michele and Muradjan, Lilitta and Frank, Anette and Calixto, Iacer and Gatt, Albert},
  booktitle = {Proceedings of the 60th Annual Meeting of the Association for Computational Linguistics (Volume 1: Long Papers)},
  pages     = {8253--8280},
  year      = {2022},
  doi       = {10.18653/v1/2022.acl-long.567}
}"""),
    "sugarcrepe": ("SugarCrepe", """@misc{hsieh2023sugarcrepe,
  title  = {SugarCrepe: Fixing Hackable Benchmarks for Vision-Language Compositionality},
  author = {Hsieh, Cheng-Yu and Zhang, Jieyu and others},
  note   = {full author list and venue: see the repository},
  year   = {2023},
  url    = {https://github.com/RAIVNLab/sugar-crepe}
}"""),
}
# The eval tasks' model-index `dataset.type` (eval/tasks.py) -> the CITATIONS key of their benchmark.
_BENCHMARK_CITATION = {"ccneg": "ccneg", "negbench": "negbench", "negrefcocog": "negrefcocog", "valse": "valse",
                       "sugarcrepe": "sugarcrepe"}


def citations_markdown(benchmark_types: list[str]) -> str:
    """The card's Citation section body: the method, CLIP, and each benchmark evaluated on."""
    keys = ["omninegclip", "clip"] + list(dict.fromkeys(_BENCHMARK_CITATION[kind] for kind in benchmark_types
                                                        if kind in _BENCHMARK_CITATION))
    lines = []
    for key in keys:
        what, bibtex = CITATIONS[key]
        lines += [f"{what[0].upper()}{what[1:]}:", "", "```bibtex", bibtex, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- facts

CARD_RECORD = "model_card.json"  # card inputs given once (and the training data found), reused on every re-render
HYPERPARAMETERS = (
    ("learning_rate", "learning rate"), ("per_device_train_batch_size", "batch size per device"),
    ("gradient_accumulation_steps", "gradient accumulation steps"), ("num_train_epochs", "epochs"),
    ("max_steps", "max steps"), ("warmup_steps", "warmup steps"), ("lr_scheduler_type", "learning-rate schedule"),
    ("weight_decay", "weight decay"), ("optim", "optimizer"), ("max_grad_norm", "gradient clipping (max norm)"),
    ("bf16", "bf16"), ("fp16", "fp16"), ("seed", "seed"),
)


@dataclass
class CheckpointFacts:
    """What the card says about a checkpoint folder, read from its own files. Public so that other
    pages published beside the model (e.g. a demo Space's README) say the same things."""

    model_name: str
    repo_id: str
    base_model: str  # shown in the text: a Hub id or a local folder's name
    base_description: str | None  # shown instead, where given (e.g. "a randomly initialised CLIP")
    base_model_id: str | None  # Hub metadata
    datasets: list[str]  # shown in the text
    dataset_ids: list[str]  # Hub metadata
    negation_training: bool  # an Omni-NegCLIP fine-tune (False: plain CLIP contrastive training)
    image_size: int | None
    architecture: dict
    training_data: list[dict]  # data_builder.py datasets found: {name, source, pretty_name, rows}
    widget_examples: list[WidgetExample]
    provenance: dict
    settings: dict

    @property
    def synthetic_world(self) -> bool:
        return any(entry.get("source") == "shapes" for entry in self.training_data)


def _describe_training_data(names: list[str]) -> list[dict]:
    """The data_builder.py datasets among `names` (local folders with a build_summary.json)."""
    found = []
    for name in names:
        summary_path = Path(name) / "build_summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        found.append({"name": Path(name).name, "source": summary.get("source"),
                      "rows": (summary.get("rows_out") or {}).get("train")})
    return found


def checkpoint_facts(folder: str | Path, repo_id: str | None = None, base_model: str | None = None,
                     datasets: list[str] | None = None, base_model_id: str | None = None,
                     dataset_ids: list[str] | None = None, widget_examples: list[WidgetExample] | None = None,
                     base_description: str | None = None, namespace: str | None = None, remember: bool = False) -> CheckpointFacts:
    """Everything the card of `folder` says, from its files (`config.json`, `training_provenance.json`,
    `omninegclip_config.json`, `widget/examples.json`, `model_card.json`) and the arguments, which win.
    With `remember` (as `write_model_card` does), the arguments given and the training data found are
    written to `model_card.json`, so that a later re-render keeps them (even where the data folders
    are gone). `namespace`: the owner the folder is pushed under; bare repo names are qualified with it."""
    folder = Path(folder)
    record = _read_json(folder / CARD_RECORD) or {}
    provenance = _read_json(folder / "training_provenance.json") or {}
    given = {key: value for key, value in dict(repo_id=repo_id, base_model_id=base_model_id, dataset_ids=dataset_ids,
                                                 base_description=base_description).items() if value}
    record = record | given
    data_names = datasets if datasets is not None else provenance.get("datasets") or []
    training_data = _describe_training_data(data_names) or record.get("training_data") or []
    record["training_data"] = training_data
    if remember:
        (folder / CARD_RECORD).write_text(json.dumps(record, indent=2) + "\n")

    repo_id = _qualified(record.get("repo_id") or folder.resolve().name, namespace)
    base_model_id = record.get("base_model_id") or provenance.get("base_model_id")
    base = base_model or provenance.get("base_model") or "unknown"
    base_model_id = base_model_id or (base if _is_hub_id(base) else None)
    hub_datasets = record.get("dataset_ids") or provenance.get("dataset_ids") or [name for name in data_names if _is_hub_id(name)]
    config = _read_json(folder / "config.json") or {}
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    train_reports = [report for report in provenance.get("data") or [] if report.get("split", "train") == "train"]
    negation = (any(report.get("with_presence") or report.get("with_absence") for report in train_reports)
                if train_reports else True)
    return CheckpointFacts(
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=_public_name(base),
        base_description=record.get("base_description"),
        base_model_id=_qualified(base_model_id, namespace) if base_model_id else None,
        datasets=[_public_name(name) for name in data_names],
        dataset_ids=[_qualified(name, namespace) for name in hub_datasets],
        negation_training=negation,
        image_size=vision.get("image_size"),
        architecture={"vision_layers": vision.get("num_hidden_layers"), "vision_hidden": vision.get("hidden_size"),
                      "patch_size": vision.get("patch_size"), "text_layers": text.get("num_hidden_layers"),
                      "text_hidden": text.get("hidden_size"), "projection_dim": config.get("projection_dim")},
        training_data=training_data,
        widget_examples=widget_examples or _stored_widget(folder) or (world_widget_examples() if any(
            entry.get("source") == "shapes" for entry in training_data) else DEFAULT_WIDGET),
        provenance=provenance,
        settings=_read_json(folder / "omninegclip_config.json") or {},
    )


def world_widget_examples() -> list[WidgetExample]:
    """Widget examples for a model of the image world when none were given: the built-in default's
    world scenes and labels (rendered into a temporary folder; the card copies them into the
    checkpoint), not photographs such a model has never seen."""
    import tempfile

    from pipeline.default import write_widget_examples

    return load_widget_examples(write_widget_examples(Path(tempfile.mkdtemp(prefix="omninegclip-widget-"))))


# ---------------------------------------------------------------------------------------------- card


def _intro(facts: CheckpointFacts) -> str:
    size = f"{facts.image_size}×{facts.image_size}-pixel" if facts.image_size else "its base model's"
    if facts.synthetic_world:
        domain = (f"It is a small CLIP for {size} images, trained on the Omni-NegCLIP **image world**: procedurally "
                  "drawn synthetic scenes of coloured shapes (circles, squares, stars, hearts, ...) on a plain "
                  "background, whose captions name exactly what is drawn. It understands captions about such "
                  "shapes only; it has never seen a photograph.")
    else:
        domain = f"It reads {size} images."
    if not facts.negation_training:
        return ("A CLIP model trained with the **plain CLIP contrastive loss** (InfoNCE in both directions), "
                "no negation objective. " + domain + " In the Omni-NegCLIP project it is the *pretrained* model that "
                "negation fine-tuning starts from; its captions may contain negation words, which this loss does "
                "not teach it to read.")
    return ("A CLIP model fine-tuned with **Omni-NegCLIP** ([arXiv 2603.29258](https://arxiv.org/abs/2603.29258)) "
            "so that it understands negation: a caption that negates an object *in* the image (presence-based "
            "negation) must no longer match it, and a caption that adds a negated object that is *not* in the "
            "image (absence-based negation) must still match it. " + domain + " The checkpoint is a plain "
            "`CLIPModel`: no custom code is needed to use it.")


def _details(facts: CheckpointFacts) -> str:
    settings = facts.settings
    arch = facts.architecture
    lines = [f"- **Started from:** {facts.base_description or f'`{facts.base_model}`'}"
             + (f" (Hub: [`{facts.base_model_id}`]({HUB_URL}/{facts.base_model_id}))" if facts.base_model_id and "/" in facts.base_model_id else "")]
    data = ", ".join(f"`{name}`" for name in facts.dataset_ids or facts.datasets) or "not recorded"
    built = [f"`{entry['name']}` (`data_builder.py {entry['source']}`"
             + (f", {entry['rows']} training rows)" if entry.get("rows") is not None else ")") for entry in facts.training_data]
    lines.append(f"- **Training data:** {data}" + (f" — built with {', '.join(built)}" if built else ""))
    if facts.image_size:
        lines.append(f"- **Input:** {facts.image_size}×{facts.image_size} RGB images; ViT with {arch['patch_size']}-px patches, "
                     f"{arch['vision_layers']} vision / {arch['text_layers']} text layers (widths {arch['vision_hidden']} / "
                     f"{arch['text_hidden']}), {arch['projection_dim']}-d embeddings")
    if facts.negation_training:
        lora = settings.get("lora")
        trained = settings.get("trainable_text_blocks", "not recorded")
        if lora:
            layers = {"attention": "attention", "mlp": "MLP", "all": "attention and MLP"}.get(lora["target"], lora["target"])
            trained = f"{trained} (LoRA r={lora['r']} on their {layers} layers, merged into the weights)"
        vision_trained = (settings.get("trainable") or {}).get("train_vision_tower")
        lines.append(f"- **Trained text blocks:** {trained}; "
                     + ("the image tower was trained too" if vision_trained else "the image tower is the base model's"))
        lines.append("- **Loss settings:** " + (", ".join(f"{k}={v}" for k, v in (settings.get("loss") or {}).items()) or "not recorded"))
    else:
        lines.append("- **Objective:** CLIP's contrastive loss on the caption column only (no negated captions)")
    return "\n".join(lines)


def _usage(facts: CheckpointFacts) -> str:
    """Code that runs the card's first widget example (one with an expected answer if any)."""
    example = next((e for e in facts.widget_examples if e.expected_label), facts.widget_examples[0])
    labels = json.dumps(example.candidate_labels)
    if example.is_url:
        load = f"import requests\nfrom PIL import Image\n\nimage = Image.open(requests.get({json.dumps(example.image)}, stream=True).raw)"
    else:
        name = f"{WIDGET_FOLDER}/{_stored_name(facts.widget_examples.index(example), example.image)}"
        load = ("from huggingface_hub import hf_hub_download\nfrom PIL import Image\n\n"
                f'image = Image.open(hf_hub_download("{facts.repo_id}", "{name}"))')
    answer = f"  # a negation-aware model ranks {json.dumps(example.expected_label)} first" if example.expected_label else ""
    return (f"The widget's example *{example.title}*, in code:\n\n"
            f"```python\n{load}  # {example.title}\n\n"
            "from transformers import pipeline\n\n"
            f'classifier = pipeline("zero-shot-image-classification", model="{facts.repo_id}")\n'
            f"print(classifier(image, candidate_labels={labels})){answer}\n\n"
            "# or the model itself\nimport torch\nfrom transformers import CLIPModel, CLIPProcessor\n\n"
            f'model = CLIPModel.from_pretrained("{facts.repo_id}")\n'
            f'processor = CLIPProcessor.from_pretrained("{facts.repo_id}")\n'
            f'inputs = processor(text={labels}, images=image, return_tensors="pt", padding=True)\n'
            "with torch.no_grad():\n    probs = model(**inputs).logits_per_image.softmax(dim=-1)\n```")


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
        rows.append(("global batch (processes × per device × accumulation)",
                     f"{world} × {batch} × {arguments.get('gradient_accumulation_steps', 1)} = "
                     f"{world * batch * arguments.get('gradient_accumulation_steps', 1)}"))
    if provenance.get("global_step") is not None:
        rows.append(("optimizer steps", provenance["global_step"]))
    lines = ["### Hyperparameters", "", "| setting | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    libraries = provenance.get("libraries") or {}
    lines += ["", "### Framework versions", "", f"- Python {provenance.get('python', 'not recorded')}"]
    lines += [f"- {name} {version}" for name, version in sorted(libraries.items()) if version]
    commit = provenance.get("git_commit")
    lines += ["", "Every setting, the seed" + (f" and the code's git commit (`{commit}`)" if commit else "")
              + " are in `training_provenance.json` beside the weights; the Trainer's log history is in "
              "`trainer_state.json`, its summary in `train_results.json` / `all_results.json`."]
    return "\n".join(lines)


def _limitations(facts: CheckpointFacts) -> str:
    if facts.synthetic_world:
        return ("A demonstration model: it was trained on synthetic shapes at "
                f"{facts.image_size or 'low'} px and is meaningless on photographs or on captions about anything else. "
                "Phrasings far from the world's training templates are understood less well (the results above "
                "separate training and unseen phrasings).")
    return ("Negation understanding is measured on the benchmarks above; phrasings far from the training "
            "templates may be understood less well, and the model inherits the base CLIP's biases.")


def render_model_card(
    facts: CheckpointFacts,
    model_index: list[dict] | None = None,
    results_markdown: str | None = None,
    widget: list[dict] | None = None,
    license: str = "mit",
) -> ModelCard:
    """The card: Hub metadata (YAML, built with `ModelCardData`) + `model_card.md` filled in from
    `facts`. Local absolute paths never reach it (`public_text`)."""
    if widget is None:
        widget = [{"src": _widget_src(e.image, e.is_url, facts.repo_id) if e.is_url else e.image,
                   "candidate_labels": ", ".join(e.candidate_labels), "example_title": e.title} for e in facts.widget_examples]
    tags = CARD_TAGS + (["synthetic-data"] if facts.synthetic_world else [])
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        base_model=facts.base_model_id,
        datasets=facts.dataset_ids or None,
        license=license,
        tags=tags if facts.negation_training else [tag for tag in tags if tag not in ("negation", "omni-negclip")] + ["omni-negclip"],
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
        widget_note="" if pushed else (
            "> This card was written for a local folder whose Hub repo is not known yet: the widget's images are "
            "named by their path in the folder (`widget/...`). `python -m omninegclip.training.model_card FOLDER --push_to_hub "
            "OWNER/NAME` rewrites them as `https://huggingface.co/OWNER/NAME/resolve/main/widget/...` (and puts bare "
            "repo names under OWNER) when it pushes.\n"),
        results=_demote_headings(_without_title(results_markdown)) if results_markdown
        else "No evaluation results were attached to this checkpoint; run `python -m eval` on it.",
        training=_training(facts),
        limitations=_limitations(facts),
        citation=citations_markdown(benchmarks),
    )
    return ModelCard(public_text(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def write_model_card(
    folder: str | Path,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    repo_id: str | None = None,
    widget_examples: list[WidgetExample] | None = None,
    license: str = "mit",
    base_model_id: str | None = None,
    dataset_ids: list[str] | None = None,
    base_description: str | None = None,
    namespace: str | None = None,
    results: EvalResults | None = None,
    results_model: str | None = None,
) -> Path:
    """Render the card of a checkpoint folder and write it as the folder's README.md.

    Read from the folder (see `checkpoint_facts`): settings, base model and datasets (and their Hub
    ids), the widget examples stored by an earlier call. The eval results: `results` (an
    `EvalResults`; the entry of the model named `results_model` in it) where given, else the
    folder's `eval/model_index.json` and `eval/results.md` (what `python -m eval --out FOLDER/eval`
    and the built-in default's `attach_results` leave there). `base_description` replaces the base
    model's name in the text (e.g. "a randomly initialised CLIP"); `namespace` is the owner the
    folder is pushed under."""
    folder = Path(folder)
    facts = checkpoint_facts(folder, repo_id=repo_id, base_model=base_model, datasets=datasets, base_model_id=base_model_id,
                             dataset_ids=dataset_ids, widget_examples=widget_examples, base_description=base_description,
                             namespace=namespace, remember=True)
    if results is not None:
        index, markdown = [results.model_index_entry(results_model or facts.model_name)], results_markdown(results)
    else:
        index, markdown = _read_json(folder / "eval" / "model_index.json"), _read_text(folder / "eval" / "results.md")
    model_index = _model_index_entry(index, facts.model_name, folder) if index else None
    if model_index and namespace:
        bare = {name.split("/")[-1]: name for name in facts.dataset_ids}
        for result in model_index[0]["results"]:
            result["dataset"]["type"] = bare.get(result["dataset"]["type"], result["dataset"]["type"])
    card = render_model_card(
        facts,
        model_index=model_index,
        results_markdown=markdown,
        widget=_store_widget(folder, facts.widget_examples, facts.repo_id),
        license=license,
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
    """Create (or reuse) the Hub repo, write the card naming it (widget URLs in it, bare repo names
    of the card under its owner), and upload the folder in one commit (less `also_ignore`, patterns
    like UPLOAD_IGNORE's). Returns the full repo id. `card_kwargs` go to `write_model_card`."""
    folder = Path(folder)
    full_id = create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    write_model_card(folder, repo_id=full_id, namespace=full_id.split("/")[0], **card_kwargs)
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


def cli() -> None:
    """The console script's entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
