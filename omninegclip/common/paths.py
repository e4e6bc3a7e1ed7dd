"""`REPO_ROOT`: the checkout the package runs from (provenance reads its git commit there; the
built-in pipeline and the Space read files there)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
