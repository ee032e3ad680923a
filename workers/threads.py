"""Threads per work horse (torch-free at import).

An RQ worker forks one work horse per job. Left alone, torch, OpenBLAS and OpenMP in every horse
each start one thread per core, so two workers on a 2-core host run four busy threads and small
jobs spend their time on thread hand-offs (issue 12: 20 Adult jobs at 11.5 jobs/min with 1 or 2
workers, 33.4 with one thread per horse). The worker therefore fixes the threads of its horses:

* :func:`export_thread_env` runs in the worker before torch or numpy is imported: the BLAS and
  OpenMP thread counts are read from the environment once, when those libraries load;
* :func:`limit_threads` runs in each horse before its job: ``torch.set_num_threads`` and
  threadpoolctl's limit on the BLAS/OpenMP pools already loaded (inherited through ``fork``).

The count is ``SOFTUNLEARN_WORKER_THREADS`` (``--threads``) when set, else the CPUs this process
may use (affinity and cgroup quota) divided by ``SOFTUNLEARN_WORKERS_PER_HOST``
(``--workers-per-host``), at least 1. ``0`` leaves the libraries' own defaults (one thread per
core in every horse).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["THREAD_ENV_VARS", "available_cpus", "export_thread_env", "limit_threads", "resolve_threads"]

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
"""Variables the OpenMP and BLAS runtimes read when they load."""
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _cgroup_cpus(cpu_max: Path = _CGROUP_CPU_MAX) -> int | None:
    """CPUs granted by a cgroup v2 quota (``cpu.max`` "QUOTA PERIOD"), rounded up; None when none."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus(cpu_max: Path = _CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus(cpu_max)
    return max(1, min(cpus, quota) if quota is not None else cpus)


def resolve_threads(threads: int | None, workers_per_host: int, cpus: int | None = None) -> int:
    """The threads of each work horse: ``threads`` when set (0: unlimited), else
    ``max(1, cpus // workers_per_host)``."""
    if threads is not None:
        return threads
    return max(1, (available_cpus() if cpus is None else cpus) // max(1, workers_per_host))


def export_thread_env(threads: int) -> None:
    """Set the BLAS/OpenMP thread variables of this process (and of what it forks or spawns).

    Call it before torch, numpy or scipy is imported; a no-op for 0 (unlimited).
    """
    if threads > 0:
        for name in THREAD_ENV_VARS:
            os.environ[name] = str(threads)


def limit_threads(threads: int) -> int:
    """Limit this process's torch, BLAS and OpenMP pools to ``threads`` (0: leave them).

    Returns:
        The intra-op threads torch now uses (what a job records).
    """
    import torch

    if threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)  # numpy's and scipy's OpenBLAS, torch's libgomp
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())
