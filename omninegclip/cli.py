"""One error convention for every command-line entry point.

A `UserError` is something the user can act on: its message names the file, row, column or flag
and what was expected. `run_cli` prints it as one paragraph and exits with status 2, with no
traceback unless `--debug` is on the command line or `OMNINEGCLIP_DEBUG=1` is set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input or a bad flag: the message says what was wrong, where, and what was expected."""


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("OMNINEGCLIP_DEBUG", "") not in ("", "0")


def run_cli(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
    """Run `main(argv)`; turn a `UserError` (or a missing file) into one clean paragraph and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        main(argv)
    except (UserError, FileNotFoundError) as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        print("(run again with --debug or OMNINEGCLIP_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
