"""Where a build goes: the output folder locked against a second build for the whole build
(`output_lock`), checked before any work, the build written into a hidden sibling folder and
renamed into place only once complete (`write_atomically`; what a killed build left is cleaned up
by the next, `recover_interrupted_builds`; a full disk is one error naming --out), and the finished
folder pushed to the Hub (`push_to_hub`)."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from omninegclip.building.cards import hub_dataset_card
from omninegclip.building.storage import load_with_images
from omninegclip.common.cli import UserError
from omninegclip.common.outputs import OutputLock, ensure_writable, is_alive

SUMMARY_FILE = "build_summary.json"
CARD_FILE = "README.md"


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out}: already exists; pass --overwrite to replace it")
        if not ((out / "dataset_dict.json").is_file() or (out / SUMMARY_FILE).is_file()):
            raise UserError(
                f"--out {out}: --overwrite only replaces a dataset this tool built, "
                "and this folder has no dataset_dict.json"
            )


def output_lock(out: Path | str) -> OutputLock:
    """The lock of a build into `out`, held from before the checks until the build is in place (and
    pushed): a second build into the same folder is refused, naming the first. The lock file is a
    hidden sibling of `out` (`out` itself is replaced by a rename at the end)."""
    out = Path(out).absolute()
    return OutputLock(
        out, "--out", lock_file=out.parent / f".{out.name}.omninegclip.lock", kind="build", at_stake="data"
    )


def _building_prefix(out: Path) -> str:
    return f".{out.name}.building-"


def recover_interrupted_builds(out: Path) -> list[Path]:
    """Clean up after builds of `out` whose process is gone (killed): a previous output that such a
    build had moved aside, between its two final renames, goes back to `out`; their folders are removed.
    Returns the folders removed."""
    out = Path(out).absolute()
    prefix = _building_prefix(out)
    removed = []
    for stale in sorted(out.parent.glob(prefix + "*")):
        pid = stale.name[len(prefix) :]
        if not pid.isdigit() or (int(pid) != os.getpid() and is_alive(int(pid))):
            continue  # another build, still running
        previous = stale / "previous"
        if previous.is_dir() and not out.exists():
            previous.rename(out)
            print(f"restored {out} (a build killed while replacing it had moved it aside)", file=sys.stderr)
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale)
    return removed


def prepare_output(out: Path | str, overwrite: bool) -> Path:
    """`--out` as an absolute path, once what a killed build left is cleaned up and the folder is
    known to be replaceable and writable (the build is written beside it, then renamed)."""
    out = Path(out).absolute()
    recover_interrupted_builds(out)
    _check_target(out, overwrite)
    ensure_writable(out.parent, f"--out {out}: its folder")
    return out


def write_atomically(out: Path, overwrite: bool, fill: Callable[[Path, Path], None]) -> None:
    """`fill(staging, scratch)` writes the complete output into `staging`; it then replaces `out`.

    Both folders are hidden siblings of `out` (same file system, so the final rename is atomic); they
    are removed whatever happens, and what a killed build left is cleaned up first
    (`recover_interrupted_builds`). `out` never holds a partial build.
    """
    out = Path(out).absolute()
    recover_interrupted_builds(out)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = out.parent / f"{_building_prefix(out)}{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    staging, scratch = root / "output", root / "scratch"
    try:
        scratch.mkdir(parents=True)
        fill(staging, scratch)
        _check_target(out, overwrite)  # nothing appeared there meanwhile
        if out.exists():
            out.rename(root / "previous")
        staging.rename(out)
    except Exception as error:
        full = _disk_full(error)
        if full is None:
            raise
        written = _bytes_under(root)
        shutil.rmtree(root, ignore_errors=True)
        raise UserError(
            f"--out {out}: the disk is full ({full.strerror or 'no space left'}): the build had written "
            f"{_mib(written)} beside --out when it ran out of space. Nothing at --out was changed and the partial "
            f"build was removed ({_mib(shutil.disk_usage(out.parent).free)} free there now): free space on that "
            "disk, or pass an --out on a disk with more room"
        ) from None
    finally:
        shutil.rmtree(root, ignore_errors=True)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(error: BaseException | None) -> OSError | None:
    """The "no space left on device" (or "disk quota exceeded") error behind `error`, however the
    libraries in between wrapped it (datasets, pyarrow, a worker process); None if there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return error
        error = error.__cause__ or error.__context__
    return None


def _bytes_under(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def push_to_hub(out: Path, repo_id: str, card: str, private: bool = False) -> None:
    """Push the card (README.md, with `configs` for the Hub layout), then the dataset, each row with
    its image (`load_with_images`: datasets embeds the files' bytes in the Parquet files it uploads):
    `DatasetDict.push_to_hub` reads the card from the repo and writes its own `dataset_info`
    (features, the image column decoded; split sizes, download size) and `configs` into it, keeping the rest."""
    from huggingface_hub import HfApi

    dataset_dict = load_with_images(out)
    try:
        repo_id = HfApi().create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
        hub_dataset_card(card).push_to_hub(repo_id, repo_type="dataset")
        dataset_dict.push_to_hub(repo_id, private=private)
    except Exception as error:  # network, authentication, permissions: the local build stays valid
        raise UserError(
            f"--push_to_hub {repo_id}: the push failed ({type(error).__name__}: {error}); "
            f"the dataset is saved at {out}"
        ) from None
