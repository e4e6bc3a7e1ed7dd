"""What an evaluation leaves in `--out DIR`, all made from the one results dict `run_evaluation` returns.

- `results.json`: every metric (fractions in [0, 1]; NaN written as null), the models, item counts
  and notes (skips) per task, the settings, harness and library versions, git commit;
- `results.md`: one table, a row per (task, metric), a column per model (percentages), then the notes;
  the layer-wise table under it when the analysis ran;
- `results.png`: grouped bars comparing the models on the headline metrics;
- `model_index.json`: a list with one Hub `model-index` entry per model (values in percent), ready
  for a model card's metadata (`model-index: [entry]`);
- `layerwise.md` / `layerwise.png` when the layer-wise analysis ran.

Public surface: `results_markdown(results)`, `model_index(results)`, `plot_results(results, path)`,
`write_outputs(results, out_dir)`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

from eval.layerwise import LayerwiseResult, layerwise_markdown, plot_layerwise
from omninegclip.common.clip import CONTEXT_LENGTH

HEADLINE_METRICS = ("accuracy", "text_to_image/R@1", "image_to_text/R@1", "top1")


def _is_headline(metric: str) -> bool:
    """Plotted: the main number of each task and its per-group accuracies; the table and JSON have all."""
    return metric in HEADLINE_METRICS or (metric.startswith("accuracy/") and metric != "accuracy/group_mean")


def _count_key(metric: str) -> str:
    if metric.startswith("accuracy/") and metric != "accuracy/group_mean":
        return "items/" + metric.split("/", 1)[1]
    if metric.startswith("text_to_image"):
        return "texts"
    if metric.startswith("image_to_text"):
        return "images_with_text"
    if metric.startswith("top"):
        return "images"
    return "items"


def _percent(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _shown_id(model_id: str) -> str:
    """A Hub id as it is; a local folder by its name only (results.md is published in model cards;
    results.json keeps the full path)."""
    local = Path(model_id).is_absolute() or model_id.startswith((".", "~")) or Path(model_id).exists()
    return f"local folder `{Path(model_id).name}`" if local else f"`{model_id}`"


def _model_names(results: dict) -> list[str]:
    return [model["name"] for model in results["models"]]


def results_markdown(results: dict) -> str:
    names = _model_names(results)
    lines = ["# Evaluation results", "",
             "Accuracy and recall in percent; ties count as wrong (`accuracy_argmax`, where shown, is NegBench's own "
             "rule: a tie goes to the first option). Models: "
             + ", ".join(f"`{model['name']}` = {_shown_id(model['id'])}" for model in results["models"]), "",
             "| task | metric | n | " + " | ".join(names) + " |",
             "|---|---|---:|" + "---:|" * len(names)]
    for task, metrics in results["metrics"].items():
        counts = results["tasks"][task]["counts"]
        for metric, values in metrics.items():
            count = counts.get(_count_key(metric), "")
            lines.append(f"| {task} | {metric} | {count} | " + " | ".join(_percent(values.get(name)) for name in names) + " |")
    notes = [(task, info["notes"]) for task, info in results["tasks"].items() if info.get("notes")]
    if results.get("layerwise") and results["layerwise"].get("notes"):
        notes.append(("layerwise", results["layerwise"]["notes"]))
    notes += [(f"model {model['name']}", f"{model['texts_truncated']} texts longer than {CONTEXT_LENGTH} tokens were truncated")
              for model in results["models"] if model.get("texts_truncated")]
    if notes:
        lines += ["", "Notes:", *(f"- {task}: {note}" for task, note in notes)]
    if results.get("layerwise"):
        lines += ["", "## Layer-wise analysis", "",
                  f"Mean cosine between the EOS hidden states of a caption and its negation after each text block "
                  f"(pairs from `{Path(results['layerwise']['source']).name}`; lower = better separated).", "",
                  layerwise_markdown(_layerwise_results(results))]
    return "\n".join(lines).rstrip() + "\n"


def _layerwise_results(results: dict) -> dict[str, LayerwiseResult]:
    return {name: LayerwiseResult(**entry) for name, entry in results["layerwise"]["models"].items()}


def model_index(results: dict) -> list[dict]:
    """One `model-index` entry per model: `[{"name", "results": [{"task", "dataset", "metrics"}]}]`.

    The Hub (`huggingface_hub.repocard_data.model_index_to_eval_results`) merges the results that share
    task type, dataset type, config, split and revision: every task here is its own `dataset.config`
    (the task's name, e.g. `world_train/presence`) on the split evaluated, so none is merged away."""
    entries = []
    for name in _model_names(results):
        task_results = []
        for task, metrics in results["metrics"].items():
            info = results["tasks"][task]
            values = [(metric, per_model.get(name)) for metric, per_model in metrics.items()]
            task_metrics = [
                {"type": "recall" if "R@" in metric else "accuracy", "name": f"{task} {metric}", "value": round(100 * value, 2)}
                for metric, value in values if value is not None and not math.isnan(value)
            ]
            if task_metrics:
                dataset = info["dataset"]
                task_results.append({
                    "task": {"type": "zero-shot-image-classification", "name": info["description"]},
                    "dataset": {"name": f"{dataset['name']} ({task})", "type": dataset["type"], "config": task,
                                "split": dataset.get("split", "test")},
                    "metrics": task_metrics,
                })
        entries.append({"name": name, "results": task_results})
    return entries


def plot_results(results: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _model_names(results)
    rows = [(f"{task} · {metric}", values) for task, metrics in results["metrics"].items()
            for metric, values in metrics.items() if _is_headline(metric)]
    height = 0.8 / max(1, len(names))
    figure, axis = plt.subplots(figsize=(9, 1.0 + 0.32 * len(rows) * max(1, len(names)) ** 0.5))
    for index, name in enumerate(names):
        values = [100 * (row[1].get(name) or 0.0) for row in rows]
        positions = [row_index + index * height - 0.4 + height / 2 for row_index in range(len(rows))]
        bars = axis.barh(positions, values, height=height, label=name, color=f"C{index % 10}")
        axis.bar_label(bars, fmt="%.1f", fontsize=6, padding=2)
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels([row[0] for row in rows], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlim(0, 108)  # room for the value labels
    axis.set_xlabel("percent")
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title("Models compared (headline metrics)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_outputs(results: dict, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("results.json", "results.md", "results.png", "model_index.json")}
    paths["results.json"].write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    paths["results.md"].write_text(results_markdown(results))
    paths["model_index.json"].write_text(json.dumps(model_index(results), indent=2) + "\n")
    # The plots repeat the tables: without matplotlib (a bare GPU machine) they are left out, said once.
    plots = importlib.util.find_spec("matplotlib") is not None
    if not plots:
        print("no plots (results.png, layerwise.png): matplotlib is not installed", file=sys.stderr)
    if results["metrics"] and plots:
        plot_results(results, paths["results.png"])
    else:
        del paths["results.png"]
    if results.get("layerwise"):
        paths["layerwise.md"] = out_dir / "layerwise.md"
        paths["layerwise.md"].write_text(layerwise_markdown(_layerwise_results(results)))
        if plots:
            paths["layerwise.png"] = out_dir / "layerwise.png"
            plot_layerwise(_layerwise_results(results), paths["layerwise.png"])
    return paths
