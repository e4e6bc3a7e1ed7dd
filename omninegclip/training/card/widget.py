"""The card's widget examples: the Hub's zero-shot-image-classification widget shows each one (an
image and candidate labels), and a negation-aware model must rank the expected label first.

Where examples come from: a JSON file (`load_widget_examples`, train.py's `--widget_examples`), the
built-in photo examples (`DEFAULT_WIDGET`), or, for a model of the offline image world, two world
scenes (`write_world_widget_examples(out)` renders them with their labels; `world_widget_examples()`
gives them as examples).

How a folder keeps them: a local image is copied into `FOLDER/widget/example-N.EXT` and served from
the Hub repo the folder is pushed to; `widget/examples.json` records every example with its image
there and, where known, the expected label (`store_widget`, read back by `stored_widget`).
`widget_metadata` is the card's `widget` metadata for them.

Public surface: `WidgetExample`, `DEFAULT_WIDGET`, `WORLD_WIDGET_LABELS`, `load_widget_examples(path)`,
`write_world_widget_examples(out)`, `world_widget_examples()`, `WIDGET_FOLDER`, `stored_image(index,
example)`, `widget_metadata(examples, repo_id)`, `store_widget(folder, examples)`, `stored_widget(folder)`.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from omninegclip.common.cli import UserError
from omninegclip.training.card.names import HUB_URL

WIDGET_FOLDER = "widget"
WIDGET_RECORD = "examples.json"
COCO_SOFA_CATS = "http://images.cocodataset.org/val2017/000000039769.jpg"  # two cats on a pink sofa, no dog


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
            raise ValueError(
                f"widget example {self.title!r}: needs at least 2 candidate labels, got {self.candidate_labels}"
            )
        with_comma = [label for label in self.candidate_labels if "," in label or not label.strip()]
        if with_comma:
            # The Hub widget reads candidate_labels as one comma-separated string.
            raise ValueError(
                f"widget example {self.title!r}: labels must be non-empty and hold no comma, got {with_comma}"
            )
        if self.expected_label is not None and self.expected_label not in self.candidate_labels:
            raise ValueError(
                f"widget example {self.title!r}: expected_label {self.expected_label!r} is not one of "
                f"{self.candidate_labels}"
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
        COCO_SOFA_CATS,
        ["a photo of cats", "a photo with no cats"],
        "Presence negation",
        expected_label="a photo of cats",
    ),
]

# The image world's widget scenes (`write_world_widget_examples`): their labels, by scene.
WORLD_WIDGET_LABELS = {
    "circle-star": dict(
        title="Which object is negated?",
        expected_label="a red circle and no square",
        candidate_labels=["a red circle and no square", "a red circle and no star"],
    ),
    "heart": dict(
        title="Presence negation",
        expected_label="a green heart",
        candidate_labels=["a green heart", "there is no heart"],
    ),
}


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
            f"widget examples file {path}: {error} "
            "(each example: image, candidate_labels (list), title, expected_label)"
        ) from None
    for example in examples:
        if not example.is_url:
            image = (path.parent / example.image).resolve()
            if not image.is_file():
                raise UserError(
                    f"widget examples file {path}: image {example.image!r} of {example.title!r} does not exist"
                )
            example.image = str(image)
    return examples


def write_world_widget_examples(out: Path) -> Path:
    """Two world scenes rendered into `out/widget/` with their negation labels (`WORLD_WIDGET_LABELS`),
    listed in `out/widget/examples.json` (returned), the file `--widget_examples` reads."""
    from omninegclip.building.shapes import SceneObject, render_scene

    scenes = {
        "circle-star": [SceneObject("circle", "red", 0.28, 0.35, 0.3), SceneObject("star", "blue", 0.68, 0.62, 0.3)],
        "heart": [SceneObject("heart", "green", 0.5, 0.5, 0.32)],
    }
    examples = []
    for name, objects in scenes.items():
        path = out / WIDGET_FOLDER / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        render_scene(objects, image_size=224, seed=0).save(path)
        examples.append(dict(image=str(path), **WORLD_WIDGET_LABELS[name]))
    target = out / WIDGET_FOLDER / WIDGET_RECORD
    target.write_text(json.dumps(examples, indent=2) + "\n")
    return target


@functools.cache
def _world_widget_file() -> Path:
    """The world's examples, rendered once per process into a temporary folder removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="omninegclip-widget-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return write_world_widget_examples(folder)


def world_widget_examples() -> list[WidgetExample]:
    """Widget examples for a model of the image world when none were given: world scenes and their
    labels (the card copies the images into the checkpoint), not photographs such a model has never seen."""
    return load_widget_examples(_world_widget_file())


def stored_image(index: int, example: WidgetExample) -> str:
    """Where the `index`-th example's image is in a folder (and its Hub repo): its URL as it is, a
    local image as `widget/example-N.EXT`."""
    if example.is_url:
        return example.image
    return f"{WIDGET_FOLDER}/example-{index}{Path(example.image).suffix.lower() or '.png'}"


def _widget_src(image: str, is_url: bool, repo_id: str) -> str:
    """The widget's image URL: an http(s) image as it is; an image of the folder from the repo it is
    pushed to. Without a namespace (a local folder whose repo is not known yet) the path inside the
    repo: `push_checkpoint` rewrites the card with the full URL when it pushes."""
    if is_url:
        return image
    return f"{HUB_URL}/{repo_id}/resolve/main/{image}" if "/" in repo_id else image


def widget_metadata(examples: list[WidgetExample], repo_id: str) -> list[dict]:
    """The card's `widget` metadata: each example's image where the folder stores it, served from
    the repo `repo_id`, its labels as the comma-separated string the widget reads, its title."""
    return [
        {
            "src": _widget_src(stored_image(index, example), example.is_url, repo_id),
            "candidate_labels": ", ".join(example.candidate_labels),
            "example_title": example.title,
        }
        for index, example in enumerate(examples)
    ]


def store_widget(folder: Path, examples: list[WidgetExample]) -> None:
    """Copy the examples' local images into `folder/widget/` and record the examples there."""
    widget_dir = folder / WIDGET_FOLDER
    widget_dir.mkdir(parents=True, exist_ok=True)
    stored = []
    for index, example in enumerate(examples):
        image = stored_image(index, example)
        if not example.is_url and Path(example.image).resolve() != (folder / image).resolve():
            shutil.copyfile(example.image, folder / image)
        stored.append(asdict(example) | {"image": image})
    (widget_dir / WIDGET_RECORD).write_text(json.dumps(stored, indent=2) + "\n")


def stored_widget(folder: Path) -> list[WidgetExample] | None:
    """The examples `store_widget` recorded in `folder` (their images in the folder), None if none."""
    record = folder / WIDGET_FOLDER / WIDGET_RECORD
    if not record.is_file():
        return None
    examples = [WidgetExample(**entry) for entry in json.loads(record.read_text())]
    for example in examples:
        if not example.is_url:
            example.image = str(folder / example.image)
    return examples
