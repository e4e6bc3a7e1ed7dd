"""The benchmarks' scoring rules, as pure functions over embeddings: one rule, one place. The
evaluation harness (`eval/`) and the Trainer's negation metrics (`omninegclip.training.metrics`)
both score with these.

- `choice_correct`: an item is right only if the right option's cosine is strictly above every
  other option's (a tie counts as wrong);
- `choice_argmax_correct`: NegBench's rule (the first option with the highest cosine is the pick);
- `first_positive_rank`, `recall_at`: retrieval ranks (ties count against) and R@k.
"""

from __future__ import annotations

import torch


def choice_correct(anchors: torch.Tensor, options: torch.Tensor, option_mask: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Which items the model gets right: the answer's cosine is strictly above every other option's.

    anchors (n, d); options (n, m, d) padded to the longest item; option_mask (n, m) marks real options;
    answers (n,) index of the right option. Returns a bool tensor (n,).
    """
    scores = torch.einsum("nd,nmd->nm", anchors, options).masked_fill(~option_mask, float("-inf"))
    rows = torch.arange(len(answers))
    answer_scores = scores[rows, answers]
    others = scores.clone()
    others[rows, answers] = float("-inf")
    return answer_scores > others.max(dim=1).values


def choice_argmax_correct(anchors: torch.Tensor, options: torch.Tensor, option_mask: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """NegBench's rule: the first option with the highest cosine is the model's pick (arguments as
    `choice_correct`). Returns a bool tensor (n,)."""
    scores = torch.einsum("nd,nmd->nm", anchors, options).masked_fill(~option_mask, float("-inf"))
    return scores.argmax(dim=1) == answers


def first_positive_rank(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """0-based rank of each query's best right candidate: wrong candidates scoring >= it (ties count against)."""
    best_positive = scores.masked_fill(~positive, float("-inf")).max(dim=1).values
    return ((scores >= best_positive[:, None]) & ~positive).sum(dim=1)


def recall_at(ranks: torch.Tensor, k: int) -> float:
    return (ranks < k).sum().item() / len(ranks) if len(ranks) else float("nan")
