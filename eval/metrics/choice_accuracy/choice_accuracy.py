"""choice_accuracy: multiple-choice accuracy from each item's option scores, under the benchmark's tie rule.

A thin `evaluate` wrapper of `omninegclip.common.scoring.choice_correct_from_scores`, the rule
`python -m eval` and the Trainer's negation metrics score with; see README.md beside this file.
"""

import datasets
import evaluate

from omninegclip.common.scoring import accuracy, choice_correct_from_scores, padded_option_scores

_DESCRIPTION = """
Multiple-choice accuracy: each item gives the score (e.g. the image-text cosine) of each of its options
and the index of the right one. tie_rule "strict" (default, Omni-NegCLIP's harness): an item is right
only if the right option scores strictly above every other option, so a tie counts as wrong.
tie_rule "argmax" (NegBench's scripts): the first option with the highest score is the pick, so a tie
goes to the option listed first. Items may have different numbers of options.
"""

_KWARGS_DESCRIPTION = """
Args:
    scores (`list` of `list` of `float`): per item, the score of each of its options.
    answers (`list` of `int`): per item, the 0-based index of the right option.
    tie_rule (`str`, defaults to "strict"): "strict" (a tie is wrong) or "argmax" (the first of the tied options wins).
Returns:
    accuracy (`float`): the share of items that are right, from 0 to 1.
Examples:
    >>> choice = evaluate.load("eval/metrics/choice_accuracy")
    >>> choice.compute(scores=[[0.31, 0.27], [0.30, 0.30], [0.1, 0.4, 0.2]], answers=[0, 0, 1])
    {'accuracy': 0.6666666666666666}
    >>> choice.compute(scores=[[0.31, 0.27], [0.30, 0.30], [0.1, 0.4, 0.2]], answers=[0, 0, 1], tie_rule="argmax")
    {'accuracy': 1.0}
"""

_CITATION = """
@inproceedings{alhamoud2025negbench,
  title={Vision-Language Models Do Not Understand Negation},
  author={Alhamoud, Kumail and Alshammari, Shaden and Tian, Yonglong and Li, Guohao and Torr, Philip and \
Kim, Yoon and Ghassemi, Marzyeh},
  booktitle={CVPR},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ChoiceAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"scores": datasets.List(datasets.Value("float64")), "answers": datasets.Value("int64")}
            ),
        )

    def _compute(self, scores, answers, tie_rule="strict"):
        if not scores:
            raise ValueError("choice_accuracy: no item to score; give scores and answers for at least one item")
        option_scores, option_mask = padded_option_scores(scores)
        return {"accuracy": accuracy(choice_correct_from_scores(option_scores, answers, option_mask, tie_rule))}
