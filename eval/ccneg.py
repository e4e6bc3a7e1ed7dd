"""CC-Neg (CoN-CLIP, presence negation): does the image prefer its caption to the caption's negation?

The release is one file, `ccneg_preprocessed.pt` (from the CoN-CLIP repository's `ccneg_dataset/`),
plus an image folder `ccneg_images/cc3m_subset_images_extracted_final/`. The file is parsed by
`omninegclip.common.formats.read_ccneg_file` (the reader the dataset builder uses too; the format is
described there); image paths, as on the authors' machine, are looked up under `--ccneg_images` as
the builder looks them up (`ccneg_image_candidates`): it may be the CC-Neg root, its `ccneg_images`
folder or the `cc3m_subset_images_extracted_final` folder inside that.
CoN-CLIP's own loader strips commas from the negated caption; we do the same so that the numbers
compare. The evaluation split is the last 40,000 items (`configs.num_ccneg_eval_samples` in
CoN-CLIP); the rest is CoN-CLIP's fine-tuning data. An item whose caption or negated caption is
missing, empty or not text is skipped and counted (`omninegclip.common.skips`).

Public surface: `EVAL_SIZE`, `read_ccneg(path, images_root=None, max_items=None) -> TaskData`.
"""

from __future__ import annotations

from pathlib import Path

from eval.files import image_loader, resolve_image
from eval.items import ChoiceItem, TaskData
from omninegclip.common.cli import UserError
from omninegclip.common.formats import CCNEG_EVAL_SIZE, CCNegEntry, ccneg_image_candidates, read_ccneg_file
from omninegclip.common.skips import SkipLog

EVAL_SIZE = CCNEG_EVAL_SIZE


def _caption_pair(entry: CCNegEntry, where: str, skips: SkipLog) -> tuple[str, str] | None:
    caption = skips.text(entry.caption, where, "caption")
    negated = skips.text(entry.negative, where, "negative_prompt") if caption is not None else None
    if caption is None or negated is None:
        return None
    return caption, negated.replace(",", "")


def _image(entry: CCNegEntry, images_root: str | Path | None, where: str) -> Path:
    """The image file of an entry, looked for where the dataset builder looks (`ccneg_image_candidates`)."""
    if images_root is None:
        return resolve_image(entry.image_path, None, where)
    _, candidates = ccneg_image_candidates(entry.image_path, Path(images_root).expanduser())
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    if found is None:
        raise UserError(f"{where}: missing image {entry.image_path!r} (looked for {', '.join(map(str, candidates))})")
    return found


def read_ccneg(path: str | Path, images_root: str | Path | None = None, max_items: int | None = None) -> TaskData:
    entries = read_ccneg_file(path)
    total = len(entries)
    first = max(0, total - EVAL_SIZE)
    last = total if max_items is None else min(total, first + max_items)
    task, skips = TaskData(name="ccneg"), SkipLog()
    for entry in entries[first:last]:
        where = f"{path}, item {entry.index}"
        pair = _caption_pair(entry, where, skips)
        if pair is None:
            continue
        caption, negated = pair
        image_path = _image(entry, images_root, where)
        key = str(image_path)
        task.images[key] = image_loader(image_path)
        task.choices.append(ChoiceItem(choose="text", images=[key], texts=[caption, negated], answer=0, item_id=where))
    notes = [skips.describe()]
    if total < EVAL_SIZE:
        notes.append(
            f"the file has {total} items, fewer than CC-Neg's {EVAL_SIZE}-item evaluation split: all are used"
        )
    task.notes = "; ".join(note for note in notes if note)
    return task
