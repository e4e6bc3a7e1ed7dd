"""Negation accuracies of train.py's evaluation, so that a run's logs show negation being learned.

The Trainer's `prediction_step` returns, per evaluation row, the normalised embeddings of the image,
its caption and its two negated captions (`stack_embeddings`; zeros where the row has no such
caption) and the row's `row_id` as its label; the Trainer gathers them from every process (dropping
the rows Accelerate repeats to even out the last batch), and `NegationMetrics` (the Trainer's
`compute_metrics`) scores them over the whole evaluation split. Each item is scored by the
harness's own rules (`omninegclip.common.scoring`: `choice_correct`, right only if the right
option's cosine is strictly higher, a tie counts as wrong; `accuracy`, the share of right items), the
rules the `two_way_accuracy` module of `eval/metrics/` applies to any model's pair scores.

- `presence_accuracy`, rows with a presence negation: the image prefers its caption over its
  presence-negated caption (the pair of the L3 term; the world's `presence` family).
- `absence_choice_accuracy`, rows with both negations: the image prefers its absence-negated caption
  (true: it negates an absent object) over its presence-negated one (false: it negates a present
  object), the two-way item of the `--lambda_choice` term.
- `which_object_accuracy`, the subset of those rows whose two negations say the same words but for
  the object they negate ("a moon, with no cross" / "a moon, with no star"): only which object is
  negated tells them apart, as in the world's `which_negated` family. Recognising such a pair needs
  the `negated_object` and `absent_object` columns that data_builder.py writes (`which_object_rows`);
  without them, or with no such pair in the split, it is not reported.

A metric without any item in the split is left out of the results (no NaN in the logs).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import torch

from omninegclip.common.scoring import accuracy, choice_correct

logger = logging.getLogger(__name__)

PRESENCE_ACCURACY = "presence_accuracy"
ABSENCE_CHOICE_ACCURACY = "absence_choice_accuracy"
WHICH_OBJECT_ACCURACY = "which_object_accuracy"
# The built datasets' columns naming the object each negation negates (data_builder.CONTRACT_COLUMNS).
NEGATED_OBJECT_COLUMN, ABSENT_OBJECT_COLUMN = "negated_object", "absent_object"
IMAGE, CAPTION, PRESENCE, ABSENCE = range(4)  # slots of `stack_embeddings`


def stack_embeddings(outputs) -> torch.Tensor:
    """(rows, 4, dim): image, caption, presence-negated and absence-negated caption embeddings of an
    `OmniNegCLIPOutput` (already L2-normalised), zeros where a row has no such caption."""
    image, caption = outputs.image_embeds, outputs.text_embeds
    negated = [outputs.presence_negated_embeds, outputs.absence_negated_embeds]
    slots = [image, caption] + [torch.zeros_like(caption) if embeds is None else embeds for embeds in negated]
    return torch.stack([slot.detach().float() for slot in slots], dim=1)


def _prefers(embeddings: torch.Tensor, right: int, wrong: int) -> torch.Tensor:
    options = embeddings[:, [right, wrong]]
    answers = torch.zeros(len(embeddings), dtype=torch.long)
    return choice_correct(embeddings[:, IMAGE], options, torch.ones(options.shape[:2], dtype=torch.bool), answers)


def negation_accuracies(embeddings: torch.Tensor, which_object: torch.Tensor | None = None) -> dict[str, float]:
    """The accuracies over `embeddings` (rows, 4, dim) as `stack_embeddings` lays them out;
    `which_object` (rows,) marks the rows whose negations are a which-object pair (None: unknown)."""
    has = embeddings.abs().sum(dim=-1) > 0  # (rows, 4): a caption's embedding is never all zeros
    items = {
        PRESENCE_ACCURACY: (has[:, PRESENCE], CAPTION, PRESENCE),
        ABSENCE_CHOICE_ACCURACY: (has[:, PRESENCE] & has[:, ABSENCE], ABSENCE, PRESENCE),
    }
    if which_object is not None:
        items[WHICH_OBJECT_ACCURACY] = (has[:, PRESENCE] & has[:, ABSENCE] & which_object.bool(), ABSENCE, PRESENCE)
    results = {}
    for name, (rows, right, wrong) in items.items():
        if bool(rows.any()):
            results[name] = accuracy(_prefers(embeddings[rows], right, wrong))
    return results


class NegationMetrics:
    """The Trainer's `compute_metrics`: predictions are `stack_embeddings` of every evaluation row,
    label_ids their `row_id`s; `which_object` (indexed by row_id) marks the which-object pairs.
    With `--batch_eval_metrics` the Trainer calls it once per (gathered) batch: the batches are kept
    until the call with `compute_result=True`, which scores them all."""

    def __init__(self, which_object: np.ndarray | None = None):
        self.which_object = None if which_object is None else torch.as_tensor(np.asarray(which_object, dtype=bool))
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, prediction, compute_result: bool = True) -> dict[str, float]:
        as_tensor = lambda values, dtype: torch.as_tensor(values).detach().cpu().to(dtype)  # noqa: E731  (numpy or tensor)
        self._batches.append(
            (as_tensor(prediction.predictions, torch.float32), as_tensor(prediction.label_ids, torch.long))
        )
        if not compute_result:
            return {}
        embeddings, rows = (torch.cat(parts) for parts in zip(*self._batches))
        self._batches = []
        flags = None if self.which_object is None else self.which_object[rows]
        return negation_accuracies(embeddings, flags)


def _object_masked(text: str, kind: str) -> str:
    """`text` with the object `kind` (and an article before it) replaced by one placeholder."""
    return re.sub(rf"\b(?:an?\s+)?{re.escape(kind.strip().lower())}\b", "\0", " ".join(text.lower().split()))


def same_words_but_the_object(presence: str, absence: str, negated_object: str, absent_object: str) -> bool:
    """Whether a presence negation (negating `negated_object`) and an absence negation (negating
    `absent_object`) are the same words but for the object they negate (a which-object pair)."""
    if (
        not (presence and absence and negated_object and absent_object)
        or negated_object.strip() == absent_object.strip()
    ):
        return False
    masked = _object_masked(presence, negated_object)
    return "\0" in masked and masked == _object_masked(absence, absent_object)


def which_object_rows(
    prepared,
    raw_sources: list,
    presence_column: str | None,
    absence_column: str | None,
    source_column: str,
    source_row_column: str,
) -> np.ndarray | None:
    """For each row of the prepared evaluation split (by position = row_id), whether its negations
    are a which-object pair; read from the raw splits `raw_sources` (in the prepared data's
    `source_column` order; `source_row_column` is the row in its raw split). None when no raw split
    has the object columns (the which-object accuracy then cannot be computed)."""
    needed = [presence_column, absence_column, NEGATED_OBJECT_COLUMN, ABSENT_OBJECT_COLUMN]
    usable = {
        index: raw
        for index, raw in enumerate(raw_sources)
        if presence_column and absence_column and all(column in raw.column_names for column in needed)
    }
    if not usable:
        logger.info(
            "which-object accuracy: not computed "
            "(the evaluation data has no %s/%s columns naming the negated objects)",
            NEGATED_OBJECT_COLUMN,
            ABSENT_OBJECT_COLUMN,
        )
        return None
    texts = {index: raw.select_columns(needed).to_dict() for index, raw in usable.items()}
    origin = prepared.select_columns([source_column, source_row_column]).to_dict()
    flags = np.zeros(len(prepared), dtype=bool)
    for position, (source, row) in enumerate(zip(origin[source_column], origin[source_row_column])):
        if source in texts:
            columns = texts[source]
            flags[position] = same_words_but_the_object(*(columns[name][row] for name in needed))
    return flags
