"""two_way_accuracy: presence/absence two-way accuracy from each pair's true and false caption scores,
overall and per pair type (the names of the Trainer's negation metrics).

A thin `evaluate` wrapper of `omninegclip.common.scoring` (`choice_correct_from_scores`,
`grouped_accuracy`), the rules `python -m eval` and the Trainer score with; see README.md beside this file.
"""

import datasets
import evaluate
import torch

from omninegclip.common.scoring import choice_correct_from_scores, grouped_accuracy

_DESCRIPTION = """
Two-way negation accuracy: for each pair, the score of the caption that is true of the image and of
the one that is false. Pair types as the Trainer names them: "presence" (the caption vs its
presence-negated caption, as CC-Neg), "absence_choice" (the absence-negated caption, true, vs the
presence-negated one, false), "which_object" (such a pair whose two negations differ only in the
object negated). tie_rule "strict" (default): right only if the true caption scores strictly higher,
a tie is wrong; "argmax": a tie goes to the true caption (NegBench's rule with the true caption first).
"""

_KWARGS_DESCRIPTION = """
Args:
    true_scores (`list` of `float`): per pair, the score of the caption that is true of the image.
    false_scores (`list` of `float`): per pair, the score of the caption that is false of it.
    pair_types (`list` of `str`): per pair, its type (e.g. "presence", "absence_choice", "which_object").
    tie_rule (`str`, defaults to "strict"): "strict" (a tie is wrong) or "argmax" (a tie goes to the true caption).
Returns:
    accuracy (`float`): the share of pairs where the true caption wins;
    <type>_accuracy (`float`): the same per pair type.
Examples:
    >>> two_way = evaluate.load("eval/metrics/two_way_accuracy")
    >>> two_way.compute(true_scores=[0.32, 0.30, 0.25], false_scores=[0.28, 0.30, 0.27],
    ...                 pair_types=["presence", "presence", "absence_choice"])
    {'accuracy': 0.3333333333333333, 'absence_choice_accuracy': 0.0, 'presence_accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TwoWayAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "true_scores": datasets.Value("float64"),
                    "false_scores": datasets.Value("float64"),
                    "pair_types": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, true_scores, false_scores, pair_types, tie_rule="strict"):
        if not pair_types:
            raise ValueError("two_way_accuracy: no pair to score; give at least one true and one false score")
        scores = torch.tensor([true_scores, false_scores], dtype=torch.float64).T  # option 0: the true caption
        correct = choice_correct_from_scores(scores, torch.zeros(len(scores), dtype=torch.long), tie_rule=tie_rule)
        grouped = grouped_accuracy(correct, pair_types)
        return {
            "accuracy": grouped.accuracy,
            **{f"{kind}_accuracy": value for kind, value in grouped.group_accuracy.items()},
        }
