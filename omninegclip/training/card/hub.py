"""The checkpoint folder to the Hub, in one commit, with its card rewritten for the repo it goes to.

Training checkpoints and partial files stay local (`UPLOAD_IGNORE`); the final weights, processor,
card, settings, provenance, widget images, eval results, the Trainer's state and metrics and the
tracker logs (`runs/`, as the Trainer's own push uploads them) are uploaded. `Trainer.push_to_hub`
would rewrite README.md without the card's metadata, so train.py pushes with `push_checkpoint`.

Public surface: `push_checkpoint(folder, repo_id, ...) -> str`, `UPLOAD_IGNORE`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import create_repo, upload_folder

from omninegclip.training.card.names import HUB_URL
from omninegclip.training.card.write import check_card_writable, write_model_card

logger = logging.getLogger(__name__)

UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.partial-*", "training_args.bin"]


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Omni-NegCLIP checkpoint",
    also_ignore: list[str] | None = None,
    **card_kwargs,
) -> str:
    """Create (or reuse) the Hub repo, write the card naming it (widget URLs in it, bare repo names
    of the card under its owner), and upload the folder in one commit (less `also_ignore`, patterns
    like UPLOAD_IGNORE's). Returns the full repo id. `card_kwargs` go to `write_model_card`; the
    folder is checked (`check_card_writable`) before the repo is created."""
    folder = Path(folder)
    check_card_writable(folder, card_kwargs.get("overwrite", False))
    full_id = create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    write_model_card(folder, repo_id=full_id, namespace=full_id.split("/")[0], **card_kwargs)
    upload_folder(
        repo_id=full_id,
        folder_path=str(folder),
        commit_message=commit_message,
        token=token,
        ignore_patterns=UPLOAD_IGNORE + list(also_ignore or []),
    )
    logger.info("pushed %s to %s/%s", folder, HUB_URL, full_id)
    return full_id
