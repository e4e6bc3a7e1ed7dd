"""`EvalResults`: what one evaluation found, typed, and its markdown table. `results.json` is the
object on disk, in a layout that scripts outside this project read, so it never changes shape:

    {"harness_version", "models": [{"name", "id", "texts_truncated"?}], "settings", "provenance",
     "tasks": {TASK: {"task", "description", "dataset": {"name", "type", "split"}, "counts", "notes"}},
     "metrics": {TASK: {METRIC: {MODEL: fraction or null}}},
     "layerwise": null | {"source", "description", "notes", "models": {MODEL: {"cosines", "pairs"}}}}

In memory each task holds its own metrics (`TaskResult.metrics`, metric -> model name -> fraction
in [0, 1], NaN where a metric is undefined; NaN is written as null and read back as None).

It lives in the package, below `eval/` (which writes it), the built-in pipeline (which reads it) and
the model card (which publishes it): one reader of results.json and one table for all of them.

Public surface: `ModelRun`, `TaskResult`, `LayerwiseResult`, `LayerwiseRun`, `EvalResults`
(`metric(task, metric, model)`, `metric_names(task)`, `model_index()`, `model_index_entry(model)`,
`to_dict()` / `from_dict(data)`, `to_json(path)` / `from_json(path)`); `results_markdown(results)`
(results.md: a row per (task, metric), a column per model, then the notes and the layer-wise table);
`layerwise_markdown(models)` (the layer-wise table alone, layerwise.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omninegclip.common.cli import UserError
from omninegclip.common.clip import CONTEXT_LENGTH


@dataclass
class ModelRun:
    """One evaluated model: its display name, the Hub id or folder it was loaded from, and how many
    of its texts were cut at CLIP's context length (None: no task embedded its texts)."""

    name: str
    id: str
    texts_truncated: int | None = None

    def to_dict(self) -> dict:
        entry = {"name": self.name, "id": self.id}
        return entry if self.texts_truncated is None else entry | {"texts_truncated": self.texts_truncated}


@dataclass
class TaskResult:
    """One evaluated task (e.g. `world_heldout/mcq`): what it is, its data, the items scored and the
    rows left out (`notes`), and every metric per model."""

    task: str  # the registry's name (`world` for `world_heldout/mcq`)
    description: str
    dataset: dict[str, str]  # name, type (a Hub id or a short name), split
    counts: dict[str, int] = field(default_factory=dict)
    notes: str = ""
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # metric -> model name -> fraction


@dataclass
class LayerwiseResult:
    """One model's layer-wise analysis: per kind of negation ("presence", "absence"), the mean cosine of
    a caption and its negation after each text block, and the number of pairs averaged."""

    cosines: dict[str, list[float]] = field(default_factory=dict)  # kind -> mean cosine per block
    pairs: dict[str, int] = field(default_factory=dict)  # kind -> number of pairs averaged


@dataclass
class LayerwiseRun:
    """The layer-wise analysis: where its caption pairs came from, the rows left out, and per model
    the mean cosine of a caption and its negation after each text block."""

    source: str
    description: str
    notes: str = ""
    models: dict[str, LayerwiseResult] = field(default_factory=dict)


def _without_nan(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return value


@dataclass
class EvalResults:
    """Every model on every task of one `run_evaluation`, with the settings and provenance."""

    harness_version: str
    models: list[ModelRun]
    settings: dict
    provenance: dict
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    layerwise: LayerwiseRun | None = None

    @property
    def model_names(self) -> list[str]:
        return [model.name for model in self.models]

    def metric(self, task: str, metric: str, model: str) -> float | None:
        """`metric` of `task` for the model named `model`, a fraction in [0, 1]; None where it was not
        measured (no such task, metric or model) or is undefined (NaN)."""
        found = self.tasks[task].metrics.get(metric, {}).get(model) if task in self.tasks else None
        return None if found is None or math.isnan(found) else found

    def metric_names(self, task: str) -> list[str]:
        """The metrics measured on `task` (none where there is no such task)."""
        return list(self.tasks[task].metrics) if task in self.tasks else []

    def model_index_entry(self, model: str) -> dict:
        """The Hub `model-index` entry of one model: `{"name", "results": [{"task", "dataset", "metrics"}]}`,
        values in percent, one result per task it has a number for.

        The Hub (`huggingface_hub.repocard_data.model_index_to_eval_results`) merges the results that share
        task type, dataset type, config, split and revision: every task here is its own `dataset.config`
        (the task's name, e.g. `world_train/presence`) on the split evaluated, so none is merged away."""
        if model not in self.model_names:
            raise KeyError(f"no model {model!r} in these results (models: {self.model_names})")
        task_results = []
        for name, task in self.tasks.items():
            values = [(metric, self.metric(name, metric, model)) for metric in task.metrics]
            task_metrics = [
                {
                    "type": "recall" if "R@" in metric else "accuracy",
                    "name": f"{name} {metric}",
                    "value": round(100 * value, 2),
                }
                for metric, value in values
                if value is not None
            ]
            if task_metrics:
                task_results.append(
                    {
                        "task": {"type": "zero-shot-image-classification", "name": task.description},
                        "dataset": {
                            "name": f"{task.dataset['name']} ({name})",
                            "type": task.dataset["type"],
                            "config": name,
                            "split": task.dataset.get("split", "test"),
                        },
                        "metrics": task_metrics,
                    }
                )
        return {"name": model, "results": task_results}

    def model_index(self) -> list[dict]:
        """One `model-index` entry per model (`model_index.json`)."""
        return [self.model_index_entry(name) for name in self.model_names]

    def to_dict(self) -> dict:
        """The `results.json` layout (NaN as None)."""
        layerwise = None
        if self.layerwise is not None:
            layerwise = {
                "source": self.layerwise.source,
                "description": self.layerwise.description,
                "notes": self.layerwise.notes,
                "models": {name: dataclasses.asdict(result) for name, result in self.layerwise.models.items()},
            }
        return _without_nan(
            {
                "harness_version": self.harness_version,
                "models": [model.to_dict() for model in self.models],
                "settings": self.settings,
                "provenance": self.provenance,
                "tasks": {
                    name: {
                        "task": task.task,
                        "description": task.description,
                        "dataset": task.dataset,
                        "counts": task.counts,
                        "notes": task.notes,
                    }
                    for name, task in self.tasks.items()
                },
                "metrics": {name: task.metrics for name, task in self.tasks.items()},
                "layerwise": layerwise,
            }
        )

    @classmethod
    def from_dict(cls, data: dict) -> EvalResults:
        metrics = data["metrics"]
        tasks = {name: TaskResult(**info, metrics=metrics.get(name, {})) for name, info in data["tasks"].items()}
        layerwise = data.get("layerwise")
        if layerwise is not None:
            layerwise = LayerwiseRun(
                **(
                    layerwise
                    | {"models": {name: LayerwiseResult(**entry) for name, entry in layerwise["models"].items()}}
                )
            )
        return cls(
            harness_version=data["harness_version"],
            models=[ModelRun(**entry) for entry in data["models"]],
            settings=data["settings"],
            provenance=data["provenance"],
            tasks=tasks,
            layerwise=layerwise,
        )

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> EvalResults:
        """The results of a `results.json` written by `python -m eval` (a `UserError` naming the file
        and what is wrong otherwise)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such results file (expected the results.json that python -m eval writes)")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
        except (KeyError, TypeError, AttributeError) as error:
            raise UserError(
                f"{path}: not a results.json written by python -m eval ({type(error).__name__}: {error})"
            ) from None


# ---------------------------------------------------------------------------------------------- markdown


def _count_key(metric: str) -> str:
    """The `TaskResult.counts` entry that says how many items `metric` was measured on."""
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


def layerwise_markdown(results: dict[str, LayerwiseResult]) -> str:
    """One row per text block, one column per (model, kind): mean cosine of caption vs negation."""
    columns = [(model, kind) for model, result in results.items() for kind in result.cosines]
    num_blocks = max((len(values) for result in results.values() for values in result.cosines.values()), default=0)
    lines = [
        "| block | "
        + " | ".join(f"{model} {kind} (n={results[model].pairs[kind]})" for model, kind in columns)
        + " |",
        "|---:|" + "---:|" * len(columns),
    ]
    for block in range(num_blocks):
        cells = []
        for model, kind in columns:
            values = results[model].cosines[kind]
            cells.append(f"{values[block]:.4f}" if block < len(values) else "")
        lines.append(f"| {block} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(results: EvalResults) -> str:
    """results.md: one table, a row per (task, metric), a column per model (percentages), then the
    notes; the layer-wise table under it when the analysis ran."""
    names = results.model_names
    lines = [
        "# Evaluation results",
        "",
        "Accuracy and recall in percent; ties count as wrong (`accuracy_argmax`, where shown, is NegBench's own "
        "rule: a tie goes to the first option). Models: "
        + ", ".join(f"`{model.name}` = {_shown_id(model.id)}" for model in results.models),
        "",
        "| task | metric | n | " + " | ".join(names) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    for name, task in results.tasks.items():
        for metric, values in task.metrics.items():
            count = task.counts.get(_count_key(metric), "")
            lines.append(
                f"| {name} | {metric} | {count} | " + " | ".join(_percent(values.get(model)) for model in names) + " |"
            )
    notes = [(name, task.notes) for name, task in results.tasks.items() if task.notes]
    if results.layerwise and results.layerwise.notes:
        notes.append(("layerwise", results.layerwise.notes))
    notes += [
        (f"model {model.name}", f"{model.texts_truncated} texts longer than {CONTEXT_LENGTH} tokens were truncated")
        for model in results.models
        if model.texts_truncated
    ]
    if notes:
        lines += ["", "Notes:", *(f"- {task}: {note}" for task, note in notes)]
    if results.layerwise:
        lines += [
            "",
            "## Layer-wise analysis",
            "",
            f"Mean cosine between the EOS hidden states of a caption and its negation after each text block "
            f"(pairs from `{Path(results.layerwise.source).name}`; lower = better separated).",
            "",
            layerwise_markdown(results.layerwise.models),
        ]
    return "\n".join(lines).rstrip() + "\n"
