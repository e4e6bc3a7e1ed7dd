"""The Hub around a run, beside the Trainer's own push (`push_to_hub`, `--hub_strategy`):

- `check_hub_access(args)`: before anything slow, the repo is created or found with the token, and
  the `--hub_revision` branch made; a refusal is one paragraph naming the flags, while nothing has
  trained yet (the Trainer itself would fail only at its first push, after training);
- `fetch_last_checkpoint(args)`: the `last-checkpoint/` folder that `--hub_strategy checkpoint`
  keeps on the Hub, downloaded into `--output_dir`, so that `--resume_from_checkpoint
  last-checkpoint` continues a run on another machine.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import HFValidationError

from omninegclip.common.cli import UserError
from omninegclip.common.safe_load import first_line
from omninegclip.training.checkpoints import HUB_LAST_CHECKPOINT

logger = logging.getLogger(__name__)

HUB_FAILURES = (HfHubHTTPError, OfflineModeIsEnabled, HFValidationError, OSError, ValueError)


def hub_api() -> HfApi:
    """The client every call here goes through (tests replace it with a fake Hub)."""
    return HfApi()


def repo_name(args) -> str:
    """The repo the Trainer pushes to: --hub_model_id, else the output folder's name (as transformers does)."""
    return args.hub_model_id or Path(args.output_dir).absolute().name


def check_hub_access(args) -> str:
    """Create (or find) the repo and the --hub_revision branch with the run's token; return the full
    repo id. A `UserError` naming the flags when the Hub refuses or cannot be reached."""
    name = repo_name(args)
    try:
        repo_id = (
            hub_api().create_repo(name, token=args.hub_token, private=args.hub_private_repo, exist_ok=True).repo_id
        )
        if args.hub_revision:
            hub_api().create_branch(repo_id, branch=args.hub_revision, token=args.hub_token, exist_ok=True)
    except HUB_FAILURES as error:
        raise UserError(
            f"--push_to_hub: the Hub refused or could not be reached for repo {name!r} (--hub_model_id"
            f"{', --hub_revision ' + args.hub_revision if args.hub_revision else ''}): {first_line(error)}. Nothing "
            "has "
            "trained yet. Check the token (--hub_token or `hf auth login`) and its write permission, or train "
            "without "
            "--push_to_hub and push the saved folder later (python -m omninegclip.training.model_card FOLDER "
            "--push_to_hub REPO)"
        ) from None
    logger.info(
        "--push_to_hub: the Hub answers for %s (--hub_strategy %s)",
        repo_id,
        getattr(args.hub_strategy, "value", args.hub_strategy),
    )
    return repo_id


def fetch_last_checkpoint(args) -> Path:
    """`last-checkpoint/` of the run's Hub repo, downloaded into --output_dir; its local path."""
    name = repo_name(args)
    target = Path(args.output_dir)
    try:
        hub_api().snapshot_download(
            repo_id=name,
            allow_patterns=[f"{HUB_LAST_CHECKPOINT}/*"],
            local_dir=str(target),
            revision=args.hub_revision,
            token=args.hub_token,
        )
    except HUB_FAILURES as error:
        raise UserError(
            f"--resume_from_checkpoint {HUB_LAST_CHECKPOINT}: could not download it from the Hub repo {name!r} "
            f"(--hub_model_id): {first_line(error)}"
        ) from None
    folder = target / HUB_LAST_CHECKPOINT
    if not folder.is_dir():
        raise UserError(
            f"--resume_from_checkpoint {HUB_LAST_CHECKPOINT}: the Hub repo {name!r} has no {HUB_LAST_CHECKPOINT}/ "
            f"folder (a run with --hub_strategy checkpoint pushes one at every save)"
        )
    logger.info("fetched %s/ from the Hub repo %s into %s", HUB_LAST_CHECKPOINT, name, folder)
    return folder
