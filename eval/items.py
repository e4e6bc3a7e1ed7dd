"""What every benchmark reader produces: items the harness scores the same way for every model.

- `ChoiceItem`: one multiple-choice question. `choose="text"`: one image, several texts, pick the
  text (CC-Neg, NegBench MCQ, VALSE, SugarCrepe, the image world's text choices). `choose="image"`:
  one text, several images, pick the image (NegRefCOCOg box crops, the world's absence image choice).
- `RetrievalSet`: images, texts and which texts belong to which image (COCO/Flickr, NegBench
  negated retrieval, the world's retrieval).
- `TaskData`: a task's items plus its `ImageStore`.

Images are named by string keys so that each image is embedded once per model even when several
tasks share it; `ImageStore` maps a key to a function that loads the PIL image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

ImageStore = dict[str, Callable[[], Image.Image]]


@dataclass
class ChoiceItem:
    choose: Literal["text", "image"]
    images: list[str]  # image keys; exactly one when choose == "text"
    texts: list[str]  # exactly one when choose == "image"
    answer: int  # index of the right option among texts (choose="text") or images (choose="image")
    group: str = "all"  # sub-score: template, subset, ... ("all" only: no breakdown)
    item_id: str = ""  # where the item came from (file:row), for error messages and inspection


@dataclass
class RetrievalSet:
    images: list[str]  # image keys
    texts: list[str]
    text_image: list[int]  # index into images of each text's (one) matching image


@dataclass
class TaskData:
    name: str
    images: ImageStore = field(default_factory=dict)
    choices: list[ChoiceItem] = field(default_factory=list)
    retrieval: RetrievalSet | None = None
    notes: str = ""  # e.g. how many rows were skipped and why
