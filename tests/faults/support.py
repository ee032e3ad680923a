"""Helpers of the fault tests: a private redis-server to stop and restart, traced real workers,
and the execution log they write."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.app.support import ROOT, job_body, worker_env
from tests.faults.traced_worker import EXECUTION_LOG_ENV
from workers.settings import ServiceSettings

TERMINAL = ("succeeded", "failed", "canceled")


def quick_job(ids: dict[str, str]) -> dict[str, Any]:
    """The service tests' Adult job without its report frontier and with the fewest bootstrap
    draws (a few seconds of engine time: these tests are about processes, not the engine)."""
    return job_body(ids, evaluation={"robustness": False, "n_boot": 100,
                                     "frontier": {"reductions": [], "k_fractions": []}})


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process``, its process group and every descendant (horses have their own group)."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                child.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait(timeout=30)


@contextlib.contextmanager
def traced_workers(settings: ServiceSettings, logdir: Path, count: int,
                   **env: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` real ``softunlearn worker`` processes with executions traced to
    ``logdir/executions.jsonl``, logs in ``logdir/worker-N.log``; all killed at the end."""
    environment = worker_env(settings, **{EXECUTION_LOG_ENV: str(logdir / "executions.jsonl"), **env})
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(count):
            with open(logdir / f"worker-{index}.log", "wb") as handle:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "tests.faults.traced_worker"], env=environment, cwd=ROOT,
                    stdout=handle, stderr=subprocess.STDOUT, start_new_session=True))
        yield processes
    finally:
        for process in processes:
            kill_tree(process)


def wait_listening(logdir: Path, count: int, timeout: float = 60.0) -> None:
    """Wait until ``count`` workers logged that they listen on their queues."""
    deadline = time.monotonic() + timeout
    while sum("Listening on" in path.read_text(errors="replace")
              for path in logdir.glob("worker-*.log")) < count:
        if time.monotonic() > deadline:
            logs = {p.name: p.read_text(errors="replace")[-2000:] for p in logdir.glob("worker-*.log")}
            raise AssertionError(f"workers did not start: {logs}")
        time.sleep(0.1)


@dataclass(frozen=True)
class Execution:
    """One execution of a job by a work horse, from the traced worker's log."""

    job: str
    pid: int
    start: float
    end: float | None


def executions(logdir: Path) -> list[Execution]:
    """Every execution in ``logdir/executions.jsonl`` (``end`` None: it never ended)."""
    path = logdir / "executions.jsonl"
    if not path.exists():
        return []
    open_runs: dict[tuple[str, int], float] = {}
    done: list[Execution] = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        key = (event["job"], event["pid"])
        if event["event"] not in ("start", "end"):
            continue
        if event["event"] == "start":
            assert key not in open_runs, f"horse {key[1]} started job {key[0]} twice"
            open_runs[key] = event["t"]
        else:
            done.append(Execution(key[0], key[1], open_runs.pop(key), event["t"]))
    return done + [Execution(job, pid, start, None) for (job, pid), start in open_runs.items()]


@dataclass(frozen=True)
class Claim:
    """One horse's claim of a job's manifest: when it began and when it returned."""

    job: str
    pid: int
    asked: float
    answered: float
    claimed: bool


def claims(logdir: Path, timeout: float = 10.0) -> list[Claim]:
    """Every claim in ``logdir/executions.jsonl``, once each has returned (a claim waiting on a
    lease looks again every ``workers.lease.POLL_S``)."""
    deadline = time.monotonic() + timeout
    while True:
        asked, found = _claims(logdir)
        if not asked:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"claims never returned: {asked}")
        time.sleep(0.1)


def _claims(logdir: Path) -> tuple[dict[tuple[str, int], float], list[Claim]]:
    asked: dict[tuple[str, int], float] = {}
    found: list[Claim] = []
    for line in (logdir / "executions.jsonl").read_text().splitlines():
        event = json.loads(line)
        key = (event["job"], event["pid"])
        if event["event"] == "claim":
            asked[key] = event["t"]
        elif event["event"] in ("claimed", "declined"):
            found.append(Claim(key[0], key[1], asked.pop(key), event["t"], event["event"] == "claimed"))
    return asked, found


def overlapping(runs: list[Execution]) -> list[tuple[Execution, Execution]]:
    """Pairs of executions of the same job whose [start, end] intervals overlap (an execution
    that never ended overlaps every later one)."""
    pairs = []
    ordered = sorted(runs, key=lambda run: (run.job, run.start))
    for i, first in enumerate(ordered):
        for second in ordered[i + 1:]:
            if second.job == first.job and (first.end is None or second.start < first.end):
                pairs.append((first, second))
    return pairs


def outage_lines(log: Path) -> list[str]:
    """Lines of a worker log about Redis being unreachable or back."""
    return [line for line in log.read_text(errors="replace").splitlines()
            if "Redis" in line or "ConnectionError" in line or "Connection refused" in line]
