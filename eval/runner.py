"""`run_evaluation`: several CLIP checkpoints, the same items, one `EvalResults` and the files in `out_dir`.

Every model is loaded with plain `CLIPModel.from_pretrained` + `CLIPProcessor.from_pretrained` (a Hub
id or a local folder; no project code needed, and none is ever run: `trust_remote_code=False`). All
models are checked to be CLIP checkpoints before any data is read, and the task items are built once
and shared by every model, so each model sees exactly the same items: the items whose image cannot
be read are left out (counted in the task's notes) while the first model embeds them, before any
scoring. Per model, each image and each text is embedded once across all tasks. A task with no item
to evaluate is an error. results.json records the seed, the git commit and the library versions.

Public surface: `HARNESS_VERSION`, `load_clip(model_id, device)`,
`run_evaluation(models, tasks, data, out_dir, batch_size=64, device=None, model_names=None,
max_items=None, progress=True, seed=0, dataset_ids=None) -> EvalResults` (`omninegclip.common.results`).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from eval.harness import CLIPEmbedder, evaluate_tasks, task_size
from eval.layerwise import NegationPairs, layerwise_cosines, read_negation_pairs
from eval.report import write_outputs
from eval.tasks import DATA_FLAGS, TASKS, BuiltTask, build_tasks, check_data, check_task_names
from omninegclip.common.checkpoints import check_clip_checkpoint
from omninegclip.common.cli import UserError
from omninegclip.common.outputs import ensure_writable
from omninegclip.common.provenance import provenance
from omninegclip.common.results import EvalResults, LayerwiseRun, ModelRun, TaskResult
from omninegclip.common.safe_load import first_line, load_pretrained_checked

HARNESS_VERSION = "1.0.0"


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise UserError(f"--device {device!r}: not a torch device (e.g. cpu, cuda, cuda:1, auto)") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    return resolved


def load_clip(model_id: str, device: str | torch.device = "cpu"):
    from transformers import CLIPModel, CLIPProcessor

    check_clip_checkpoint(model_id, f"model {model_id}")
    try:
        model = load_pretrained_checked(CLIPModel, model_id, f"model {model_id}")
        processor = CLIPProcessor.from_pretrained(model_id, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"model {model_id}: cannot load the CLIP weights and processor ({first_line(error)})"
        ) from error
    return model.to(device).eval(), processor


def display_names(models: list[str], model_names: list[str] | None) -> list[str]:
    if model_names is not None:
        if len(model_names) != len(models):
            raise UserError(f"--model_names: {len(model_names)} names for {len(models)} models")
        names = list(model_names)
    else:
        names = [str(model) for model in models]
    if len(set(names)) != len(names):
        raise UserError(f"two models have the same name in {names}; give distinct --model_names")
    return names


def check_dataset_ids(dataset_ids: dict[str, str], data: dict[str, str]) -> dict[str, str]:
    """`--dataset_ids`: each key a data flag, each value a Hub dataset id. A `--zeroshot` given as a Hub
    id (not a local path) names itself."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for key, repo_id in dataset_ids.items():
        if key not in DATA_FLAGS or key.endswith(("_split", "_images", "_templates")):
            raise UserError(
                f"--dataset_ids {key}={repo_id}: {key!r} is not a data flag naming a dataset "
                "(expected one of "
                f"{', '.join(k for k in DATA_FLAGS if not k.endswith(('_split', '_images', '_templates')))})"
            )
        try:
            validate_repo_id(repo_id)
        except HFValidationError:
            raise UserError(
                f"--dataset_ids {key}={repo_id}: {repo_id!r} is not a Hub id (expected owner/name or name)"
            ) from None
    zeroshot = data.get("zeroshot")
    if zeroshot and "zeroshot" not in dataset_ids and not Path(zeroshot).exists():
        dataset_ids = dataset_ids | {"zeroshot": zeroshot}
    return dict(dataset_ids)


def run_evaluation(
    models: list[str],
    tasks: list[str],
    data: dict[str, str],
    out_dir: str | Path,
    batch_size: int = 64,
    device: str | None = None,
    model_names: list[str] | None = None,
    max_items: int | None = None,
    progress: bool = True,
    seed: int = 0,
    dataset_ids: dict[str, str] | None = None,
) -> EvalResults:
    """Evaluate every model on every task; write results.json/.md/.png and model_index.json; return the results.
    `seed` seeds Python, NumPy and torch (nothing here draws at random today; recorded with the results).
    `dataset_ids` maps a data key (`world`, `ccneg`, ...) to the Hub id its data is published under: the
    `dataset.type` of the model-index entries of its tasks."""
    if not models:
        raise UserError("no model given: pass one or more Hub ids or checkpoint folders")
    if batch_size < 1 or (max_items is not None and max_items < 1):
        raise UserError(f"--batch_size and --max_items must be positive (got {batch_size}, {max_items})")
    models = [str(model) for model in models]
    data = {key: str(value) for key, value in data.items() if value not in (None, "")}
    names = display_names(models, model_names)
    task_names = check_task_names(tasks)
    check_data(task_names, data)  # before anything slow: a missing flag fails at once
    dataset_ids = check_dataset_ids(dataset_ids or {}, data)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"--out {out_dir}: is a file; expected a folder (created if missing)")
    ensure_writable(out_dir, "--out")  # before anything slow
    torch_device = resolve_device(device)
    for model in models:
        check_clip_checkpoint(model, f"model {model}")
    for model in models:  # weights and processor of every model, before any is evaluated
        load_clip(model, "cpu")  # loaded, checked and let go
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    built = build_tasks(task_names, data, max_items)
    drop_degenerate_items(built)
    check_not_empty(built)
    pairs = None
    if "layerwise" in task_names:
        pairs = read_negation_pairs(
            data.get("layerwise") or data["world"], data.get("layerwise_split") or "test", max_items
        )
    settings = {
        "tasks": task_names,
        "data": data,
        "dataset_ids": dataset_ids,
        "batch_size": batch_size,
        "device": str(torch_device),
        "max_items": max_items,
    }
    results = new_results(names, models, settings, built, pairs, seed)
    for model in results.models:
        evaluate_model(results, model, built, pairs, torch_device, batch_size, progress)
    for task in built:  # the first model's pass may have left out items with unreadable images
        results.tasks[task.data.name].notes = task.data.notes
    write_outputs_atomically(results, Path(out_dir))
    return results


def new_results(
    names: list[str], models: list[str], settings: dict, built: list[BuiltTask], pairs: NegationPairs | None, seed: int
) -> EvalResults:
    """The results before any model is scored: the models, settings, provenance and each task's data."""
    dataset_ids, data = settings["dataset_ids"], settings["data"]
    tasks = {
        task.data.name: TaskResult(
            task=task.spec.name,
            description=task.spec.description,
            dataset={
                "name": task.spec.dataset_name,
                "type": dataset_ids.get(task.spec.data_key(), task.spec.dataset_type),
                "split": task.spec.split(data),
            },
            notes=task.data.notes,
        )
        for task in built
    }
    layerwise = None if pairs is None else LayerwiseRun(pairs.source, TASKS["layerwise"].description, pairs.notes)
    return EvalResults(
        harness_version=HARNESS_VERSION,
        models=[ModelRun(name, model) for name, model in zip(names, models)],
        settings=settings,
        provenance=provenance(seed=seed),
        tasks=tasks,
        layerwise=layerwise,
    )


def evaluate_model(
    results: EvalResults,
    model: ModelRun,
    built: list[BuiltTask],
    pairs: NegationPairs | None,
    device: torch.device,
    batch_size: int,
    progress: bool,
) -> None:
    """Score one model on every task (and the layer-wise analysis) into `results`; the model is let go after."""
    clip, processor = load_clip(model.id, device)
    if built:
        embedder = CLIPEmbedder(clip, processor, batch_size, progress, model.name)
        scores = evaluate_tasks(embedder, [task.data for task in built])
        model.texts_truncated = embedder.truncated_texts
        for task_name, score in scores.items():
            task = results.tasks[task_name]
            task.counts = score.counts
            for metric, value in score.metrics.items():
                task.metrics.setdefault(metric, {})[model.name] = value
    if pairs is not None:
        results.layerwise.models[model.name] = layerwise_cosines(
            clip, processor.tokenizer, pairs, batch_size, progress, model.name
        )


def write_outputs_atomically(results: EvalResults, out_dir: Path) -> None:
    """The result files written into a hidden folder beside them, then each renamed into `out_dir`:
    a full disk leaves the previous files (or none), never a 0-byte or partial one."""
    staging = out_dir / f".partial-{os.getpid()}"
    try:
        for path in write_outputs(results, staging).values():
            os.replace(path, out_dir / path.name)
    except OSError as error:
        raise UserError(
            f"--out {out_dir}: could not write the results ({error.filename or out_dir}: {error.strerror or error}); "
            f"the files there before, if any, are unchanged"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def drop_degenerate_items(built: list[BuiltTask]) -> None:
    """Leave out (counted in the task's notes) the multiple-choice items with fewer than two options,
    which every model gets right; refuse a retrieval over fewer than two images, where every R@k is
    100 % whatever the model."""
    for task in built:
        data = task.data
        single = [item for item in data.choices if len(item.texts if item.choose == "text" else item.images) < 2]
        if single:
            data.choices = [item for item in data.choices if item not in single]
            shown = ", ".join(item.item_id or "?" for item in single[:3]) + (", …" if len(single) > 3 else "")
            note = f"left out {len(single)} item(s) with a single option, which any model gets right (e.g. {shown})"
            data.notes = f"{data.notes}; {note}" if data.notes else note
            print(f"warning: task {data.name}: {note}", file=sys.stderr)
        if data.retrieval is not None and len(data.retrieval.images) < 2:
            raise UserError(
                f"task {data.name}: retrieval over {len(data.retrieval.images)} image(s) scores 100 % for any model; "
                f"it needs at least two images (check --max_items and the data file)"
            )


def check_not_empty(built: list[BuiltTask]) -> None:
    """A `UserError` for a requested task whose data hold no item to evaluate (an empty file, or every
    row skipped). One empty family of a task that has several (the image world's) is only noted."""
    by_task: dict[str, list[BuiltTask]] = {}
    for task in built:
        by_task.setdefault(task.spec.name, []).append(task)
    for name, tasks in by_task.items():
        if not any(task_size(task.data) for task in tasks):
            flags = ", ".join(f"--{key.split('|')[0]}" for key in tasks[0].spec.required)
            notes = "; ".join(task.data.notes for task in tasks if task.data.notes)
            raise UserError(
                f"task {name}: no item to evaluate in the data given by {flags}" + (f" ({notes})" if notes else "")
            )
