"""Work spread over forked worker processes, for the data builder and the source readers.

`fork_map(function, count, num_proc=None, min_per_worker=1, desc="", progress=False, unit="it")`
returns `[function(i) for i in range(count)]`, computed by up to `num_proc` workers (default:
`default_num_proc()`, the cores this process may use), in order. The workers are forked, so
`function` may be a closure over anything (image readers of a dataset or a URL, a build's
statistics): only the indices and the results cross between processes. With too few calls per
worker, or where fork is not available, the calls run in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable

from tqdm.auto import tqdm

_FORKED: Callable[[int], object] | None = None  # the function the forked workers of fork_map call


def _call_forked(index: int) -> object:
    return _FORKED(index)


def _leave_interrupts_to_the_parent() -> None:
    """Ctrl-C reaches every process of the group: the workers ignore it (no traceback from each of
    them), the parent stops and the pool's exit ends the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_num_proc() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fork_map(
    function: Callable[[int], object],
    count: int,
    num_proc: int | None = None,
    min_per_worker: int = 1,
    desc: str = "",
    progress: bool = False,
    unit: str = "it",
) -> list:
    """`[function(i) for i in range(count)]`, in up to `num_proc` forked worker processes, in order
    (see the module); fewer than `min_per_worker` calls per worker, or no fork here: in this process."""
    global _FORKED
    workers = min(num_proc or default_num_proc(), count // max(min_per_worker, 1))
    results = []
    with tqdm(total=count, desc=desc, disable=not progress, unit=unit) as bar:
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            for index in range(count):
                results.append(function(index))
                bar.update()
            return results
        _FORKED = function
        # A tokenizer used before the fork would warn in every worker; its own threads are not needed there.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            with multiprocessing.get_context("fork").Pool(
                workers, initializer=_leave_interrupts_to_the_parent
            ) as pool:
                for result in pool.imap(_call_forked, range(count), chunksize=max(1, min(64, count // (workers * 8)))):
                    results.append(result)
                    bar.update()
        finally:
            _FORKED = None
    return results
