"""The one check that a model argument names a CLIP checkpoint, before anything slow is loaded.

Public surface:
- `HUB_ID`: what a Hugging Face Hub model id looks like (`name` or `owner/name`);
- `check_clip_checkpoint(source, what, cache_dir=None)`: a `UserError` (its message starts with
  `what`, e.g. "--model_name_or_path 'x'" or "model x") unless `source` is a folder whose
  `config.json` has `model_type: clip` and which holds weights, or a Hub id whose config says so.
  Used by `train.py`, `python -m eval` and everything that loads a CLIP checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from omninegclip.common.cli import UserError
from omninegclip.common.safe_load import WEIGHTS_FILES, first_line

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_EXPECTED = "expected a folder written by CLIPModel.save_pretrained, or a Hub id"


def _model_type(source: str, path: Path, what: str, cache_dir: str | None) -> object:
    """The `model_type` of a local folder's config.json, or of a Hub id's config."""
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(
                f"{what}: cannot read its config as a Hub id or folder "
                f"({path / 'config.json'}: not valid JSON: {error})"
            ) from None
        return config.get("model_type") if isinstance(config, dict) else None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, cache_dir=cache_dir, trust_remote_code=False).model_type
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{what}: cannot read its config as a Hub id or folder ({first_line(error)})") from None


def check_clip_checkpoint(source: str, what: str, cache_dir: str | None = None) -> None:
    """A `UserError` naming `what` unless `source` (a folder or a Hub id) is a CLIP checkpoint."""
    path = Path(source).expanduser()
    if path.is_file():
        raise UserError(f"{what}: not a CLIP checkpoint (a file); {_EXPECTED}")
    if not path.exists() and not HUB_ID.match(source):
        raise UserError(f"{what} does not exist (expected a CLIP checkpoint folder or a Hub id)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"{what}: not a CLIP checkpoint (a folder without config.json); {_EXPECTED}")
    model_type = _model_type(source, path, what, cache_dir)
    if model_type != "clip":
        raise UserError(
            f"{what}: not a CLIP checkpoint (its config.json has model_type {model_type!r}, expected 'clip')"
        )
    if path.is_dir() and not any((path / name).is_file() for name in WEIGHTS_FILES):
        raise UserError(
            f"{what}: a CLIP config but no weights beside it (expected model.safetensors or pytorch_model.bin)"
        )
