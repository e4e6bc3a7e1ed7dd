"""Zero-shot classification on any Hugging Face image-classification dataset, with prompt templates.

The dataset is a `save_to_disk` folder (a `Dataset` or a `DatasetDict`, then `split` picks one) or a
Hub id; its image column is the first `Image` feature and its label column the first `ClassLabel`
feature, whose names (underscores read as spaces) fill the templates. Images are decoded with
`omninegclip.common.safe_load.open_rgb_image` (an unreadable one is left out by the harness,
counted). A class is represented by the mean of its prompts' normalised embeddings, re-normalised
(CLIP's prompt ensembling).

Public surface:
- `DEFAULT_TEMPLATES`, `read_templates(path)`.
- `ZeroShotSet` (images, labels, class names, templates) and `ZeroShotTaskData`, a `TaskData` that
  carries one (the harness scores it: top-1 and top-5).
- `read_zeroshot(source, split="test", templates=None, max_items=None) -> ZeroShotTaskData`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eval.items import TaskData
from omninegclip.common.cli import UserError
from omninegclip.common.safe_load import open_rgb_image
from omninegclip.common.skips import SkipLog

# A small ensemble in the style of CLIP's ImageNet prompts; `--zeroshot_templates FILE` replaces it.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a bad photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a close-up photo of a {}.",
    "itap of a {}.",
    "art of the {}.",
)


@dataclass
class ZeroShotSet:
    images: list[str]  # image keys
    labels: list[int]  # index into class_names per image
    class_names: list[str]
    templates: list[str]  # each holds "{}" where the class name goes

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if not self.class_names or not self.templates:
            raise ValueError("a zero-shot set needs at least one class name and one template")
        bad = [label for label in self.labels if not 0 <= label < len(self.class_names)]
        if bad:
            raise ValueError(f"labels {bad[:5]} are outside the {len(self.class_names)} classes")

    def class_prompts(self) -> list[list[str]]:
        return [[template.replace("{}", name) for template in self.templates] for name in self.class_names]

    def prompts(self) -> list[str]:
        return [prompt for prompts in self.class_prompts() for prompt in prompts]


@dataclass
class ZeroShotTaskData(TaskData):
    zeroshot: ZeroShotSet | None = field(default=None)


def read_templates(path: str | Path) -> list[str]:
    """One template per line, with `{}` where the class name goes; blank lines and `#` comments ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--zeroshot_templates {path}: no such file")
    templates = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{}" not in line:
            raise UserError(f"{path}, line {line_number}: the template {line!r} has no '{{}}' for the class name")
        templates.append(line)
    if not templates:
        raise UserError(f"{path}: no templates in the file")
    return templates


def _load_dataset(source: str, split: str):
    import datasets

    if Path(source).exists():
        try:
            loaded = datasets.load_from_disk(source)
        except (FileNotFoundError, ValueError) as error:
            raise UserError(f"--zeroshot {source}: not a dataset saved with save_to_disk ({error})") from error
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(
                    f"--zeroshot {source}: no split {split!r} (splits: {list(loaded)}); "
                    "choose one with --zeroshot_split"
                )
            return loaded[split]
        return loaded
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as error:  # the Hub client raises many types; the user needs the message either way
        raise UserError(
            f"--zeroshot {source}: no such folder, and loading it as a Hub dataset failed ({error})"
        ) from error


def read_zeroshot(
    source: str, split: str = "test", templates: list[str] | None = None, max_items: int | None = None
) -> ZeroShotTaskData:
    import datasets

    dataset = _load_dataset(source, split)
    features = dataset.features
    image_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    label_columns = [name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
    if not image_columns or not label_columns:
        raise UserError(
            f"--zeroshot {source}: an image-classification dataset needs an Image column and a ClassLabel column; "
            f"its features are {dict(features)}"
        )
    image_column, label_column = image_columns[0], label_columns[0]
    class_names = [name.replace("_", " ") for name in features[label_column].names]
    if max_items is not None:
        dataset = dataset.select(range(min(max_items, len(dataset))))
    # Decoded by open_rgb_image (RGB, the decompression-bomb guard), not by datasets.
    images_only = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    skips = SkipLog()
    keys, labels, store = [], [], {}
    for index, label in enumerate(dataset[label_column]):
        if label is None or label < 0:
            skips.skip("missing_label", f"{source}[{split}] row {index}")
            continue
        key = f"{source}[{split}]#{index}"
        keys.append(key)
        labels.append(label)
        store[key] = lambda index=index: open_rgb_image(images_only[index][image_column])
    return ZeroShotTaskData(
        name="zeroshot",
        images=store,
        zeroshot=ZeroShotSet(keys, labels, class_names, list(templates or DEFAULT_TEMPLATES)),
        notes=skips.describe(),
    )
