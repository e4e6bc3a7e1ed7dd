"""What produced a checkpoint or a result: library versions, the seed, the git commit.
Written beside every checkpoint (`training_provenance.json`) and every eval result.

Public surface: `provenance(seed=None) -> dict`.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess

from omninegclip.common.paths import REPO_ROOT

LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "peft", "huggingface_hub", "tokenizers", "pillow")


def _git_commit() -> str | None:
    root = REPO_ROOT
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return result.stdout.strip() + ("+dirty" if dirty else "")


def provenance(seed: int | None = None) -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"seed": seed, "git_commit": _git_commit(), "python": platform.python_version(), "libraries": versions}
