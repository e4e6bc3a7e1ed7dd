"""NegRefCOCOg (NegationCLIP, absence negation): which box of the image does a negated phrase refer to?

The release (`NegRefCOCOg/NegRefCOCOg.json` in the NegationCLIP repository) is a JSON list of
`{"image": "COCO_train2014_….jpg", "phrase": "a zebra not eating grass", "ref_bbox": [x, y, w, h],
"bbox_list": [[x, y, w, h], …]}` with COCO train2014 images. As in NegationCLIP's evaluation, every
box of `bbox_list` is cropped out of the image, the crop whose embedding is closest to the phrase is
the prediction, and it is right when it is `ref_bbox` (compared exactly, as published).

A record with an empty phrase is skipped and counted in the task's notes.

Public surface: `read_negrefcocog(path, images_root=None, max_items=None) -> TaskData`.
`images_root` defaults to the JSON file's folder.
"""

from __future__ import annotations

from pathlib import Path

from eval.files import crop_loader, resolve_image
from eval.items import ChoiceItem, TaskData
from omninegclip.common.cli import UserError
from omninegclip.common.formats import read_json
from omninegclip.common.skips import SkipLog


def _box(value, where: str) -> tuple[float, float, float, float]:
    if not isinstance(value, list) or len(value) != 4 or not all(isinstance(number, (int, float)) for number in value):
        raise UserError(f"{where}: a box must be a list [x, y, w, h] of 4 numbers, got {value!r}")
    x, y, width, height = (float(number) for number in value)
    if width <= 0 or height <= 0:
        raise UserError(f"{where}: the box {value!r} has no area (w and h must be > 0)")
    return x, y, width, height


def read_negrefcocog(
    path: str | Path, images_root: str | Path | None = None, max_items: int | None = None
) -> TaskData:
    path = Path(path)
    records = read_json(path)
    if not isinstance(records, list):
        raise UserError(
            f"{path}: expected a JSON list of {{image, phrase, ref_bbox, bbox_list}} records, "
            f"found {type(records).__name__}"
        )
    root = Path(images_root) if images_root is not None else path.parent
    task, skips = TaskData(name="negrefcocog"), SkipLog()
    for index, record in enumerate(records[:max_items]):
        where = f"{path}, record {index}"
        if not isinstance(record, dict) or not {"image", "phrase", "ref_bbox", "bbox_list"} <= set(record):
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise UserError(f"{where}: expected keys image, phrase, ref_bbox, bbox_list; found {found}")
        phrase = skips.text(record["phrase"], where, "phrase")
        if phrase is None:
            continue
        if not isinstance(record["bbox_list"], list) or not record["bbox_list"]:
            raise UserError(f"{where}: bbox_list must be a non-empty list of boxes, got {record['bbox_list']!r}")
        boxes = [_box(box, f"{where}, bbox_list[{number}]") for number, box in enumerate(record["bbox_list"])]
        reference = _box(record["ref_bbox"], f"{where}, ref_bbox")
        if reference not in boxes:
            raise UserError(f"{where}: ref_bbox {record['ref_bbox']} is not one of bbox_list")
        image_path = resolve_image(record["image"], root, where)
        keys = []
        for box in boxes:
            key = f"{image_path}#{','.join(f'{number:.10g}' for number in box)}"
            task.images[key] = crop_loader(image_path, box)
            keys.append(key)
        task.choices.append(
            ChoiceItem(choose="image", images=keys, texts=[phrase], answer=boxes.index(reference), item_id=where)
        )
    task.notes = skips.describe()
    return task
