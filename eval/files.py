"""What every benchmark reader needs from the file system, in one place.

Public surface:
(JSON and CSV files are parsed by `omninegclip.common.formats.read_json` / `read_csv`, the readers the
dataset builder uses too.)
- `resolve_image(reference, root, where)`: the image file a dataset row points to. Published files
  carry paths from their authors' machines, so a reference is looked for under `root`: as written
  (if relative), then by its last folder and file name, then by its file name alone.
- `image_loader(path)` / `crop_loader(path, box)`: zero-argument functions for an `ImageStore` that
  open the image (or crop a box `x, y, w, h` out of it) as RGB, with `omninegclip.common.safe_load.open_rgb_image`:
  grayscale, palette and RGBA images are converted; a corrupt, truncated or oversized one raises
  `UnreadableImage` (the harness then leaves out the items that use it, counted).
Rows left out are counted in an `omninegclip.common.skips.SkipLog` (one rule and one line format for
building, training and evaluation); `SkipLog.text(value, where, name)` gives a caption-like field as
a string, or None with the row counted (`missing_<name>`, `<name>_not_text`, `empty_<name>`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from omninegclip.common.cli import UserError
from omninegclip.common.safe_load import open_rgb_image


def resolve_image(reference: str, root: str | Path | None, where: str) -> Path:
    """The existing image file `reference` names; `where` (file and row) goes into the error."""
    if not isinstance(reference, str) or not reference.strip():
        raise UserError(f"{where}: the image path is empty or not a string ({reference!r})")
    written = Path(reference).expanduser()
    candidates = [written] if written.is_absolute() or root is None else []
    if root is not None:
        root = Path(root).expanduser()
        if not written.is_absolute():
            candidates.append(root / written)
        if len(written.parts) > 2:  # root may be the image folder's parent (ccneg_images/cc3m_subset_…/x.jpg)
            candidates.append(root / written.parent.name / written.name)
        candidates.append(root / written.name)
    for candidate in dict.fromkeys(candidates):
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(candidate) for candidate in dict.fromkeys(candidates))
    raise UserError(f"{where}: missing image {reference!r} (looked for {tried})")


def _open_rgb(path: Path) -> Image.Image:
    return open_rgb_image(path)


# Crops of one image come one after another in the harness's key order; keep the last few images open.
_open_rgb_cached = functools.lru_cache(maxsize=8)(_open_rgb)


def image_loader(path: Path) -> Callable[[], Image.Image]:
    return functools.partial(_open_rgb, path)


def crop_loader(path: Path, box: tuple[float, float, float, float]) -> Callable[[], Image.Image]:
    x, y, width, height = box
    return lambda: _open_rgb_cached(path).crop((x, y, x + width, y + height))
