"""mcq_accuracy: multiple-choice accuracy overall and per template type (NegBench's affirmation /
negation / hybrid), from option scores or from per-item right/wrong.

A thin `evaluate` wrapper of `omninegclip.common.scoring` (`choice_correct_from_scores`,
`grouped_accuracy`), the rules `python -m eval` scores with; see README.md beside this file.
"""

import datasets
import evaluate
import torch

from omninegclip.common.scoring import choice_correct_from_scores, grouped_accuracy, padded_option_scores

_DESCRIPTION = """
Multiple-choice accuracy, overall and per template type, as `python -m eval` reports NegBench's MCQ:
"accuracy" over all items, "accuracy/<type>" for each template type, and with more than one type
"accuracy/group_mean", the types' accuracies averaged (each type weighs the same whatever its size).
Two input forms (config_name): "default" takes each item's option scores and the right option's index
and judges each item by tie_rule ("strict": right only if the right option scores strictly above every
other, a tie is wrong; "argmax": NegBench's, the first of the tied options wins); "correct" takes each
item already judged right or wrong.
"""

_KWARGS_DESCRIPTION = """
Args (config "default"):
    scores (`list` of `list` of `float`): per item, the score of each of its options.
    answers (`list` of `int`): per item, the 0-based index of the right option.
    template_types (`list` of `str`): per item, its template type (e.g. "affirmation", "negation", "hybrid").
    tie_rule (`str`, defaults to "strict"): "strict" (a tie is wrong) or "argmax" (the first of the tied options wins).
Args (config "correct"):
    correct (`list` of `bool`): per item, whether the model got it right.
    template_types (`list` of `str`): per item, its template type.
Returns:
    accuracy (`float`): the share of right items; accuracy/<type> (`float`): the same within each type;
    accuracy/group_mean (`float`, with two or more types): the types' accuracies averaged.
Examples:
    >>> mcq = evaluate.load("eval/metrics/mcq_accuracy")
    >>> mcq.compute(scores=[[0.3, 0.2, 0.1, 0.0], [0.1, 0.3, 0.3, 0.0], [0.0, 0.1, 0.2, 0.4]],
    ...             answers=[0, 1, 3], template_types=["affirmation", "negation", "negation"])
    {'accuracy': 0.6666666666666666, 'accuracy/affirmation': 1.0, 'accuracy/negation': 0.5,
     'accuracy/group_mean': 0.75}
    >>> evaluate.load("eval/metrics/mcq_accuracy", "correct").compute(
    ...     correct=[True, False], template_types=["hybrid", "hybrid"])
    {'accuracy': 0.5, 'accuracy/hybrid': 0.5}
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

_FEATURES = {
    "default": {
        "scores": datasets.List(datasets.Value("float64")),
        "answers": datasets.Value("int64"),
        "template_types": datasets.Value("string"),
    },
    "correct": {"correct": datasets.Value("bool"), "template_types": datasets.Value("string")},
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MCQAccuracy(evaluate.Metric):
    def _info(self):
        if self.config_name not in _FEATURES:
            raise ValueError(
                f"mcq_accuracy: config_name {self.config_name!r}; expected 'default' (option scores and answers) "
                f"or 'correct' (each item judged right or wrong)"
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(_FEATURES[self.config_name]),
        )

    def _compute(self, template_types, scores=None, answers=None, correct=None, tie_rule=None):
        if not template_types:
            raise ValueError("mcq_accuracy: no item to score; give at least one item with its template type")
        if correct is None:
            option_scores, option_mask = padded_option_scores(scores)
            correct = choice_correct_from_scores(option_scores, answers, option_mask, tie_rule or "strict")
        elif tie_rule is not None:
            raise ValueError(
                "mcq_accuracy: tie_rule judges option scores; the 'correct' config takes items already judged"
            )
        grouped = grouped_accuracy(torch.as_tensor(correct, dtype=torch.bool), template_types)
        results = {"accuracy": grouped.accuracy}
        results.update({f"accuracy/{group}": value for group, value in grouped.group_accuracy.items()})
        if len(grouped.group_accuracy) > 1:
            results["accuracy/group_mean"] = grouped.group_mean
        return results
