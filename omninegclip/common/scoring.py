"""The benchmarks' scoring rules, as pure functions: one rule, one place. The evaluation harness
(`eval/harness.py`), the Trainer's negation metrics (`omninegclip.training.metrics`) and the
`evaluate` modules (`eval/metrics/`) all score with these.

Multiple choice (an anchor, several options, one right):
- `choice_correct_from_scores(scores, answers, option_mask=None, tie_rule="strict")`: per item,
  right or wrong from its options' scores. `"strict"`: right only if the right option scores strictly
  above every other (a tie counts as wrong, so a model that cannot tell the options apart gets no
  credit); `"argmax"`: NegBench's rule (`torch.argmax`: the first of the tied options is the pick).
- `option_scores` (cosines of anchors and their options), and on embeddings `choice_correct`
  (the strict rule) and `choice_argmax_correct` (NegBench's);
- `padded_option_scores`: per-item score lists of any lengths as one padded tensor and its mask.

Accuracy: `accuracy(correct)`, the share of right items; `grouped_accuracy(correct, groups)`, overall,
per group (template type, subset, pair type) and the groups' unweighted mean.

Retrieval: `positive_mask` (which candidates are right for each query), `first_positive_rank` (0-based
rank of a query's best right candidate: wrong candidates scoring at least as high; ties count
against) and `recall_at(ranks, k)` (R@k, the share of queries with rank < k).

Bad input is a `ValueError` naming the item and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

TIE_RULES = ("strict", "argmax")


def option_scores(anchors: torch.Tensor, options: torch.Tensor) -> torch.Tensor:
    """(n, m) scores of each anchor (n, d) with its options (n, m, d): cosines when both are L2-normalised."""
    return torch.einsum("nd,nmd->nm", anchors, options)


def padded_option_scores(score_lists: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's option scores (any number of options per item) as one (n, m) float64 tensor, padded
    to the longest item, and the (n, m) mask of its real options."""
    lengths = [len(scores) for scores in score_lists]
    empty = next((item for item, length in enumerate(lengths) if length == 0), None)
    if empty is not None:
        raise ValueError(f"item {empty}: no option score; every item needs the score of each of its options")
    width = max(lengths, default=0)
    scores = torch.tensor(
        [list(map(float, item)) + [0.0] * (width - len(item)) for item in score_lists], dtype=torch.float64
    )
    mask = torch.arange(width)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
    return scores.reshape(len(lengths), width), mask.reshape(len(lengths), width)


def _check_choices(scores: torch.Tensor, answers: torch.Tensor, option_mask: torch.Tensor, tie_rule: str) -> None:
    if tie_rule not in TIE_RULES:
        raise ValueError(
            f"tie_rule {tie_rule!r}: expected 'strict' (a tie counts as wrong) or 'argmax' "
            "(NegBench's: the first of the tied options wins)"
        )
    if scores.dim() != 2 or answers.dim() != 1 or len(answers) != len(scores):
        raise ValueError(
            f"expected scores of shape (items, options) and one answer per item; got scores {tuple(scores.shape)} "
            f"and answers {tuple(answers.shape)}"
        )
    if option_mask.shape != scores.shape:
        raise ValueError(f"option_mask {tuple(option_mask.shape)} must have the shape of scores {tuple(scores.shape)}")
    options = option_mask.sum(dim=1)
    bad = ((answers < 0) | (answers >= options)).nonzero()
    if len(bad):
        item = int(bad[0])
        raise ValueError(
            f"item {item}: answer {int(answers[item])} is not an index into its {int(options[item])} options"
        )
    nan = (scores.isnan() & option_mask).any(dim=1).nonzero()
    if len(nan):
        raise ValueError(
            f"item {int(nan[0])}: an option's score is NaN ({int(nan.numel())} such item(s)); scores must be numbers"
        )


def choice_correct_from_scores(
    scores: torch.Tensor, answers: torch.Tensor, option_mask: torch.Tensor | None = None, tie_rule: str = "strict"
) -> torch.Tensor:
    """Which items are right, from their options' scores.

    scores (n, m): each item's score of each option; option_mask (n, m) marks real options (None: all
    are; the others are padding and never picked); answers (n,) index of the right option;
    tie_rule "strict" (the right option must score strictly above every other; a tie is wrong) or
    "argmax" (NegBench's: the first option with the highest score is the pick). Returns bool (n,).
    """
    answers = torch.as_tensor(answers, dtype=torch.long)
    option_mask = torch.ones(scores.shape, dtype=torch.bool) if option_mask is None else option_mask
    _check_choices(scores, answers, option_mask, tie_rule)
    scores = scores.masked_fill(~option_mask, float("-inf"))
    if tie_rule == "argmax":
        return scores.argmax(dim=1) == answers
    rows = torch.arange(len(answers))
    answer_scores = scores[rows, answers]
    others = scores.clone()
    others[rows, answers] = float("-inf")
    return answer_scores > others.max(dim=1).values


def choice_correct(
    anchors: torch.Tensor, options: torch.Tensor, option_mask: torch.Tensor, answers: torch.Tensor
) -> torch.Tensor:
    """Which items the model gets right: the answer's cosine is strictly above every other option's.

    anchors (n, d); options (n, m, d) padded to the longest item; option_mask (n, m) marks real options;
    answers (n,) index of the right option. Returns a bool tensor (n,).
    """
    return choice_correct_from_scores(option_scores(anchors, options), answers, option_mask, "strict")


def choice_argmax_correct(
    anchors: torch.Tensor, options: torch.Tensor, option_mask: torch.Tensor, answers: torch.Tensor
) -> torch.Tensor:
    """NegBench's rule: the first option with the highest cosine is the model's pick (arguments as
    `choice_correct`). Returns a bool tensor (n,)."""
    return choice_correct_from_scores(option_scores(anchors, options), answers, option_mask, "argmax")


def accuracy(correct: torch.Tensor) -> float:
    """The share of right items (NaN when there is none)."""
    return correct.sum().item() / len(correct) if len(correct) else float("nan")


@dataclass(frozen=True)
class GroupedAccuracy:
    """Accuracy over all items and per group (groups in sorted order)."""

    accuracy: float
    group_accuracy: dict[str, float]
    group_items: dict[str, int]

    @property
    def group_mean(self) -> float:
        """The groups' accuracies averaged, each group weighing the same whatever its size."""
        return sum(self.group_accuracy.values()) / len(self.group_accuracy)


def grouped_accuracy(correct: torch.Tensor, groups: Sequence[str]) -> GroupedAccuracy:
    """Accuracy of `correct` (n,) overall and per group; `groups` names each item's group (template
    type, subset, pair type, ...)."""
    if len(groups) != len(correct):
        raise ValueError(f"{len(correct)} items but {len(groups)} group names; give one group per item")
    group_accuracy, group_items = {}, {}
    for group in sorted(set(groups)):
        in_group = torch.tensor([name == group for name in groups], dtype=torch.bool)
        group_items[group] = int(in_group.sum())
        group_accuracy[group] = correct[in_group].sum().item() / group_items[group]
    return GroupedAccuracy(accuracy(correct), group_accuracy, group_items)


def positive_mask(positive_of: Sequence[Sequence[int]], candidates: int) -> torch.Tensor:
    """(queries, candidates) bool: True where a candidate is one of the query's right ones
    (`positive_of[query]`, indices into the candidates; every query needs at least one)."""
    positive = torch.zeros(len(positive_of), candidates, dtype=torch.bool)
    for query, positives in enumerate(positive_of):
        positives = list(positives)
        if not positives or not all(0 <= index < candidates for index in positives):
            raise ValueError(
                f"query {query}: right candidates {positives} must be one or more indices into its "
                f"{candidates} candidates"
            )
        positive[query, positives] = True
    return positive


def first_positive_rank(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """0-based rank of each query's best right candidate: wrong candidates scoring >= it (ties count against)."""
    best_positive = scores.masked_fill(~positive, float("-inf")).max(dim=1).values
    return ((scores >= best_positive[:, None]) & ~positive).sum(dim=1)


def recall_at(ranks: torch.Tensor, k: int) -> float:
    """R@k: the share of queries whose 0-based rank is below k (NaN when there is no query)."""
    if k < 1:
        raise ValueError(f"R@k needs k >= 1, got {k}")
    negative = (ranks < 0).nonzero()
    if len(negative):
        query = int(negative[0])
        raise ValueError(
            f"query {query}: rank {int(ranks[query])} is negative; ranks are 0-based "
            "(0: no wrong candidate ranks above)"
        )
    return (ranks < k).sum().item() / len(ranks) if len(ranks) else float("nan")
