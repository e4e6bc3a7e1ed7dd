"""One error convention for every command-line entry point.

A `UserError` is something the user can act on: its message names the file, row, column or flag
and what was expected. `run_cli` prints it as one paragraph and exits with status 2, with no
traceback unless `--debug` is on the command line or `OMNINEGCLIP_DEBUG=1` is set. An `OSError`
(a read-only or full disk, a missing permission) is reported the same way, naming its path.
Ctrl-C exits with status 130 and one line: `interrupted` plus what was kept and how to go on (an
`Interrupted` raised by the tool, or the `INTERRUPTED_HINT` string of the tool's module). SIGTERM (a
scheduler or `kill` stopping the run) is handled the same way, through the same clean-up (locks
released, partial files removed), and exits with status 143.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was kept and how to go on (a tool raises it from its KeyboardInterrupt;
    still a KeyboardInterrupt to any caller of the tool's `main`)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the run unwinds as it does on Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


class UserError(Exception):
    """Bad input or a bad flag: the message says what was wrong, where, and what was expected."""


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("OMNINEGCLIP_DEBUG", "") not in ("", "0")


def _os_error(error: OSError) -> str:
    if isinstance(error, FileNotFoundError) or not error.filename:
        return str(error)
    return f"{error.filename}: {error.strerror or type(error).__name__} (check the disk's free space and permissions)"


def run_cli(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
    """Run `main(argv)`; turn a `UserError` (or an `OSError`) into one clean paragraph and exit 2;
    Ctrl-C into one line and exit 130, saying what `main`'s module declares in `INTERRUPTED_HINT`
    (what is kept and how to go on) unless the tool raised an `Interrupted` of its own."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != "--debug"]
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main(argv)
    except (UserError, OSError) as error:
        if debug:
            raise
        print(f"error: {error if isinstance(error, UserError) else _os_error(error)}", file=sys.stderr)
        print("(run again with --debug or OMNINEGCLIP_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        hint = getattr(
            sys.modules.get(getattr(main, "__module__", ""), None), "INTERRUPTED_HINT", "nothing more was done"
        )
        terminated = isinstance(interrupt, Terminated) or isinstance(interrupt.__context__, Terminated)
        told = interrupt if isinstance(interrupt, Interrupted) else hint
        print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: {told}", file=sys.stderr)
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)
