"""The scoring rules as `evaluate` modules (eval/metrics/): each loads offline with `evaluate.load(path)`,
gives hand-computed results, refuses bad input with a message naming it, and scores the same items
exactly as the harness (`python -m eval`) and the Trainer's negation metrics do."""

from __future__ import annotations

import os
from pathlib import Path

import evaluate
import pytest
import torch

from eval.harness import EmbeddingTable, score_task
from eval.items import ChoiceItem, RetrievalSet, TaskData
from omninegclip.common.scoring import option_scores
from omninegclip.training.metrics import ABSENCE, CAPTION, IMAGE, PRESENCE, negation_accuracies

METRICS = Path(__file__).resolve().parent.parent / "eval" / "metrics"
NAMES = ("choice_accuracy", "mcq_accuracy", "two_way_accuracy", "retrieval_recall")


def load(name: str, config_name: str | None = None):
    return evaluate.load(str(METRICS / name), config_name, keep_in_memory=True)


@pytest.mark.parametrize("name", NAMES)
def test_each_module_loads_offline_from_its_folder_with_a_card(name):
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"  # conftest: no network
    module = load(name)
    assert isinstance(module, evaluate.Metric) and module.name == name
    card = (METRICS / name / "README.md").read_text()
    assert all(
        section in card
        for section in ("## The rule", "## Inputs", "## Output", "## Example", f'evaluate.load("eval/metrics/{name}"')
    )


# ----- hand-computed results -------------------------------------------------------------------


def test_choice_accuracy_counts_a_tie_wrong_under_strict_and_for_the_first_option_under_argmax():
    choice = load("choice_accuracy")
    scores = [[0.5, 0.5, 0.1], [0.2, 0.6, 0.6], [0.9, 0.1], [0.3, 0.1, 0.2, 0.7]]  # two ties, then right, wrong
    answers = [0, 1, 0, 0]
    assert choice.compute(scores=scores, answers=answers) == {"accuracy": 1 / 4}
    assert choice.compute(scores=scores, answers=answers, tie_rule="strict") == {"accuracy": 1 / 4}
    # argmax: the first of the tied options wins: item 0 (answer first) right, item 1 (answer first of the tie) right
    assert choice.compute(scores=scores, answers=answers, tie_rule="argmax") == {"accuracy": 3 / 4}
    assert choice.compute(scores=[[0.5, 0.5]], answers=[1], tie_rule="argmax") == {
        "accuracy": 0.0
    }  # answer second: lost


def test_mcq_accuracy_per_template_type_and_their_mean():
    mcq = load("mcq_accuracy")
    scores = [
        [0.4, 0.1, 0.2, 0.0],
        [0.1, 0.2, 0.3, 0.0],
        [0.1, 0.5, 0.5, 0.0],
        [0.0, 0.0, 0.1, 0.3],
        [0.2, 0.1, 0.0, 0.0],
    ]
    answers = [0, 2, 1, 3, 1]
    types = ["affirmation", "negation", "negation", "hybrid", "negation"]  # right, right, tie, right, wrong
    expected = {
        "accuracy": 3 / 5,
        "accuracy/affirmation": 1.0,
        "accuracy/hybrid": 1.0,
        "accuracy/negation": 1 / 3,
        "accuracy/group_mean": (1 + 1 + 1 / 3) / 3,
    }
    assert mcq.compute(scores=scores, answers=answers, template_types=types) == expected
    argmax = mcq.compute(scores=scores, answers=answers, template_types=types, tie_rule="argmax")
    assert argmax["accuracy/negation"] == 2 / 3 and argmax["accuracy"] == 4 / 5
    judged = load("mcq_accuracy", "correct").compute(correct=[True, True, False, True, False], template_types=types)
    assert judged == expected
    assert load("mcq_accuracy", "correct").compute(correct=[True, False], template_types=["hybrid"] * 2) == {
        "accuracy": 0.5,
        "accuracy/hybrid": 0.5,
    }


def test_two_way_accuracy_overall_and_per_pair_type():
    two_way = load("two_way_accuracy")
    results = two_way.compute(
        true_scores=[0.3, 0.2, 0.25, 0.4, 0.1],
        false_scores=[0.1, 0.2, 0.3, 0.2, 0.0],
        pair_types=["presence", "presence", "absence_choice", "absence_choice", "which_object"],
    )
    assert results == {
        "accuracy": 3 / 5,
        "presence_accuracy": 1 / 2,
        "absence_choice_accuracy": 1 / 2,
        "which_object_accuracy": 1.0,
    }
    tie = {"true_scores": [0.2], "false_scores": [0.2], "pair_types": ["presence"]}
    assert two_way.compute(**tie)["accuracy"] == 0.0 and two_way.compute(**tie, tie_rule="argmax")["accuracy"] == 1.0


def test_retrieval_recall_on_a_hand_built_ranking_from_scores_and_from_ranks():
    # query 0: its right candidate best (rank 0); query 1: two wrong above it (rank 2); query 2: a tie with
    # one wrong candidate counts against it (rank 1); query 3: two right candidates, ranked by the better (rank 0)
    scores = [[0.9, 0.1, 0.2, 0.3], [0.1, 0.8, 0.7, 0.2], [0.5, 0.5, 0.1, 0.0], [0.1, 0.4, 0.3, 0.2]]
    positives = [[0], [3], [1], [2, 1]]
    recall = load("retrieval_recall")
    assert recall.compute(scores=scores, positives=positives, ks=[1, 2, 3]) == {"R@1": 2 / 4, "R@2": 3 / 4, "R@3": 1.0}
    assert recall.compute(scores=scores, positives=positives) == {"R@1": 2 / 4, "R@5": 1.0, "R@10": 1.0}
    ranks = load("retrieval_recall", "ranks")
    assert ranks.compute(ranks=[0, 2, 1, 0], ks=[1, 2, 3]) == {"R@1": 2 / 4, "R@2": 3 / 4, "R@3": 1.0}
    assert ranks.compute(ranks=[0, 4, 5, 9, 10]) == {"R@1": 1 / 5, "R@5": 2 / 5, "R@10": 4 / 5}


# ----- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "config_name", "inputs", "message"),
    [
        (
            "choice_accuracy",
            None,
            {"scores": [[0.1, 0.2]], "answers": [0, 1]},
            r"Mismatch in the number of scores \(1\) and answers \(2\)",
        ),
        (
            "choice_accuracy",
            None,
            {"scores": [[0.1, 0.2], [0.3, 0.1, 0.0]], "answers": [0, 3]},
            r"item 1: answer 3 is not an index into its 3 options",
        ),
        (
            "choice_accuracy",
            None,
            {"scores": [[0.1, 0.2]], "answers": [-1]},
            r"item 0: answer -1 is not an index into its 2 options",
        ),
        ("choice_accuracy", None, {"scores": [[0.1, 0.2], []], "answers": [0, 0]}, r"item 1: no option score"),
        (
            "choice_accuracy",
            None,
            {"scores": [[0.1, float("nan")]], "answers": [0]},
            r"item 0: an option's score is NaN",
        ),
        (
            "choice_accuracy",
            None,
            {"scores": [[0.1, 0.2]], "answers": [0], "tie_rule": "first"},
            r"tie_rule 'first': expected 'strict' .* or 'argmax'",
        ),
        ("choice_accuracy", None, {"scores": [], "answers": []}, r"no item to score"),
        (
            "mcq_accuracy",
            None,
            {"scores": [[0.1, 0.2]], "answers": [0], "template_types": ["negation", "hybrid"]},
            r"Mismatch in the number of scores \(1\) and template_types \(2\)",
        ),
        (
            "mcq_accuracy",
            None,
            {"scores": [[0.1, 0.2]], "answers": [2], "template_types": ["negation"]},
            r"item 0: answer 2 is not an index into its 2 options",
        ),
        (
            "mcq_accuracy",
            "correct",
            {"correct": [True], "template_types": ["hybrid"], "tie_rule": "argmax"},
            r"takes items already judged",
        ),
        (
            "two_way_accuracy",
            None,
            {"true_scores": [0.1, 0.2], "false_scores": [0.3], "pair_types": ["presence"] * 2},
            r"Mismatch in the number of true_scores \(2\) and false_scores \(1\)",
        ),
        (
            "retrieval_recall",
            None,
            {"scores": [[0.1, 0.2], [0.3]], "positives": [[0], [0]]},
            r"query 1 scores 1 candidates, query 0 scores 2",
        ),
        (
            "retrieval_recall",
            None,
            {"scores": [[0.1, 0.2]], "positives": [[2]]},
            r"query 0: right candidates \[2\] must be one or more indices into its 2",
        ),
        (
            "retrieval_recall",
            None,
            {"scores": [[0.1, 0.2]], "positives": [[]]},
            r"query 0: right candidates \[\] must be one or more",
        ),
        ("retrieval_recall", "ranks", {"ranks": [0, -1]}, r"query 1: rank -1 is negative; ranks are 0-based"),
        ("retrieval_recall", "ranks", {"ranks": [0], "ks": [0]}, r"R@k needs k >= 1, got 0"),
    ],
)
def test_bad_input_is_refused_with_a_message_naming_it(name, config_name, inputs, message):
    with pytest.raises(ValueError, match=message):
        load(name, config_name).compute(**inputs)


def test_an_unknown_config_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"config_name 'rank'; expected 'default' .* or 'ranks'"):
        load("retrieval_recall", "rank")
    with pytest.raises(ValueError, match=r"config_name 'scores'; expected 'default' .* or 'correct'"):
        load("mcq_accuracy", "scores")


# ----- the same numbers as the harness and the Trainer --------------------------------------------


def _table(generator: torch.Generator) -> EmbeddingTable:
    """Random unit embeddings of images i0..i5 and texts t0..t9; two texts copy t0 and t3, and the image
    "t0's" is t0 itself (so t0 and its copy tie at the top)."""
    images = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(10, 8, generator=generator), dim=-1)
    texts, images = torch.cat([texts, texts[[0, 3]]]), torch.cat([images, texts[[0]]])
    return EmbeddingTable(
        {**{f"i{k}": k for k in range(6)}, "t0's": 6},
        images,
        {**{f"t{k}": k for k in range(10)}, "t0 copy": 10, "t3 copy": 11},
        texts,
    )


def test_the_modules_give_the_harness_scores_on_the_same_items():
    table = _table(torch.Generator().manual_seed(0))
    items = [
        ChoiceItem(
            "text",
            [f"i{k % 6}"],
            [f"t{k % 10}", f"t{(k + 3) % 10}", "t0 copy", "t3 copy"][: 2 + k % 3],
            answer=k % 2,
            group=("affirmation", "negation", "hybrid")[k % 3],
        )
        for k in range(30)
    ]
    items += [
        ChoiceItem("image", ["i0", "i1", "i2"][: 2 + k % 2], [f"t{k}"], answer=k % 2, group="negation")
        for k in range(10)
    ]
    items += [
        ChoiceItem("text", ["t0's"], ["t0", "t0 copy", "t4"], answer=answer, group="hybrid") for answer in (0, 1)
    ]  # top ties
    retrieval = RetrievalSet(
        [f"i{k}" for k in range(6)], [f"t{k}" for k in range(10)] + ["t0 copy"], [k % 6 for k in range(11)]
    )
    harness = score_task(TaskData("t", choices=items, retrieval=retrieval), table)
    assert harness.counts["ties_won_by_order"] > 0  # the two rules differ on these items

    def scores(item: ChoiceItem) -> list[float]:
        anchor, options = (
            (table.images(item.images), table.texts(item.texts))
            if item.choose == "text"
            else (table.texts(item.texts), table.images(item.images))
        )
        return option_scores(anchor, options[None])[0].tolist()

    inputs = {"scores": [scores(item) for item in items], "answers": [item.answer for item in items]}
    mcq = load("mcq_accuracy").compute(**inputs, template_types=[item.group for item in items])
    assert mcq == {
        metric: value
        for metric, value in harness.metrics.items()
        if metric.startswith("accuracy") and metric != "accuracy_argmax"
    }
    choice = load("choice_accuracy")
    assert choice.compute(**inputs) == {"accuracy": harness.metrics["accuracy"]}
    assert choice.compute(**inputs, tie_rule="argmax") == {"accuracy": harness.metrics["accuracy_argmax"]}

    image_embeds, text_embeds = table.images(retrieval.images), table.texts(retrieval.texts)
    recall = load("retrieval_recall")
    text_to_image = recall.compute(
        scores=(text_embeds @ image_embeds.T).tolist(), positives=[[image] for image in retrieval.text_image]
    )
    image_to_text = recall.compute(
        scores=(image_embeds @ text_embeds.T).tolist(),
        positives=[[text for text, of in enumerate(retrieval.text_image) if of == image] for image in range(6)],
    )
    assert {f"text_to_image/{k}": v for k, v in text_to_image.items()} | {
        f"image_to_text/{k}": v for k, v in image_to_text.items()
    } == {metric: value for metric, value in harness.metrics.items() if "/R@" in metric}


def test_two_way_accuracy_gives_the_trainers_negation_accuracies():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.nn.functional.normalize(torch.randn(40, 4, 8, generator=generator), dim=-1)
    embeddings[::5, PRESENCE] = embeddings[::5, CAPTION]  # ties, counted wrong by both
    embeddings[1::6, ABSENCE] = 0  # rows without an absence-negated caption
    which_object = torch.arange(40) % 3 == 0
    trainer = negation_accuracies(embeddings, which_object)

    pairs = {
        "presence": (CAPTION, PRESENCE),
        "absence_choice": (ABSENCE, PRESENCE),
        "which_object": (ABSENCE, PRESENCE),
    }
    true_scores, false_scores, pair_types = [], [], []
    for row in range(40):
        has_absence = bool(embeddings[row, ABSENCE].abs().sum() > 0)
        for kind, (right, wrong) in pairs.items():
            if kind == "presence" or (has_absence and (kind == "absence_choice" or which_object[row])):
                true_score, false_score = option_scores(
                    embeddings[row : row + 1, IMAGE], embeddings[row : row + 1, [right, wrong]]
                )[0].tolist()
                true_scores.append(true_score)
                false_scores.append(false_score)
                pair_types.append(kind)
    module = load("two_way_accuracy").compute(
        true_scores=true_scores, false_scores=false_scores, pair_types=pair_types
    )
    assert {metric: value for metric, value in module.items() if metric != "accuracy"} == trainer
