"""The built-in default's seeds and caches (pipeline/default.py), as pure functions: mean ± std
over seeds from per-seed results.json files, the seeds' folders, and cache keys that follow the
world's phrasing tables. No training here (tests/test_default_e2e.py runs the pipeline)."""

from __future__ import annotations

import json
import statistics

import pytest

from omninegclip.building import shapes
from omninegclip.common.cli import UserError
from pipeline import default


def _report(which: dict, r1: dict) -> dict:
    """A results.json of the layout `python -m eval` writes (only the parts the aggregation reads)."""
    return {
        "models": [{"name": name} for name in which],
        "metrics": {
            "world_train/which_negated": {"accuracy": which},
            "world_heldout/retrieval": {"text_to_image/R@1": r1},
        },
    }


def test_aggregate_seeds_gives_mean_and_sample_std_per_metric_and_model():
    reports = {
        0: _report({"base": 0.3, "tuned": 0.70}, {"base": 0.1, "tuned": 0.12}),
        1: _report({"base": 0.3, "tuned": 0.74}, {"base": 0.1, "tuned": None}),
        2: _report({"base": 0.3, "tuned": 0.78}, {"base": 0.1, "tuned": 0.16}),
    }
    aggregate = default.aggregate_seeds(reports)
    assert aggregate["seeds"] == [0, 1, 2]
    tuned = aggregate["metrics"]["world_train/which_negated"]["accuracy"]["tuned"]
    assert tuned["values"] == [0.70, 0.74, 0.78]
    assert tuned["mean"] == pytest.approx(0.74) and tuned["std"] == pytest.approx(statistics.stdev([0.70, 0.74, 0.78]))
    base = aggregate["metrics"]["world_train/which_negated"]["accuracy"]["base"]
    assert base["mean"] == pytest.approx(0.3) and base["std"] == pytest.approx(0.0)
    # A seed without the metric is kept as None in its place and left out of mean and std.
    gap = aggregate["metrics"]["world_heldout/retrieval"]["text_to_image/R@1"]["tuned"]
    assert gap["values"] == [0.12, None, 0.16] and gap["mean"] == pytest.approx(0.14)
    json.dumps(aggregate)  # written beside the markdown as JSON


def test_describe_seeds_reports_mean_std_deltas_and_verdicts_on_the_means():
    reports = {
        seed: _report({"base": 0.3, "tuned": value}, {"base": 0.1, "tuned": 0.1})
        for seed, value in ((0, 0.70), (1, 0.74), (2, 0.78))
    }
    text = default.describe_seeds(default.aggregate_seeds(reports), "base", ["tuned"])
    assert "seeds 0, 1, 2" in text
    row = next(line for line in text.splitlines() if line.startswith("| which_negated/accuracy"))
    assert row == "| which_negated/accuracy | 30.0 ± 0.0 | 74.0 ± 4.0 | +44.0 ± 4.0 |"
    assert "which_negated/accuracy +44.0 (target +40: met)" in text
    assert (
        "### Held-out scenes, unseen phrasing templates" in text and "retrieval/text_to_image/R@1 | 10.0 ± 0.0" in text
    )


def test_seed_verdicts_use_the_unseen_targets_and_compare_with_faithful():
    def report(tuned: float, faithful: float) -> dict:
        return {
            "metrics": {
                f"world_{name}/which_negated": {"accuracy": {"base": 0.3, "omni": tuned, "faithful": faithful}}
                for name in ("train", "heldout")
            }
        }

    text = default.describe_seeds(
        default.aggregate_seeds({0: report(0.6, 0.5), 1: report(0.58, 0.62)}), "base", ["faithful", "omni"]
    )
    train, heldout = text.split("unseen phrasing templates")
    assert "which_negated/accuracy +29.0 (target +40: MISSED)" in train
    assert "which_negated/accuracy +29.0 (target +25: met)" in heldout and "MCQ negation template" not in heldout
    assert "beats `faithful` where it is below 99 %: met" in text  # 59.0 vs 56.0 on the means
    worse = default.describe_seeds(default.aggregate_seeds({0: report(0.5, 0.7)}), "base", ["faithful", "omni"])
    assert "beats `faithful` where it is below 99 %: MISSED (which_negated 50.0 vs 70.0)" in worse
    solved = default.describe_seeds(default.aggregate_seeds({0: report(0.5, 0.995)}), "base", ["faithful", "omni"])
    assert "beats `faithful`" not in solved  # faithful at >= 99 % everywhere: nothing to beat


def test_seeds_flag_and_folders(tmp_path):
    args = default.parse_args(["--out", str(tmp_path), "--seeds", "3,1", "--recipes", "faithful"])
    assert args.seeds == [3, 1] and [recipe.name for recipe in args.recipe_list] == ["faithful"]
    assert default.seed_folder(args, 3) == tmp_path and default.seed_folder(args, 1) == tmp_path / "seeds" / "seed-1"
    assert default.parse_args(["--out", str(tmp_path), "--seed", "5"]).seeds == [5]
    for bad, message in (("0,x", "--seeds: expected comma-separated integers"), ("1,1", "repeats a seed")):
        with pytest.raises(UserError, match=message):
            default.parse_args(["--out", str(tmp_path), "--seeds", bad])
    with pytest.raises(UserError, match="--recipes: unknown"):
        default.parse_args(["--out", str(tmp_path), "--recipes", "nope"])


def test_world_key_follows_the_phrasing_tables(tmp_path, monkeypatch):
    """A changed phrasing rebuilds the world (and so the base, whose key holds the world's)."""
    args = default.parse_args(["--out", str(tmp_path)])
    before = default.world_key(args)
    monkeypatch.setitem(shapes.AFFIRMATIVE_FRAMES, "heldout", ("a new frame of ",))
    assert default.world_key(args) != before


def test_an_argmax_row_is_shown_only_where_it_differs_from_accuracy():
    def report(argmax_tuned: float) -> dict:
        return {
            "models": [{"name": "base"}, {"name": "tuned"}],
            "metrics": {
                "world_train/which_negated": {
                    "accuracy": {"base": 0.3, "tuned": 0.7},
                    "accuracy_argmax": {"base": 0.3, "tuned": argmax_tuned},
                },
            },
        }

    same = default.describe_seeds(default.aggregate_seeds({0: report(0.7)}), "base", ["tuned"])
    assert "which_negated/accuracy |" in same and "accuracy_argmax" not in same.split("\n\n", 1)[1]
    differs = default.describe_seeds(default.aggregate_seeds({0: report(0.75)}), "base", ["tuned"])
    assert "| which_negated/accuracy_argmax | 30.0 ± 0.0 | 75.0 ± 0.0 |" in differs
