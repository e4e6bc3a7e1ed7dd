"""What a public page calls things. A card is read on the Hub, where a path of the machine that wrote
it means nothing: local paths are reduced to their last component, Hub ids kept, and the bare repo
names of the project's own repos (the built-in default's `omninegclip-world`) put under the owner the
folder is pushed under.

Public surface: `HUB_URL`; `public_text(text)`, `public_name(name)`, `is_hub_id(name)`,
`qualified(name, namespace)`.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

HUB_URL = "https://huggingface.co"

# Absolute paths of this machine ("/home/x/runs/a", "~/data", "C:\\x"), not the path of a URL.
_LOCAL_PATH = re.compile(r"(?<![\w/:.~-])(?:~|[A-Za-z]:\\|/)(?:[\w.@+-]+[/\\])+[\w.@+-]*")


def public_text(text: str) -> str:
    """`text` with every absolute local path replaced by its last component: a card is public, and a
    path of the machine that wrote it means nothing to its readers."""
    return _LOCAL_PATH.sub(lambda match: Path(match.group(0).rstrip("/\\")).name or match.group(0), text)


def public_name(name: str) -> str:
    """A Hub id as it is, a local path by its folder name."""
    return Path(name).name if Path(name).expanduser().exists() or Path(name).is_absolute() else name


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repo id rather than a local path."""
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def qualified(name: str, namespace: str | None) -> str:
    """A bare repo name (one of the project's own repos, e.g. the default's `omninegclip-world`) in
    `namespace`, the owner the checkpoint is pushed under; a name with an owner as it is."""
    return f"{namespace}/{name}" if namespace and "/" not in name else name
