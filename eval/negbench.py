"""NegBench (Alhamoud et al.): multiple-choice questions with negation, and negated retrieval.

MCQ files (`COCO_val_mcq_llama3.1_rephrased.csv`, `VOC2007_mcq_…`, `synthetic_mcq_…`) have the columns
`image_path`, `correct_answer`, `caption_0` … `caption_3` and `correct_answer_template`, as NegBench's
own loader reads them (`CsvMCQDataset`):
- `correct_answer` is the *index* (0-based integer) of the right caption among `caption_*`;
- `correct_answer_template` names the question type: `positive`, `negative` or `hybrid` in the files
  (the paper's affirmation / negation / hybrid); we report them under the paper's names.
The number of options is the number of `caption_<i>` columns (NegBench's loader does the same). The
score is the share of questions where the right caption has the highest cosine, in total and per
template. A question with an empty caption is skipped and counted (in the task's notes).

Negated retrieval files (`COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv`) have
`filepath` and `captions`, a Python-list string of captions for the image; NegBench reports
text→image R@1 and R@5 (we report image→text too). The reader is `retrieval.read_retrieval_csv`.

Image paths in the CSVs are absolute paths from the authors' machines; `images_root` is where to look
for them (as written under it, then by file name) when they do not exist as written.

Public surface: `TEMPLATE_NAMES`, `read_negbench_mcq(path, images_root=None, max_items=None)`,
`read_negbench_retrieval(path, images_root=None, max_items=None)`.
"""

from __future__ import annotations

import re
from pathlib import Path

from eval.files import image_loader, resolve_image
from eval.items import ChoiceItem, TaskData
from eval.retrieval import read_retrieval_csv
from omninegclip.common.cli import UserError
from omninegclip.common.formats import read_csv
from omninegclip.common.skips import SkipLog

TEMPLATE_NAMES = {
    "positive": "affirmation",
    "negative": "negation",
    "hybrid": "hybrid",
    "affirmation": "affirmation",
    "negation": "negation",
}


def read_negbench_mcq(
    path: str | Path, images_root: str | Path | None = None, max_items: int | None = None
) -> TaskData:
    path = Path(path)
    header, rows = read_csv(path, [["image_path", "filepath"], ["correct_answer"], ["caption_0"]])
    image_column = "image_path" if "image_path" in header else "filepath"
    caption_columns = sorted(
        (column for column in header if re.fullmatch(r"caption_\d+", column)), key=lambda c: int(c[8:])
    )
    expected = [f"caption_{index}" for index in range(len(caption_columns))]
    if caption_columns != expected:
        raise UserError(
            f"{path}: caption columns must be caption_0 … caption_{len(caption_columns) - 1} without gaps, "
            f"found {caption_columns}"
        )
    task, skips = TaskData(name="negbench_mcq"), SkipLog()
    for line, row in rows:
        if max_items is not None and len(task.choices) >= max_items:
            break
        where = f"{path}, line {line}"
        try:
            answer = int(row["correct_answer"])
        except (TypeError, ValueError):
            raise UserError(
                f"{where}: correct_answer must be an integer index into "
                f"caption_0 … caption_{len(caption_columns) - 1}, got {row['correct_answer']!r}"
            ) from None
        if not 0 <= answer < len(caption_columns):
            raise UserError(
                f"{where}: correct_answer {answer} is not one of the {len(caption_columns)} caption columns"
            )
        captions = [skips.text(row[column], f"{where} (column {column})", "caption") for column in caption_columns]
        if None in captions:
            continue
        template = (row.get("correct_answer_template") or "all").strip()
        image_path = resolve_image(row[image_column], images_root, where)
        key = str(image_path)
        task.images[key] = image_loader(image_path)
        task.choices.append(
            ChoiceItem(
                choose="text",
                images=[key],
                texts=captions,
                answer=answer,
                group=TEMPLATE_NAMES.get(template, template),
                item_id=where,
            )
        )
    task.notes = skips.describe()
    return task


def read_negbench_retrieval(
    path: str | Path, images_root: str | Path | None = None, max_items: int | None = None
) -> TaskData:
    return read_retrieval_csv(path, images_root, max_items=max_items, name="negbench_retrieval")
