"""The garbage collector around the engine's imports, in a ``softunlearn`` process of its own.

Importing torch, matplotlib and the engine allocates a few hundred thousand long-lived objects,
and every full collection after that walks them all: on the Adult jobs about half a second of a
four-second run, one collection at interpreter exit included. So a command-line job collects
once while the heap is still small, imports with the collector paused, and then moves everything
alive into the permanent generation (:func:`gc.freeze`) before switching it back on: cycles
created later are collected as usual, the imported modules are never scanned again. Only a
process that is the CLI does this (``main()`` called without arguments), never a test or a
worker calling ``main(argv)`` in a process with a heap of its own.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["imports_outside_the_collector"]


@contextmanager
def imports_outside_the_collector(own_process: bool) -> Iterator[None]:
    """Run the block (the heavy imports) with the collector paused and freeze what it left alive,
    when ``own_process``; otherwise do nothing."""
    if not own_process:
        yield
        return
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
