"""VALSE (Parcalabescu et al.), e.g. its `existence` piece: caption versus foil for the same image.

A VALSE file (`data/existence.json`, images from Visual7W) is a JSON object `{id: {"dataset",
"image_file", "caption", "foil", "mturk": {"foil", "caption", "other"}, "classes", …}}`. VALSE's
README and its evaluation scripts keep only validated samples: at least two of the three annotators
chose the caption and not the foil, `sample["mturk"]["caption"] >= 2`; the others are counted as
skipped. The score is pairwise: right when cos(image, caption) > cos(image, foil).
(`caption` and `foil` are strings; a list, as some VALSE pieces and scripts use, gives its first entry;
an empty one is skipped and counted.)

Public surface: `MIN_CAPTION_VOTES`, `read_valse(path, images_root=None, max_items=None) -> TaskData`;
the task is named `valse/<file stem>`; `images_root` defaults to the JSON file's folder.
"""

from __future__ import annotations

from pathlib import Path

from eval.files import image_loader, resolve_image
from eval.items import ChoiceItem, TaskData
from omninegclip.common.cli import UserError
from omninegclip.common.formats import read_json
from omninegclip.common.skips import SkipLog

MIN_CAPTION_VOTES = 2


def _sentence(value, field_name: str, where: str, skips: SkipLog) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return skips.text(value, where, field_name)


def read_valse(path: str | Path, images_root: str | Path | None = None, max_items: int | None = None) -> TaskData:
    path = Path(path)
    samples = read_json(path)
    if not isinstance(samples, dict):
        raise UserError(
            f"{path}: expected a JSON object {{id: sample}} (VALSE format), found {type(samples).__name__}"
        )
    root = Path(images_root) if images_root is not None else path.parent
    task, skips = TaskData(name=f"valse/{path.stem}"), SkipLog()
    for sample_id, sample in samples.items():
        if max_items is not None and len(task.choices) >= max_items:
            break
        where = f"{path}, sample {sample_id!r}"
        if not isinstance(sample, dict) or not {"image_file", "caption", "foil", "mturk"} <= set(sample):
            found = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
            raise UserError(f"{where}: expected keys image_file, caption, foil, mturk; found {found}")
        votes = sample["mturk"].get("caption") if isinstance(sample["mturk"], dict) else None
        if not isinstance(votes, (int, float)):
            raise UserError(f"{where}: mturk.caption must be a vote count, got {sample['mturk']!r}")
        if votes < MIN_CAPTION_VOTES:
            skips.skip("not_validated", f"{where} (mturk.caption < {MIN_CAPTION_VOTES})")
            continue
        caption = _sentence(sample["caption"], "caption", where, skips)
        foil = _sentence(sample["foil"], "foil", where, skips) if caption is not None else None
        if caption is None or foil is None:
            continue
        image_path = resolve_image(sample["image_file"], root, where)
        key = str(image_path)
        task.images[key] = image_loader(image_path)
        task.choices.append(ChoiceItem(choose="text", images=[key], texts=[caption, foil], answer=0, item_id=where))
    task.notes = skips.describe()
    return task
