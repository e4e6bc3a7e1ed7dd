"""Embed each image and each text once per model, then score every task from those embeddings.

Public surface:
- `Embedder`: what the harness needs from a model (`embed_images`, `embed_texts`); `CLIPEmbedder`
  wraps any `CLIPModel` + processor with `omninegclip.common.embedding`.
- `EmbeddingTable` and `embed_tasks(embedder, tasks)`: the image keys and texts of all tasks are
  collected first and deduplicated, then embedded in one batched pass each. An image that cannot
  be read (corrupt, truncated, over PIL's decompression-bomb limit) does not stop the pass: it is
  recorded in `EmbeddingTable.unreadable`.
- `drop_unreadable_images(tasks, unreadable)`: leaves out, in place, every item that uses such an
  image, counted with the item's file and row and the reason in the task's notes (so the next
  model sees the same items and never opens those images); a task left with no item is an error.
- `task_size(task)`: how many items a task holds (choices, retrieval texts and images, zero-shot images).
- `score_task(task, table) -> TaskScore`; `evaluate_tasks(embedder, tasks)` embeds, drops, scores.
- The scoring rules themselves (the tie rules, accuracy per group, ranks, R@k) are the pure functions
  of `omninegclip.common.scoring`; the `evaluate` modules of `eval/metrics/` wrap the same functions,
  so per-item scores from any model, scored there, give the numbers this harness gives.

Scoring rules (the same for every benchmark):
- Embeddings are L2-normalised here again, whatever the embedder returned; scores are cosines.
- A `ChoiceItem` is right only if the right option scores *strictly* higher than every other option:
  a tie counts as wrong, so a model that cannot tell the options apart gets no credit (`accuracy`).
  Beside it, `accuracy_argmax` follows NegBench's own scripts (`torch.argmax` over the options: a
  tie goes to the first of the tied options); `counts["ties_won_by_order"]` counts the items only
  that rule gets right (the right option tied with a later one), the one difference between the two.
- Retrieval: a query's rank is the number of wrong candidates scoring at least as high as its best
  right candidate (ties again go against the model); R@k is the share of queries with rank < k.
  Text→image is scored for every text; image→text for every image that has at least one text.
- Zero-shot classification: a class's prompt embeddings are averaged and re-normalised; top-k as R@k.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image

from eval.items import ChoiceItem, ImageStore, RetrievalSet, TaskData
from eval.zeroshot import ZeroShotSet
from omninegclip.common.cli import UserError
from omninegclip.common.clip import CONTEXT_LENGTH
from omninegclip.common.embedding import embed_images, embed_texts
from omninegclip.common.safe_load import UnreadableImage
from omninegclip.common.scoring import (
    accuracy,
    choice_correct_from_scores,
    first_positive_rank,
    grouped_accuracy,
    option_scores,
    positive_mask,
    recall_at,
)
from omninegclip.common.skips import SkipLog

RETRIEVAL_KS = (1, 5, 10)
ZEROSHOT_KS = (1, 5)
_CHUNK = 2048  # queries scored at once: bounds memory on COCO-sized retrieval (5k images x 25k texts)


class Embedder(Protocol):
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor: ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


class CLIPEmbedder:
    """A `CLIPModel` and its processor as an `Embedder`.

    Texts are batched in token-length order (less padding); texts longer than CLIP's 77 tokens are
    truncated, as CLIP does, and counted in `truncated_texts`.
    """

    MAX_TOKENS = CONTEXT_LENGTH

    def __init__(self, model, processor, batch_size: int = 64, progress: bool = True, name: str = ""):
        self.model, self.processor = model.eval(), processor
        self.batch_size, self.progress, self.name = batch_size, progress, name
        self.truncated_texts = 0

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return embed_images(
            self.model,
            self.processor.image_processor,
            images,
            batch_size=self.batch_size,
            progress=self.progress,
            desc=f"{self.name} images".strip(),
        )

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        lengths = [len(ids) for ids in self.processor.tokenizer(list(texts), verbose=False)["input_ids"]]
        self.truncated_texts += sum(length > self.MAX_TOKENS for length in lengths)
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        embeds = embed_texts(
            self.model,
            self.processor.tokenizer,
            [texts[index] for index in order],
            batch_size=4 * self.batch_size,
            progress=self.progress,
            desc=f"{self.name} texts".strip(),
        )
        unsorted = torch.empty_like(embeds)
        unsorted[order] = embeds
        return unsorted


class LazyImages(Sequence):
    """The images behind a list of keys, opened only when a batch asks for them. One that cannot be
    read is recorded in `unreadable` and stood in for by a blank image, whose embedding is never used."""

    def __init__(self, keys: list[str], store: ImageStore):
        self.keys, self.store = keys, store
        self.unreadable: dict[str, UnreadableImage] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._load(key) for key in self.keys[index]]
        return self._load(self.keys[index])

    def _load(self, key: str) -> Image.Image:
        try:
            return self.store[key]()
        except UnreadableImage as error:
            self.unreadable[key] = error
        except Image.DecompressionBombError as error:  # a loader that does not go through open_rgb_image
            self.unreadable[key] = UnreadableImage("image_too_large", str(error))
        except (OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
            kind = "truncated_image" if "truncated" in str(error) else "corrupt_image"
            self.unreadable[key] = UnreadableImage(kind, str(error) or type(error).__name__)
        return Image.new("RGB", (8, 8))


@dataclass
class EmbeddingTable:
    """One model's embeddings of every image key and every text the tasks use (rows L2-normalised)."""

    image_row: dict[str, int]
    image_embeds: torch.Tensor
    text_row: dict[str, int]
    text_embeds: torch.Tensor
    unreadable: dict[str, UnreadableImage] = field(default_factory=dict)  # image key -> why it could not be read

    def images(self, keys: Sequence[str]) -> torch.Tensor:
        return self.image_embeds[[self.image_row[key] for key in keys]]

    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text_embeds[[self.text_row[text] for text in texts]]


def task_image_keys(task: TaskData) -> list[str]:
    keys = [key for item in task.choices for key in item.images]
    if task.retrieval is not None:
        keys += task.retrieval.images
    if getattr(task, "zeroshot", None) is not None:
        keys += task.zeroshot.images
    return keys


def task_texts(task: TaskData) -> list[str]:
    texts = [text for item in task.choices for text in item.texts]
    if task.retrieval is not None:
        texts += task.retrieval.texts
    if getattr(task, "zeroshot", None) is not None:
        texts += task.zeroshot.prompts()
    return texts


def embed_tasks(embedder: Embedder, tasks: Sequence[TaskData]) -> EmbeddingTable:
    """Embed the union of the tasks' image keys and texts, each exactly once, in first-seen order."""
    image_keys = list(dict.fromkeys(key for task in tasks for key in task_image_keys(task)))
    texts = list(dict.fromkeys(text for task in tasks for text in task_texts(task)))
    store: ImageStore = {}
    for task in tasks:
        store.update(task.images)
    missing = [key for key in image_keys if key not in store]
    if missing:
        raise ValueError(f"image keys without a loader in the tasks' ImageStore: {missing[:5]}")
    lazy_images = LazyImages(image_keys, store)
    image_embeds = embedder.embed_images(lazy_images) if image_keys else torch.empty(0, 0)
    text_embeds = embedder.embed_texts(texts) if texts else torch.empty(0, 0)
    return EmbeddingTable(
        image_row={key: row for row, key in enumerate(image_keys)},
        image_embeds=_normalized(image_embeds),
        text_row={text: row for row, text in enumerate(texts)},
        text_embeds=_normalized(text_embeds),
        unreadable=lazy_images.unreadable,
    )


def task_size(task: TaskData) -> int:
    size = len(task.choices)
    if task.retrieval is not None:
        size += len(task.retrieval.images) + len(task.retrieval.texts)
    if getattr(task, "zeroshot", None) is not None:
        size += len(task.zeroshot.images)
    return size


def _cannot_read(where: str, key: str, error: UnreadableImage) -> str:
    return f"{where}: cannot read the image {key!r} ({error})"


def drop_unreadable_images(tasks: Sequence[TaskData], unreadable: dict[str, UnreadableImage]) -> None:
    """Leave out every item that uses an image of `unreadable` (in place), counted in the notes."""
    if not unreadable:
        return
    for task in tasks:
        skips = SkipLog()
        before = task_size(task)
        kept = []
        for item in task.choices:
            bad = next((key for key in item.images if key in unreadable), None)
            if bad is None:
                kept.append(item)
            else:
                skips.skip(unreadable[bad].kind, _cannot_read(item.item_id or task.name, bad, unreadable[bad]))
        task.choices = kept
        if task.retrieval is not None and any(key in unreadable for key in task.retrieval.images):
            task.retrieval = _retrieval_without(task.retrieval, unreadable, task.name, skips)
        zeroshot = getattr(task, "zeroshot", None)
        if zeroshot is not None and any(key in unreadable for key in zeroshot.images):
            rows = [row for row, key in enumerate(zeroshot.images) if key not in unreadable]
            for key in zeroshot.images:
                if key in unreadable:
                    skips.skip(unreadable[key].kind, _cannot_read(task.name, key, unreadable[key]))
            task.zeroshot = ZeroShotSet(
                [zeroshot.images[row] for row in rows],
                [zeroshot.labels[row] for row in rows],
                zeroshot.class_names,
                zeroshot.templates,
            )
        if not skips:
            continue
        task.notes = "; ".join(note for note in (task.notes, skips.describe()) if note)
        if before and not task_size(task):
            raise UserError(
                f"task {task.name}: no item left to evaluate, every one needs an image that cannot be read: "
                f"{skips.describe()}"
            )


def _retrieval_without(
    retrieval: RetrievalSet, unreadable: dict[str, UnreadableImage], name: str, skips: SkipLog
) -> RetrievalSet:
    """The retrieval set without the unreadable images and their texts."""
    new_index = {}
    for index, key in enumerate(retrieval.images):
        if key in unreadable:
            texts = sum(image == index for image in retrieval.text_image)
            skips.skip(unreadable[key].kind, _cannot_read(name, key, unreadable[key]) + f", with its {texts} text(s)")
        else:
            new_index[index] = len(new_index)
    kept_texts = [row for row, image in enumerate(retrieval.text_image) if image in new_index]
    return RetrievalSet(
        images=[key for key in retrieval.images if key not in unreadable],
        texts=[retrieval.texts[row] for row in kept_texts],
        text_image=[new_index[retrieval.text_image[row]] for row in kept_texts],
    )


def _normalized(embeds: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embeds.float(), dim=-1) if embeds.numel() else embeds.float()


def _ranks(queries: torch.Tensor, candidates: torch.Tensor, positive_of: Sequence[Sequence[int]]) -> torch.Tensor:
    ranks = []
    for start in range(0, len(queries), _CHUNK):
        chunk = queries[start : start + _CHUNK]
        scores = chunk @ candidates.T
        ranks.append(first_positive_rank(scores, positive_mask(positive_of[start : start + _CHUNK], len(candidates))))
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)


# ----- scoring a task --------------------------------------------------------------------------


@dataclass
class TaskScore:
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def _score_choices(items: list[ChoiceItem], table: EmbeddingTable) -> tuple[torch.Tensor, torch.Tensor]:
    """Right/wrong per item, in item order: by the strict rule (ties wrong), and by NegBench's argmax rule."""
    correct = torch.zeros(len(items), dtype=torch.bool)
    argmax_correct = torch.zeros(len(items), dtype=torch.bool)
    for choose in ("text", "image"):
        indices = [index for index, item in enumerate(items) if item.choose == choose]
        for start in range(0, len(indices), _CHUNK):
            chunk = [items[index] for index in indices[start : start + _CHUNK]]
            if choose == "text":
                anchors = table.images([item.images[0] for item in chunk])
                option_lists = [table.texts(item.texts) for item in chunk]
            else:
                anchors = table.texts([item.texts[0] for item in chunk])
                option_lists = [table.images(item.images) for item in chunk]
            options = torch.nn.utils.rnn.pad_sequence(option_lists, batch_first=True)
            lengths = torch.tensor([len(option) for option in option_lists])
            mask = torch.arange(options.shape[1])[None, :] < lengths[:, None]
            answers = torch.tensor([item.answer for item in chunk])
            scores = option_scores(anchors, options)
            correct[indices[start : start + _CHUNK]] = choice_correct_from_scores(scores, answers, mask, "strict")
            argmax_correct[indices[start : start + _CHUNK]] = choice_correct_from_scores(
                scores, answers, mask, "argmax"
            )
    return correct, argmax_correct


def validate_choice(item: ChoiceItem, task_name: str) -> None:
    options = item.texts if item.choose == "text" else item.images
    anchors = item.images if item.choose == "text" else item.texts
    where = f"task {task_name}, item {item.item_id or '?'}"
    if item.choose not in ("text", "image"):
        raise ValueError(f"{where}: choose must be 'text' or 'image', not {item.choose!r}")
    if len(anchors) != 1:
        raise ValueError(
            f"{where}: choose={item.choose!r} needs exactly one {'image' if item.choose == 'text' else 'text'}, "
            f"got {len(anchors)}"
        )
    if not 0 <= item.answer < len(options):
        raise ValueError(f"{where}: answer {item.answer} is not an index into its {len(options)} options")


def score_task(task: TaskData, table: EmbeddingTable) -> TaskScore:
    score = TaskScore()
    if task.choices:
        for item in task.choices:
            validate_choice(item, task.name)
        correct, argmax_correct = _score_choices(task.choices, table)
        grouped = grouped_accuracy(correct, [item.group for item in task.choices])
        score.metrics["accuracy"] = grouped.accuracy
        score.metrics["accuracy_argmax"] = accuracy(argmax_correct)
        score.counts["items"] = len(task.choices)
        score.counts["ties_won_by_order"] = int((argmax_correct & ~correct).sum())
        if list(grouped.group_accuracy) != ["all"]:  # "all" alone: the items have no breakdown
            for group, group_accuracy in grouped.group_accuracy.items():
                score.metrics[f"accuracy/{group}"] = group_accuracy
                score.counts[f"items/{group}"] = grouped.group_items[group]
            if len(grouped.group_accuracy) > 1:
                score.metrics["accuracy/group_mean"] = grouped.group_mean
    if task.retrieval is not None:
        score.metrics.update(score_retrieval(task.retrieval, table))
        score.counts["images"] = len(task.retrieval.images)
        score.counts["texts"] = len(task.retrieval.texts)
        score.counts["images_with_text"] = len(set(task.retrieval.text_image))  # image->text queries
    zeroshot = getattr(task, "zeroshot", None)
    if zeroshot is not None:
        score.metrics.update(score_zeroshot(zeroshot, table))
        score.counts["images"] = len(zeroshot.images)
        score.counts["classes"] = len(zeroshot.class_names)
    return score


def score_retrieval(
    retrieval: RetrievalSet, table: EmbeddingTable, ks: Sequence[int] = RETRIEVAL_KS
) -> dict[str, float]:
    image_embeds, text_embeds = table.images(retrieval.images), table.texts(retrieval.texts)
    metrics = {}
    text_ranks = _ranks(text_embeds, image_embeds, [[image] for image in retrieval.text_image])
    for k in ks:
        metrics[f"text_to_image/R@{k}"] = recall_at(text_ranks, k)
    texts_of_image: list[list[int]] = [[] for _ in retrieval.images]
    for text, image in enumerate(retrieval.text_image):
        texts_of_image[image].append(text)
    captioned = [image for image, texts in enumerate(texts_of_image) if texts]
    if captioned:
        image_ranks = _ranks(image_embeds[captioned], text_embeds, [texts_of_image[image] for image in captioned])
        for k in ks:
            metrics[f"image_to_text/R@{k}"] = recall_at(image_ranks, k)
    return metrics


def score_zeroshot(zeroshot: ZeroShotSet, table: EmbeddingTable, ks: Sequence[int] = ZEROSHOT_KS) -> dict[str, float]:
    prototypes = torch.stack([table.texts(prompts).mean(dim=0) for prompts in zeroshot.class_prompts()])
    prototypes = torch.nn.functional.normalize(prototypes, dim=-1)
    ranks = _ranks(table.images(zeroshot.images), prototypes, [[label] for label in zeroshot.labels])
    return {f"top{k}": recall_at(ranks, k) for k in ks}


def evaluate_tasks(embedder: Embedder, tasks: Sequence[TaskData]) -> dict[str, TaskScore]:
    """Embed, leave out the items whose images cannot be read (see `drop_unreadable_images`), score."""
    table = embed_tasks(embedder, tasks)
    drop_unreadable_images(tasks, table.unreadable)
    return {task.name: score_task(task, table) for task in tasks}
