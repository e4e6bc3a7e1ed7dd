"""`python -m eval` end to end with two tiny real CLIP checkpoints: every output file, a column per
model that matches that model's own scores, and clean errors for bad models, tasks and flags."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import TINY_TEXT_LAYERS, tiny_clip_config
from PIL import Image
from transformers import CLIPModel

from eval.__main__ import main
from eval.harness import CLIPEmbedder, evaluate_tasks
from eval.negbench import read_negbench_mcq
from eval.runner import run_evaluation
from omninegclip.common.cli import UserError, run_cli
from omninegclip.common.results import EvalResults


@pytest.fixture
def benchmark_files(tmp_path):
    images = []
    for index, color in enumerate([(220, 20, 20), (20, 220, 20), (20, 20, 220), (200, 200, 40)]):
        images.append(tmp_path / "images" / f"{index}.png")
        images[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 16), color).save(images[-1])
    mcq = tmp_path / "mcq.csv"
    with open(mcq, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "image_path",
                "correct_answer",
                "caption_0",
                "caption_1",
                "caption_2",
                "caption_3",
                "correct_answer_template",
            ]
        )
        for index, path in enumerate(images):
            template = ["positive", "negative", "hybrid", "negative"][index]
            writer.writerow(
                [
                    path,
                    index % 4,
                    "a red thing",
                    "no green thing",
                    "a blue thing but no red",
                    "a yellow card",
                    template,
                ]
            )
    retrieval = tmp_path / "negated_retrieval.csv"
    with open(retrieval, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "captions"])
        for index, path in enumerate(images):
            writer.writerow([path, str([f"picture {index} with no dog", f"scene {index}, not a cat"])])
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption", "presence_negated", "absence_negated"])
        writer.writerows(
            [
                ["a dog on a sofa", "a sofa with no dog", "a dog on a sofa, no cat"],
                ["a cat", "no cat", "a cat and no bird"],
            ]
        )
    return {"negbench_mcq": str(mcq), "negbench_retrieval": str(retrieval), "layerwise": str(pairs)}


@pytest.fixture
def second_clip_dir(tmp_path, processor):
    torch.manual_seed(1)
    path = tmp_path / "other-clip"
    CLIPModel(tiny_clip_config()).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_cli_writes_every_output_with_a_column_per_model(
    tmp_path, tiny_clip_dir, second_clip_dir, benchmark_files, processor, capsys
):
    out = tmp_path / "results"
    main(
        [
            str(tiny_clip_dir),
            str(second_clip_dir),
            "--tasks",
            "negbench_mcq,negbench_retrieval,layerwise",
            "--model_names",
            "base,other",
            "--out",
            str(out),
            "--batch_size",
            "3",
            "--no_progress",
            *[argument for key, value in benchmark_files.items() for argument in (f"--{key}", value)],
        ]
    )
    assert "| task | metric | n | base | other |" in capsys.readouterr().out

    results = json.loads((out / "results.json").read_text())
    assert [model["name"] for model in results["models"]] == ["base", "other"]
    assert results["harness_version"] and results["provenance"]["libraries"]["torch"] == torch.__version__
    assert results["tasks"]["negbench_mcq"]["counts"] == {
        "items": 4,
        "items/affirmation": 1,
        "items/hybrid": 1,
        "items/negation": 2,
        "ties_won_by_order": 0,
    }
    assert results["tasks"]["negbench_retrieval"]["counts"] == {"images": 4, "texts": 8, "images_with_text": 4}
    assert set(results["metrics"]["negbench_retrieval"]) == {
        f"{d}/R@{k}" for d in ("text_to_image", "image_to_text") for k in (1, 5, 10)
    }

    # each column is that model's own score
    task = read_negbench_mcq(benchmark_files["negbench_mcq"])
    for name, folder in (("base", tiny_clip_dir), ("other", second_clip_dir)):
        model = CLIPModel.from_pretrained(folder).eval()
        expected = evaluate_tasks(CLIPEmbedder(model, processor, progress=False), [task])["negbench_mcq"].metrics
        assert {
            metric: values[name] for metric, values in results["metrics"]["negbench_mcq"].items()
        } == pytest.approx(expected)

    table = (out / "results.md").read_text()
    assert table.count("| negbench_mcq |") == 6  # accuracy, its argmax (NegBench) twin, three templates, group mean
    assert "## Layer-wise analysis" in table
    layerwise_rows = [
        line for line in (out / "layerwise.md").read_text().splitlines() if line.startswith("| ") and line[2].isdigit()
    ]
    assert len(layerwise_rows) == TINY_TEXT_LAYERS
    assert len(results["layerwise"]["models"]["other"]["cosines"]["absence"]) == TINY_TEXT_LAYERS
    for picture in ("results.png", "layerwise.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"

    index = json.loads((out / "model_index.json").read_text())
    assert [entry["name"] for entry in index] == ["base", "other"]
    mcq_entry = next(
        result
        for result in index[1]["results"]
        if result["dataset"]["type"] == "negbench" and "MCQ" in result["dataset"]["name"]
    )
    assert mcq_entry["task"]["type"] == "zero-shot-image-classification"
    accuracy = next(metric for metric in mcq_entry["metrics"] if metric["name"] == "negbench_mcq accuracy")
    assert accuracy == {
        "type": "accuracy",
        "name": "negbench_mcq accuracy",
        "value": round(100 * results["metrics"]["negbench_mcq"]["accuracy"]["other"], 2),
    }


def test_run_evaluation_library_call_and_max_items(tmp_path, tiny_clip_dir, benchmark_files):
    results = run_evaluation(
        [str(tiny_clip_dir)],
        ["negbench_mcq"],
        {"negbench_mcq": benchmark_files["negbench_mcq"]},
        tmp_path / "out",
        batch_size=2,
        device="cpu",
        max_items=2,
        progress=False,
    )
    assert results.tasks["negbench_mcq"].counts["items"] == 2
    assert results.layerwise is None and not (tmp_path / "out" / "layerwise.md").exists()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["settings"]["max_items"] == 2


def test_results_object_is_results_json_and_reads_back_unchanged(
    tmp_path, tiny_clip_dir, second_clip_dir, benchmark_files
):
    """`results.json` is `EvalResults.to_json`: the layout others' scripts read, and from_json gives the
    same object back (NaN aside, written as null)."""
    out = tmp_path / "out"
    results = run_evaluation(
        [str(tiny_clip_dir), str(second_clip_dir)],
        ["negbench_mcq", "layerwise"],
        {"negbench_mcq": benchmark_files["negbench_mcq"], "layerwise": benchmark_files["layerwise"]},
        out,
        batch_size=3,
        model_names=["base", "other"],
        progress=False,
    )
    on_disk = json.loads((out / "results.json").read_text())
    assert list(on_disk) == ["harness_version", "models", "settings", "provenance", "tasks", "metrics", "layerwise"]
    assert list(on_disk["tasks"]["negbench_mcq"]) == ["task", "description", "dataset", "counts", "notes"]
    assert on_disk["metrics"]["negbench_mcq"]["accuracy"]["other"] == results.metric(
        "negbench_mcq", "accuracy", "other"
    )
    assert on_disk == results.to_dict()
    again = EvalResults.from_json(out / "results.json")
    assert again == results
    assert again.to_json(tmp_path / "again.json").read_text() == (out / "results.json").read_text()
    assert again.layerwise.models["other"].cosines == results.layerwise.models["other"].cosines

    # what readers ask for: one metric of a task for a model, one model's model-index entry
    assert (
        results.metric("negbench_mcq", "accuracy", "nobody") is None
        and results.metric("nothing", "accuracy", "base") is None
    )
    entry = results.model_index_entry("other")
    assert entry == json.loads((out / "model_index.json").read_text())[1]
    accuracy = next(metric for metric in entry["results"][0]["metrics"] if metric["name"] == "negbench_mcq accuracy")
    assert accuracy["value"] == round(100 * results.metric("negbench_mcq", "accuracy", "other"), 2)


def test_results_json_that_is_not_results_is_one_clear_error(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"metrics": {}}))
    with pytest.raises(UserError, match=r"results.json: not a results.json written by python -m eval"):
        EvalResults.from_json(bad)
    bad.write_text("{")
    with pytest.raises(UserError, match=r"results.json: not JSON \(line 1"):
        EvalResults.from_json(bad)
    with pytest.raises(UserError, match="no such results file"):
        EvalResults.from_json(tmp_path / "missing.json")


def run_and_capture_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


def test_a_folder_that_is_not_a_clip_checkpoint_is_named(tmp_path, benchmark_files, capsys):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "empty").mkdir()
    data = ["--negbench_mcq", benchmark_files["negbench_mcq"]]
    error = run_and_capture_error(
        [str(tmp_path / "bert"), "--tasks", "negbench_mcq", "--out", str(tmp_path / "o"), *data], capsys
    )
    assert "not a CLIP checkpoint (its config.json has model_type 'bert'" in error
    error = run_and_capture_error(
        [str(tmp_path / "empty"), "--tasks", "negbench_mcq", "--out", str(tmp_path / "o"), *data], capsys
    )
    assert "not a CLIP checkpoint (a folder without config.json)" in error


def test_unknown_task_missing_data_and_bad_rows_are_clean_errors(tmp_path, tiny_clip_dir, benchmark_files, capsys):
    base = [str(tiny_clip_dir), "--out", str(tmp_path / "o")]
    error = run_and_capture_error([*base, "--tasks", "negbench_mcq,cc_neg"], capsys)
    assert "unknown task 'cc_neg'; known tasks: ccneg," in error
    error = run_and_capture_error([*base, "--tasks", "ccneg"], capsys)
    assert "task ccneg needs --ccneg" in error
    with open(benchmark_files["negbench_mcq"], "a") as handle:
        handle.write(f"{tmp_path / 'images' / 'missing.png'},0,a,b,c,d,positive\n")
    error = run_and_capture_error(
        [*base, "--tasks", "negbench_mcq", "--negbench_mcq", benchmark_files["negbench_mcq"]], capsys
    )
    assert "mcq.csv, line 6: missing image" in error and "missing.png" in error
    with pytest.raises(UserError, match="2 names for 1 models"):
        run_evaluation(
            [str(tiny_clip_dir)],
            ["layerwise"],
            {"layerwise": benchmark_files["layerwise"]},
            tmp_path,
            model_names=["a", "b"],
        )


def test_default_summary_reads_targets_from_the_results_object():
    """The built-in default's summary and target checks take an `EvalResults`: deltas against the
    base, each target met or missed, a fall of a negation task, an unmeasured value shown as –."""
    from omninegclip.common.results import ModelRun, TaskResult
    from pipeline.default import summarize

    def task(metrics: dict) -> TaskResult:
        return TaskResult(
            "world",
            "a world task",
            {"name": "image world", "type": "omninegclip-world", "split": "test"},
            metrics=metrics,
        )

    results = EvalResults(
        harness_version="1",
        models=[ModelRun("base", "runs/base"), ModelRun("tuned", "runs/tuned")],
        settings={},
        provenance={},
        tasks={
            "world_train/which_negated": task({"accuracy": {"base": 0.30, "tuned": 0.80}}),
            "world_train/absence_image": task({"accuracy": {"base": 0.50, "tuned": 0.60}}),
            "world_train/presence": task({"accuracy": {"base": 0.90, "tuned": 0.80}}),
            "world_train/mcq": task(
                {
                    "accuracy": {"base": 0.4, "tuned": 0.5},
                    "accuracy/negation": {"base": 0.2, "tuned": 0.7},
                    "accuracy/group_mean": {"base": 0.3, "tuned": 0.6},
                }
            ),
            "world_heldout/which_negated": task({"accuracy": {"base": 0.25, "tuned": float("nan")}}),
        },
    )
    summary = summarize(results, "base", ["tuned"])
    assert "| which_negated/accuracy | 30.0 | 80.0 | +50.0 |" in summary
    assert "| which_negated/accuracy | 25.0 | – | – |" in summary  # held-out: the tuned value is NaN
    assert "group_mean" not in summary
    train_targets = summary.split("Targets (training phrasings):")[1].split("###")[0]
    assert "which_negated/accuracy +50.0 (target +40: met)" in train_targets
    assert "absence_image/accuracy +10.0 (target +20: MISSED)" in train_targets
    assert "MCQ negation template 70.0% (target > 50: met)" in train_targets
    assert "no negation task falls by more than 3 points: MISSED (presence/accuracy -10.0)" in train_targets
