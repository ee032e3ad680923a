"""Memory the API gives back after validating an upload (no torch).

Validation decodes a dataset a chunk at a time (workers/engine/io/dataset_scan.py), but the
allocators keep what they freed: a 1 M-row × 50-column Parquet upload left the API 120–150 MiB
larger for good with pyarrow's default mimalloc pool and 16 MiB chunks. The API therefore decodes
through the system allocator (:func:`use_system_pool`), in :data:`SCAN_CHUNK_BYTES` chunks, and
hands the freed memory back to the OS after each validation (:func:`give_back`): measured on the
same upload, +59 MiB at the peak and +11 MiB after (docs/SERVICE.md, "Limits, quotas and failures").
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

__all__ = ["SCAN_CHUNK_BYTES", "give_back", "use_system_pool"]

SCAN_CHUNK_BYTES = 4 * 1024 * 1024
"""Float64 bytes of one validation chunk in the API (the engine's default is 16 MiB)."""


@cache
def use_system_pool() -> None:
    """Make pyarrow allocate from malloc in this process (once): :func:`give_back` can return it."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


@cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def give_back() -> None:
    """Return the memory pyarrow and malloc keep after a validation to the OS."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
