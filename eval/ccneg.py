"""CC-Neg (CoN-CLIP, presence negation): does the image prefer its caption to the caption's negation?

The release is one file, `ccneg_preprocessed.pt` (from the CoN-CLIP repository's `ccneg_dataset/`),
plus an image folder `ccneg_images/cc3m_subset_images_extracted_final/`. The `.pt` file holds a dict:
- `image_paths`: list of image paths as on the authors' machine (`/workspace/datasets/cc3m/…/
  cc3m_subset_images_extracted_final/x.jpg`): looked up under `--ccneg_images`, which may be the
  `ccneg_images` folder or its `cc3m_subset_images_extracted_final` subfolder;
- `annotations`: one dict per image, with the caption at `["json"]["caption"]` and the negated caption
  at `["sop_data"]["negative-prompt"]` (CoN-CLIP's own loader strips commas from the negated caption;
  we do the same so that the numbers compare);
- `num_ops`: indices grouped by number of negated object-predicate pairs (not used here).
The evaluation split is the last 40,000 items (`configs.num_ccneg_eval_samples` in CoN-CLIP); the rest
is CoN-CLIP's fine-tuning data. The file is read with `omninegclip.common.safe_load.load_torch_file`
(`torch.load(weights_only=True)`): plain containers load, anything that would need arbitrary
unpickling is refused. An item whose caption or negated caption is empty is skipped and counted.

Public surface: `EVAL_SIZE`, `load_ccneg_file(path)`, `read_ccneg(path, images_root=None, max_items=None) -> TaskData`.
"""

from __future__ import annotations

from pathlib import Path

from eval.files import SkipCounter, image_loader, resolve_image, usable_text
from eval.items import ChoiceItem, TaskData
from omninegclip.common.cli import UserError
from omninegclip.common.safe_load import load_torch_file

EVAL_SIZE = 40_000


def load_ccneg_file(path: str | Path) -> dict:
    """The `.pt` file's dict, loaded without arbitrary unpickling, its shape checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--ccneg {path}: no such file (expected CoN-CLIP's ccneg_preprocessed.pt)")
    data = load_torch_file(path, hint="CoN-CLIP's ccneg_preprocessed.pt holds only lists, dicts, strings and numbers.")
    if not isinstance(data, dict) or "image_paths" not in data or "annotations" not in data:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path}: expected a dict with 'image_paths' and 'annotations' (CC-Neg format), found {found}")
    for key in ("image_paths", "annotations"):
        if not isinstance(data[key], (list, tuple)):
            raise UserError(f"{path}: '{key}' must be a list (CC-Neg format), found {type(data[key]).__name__}")
    if len(data["image_paths"]) != len(data["annotations"]):
        raise UserError(f"{path}: {len(data['image_paths'])} image_paths but {len(data['annotations'])} annotations")
    return data


def _caption_pair(annotation, where: str, skips: SkipCounter) -> tuple[str, str] | None:
    try:
        caption = annotation["json"]["caption"]
        negated = annotation["sop_data"]["negative-prompt"]
    except (KeyError, TypeError) as error:
        raise UserError(f"{where}: expected annotation['json']['caption'] and annotation['sop_data']['negative-prompt'] (missing {error})") from error
    caption = usable_text(caption, "caption", where, skips)
    negated = usable_text(negated, "negative-prompt", where, skips) if caption is not None else None
    if caption is None or negated is None:
        return None
    return caption, negated.replace(",", "")


def read_ccneg(path: str | Path, images_root: str | Path | None = None, max_items: int | None = None) -> TaskData:
    data = load_ccneg_file(path)
    total = len(data["image_paths"])
    first = max(0, total - EVAL_SIZE)
    last = total if max_items is None else min(total, first + max_items)
    task, skips = TaskData(name="ccneg"), SkipCounter()
    for index in range(first, last):
        where = f"{path}, item {index}"
        pair = _caption_pair(data["annotations"][index], where, skips)
        if pair is None:
            continue
        caption, negated = pair
        image_path = resolve_image(data["image_paths"][index], images_root, where)
        key = str(image_path)
        task.images[key] = image_loader(image_path)
        task.choices.append(ChoiceItem(choose="text", images=[key], texts=[caption, negated], answer=0, item_id=where))
    notes = [skips.describe()]
    if total < EVAL_SIZE:
        notes.append(f"the file has {total} items, fewer than CC-Neg's {EVAL_SIZE}-item evaluation split: all are used")
    task.notes = "; ".join(note for note in notes if note)
    return task
