"""Output folders and files that are never lost, mixed or left half-written.

Public surface:
- `is_alive(pid) -> bool`: whether a process with this id runs on this machine.
- `ensure_writable(folder, flag) -> Path`: create `folder` (and its parents) and write a probe file in
  it; a `UserError` naming the flag, the folder and the system's reason (read-only mount, no
  permission, full disk) otherwise. Run before any slow work.
- `OutputLock(folder, flag, lock_file=None, kind="run", at_stake=...)`: a context manager holding
  `<folder>/_omninegclip.lock` (or `lock_file`, e.g. beside a folder that is replaced by a rename;
  it records the pid, the host and the command) for a run's lifetime. A second run into the same
  folder fails at once, naming the folder, the holder's pid and its command, and what two `kind`s
  would do to each other's `at_stake`; the lock of a process that is gone (killed) is taken over
  with a warning.
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
import shlex
import socket
import sys
from pathlib import Path

from omninegclip.common.cli import UserError

logger = logging.getLogger(__name__)

# "_": the Trainer's Hub pushes of an output folder leave out files whose name starts so.
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
        raise UserError(
            f"{flag} {str(folder)!r} is not writable ({_reason(error)}); nothing was done: "
            f"pass a folder on a writable disk with free space"
        ) from None
    return folder


def overlapping(a: str | Path, b: str | Path) -> bool:
    a, b = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    return a == b or a in b.parents or b in a.parents


def _command() -> str:
    """This process's command line as a shell would show it (cut to a readable length)."""
    words = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    command = " ".join(shlex.quote(word) for word in words)
    return command if len(command) <= 300 else command[:297] + "..."


class OutputLock:
    """A lock file while a run writes into `folder` (see the module docstring)."""

    def __init__(
        self,
        folder: str | Path,
        flag: str,
        lock_file: str | Path | None = None,
        kind: str = "run",
        at_stake: str = "weights and checkpoints",
    ):
        self.folder = Path(folder).expanduser()
        self.flag = flag
        self.path = Path(lock_file).expanduser() if lock_file is not None else self.folder / LOCK_FILE
        self.kind, self.at_stake = kind, at_stake
        self.held = False

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> OutputLock:
        ensure_writable(
            self.path.parent,
            self.flag if self.path.parent == self.folder else f"{self.flag} {self.folder}: its folder",
        )
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": _command()})
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                pid, host = holder.get("pid"), holder.get("host")
                same_host = host in (None, socket.gethostname())
                if isinstance(pid, int) and (not same_host or is_alive(pid)):
                    where = "" if same_host else f" on host {host}"
                    command = f"; its command: {holder['command']}" if isinstance(holder.get("command"), str) else ""
                    raise UserError(
                        f"{self.flag} {str(self.folder)!r} is in use by another {self.kind} "
                        f"(pid {pid}{where}, lock file {self.path}{command}): two {self.kind}s into one folder "
                        f"would replace each other's {self.at_stake}; wait for it, pass another {self.flag}, "
                        f"or delete the lock file if that {self.kind} is gone"
                    ) from None
                logger.warning(
                    "%s %s: taking over the lock of pid %s, which is no longer running (%s)",
                    self.flag,
                    self.folder,
                    pid if pid is not None else "?",
                    self.path,
                )
                self.path.unlink(missing_ok=True)
                continue
            except OSError as error:
                raise UserError(
                    f"{self.flag} {str(self.folder)!r}: cannot create the lock file {self.path} ({_reason(error)})"
                ) from None
            with os.fdopen(descriptor, "w") as handle:
                handle.write(record)
            self.held = True
            return self
        raise UserError(
            f"{self.flag} {str(self.folder)!r}: another {self.kind} took the lock file {self.path} meanwhile"
        )

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
        raise UserError(
            f"could not write {path} ({_reason(error)}); the previous file, if any, is unchanged"
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return path
