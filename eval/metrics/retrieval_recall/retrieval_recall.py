"""retrieval_recall: retrieval R@k from each query's candidate scores (and its right candidates), or
from ranks already computed.

A thin `evaluate` wrapper of `omninegclip.common.scoring` (`positive_mask`, `first_positive_rank`,
`recall_at`), the rules `python -m eval` scores with; see README.md beside this file.
"""

import datasets
import evaluate
import torch

from omninegclip.common.scoring import first_positive_rank, positive_mask, recall_at

_DESCRIPTION = """
Recall at k for retrieval (text-to-image, image-to-text): a query's rank is the number of wrong
candidates scoring at least as high as its best right candidate (0-based; a tie counts against the
model), and R@k is the share of queries whose rank is below k. Two input forms (config_name):
"default" takes each query's score of every candidate (all queries rank the same candidates) and the
indices of its right candidates; "ranks" takes each query's 0-based rank.
"""

_KWARGS_DESCRIPTION = """
Args (config "default"):
    scores (`list` of `list` of `float`): per query, the score of each candidate (the same candidates for every query).
    positives (`list` of `list` of `int`): per query, the indices of its right candidates (one or more).
Args (config "ranks"):
    ranks (`list` of `int`): per query, its 0-based rank (0: no wrong candidate scores as high as its best right one).
Args (both):
    ks (`list` of `int`, defaults to [1, 5, 10]): the k of each R@k.
Returns:
    R@k (`float`), for each k: the share of queries ranked below k.
Examples:
    >>> recall = evaluate.load("eval/metrics/retrieval_recall")
    >>> recall.compute(scores=[[0.9, 0.1, 0.3], [0.5, 0.5, 0.2]], positives=[[0], [1]], ks=[1, 2])
    {'R@1': 0.5, 'R@2': 1.0}
    >>> evaluate.load("eval/metrics/retrieval_recall", "ranks").compute(ranks=[0, 3, 7, 12])
    {'R@1': 0.25, 'R@5': 0.5, 'R@10': 0.75}
"""

_FEATURES = {
    "default": {
        "scores": datasets.List(datasets.Value("float64")),
        "positives": datasets.List(datasets.Value("int64")),
    },
    "ranks": {"ranks": datasets.Value("int64")},
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        if self.config_name not in _FEATURES:
            raise ValueError(
                f"retrieval_recall: config_name {self.config_name!r}; expected 'default' (candidate scores and "
                f"right candidates) or 'ranks' (0-based ranks)"
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(_FEATURES[self.config_name]),
        )

    def _compute(self, scores=None, positives=None, ranks=None, ks=(1, 5, 10)):
        if ranks is None:
            ranks = _ranks(scores, positives)
        if not len(ranks):
            raise ValueError("retrieval_recall: no query to score; give at least one query")
        ranks = torch.as_tensor(ranks, dtype=torch.long)
        return {f"R@{k}": recall_at(ranks, k) for k in ks}


def _ranks(scores, positives) -> torch.Tensor:
    candidates = len(scores[0]) if scores else 0
    uneven = next((query for query, row in enumerate(scores) if len(row) != candidates), None)
    if uneven is not None:
        raise ValueError(
            f"retrieval_recall: query {uneven} scores {len(scores[uneven])} candidates, query 0 scores {candidates}; "
            f"every query ranks the same candidates"
        )
    scores = torch.tensor(scores, dtype=torch.float64).reshape(len(scores), candidates)
    return first_positive_rank(scores, positive_mask(positives, candidates))
