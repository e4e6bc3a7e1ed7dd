"""Output folders and files that are never lost, mixed or left half-written.

Public surface:
- `is_alive(pid) -> bool`: whether a process with this id runs on this machine.
- `ensure_writable(folder, flag) -> Path`: create `folder` (and its parents) and write a probe file in
  it; a `UserError` naming the flag, the folder and the system's reason (read-only mount, no
  permission, full disk) otherwise. Run before any slow work.
- `OutputLock(folder, flag)`: a context manager holding `<folder>/_omninegclip.lock` (pid and host)
  for a run's lifetime. A second run into the same folder fails at once, naming the holder's pid;
  the lock of a process that is gone (killed) is taken over with a warning.
- `write_atomically(path, data)`: `data` (str or bytes) written to a temporary sibling, then renamed
  over `path`: a reader sees the old file or the complete new one, never a partial one. An
  `OSError` becomes a `UserError` naming the file.
- `overlapping(a, b) -> bool`: whether one of two paths is the other or inside it.
- `LOCK_FILE`, `PROBE_PREFIX`: the names these write into a folder (not a run's own files).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from omninegclip.common.cli import UserError

logger = logging.getLogger(__name__)

# "_": the Trainer's Hub pushes of the output folder leave out files whose name starts so.
LOCK_FILE = "_omninegclip.lock"
PROBE_PREFIX = ".write-probe-"


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def ensure_writable(folder: str | Path, flag: str) -> Path:
    folder = Path(folder).expanduser()
    probe = folder / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as error:
        raise UserError(f"{flag} {str(folder)!r} is not writable ({_reason(error)}); nothing was done: "
                        f"pass a folder on a writable disk with free space") from None
    return folder


def overlapping(a: str | Path, b: str | Path) -> bool:
    a, b = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    return a == b or a in b.parents or b in a.parents


class OutputLock:
    """`<folder>/_omninegclip.lock` while a run writes into `folder` (see the module docstring)."""

    def __init__(self, folder: str | Path, flag: str):
        self.folder = Path(folder).expanduser()
        self.flag = flag
        self.path = self.folder / LOCK_FILE
        self.held = False

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> OutputLock:
        ensure_writable(self.folder, self.flag)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                pid, host = holder.get("pid"), holder.get("host")
                same_host = host in (None, socket.gethostname())
                if isinstance(pid, int) and (not same_host or is_alive(pid)):
                    where = "" if same_host else f" on host {host}"
                    raise UserError(
                        f"{self.flag} {str(self.folder)!r} is in use by another run (pid {pid}{where}, lock file {self.path}): "
                        f"two runs into one folder would replace each other's weights and checkpoints; wait for it, "
                        f"pass another {self.flag}, or delete the lock file if that run is gone") from None
                logger.warning("%s %s: taking over the lock of pid %s, which is no longer running (%s)",
                               self.flag, self.folder, pid if pid is not None else "?", self.path)
                self.path.unlink(missing_ok=True)
                continue
            except OSError as error:
                raise UserError(f"{self.flag} {str(self.folder)!r}: cannot create the lock file {self.path} ({_reason(error)})") from None
            with os.fdopen(descriptor, "w") as handle:
                handle.write(record)
            self.held = True
            return self
        raise UserError(f"{self.flag} {str(self.folder)!r}: another run took the lock file {self.path} meanwhile")

    def release(self) -> None:
        if self.held and self._holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def write_atomically(path: str | Path, data: str | bytes) -> Path:
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(partial, path)
    except OSError as error:
        raise UserError(f"could not write {path} ({_reason(error)}); the previous file, if any, is unchanged") from None
    finally:
        partial.unlink(missing_ok=True)
    return path
