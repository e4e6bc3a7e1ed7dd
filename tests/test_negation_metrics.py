"""The negation accuracies of train.py's evaluation (omninegclip/training/metrics.py): right values on
hand-built embeddings (ties wrong, rows without a negation left out), which-object pairs recognised
in the shapes world exactly where it builds them, and in a real run: the metrics appear among the
eval metrics with the values the saved model gives by hand, and `--metric_for_best_model
eval_presence_accuracy` chooses the checkpoint; two processes score the whole split as one does."""

from __future__ import annotations

import json
import random
import sys

import datasets
import numpy as np
import pytest
import torch
from train_helpers import (  # noqa: F401  (single_thread: an autouse fixture)
    capture_trainers,
    run_command,
    save_tiny_clip,
    single_thread,
    train_flags,
)
from transformers import CLIPModel, EvalPrediction

import train
from omninegclip.building.shapes import MATCHED_PAIR_RATE, WORLD_FEATURES, world_row
from omninegclip.training.data import SOURCE_COLUMN, SOURCE_ROW_COLUMN
from omninegclip.training.metrics import (
    NegationMetrics,
    negation_accuracies,
    same_words_but_the_object,
    which_object_rows,
)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def unit(*values) -> list[float]:
    vector = torch.tensor(values, dtype=torch.float32)
    return (vector / vector.norm()).tolist()


ZERO = [0.0, 0.0, 0.0]
X, Y = unit(1, 0, 0), unit(0, 1, 0)
NEAR_X, FAR_X = unit(1, 0.2, 0), unit(1, 1, 0)  # cosines with X: 0.98, 0.71


def test_accuracies_on_hand_built_embeddings():
    rows = [  # image, caption, presence-negated, absence-negated
        [X, NEAR_X, FAR_X, NEAR_X],  # presence right; absence choice right (0.98 > 0.71)
        [X, FAR_X, NEAR_X, FAR_X],  # presence wrong; absence choice wrong
        [X, NEAR_X, NEAR_X, ZERO],  # presence tie: wrong; no absence negation: no choice item
        [X, NEAR_X, ZERO, NEAR_X],  # no presence negation: in neither metric
        [Y, unit(0, 1, 0.1), FAR_X, unit(0.3, 1, 0)],  # presence right; absence choice right
    ]
    embeddings = torch.tensor(rows)
    assert negation_accuracies(embeddings) == pytest.approx(
        {"presence_accuracy": 2 / 4, "absence_choice_accuracy": 2 / 3}
    )
    which = torch.tensor([False, True, True, True, True])  # rows 2 and 3 lack a negation: no item
    results = negation_accuracies(embeddings, which)
    assert results["which_object_accuracy"] == pytest.approx(1 / 2)
    assert "which_object_accuracy" not in negation_accuracies(
        embeddings, torch.tensor([False, False, True, True, False])
    )
    assert negation_accuracies(embeddings[3:4]) == {}  # no item at all: nothing reported, no NaN

    # The Trainer's call: gathered predictions in any row order, labels = row ids.
    order = [4, 2, 0, 3, 1]
    metrics = NegationMetrics(which_object=which.numpy())
    assert metrics(EvalPrediction(predictions=embeddings[order].numpy(), label_ids=np.array(order))) == pytest.approx(
        results
    )
    # --batch_eval_metrics: one call per batch (tensors), the last with compute_result=True scores them all.
    assert (
        metrics(EvalPrediction(predictions=embeddings[:2], label_ids=torch.tensor([0, 1])), compute_result=False) == {}
    )
    assert metrics(
        EvalPrediction(predictions=embeddings[2:], label_ids=torch.tensor([2, 3, 4])), compute_result=True
    ) == pytest.approx(results)


def _world_split(split: str, count: int, seed: int = 0, image_size: int = 32) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [world_row(split, index, seed, image_size) for index in range(count)], features=WORLD_FEATURES
    )


def test_which_object_pairs_are_found_exactly_where_the_world_builds_them():
    assert same_words_but_the_object("a moon, with no star", "a moon, with no cross", "star", "cross")
    assert same_words_but_the_object("a red moon without a star", "a red moon without an arrow", "star", "arrow")
    assert not same_words_but_the_object("a moon and no star", "a moon and a star, with no cross", "star", "cross")
    assert not same_words_but_the_object("a moon, with no star", "a moon, with no star", "star", "star")
    assert not same_words_but_the_object("a moon, with no star", None, "star", None)

    seed, split = 3, "validation"
    raw = _world_split(split, 60, seed, image_size=16)
    built = [
        bool(row["presence_negated"])
        and bool(row["absence_negated"])
        and random.Random(f"omninegclip-shapes:{seed}:{split}:{index}:matched").random() < MATCHED_PAIR_RATE
        for index, row in enumerate(raw)
    ]
    assert 10 < sum(built) < 50
    # A prepared split as prepare_dataset leaves it: here its rows in reverse, from the one source.
    prepared = datasets.Dataset.from_dict(
        {SOURCE_COLUMN: [0] * len(raw), SOURCE_ROW_COLUMN: list(range(len(raw)))[::-1]}
    )
    flags = which_object_rows(prepared, [raw], "presence_negated", "absence_negated", SOURCE_COLUMN, SOURCE_ROW_COLUMN)
    assert flags.tolist() == built[::-1]
    without = raw.remove_columns(["negated_object", "absent_object"])
    assert (
        which_object_rows(prepared, [without], "presence_negated", "absence_negated", SOURCE_COLUMN, SOURCE_ROW_COLUMN)
        is None
    )


def best_step_of(per_step: dict[int, float]) -> int:
    return max(per_step, key=lambda step: (per_step[step], -step))


def _by_hand(model_dir, processor, rows: list[dict]) -> dict[str, float]:
    """The three accuracies from the saved model, with plain comparisons of cosines."""
    model = CLIPModel.from_pretrained(model_dir).eval()

    def texts(column):
        present = [index for index, row in enumerate(rows) if row[column]]
        tokens = processor.tokenizer([rows[index][column] for index in present], padding=True, return_tensors="pt")
        embeds = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        return dict(zip(present, embeds))

    with torch.no_grad():
        pixels = processor.image_processor(images=[row["image"].convert("RGB") for row in rows], return_tensors="pt")[
            "pixel_values"
        ]
        images = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        caption, presence, absence = texts("caption"), texts("presence_negated"), texts("absence_negated")
    score = lambda index, embeds: float(images[index] @ embeds[index])  # noqa: E731
    pairs = [index for index in presence if index in absence]
    matched = [
        index
        for index in pairs
        if same_words_but_the_object(
            rows[index]["presence_negated"],
            rows[index]["absence_negated"],
            rows[index]["negated_object"],
            rows[index]["absent_object"],
        )
    ]
    mean = lambda flags: sum(flags) / len(flags)  # noqa: E731
    return {
        "eval_presence_accuracy": mean([score(i, caption) > score(i, presence) for i in presence]),
        "eval_absence_choice_accuracy": mean([score(i, absence) > score(i, presence) for i in pairs]),
        "eval_which_object_accuracy": mean([score(i, absence) > score(i, presence) for i in matched]),
    }


@pytest.mark.parametrize("metric", ["eval_presence_accuracy", "eval_absence_choice_accuracy"])
def test_eval_reports_the_negation_metrics_and_metric_for_best_model_chooses_by_one(
    tmp_path, processor, monkeypatch, metric
):
    """(In this run presence accuracy rises at every step, absence choice accuracy peaks early: the
    second run shows an earlier checkpoint chosen and loaded.)"""
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    validation = _world_split("validation", 24)
    data = tmp_path / "world"
    datasets.DatasetDict({"train": _world_split("train", 16), "validation": validation}).save_to_disk(str(data))
    trainers = capture_trainers(monkeypatch)
    out = tmp_path / "out"
    train.main(
        train_flags(
            model_dir,
            data,
            out,
            max_steps=4,
            learning_rate=2e-2,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=5,
            eval_strategy="steps",
            eval_steps=1,
            save_strategy="steps",
            save_steps=1,
            metric_for_best_model=metric,
            load_best_model_at_end="true",
        )
    )
    history = [entry for entry in trainers[0].state.log_history if "eval_loss" in entry]
    assert len(history) >= 4 and all(
        {"eval_presence_accuracy", "eval_absence_choice_accuracy", "eval_which_object_accuracy"} <= entry.keys()
        for entry in history
    )
    # The checkpoint chosen is the first with the highest value, and it is what was saved.
    per_step = {entry["step"]: entry[metric] for entry in history[:4]}
    if metric == "eval_absence_choice_accuracy":
        assert best_step_of(per_step) < 4
    best_step = best_step_of(per_step)
    state = trainers[0].state
    assert state.best_metric == per_step[best_step] and state.best_model_checkpoint == str(
        out / f"checkpoint-{best_step}"
    )
    final = json.loads((out / "eval_results.json").read_text())
    assert final[metric] == per_step[best_step]
    expected = _by_hand(out, processor, [validation[index] for index in range(len(validation))])
    for name, value in expected.items():
        assert final[name] == pytest.approx(value), name


def test_two_processes_score_the_whole_split_like_one(tmp_path, processor, monkeypatch):
    """13 evaluation rows, 2 processes x 4: the last global batch is incomplete (5 rows). The metrics
    still cover all 13 rows, as one process does (learning rate 0: both runs score the base model)."""
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    data = tmp_path / "world"
    datasets.DatasetDict(
        {"train": _world_split("train", 8), "validation": _world_split("validation", 13)}
    ).save_to_disk(str(data))
    common = dict(
        max_steps=1,
        learning_rate=0.0,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        eval_strategy="steps",
        eval_steps=1,
    )
    result = run_command(
        TORCHRUN + ["--nproc_per_node", "2", "train.py", *train_flags(model_dir, data, tmp_path / "ddp", **common)],
        ACCELERATE_USE_CPU="1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    train.main(train_flags(model_dir, data, tmp_path / "one", **common))
    train.main(train_flags(model_dir, data, tmp_path / "first8", max_eval_samples=8, **common))
    results = {
        name: json.loads((tmp_path / name / "eval_results.json").read_text()) for name in ("ddp", "one", "first8")
    }
    for metric in ("eval_presence_accuracy", "eval_absence_choice_accuracy", "eval_which_object_accuracy"):
        assert results["ddp"][metric] == pytest.approx(results["one"][metric]), metric
    assert any(
        results["first8"][metric] != pytest.approx(results["one"][metric])
        for metric in ("eval_presence_accuracy", "eval_absence_choice_accuracy", "eval_which_object_accuracy")
    )
