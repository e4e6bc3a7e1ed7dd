"""What an evaluation leaves in `--out DIR`, all made from the one `EvalResults` `run_evaluation` returns.

- `results.json`: every metric (fractions in [0, 1]; NaN written as null), the models, item counts
  and notes (skips) per task, the settings, harness and library versions, git commit;
- `results.md`: one table, a row per (task, metric), a column per model (percentages), then the notes;
  the layer-wise table under it when the analysis ran;
- `results.png`: grouped bars comparing the models on the headline metrics;
- `model_index.json`: a list with one Hub `model-index` entry per model (values in percent), ready
  for a model card's metadata (`model-index: [entry]`; `EvalResults.model_index_entry`);
- `layerwise.md` / `layerwise.png` when the layer-wise analysis ran.

Public surface: `plot_results(results, path)`, `write_outputs(results, out_dir, model=None)`. The
tables (`results_markdown`, `layerwise_markdown`) belong to the results object, in
`omninegclip.common.results`: the model card publishes the same table.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from eval.layerwise import plot_layerwise
from omninegclip.common.results import EvalResults, layerwise_markdown, results_markdown

HEADLINE_METRICS = ("accuracy", "text_to_image/R@1", "image_to_text/R@1", "top1")


def _is_headline(metric: str) -> bool:
    """Plotted: the main number of each task and its per-group accuracies; the table and JSON have all."""
    return metric in HEADLINE_METRICS or (metric.startswith("accuracy/") and metric != "accuracy/group_mean")


def plot_results(results: EvalResults, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = results.model_names
    rows = [
        (f"{name} · {metric}", values)
        for name, task in results.tasks.items()
        for metric, values in task.metrics.items()
        if _is_headline(metric)
    ]
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


def write_outputs(results: EvalResults, out_dir: str | Path, model: str | None = None) -> dict[str, Path]:
    """Every file of the module docstring, into `out_dir`; with `model`, `model_index.json` holds only
    that model's entry (a checkpoint's own results beside its weights)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("results.json", "results.md", "results.png", "model_index.json")}
    results.to_json(paths["results.json"])
    paths["results.md"].write_text(results_markdown(results))
    index = results.model_index() if model is None else [results.model_index_entry(model)]
    paths["model_index.json"].write_text(json.dumps(index, indent=2) + "\n")
    # The plots repeat the tables: without matplotlib (a bare GPU machine) they are left out, said once.
    plots = importlib.util.find_spec("matplotlib") is not None
    if not plots:
        print("no plots (results.png, layerwise.png): matplotlib is not installed", file=sys.stderr)
    if any(task.metrics for task in results.tasks.values()) and plots:
        plot_results(results, paths["results.png"])
    else:
        del paths["results.png"]
    if results.layerwise:
        paths["layerwise.md"] = out_dir / "layerwise.md"
        paths["layerwise.md"].write_text(layerwise_markdown(results.layerwise.models))
        if plots:
            paths["layerwise.png"] = out_dir / "layerwise.png"
            plot_layerwise(results.layerwise.models, paths["layerwise.png"])
    return paths
