"""The task registry: every task the harness knows, the data it needs, and how to build its items.

`DATA_FLAGS` names each data entry (the CLI flag `--<key>`, the key of `run_evaluation(data=…)`) with
its help; `TASKS` maps a task name to a `TaskSpec`. `build_tasks(names, data, max_items)` checks the
names and the data and returns the items of every embedding task; `layerwise` is an analysis, not a
set of items, and is run by `eval.runner` itself.

Public surface: `DATA_FLAGS`, `TaskSpec`, `TASKS`, `known_tasks()`, `check_task_names(names)`,
`build_tasks(names, data, max_items=None) -> list[BuiltTask]`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eval.items import TaskData
from omninegclip.common.cli import UserError

DATA_FLAGS = {
    "ccneg": "CoN-CLIP's ccneg_preprocessed.pt (CC-Neg; the last 40,000 items are evaluated)",
    "ccneg_images": "folder of CC-Neg images (ccneg_images/cc3m_subset_images_extracted_final)",
    "negrefcocog": "NegationCLIP's NegRefCOCOg.json",
    "negrefcocog_images": "folder of COCO train2014 images (default: the JSON's folder)",
    "negbench_mcq": "a NegBench MCQ CSV (image_path, correct_answer, caption_0..3, correct_answer_template)",
    "negbench_retrieval": "a NegBench negated-retrieval CSV (filepath, captions)",
    "negbench_images": "where to look for NegBench images whose paths do not exist as written",
    "valse": "a VALSE JSON, e.g. existence.json",
    "valse_images": "folder of the VALSE piece's images (existence: Visual7W; default: the JSON's folder)",
    "sugarcrepe": "folder with SugarCrepe's seven JSON files (add_att.json, ...)",
    "sugarcrepe_images": "folder of COCO val2017 images",
    "retrieval": "a Karpathy-split JSON (dataset_coco.json, dataset_flickr30k.json), a CSV, or a folder holding one",
    "retrieval_images": "image folder for --retrieval (default: the JSON's folder)",
    "retrieval_split": "split of --retrieval to evaluate (default: test)",
    "zeroshot": "an image-classification dataset: a save_to_disk folder or a Hub id",
    "zeroshot_split": "split of --zeroshot (default: test)",
    "zeroshot_templates": "text file, one prompt template per line with {} for the class name",
    "world": "the offline image world's dataset folder (data_builder.py shapes)",
    "world_split": "split of --world (default: test)",
    "layerwise": "caption / presence_negated / absence_negated pairs: a dataset folder or CSV (default: --world)",
    "layerwise_split": "split of --layerwise (default: test)",
}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    required: tuple[str, ...]  # DATA_FLAGS keys that must be given (any one of a "a|b" alternative)
    dataset_name: str  # for model-index entries
    dataset_type: str
    build: Callable[[dict[str, str], int | None], list[TaskData]] | None  # None: an analysis (layerwise)
    split_key: str | None = None  # the DATA_FLAGS key naming the split evaluated; without one (or unset): "test"

    def split(self, data: dict[str, str]) -> str:
        """The split of the task's data that is evaluated (the benchmarks' files are their test sets)."""
        return (data.get(self.split_key) if self.split_key else None) or "test"

    def data_key(self) -> str:
        """The DATA_FLAGS key of the task's main data (the first one it requires)."""
        return self.required[0].split("|")[0]


@dataclass
class BuiltTask:
    spec: TaskSpec
    data: TaskData


def _module(name: str):
    return importlib.import_module(f"eval.{name}")


def _world(template_sets: tuple[str, ...]):
    def build(data: dict[str, str], max_items: int | None) -> list[TaskData]:
        try:
            world = _module("world")
        except ModuleNotFoundError as error:
            if error.name != "eval.world":
                raise
            raise UserError("the world tasks need eval/world.py, which is not in this checkout") from error
        return [
            task
            for template_set in template_sets
            for task in world.world_tasks(
                data["world"], split=data.get("world_split") or "test", template_set=template_set, max_scenes=max_items
            )
        ]

    return build


def _templates(data: dict[str, str]) -> list[str] | None:
    return _module("zeroshot").read_templates(data["zeroshot_templates"]) if data.get("zeroshot_templates") else None


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "ccneg",
            "CC-Neg two-way accuracy: caption vs its presence negation",
            ("ccneg",),
            "CC-Neg",
            "ccneg",
            lambda data, n: [_module("ccneg").read_ccneg(data["ccneg"], data.get("ccneg_images"), n)],
        ),
        TaskSpec(
            "negrefcocog",
            "NegRefCOCOg: pick the box whose crop matches a negated phrase",
            ("negrefcocog",),
            "NegRefCOCOg",
            "negrefcocog",
            lambda data, n: [
                _module("negrefcocog").read_negrefcocog(data["negrefcocog"], data.get("negrefcocog_images"), n)
            ],
        ),
        TaskSpec(
            "negbench_mcq",
            "NegBench MCQ accuracy, total and per template",
            ("negbench_mcq",),
            "NegBench MCQ",
            "negbench",
            lambda data, n: [
                _module("negbench").read_negbench_mcq(data["negbench_mcq"], data.get("negbench_images"), n)
            ],
        ),
        TaskSpec(
            "negbench_retrieval",
            "NegBench negated retrieval, R@k",
            ("negbench_retrieval",),
            "NegBench negated retrieval",
            "negbench",
            lambda data, n: [
                _module("negbench").read_negbench_retrieval(data["negbench_retrieval"], data.get("negbench_images"), n)
            ],
        ),
        TaskSpec(
            "valse",
            "VALSE (e.g. existence): caption vs foil, validated samples",
            ("valse",),
            "VALSE",
            "valse",
            lambda data, n: [_module("valse").read_valse(data["valse"], data.get("valse_images"), n)],
        ),
        TaskSpec(
            "sugarcrepe",
            "SugarCrepe: caption vs hard negative, seven subsets",
            ("sugarcrepe", "sugarcrepe_images"),
            "SugarCrepe",
            "sugarcrepe",
            lambda data, n: [_module("sugarcrepe").read_sugarcrepe(data["sugarcrepe"], data["sugarcrepe_images"], n)],
        ),
        TaskSpec(
            "retrieval",
            "image-text retrieval R@1/5/10 both directions (COCO/Flickr-style)",
            ("retrieval",),
            "image-text retrieval",
            "retrieval",
            lambda data, n: [
                _module("retrieval").read_retrieval(
                    data["retrieval"], data.get("retrieval_images"), data.get("retrieval_split") or "test", n
                )
            ],
            "retrieval_split",
        ),
        TaskSpec(
            "zeroshot",
            "zero-shot classification top-1/top-5 on an HF image-classification dataset",
            ("zeroshot",),
            "zero-shot classification",
            "zeroshot",
            lambda data, n: [
                _module("zeroshot").read_zeroshot(
                    data["zeroshot"], data.get("zeroshot_split") or "test", _templates(data), n
                )
            ],
            "zeroshot_split",
        ),
        TaskSpec(
            "world",
            "the offline image world, training and held-out phrasing templates",
            ("world",),
            "Omni-NegCLIP image world",
            "omninegclip-image-world",
            _world(("train", "heldout")),
            "world_split",
        ),
        TaskSpec(
            "world_train",
            "the offline image world, training phrasing templates",
            ("world",),
            "Omni-NegCLIP image world",
            "omninegclip-image-world",
            _world(("train",)),
            "world_split",
        ),
        TaskSpec(
            "world_heldout",
            "the offline image world, phrasing templates training never used",
            ("world",),
            "Omni-NegCLIP image world",
            "omninegclip-image-world",
            _world(("heldout",)),
            "world_split",
        ),
        TaskSpec(
            "layerwise",
            "per text block, cosine of EOS states of caption vs negation",
            ("layerwise|world",),
            "negation pairs",
            "layerwise",
            None,
        ),
    ]
}


def known_tasks() -> list[str]:
    return list(TASKS)


def check_task_names(names: list[str]) -> list[str]:
    """The requested task names, deduplicated in order; an unknown one is a `UserError` listing the known ones."""
    names = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    if not names:
        raise UserError(f"--tasks: no task given; known tasks: {', '.join(known_tasks())}")
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise UserError(
            f"--tasks: unknown task {', '.join(map(repr, unknown))}; known tasks: {', '.join(known_tasks())}"
        )
    return names


def check_data(names: list[str], data: dict[str, str]) -> None:
    unknown = sorted(set(data) - set(DATA_FLAGS))
    if unknown:
        raise UserError(f"unknown data entries {unknown}; known: {', '.join(DATA_FLAGS)}")
    for name in names:
        for requirement in TASKS[name].required:
            alternatives = requirement.split("|")
            if not any(data.get(key) for key in alternatives):
                flags = " or ".join(f"--{key}" for key in alternatives)
                raise UserError(f"task {name} needs {flags}: {DATA_FLAGS[alternatives[0]]}")
    for key, value in data.items():
        is_path = key != "zeroshot" and not key.endswith("_split")  # --zeroshot may be a Hub id
        if value and is_path and not Path(value).exists():
            raise UserError(f"--{key} {value}: no such file or folder")


def build_tasks(names: list[str], data: dict[str, str], max_items: int | None = None) -> list[BuiltTask]:
    names = check_task_names(names)
    check_data(names, data)
    built = []
    for name in names:
        spec = TASKS[name]
        if spec.build is not None:
            built += [BuiltTask(spec, task) for task in spec.build(data, max_items)]
    seen = set()
    for task in built:
        if task.data.name in seen:
            raise UserError(
                f"two tasks produce items named {task.data.name!r}: ask for only one of them "
                "(e.g. world or world_train)"
            )
        seen.add(task.data.name)
    return built
