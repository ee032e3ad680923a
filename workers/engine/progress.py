"""Progress, cancellation and per-stage timing of one correction job."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from workers.engine.errors import CorrectionCanceled

__all__ = ["ProgressCallback", "StageClock"]

ProgressCallback = Callable[[str, float], None]


class StageClock:
    """Reports stages as they start, honours cancellation between them, and times them."""

    def __init__(self, progress: ProgressCallback | None, should_cancel: Callable[[], bool] | None):
        self.progress = progress or (lambda stage, fraction: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, fraction: float) -> Iterator[None]:
        """Time the block as stage ``name`` (accumulated when a stage repeats).

        Raises:
            CorrectionCanceled: the caller asked to stop.
        """
        if self.should_cancel():
            raise CorrectionCanceled(f"canceled before stage '{name}'")
        self.progress(name, fraction)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
