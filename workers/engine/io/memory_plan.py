"""The memory a head-scope job will need, estimated from file headers before anything is read.

The model (bytes per row; ``s`` is the feature itemsize — 4 for a float32 checkpoint, 8 for
float64 — ``d`` the input width, ``h`` the head width, ``k`` the sensitive columns):

* train: ``d·s`` for the features, plus ``h·s`` for the head features φ(x) when the model has
  an extractor (logistic regression uses the features themselves) — only ``h·s`` when the rows
  are embedded while they are read (a head-scope job with a head method), plus ``PER_ROW_VECTORS`` ×
  8 for the float64 per-row vectors (labels, weights, influences, weight changes), plus
  ``GROUP_BYTES`` × k for the group labels;
* audit and eval: ``d·s`` for the features, ``(h+1)·8`` for their float64 design (kept for
  the whole job so that evaluation never re-runs the extractor), the same per-row vectors and
  group labels, plus ``d·8`` per input-space attack for its adversarial points;
* fixed: ``BASE_BYTES`` for the interpreter, torch and the libraries, plus the chunked work
  buffers (a few chunk × (h+1) float64 blocks) and the (h+1)² Hessian and its factor.

A job whose estimate exceeds the budget is refused before any data is read, with the estimate
and the budget in the message (:class:`MemoryBudgetExceeded`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workers.engine.errors import InputError

__all__ = ["BASE_BYTES", "MEMORY_BUDGET_ENV", "MemoryBudgetExceeded", "MemoryEstimate", "SplitShape",
           "check_memory", "default_memory_budget", "estimate_memory", "parse_bytes"]

BASE_BYTES = 700 * 1024**2
"""Interpreter, torch, numpy, scipy, pyarrow and the report's libraries (an Adult job's RSS is
≈ 630 MB with all of them loaded)."""
PER_ROW_VECTORS = 12
GROUP_BYTES = 64
"""A group label per row is a Python string in an object array (pointer plus the object)."""
MEMORY_BUDGET_ENV = "SOFTUNLEARN_MEMORY_BUDGET"
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


@dataclass(frozen=True)
class SplitShape:
    """One split as its header tells: rows, feature width and sensitive columns."""

    role: str
    rows: int
    width: int
    sensitive: int


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimated peak of a job, in bytes, and what it is made of."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        """Sum of the parts."""
        return sum(self.parts.values())

    def describe(self) -> str:
        """``train 2.05 GB, audit 0.12 GB, ...`` for messages."""
        return ", ".join(f"{name} {value / 1e9:.2f} GB" for name, value in self.parts.items())


class MemoryBudgetExceeded(InputError):
    """The job cannot fit the worker's memory budget."""


def estimate_memory(splits: list[SplitShape], head_width: int, has_extractor: bool, itemsize: int,
                    attacks: int = 0, chunk_size: int = 8192, embedded_train: bool = False) -> MemoryEstimate:
    """The estimated peak memory of a head-scope job (the module docstring's model)."""
    m = head_width + 1
    parts: dict[str, int] = {}
    for split in splits:
        embedded = split.role == "train" and embedded_train
        held = head_width if embedded else split.width  # rows embedded on read hold φ, not the inputs
        per_row = held * itemsize + PER_ROW_VECTORS * 8 + GROUP_BYTES * split.sensitive
        if split.role != "train":
            per_row += m * 8 + attacks * split.width * 8
        elif has_extractor and not embedded:
            per_row += head_width * itemsize
        parts[split.role] = split.rows * per_row
    parts["fixed"] = BASE_BYTES + 4 * chunk_size * m * 8 + 4 * m * m * 8
    return MemoryEstimate(parts)


def parse_bytes(text: str) -> int:
    """``8GiB``, ``4 GB``, ``512MiB`` or a plain number of bytes.

    Raises:
        InputError: not a size.
    """
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value <= 0:
        raise InputError(f"memory budget {text!r} is not a size; write e.g. 8GiB, 4GB or 512MiB")
    return int(value * _UNITS[unit])


def _cgroup_limit() -> int | None:
    for path in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = path.read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def _available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_memory_budget() -> int | None:
    """``SOFTUNLEARN_MEMORY_BUDGET`` if set, else the smaller of the cgroup limit and the memory
    available now; None where neither can be read (no check).

    Raises:
        InputError: the variable is set to something that is not a size.
    """
    configured = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if configured:
        return parse_bytes(configured)
    known = [value for value in (_cgroup_limit(), _available()) if value is not None]
    return min(known) if known else None


def check_memory(estimate: MemoryEstimate, budget: int | None) -> None:
    """Refuse a job whose estimate exceeds ``budget`` (None: no check).

    Raises:
        MemoryBudgetExceeded: with the estimate, its parts and the budget.
    """
    if budget is None or estimate.total <= budget:
        return
    raise MemoryBudgetExceeded(
        f"this job needs about {estimate.total / 1e9:.2f} GB ({estimate.describe()}) but the memory budget "
        f"is {budget / 1e9:.2f} GB ({MEMORY_BUDGET_ENV} or --memory-budget; default the memory available); "
        "use fewer rows or a smaller audit/eval split, a float32 checkpoint, or a worker with more memory")
