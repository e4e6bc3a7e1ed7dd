"""Evaluation of CLIP checkpoints on negation and general benchmarks, side by side.

    python -m eval MODEL [MODEL ...] --tasks ccneg,negbench_mcq,... --out DIR [data flags]

Public surface (imported lazily, so that `from eval.items import ...` stays light):
- `run_evaluation(models, tasks, data, out_dir, batch_size=64, device=None, model_names=None,
  max_items=None, progress=True, seed=0, dataset_ids=None) -> EvalResults` (`eval.runner`);
- `EvalResults` (`omninegclip.common.results`, below `eval/`: the built-in pipeline and the model card
  read it too): the typed results (models, tasks with their metrics per model and
  notes, the layer-wise analysis, model-index entries); `results.json` is its file (`to_json` /
  `from_json`);
- `TASKS`, `DATA_FLAGS`, `known_tasks()` (`eval.tasks`): the task registry and the data each task needs.

Layout: `items` (what readers produce), one reader module per benchmark family (`ccneg`,
`negrefcocog`, `negbench`, `valse`, `sugarcrepe`, `retrieval`, `zeroshot`, `world`), `files` (their
shared file helpers), `harness` (embedding once per model, scoring), `layerwise` (the per-block
analysis), `report` (the PNG plots and the files of `--out`), `tasks` (registry), `runner`, `__main__` (CLI);
`metrics/` holds the scoring rules as `evaluate` modules (`evaluate.load("eval/metrics/mcq_accuracy")`),
for scoring any model's per-item scores by the harness's rules.
"""

from __future__ import annotations

_LAZY = {
    "run_evaluation": "eval.runner",
    "EvalResults": "omninegclip.common.results",
    "TASKS": "eval.tasks",
    "DATA_FLAGS": "eval.tasks",
    "known_tasks": "eval.tasks",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'eval' has no attribute {name!r}")
