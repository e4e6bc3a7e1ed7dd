"""SugarCrepe (Hsieh et al.): compositional hard negatives, seven subsets, on COCO val2017 images.

The release (`data/` in the sugar-crepe repository) is seven JSON files, `add_att`, `add_obj`,
`replace_att`, `replace_obj`, `replace_rel`, `swap_att`, `swap_obj`, each `{id: {"filename",
"caption", "negative_caption"}}` (an earlier release named the object subsets `*_ent`; those names
are read too). As in SugarCrepe's `main_eval.py`, an item is right when cos(image, caption) >
cos(image, negative_caption). Reported per subset (`accuracy/<subset>`), over all items, and as the
mean over subsets (`accuracy/group_mean`, the number SugarCrepe's tables average). An item with an
empty caption or negative caption is skipped and counted in the task's notes.

Public surface: `SUBSETS`, `read_sugarcrepe(data_dir, images_root, max_items=None) -> TaskData`
(`max_items` applies to each subset).
"""

from __future__ import annotations

from pathlib import Path

from eval.files import image_loader, resolve_image
from eval.items import ChoiceItem, TaskData
from omninegclip.common.cli import UserError
from omninegclip.common.formats import read_json
from omninegclip.common.skips import SkipLog

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def _subset_file(data_dir: Path, subset: str) -> Path | None:
    for name in (subset, subset.replace("_obj", "_ent")):
        if (data_dir / f"{name}.json").is_file():
            return data_dir / f"{name}.json"
    return None


def read_sugarcrepe(
    data_dir: str | Path, images_root: str | Path | None = None, max_items: int | None = None
) -> TaskData:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"--sugarcrepe {data_dir}: expected the folder holding SugarCrepe's JSON files ({', '.join(SUBSETS)})"
        )
    files = {subset: _subset_file(data_dir, subset) for subset in SUBSETS}
    missing = [subset for subset, file in files.items() if file is None]
    if len(missing) == len(SUBSETS):
        raise UserError(
            f"--sugarcrepe {data_dir}: none of SugarCrepe's files {[s + '.json' for s in SUBSETS]} is in the folder"
        )
    task, skips = TaskData(name="sugarcrepe"), SkipLog()
    for subset, file in files.items():
        if file is None:
            continue
        records = read_json(file)
        if not isinstance(records, dict):
            raise UserError(f"{file}: expected a JSON object {{id: {{filename, caption, negative_caption}}}}")
        for record_id, record in list(records.items())[:max_items]:
            where = f"{file}, item {record_id!r}"
            if not isinstance(record, dict) or not {"filename", "caption", "negative_caption"} <= set(record):
                found = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise UserError(f"{where}: expected keys filename, caption, negative_caption; found {found}")
            texts = [skips.text(record[name], where, name) for name in ("caption", "negative_caption")]
            if None in texts:
                continue
            image_path = resolve_image(record["filename"], images_root, where)
            key = str(image_path)
            task.images[key] = image_loader(image_path)
            task.choices.append(
                ChoiceItem(choose="text", images=[key], texts=texts, answer=0, group=subset, item_id=where)
            )
    notes = [skips.describe(), f"subsets not found in {data_dir}: {', '.join(missing)}" if missing else ""]
    task.notes = "; ".join(note for note in notes if note)
    return task
