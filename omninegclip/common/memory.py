"""Giving freed memory back to the operating system.

Loading a large dataset (converting data files to Arrow) and reading prepared rows free much of
what they allocated, but the allocators keep it: glibc's heap, and Arrow's memory pool. Until they
give it back, it counts in the process's resident memory and stacks up under the next peak.

Public surface: `release_freed_memory()`.
"""

from __future__ import annotations

import ctypes
import functools

import pyarrow as pa


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Return what glibc's heap and Arrow's memory pool hold but no longer use (where they can)."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
