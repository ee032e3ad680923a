"""One execution of a job at a time, decided by the manifest (the record of truth), not by Redis.

RQ can hand out a job that is still running: Redis restarted empty and the reconciler re-enqueued
the "lost" job, or an outage outlived the job's heartbeat and RQ declared it abandoned. The
execution that claimed a manifest therefore holds a *lease* on it: ``worker_pid`` names it and
``updated_at`` is renewed every ``lease_s / 4`` while it runs (:class:`LeaseKeeper`). Another
execution of the same job waits (:func:`claim`) until the manifest is terminal (then it does
nothing), the holder's worker released it after reaping its horse (:func:`release`), or the lease
lapsed (``lease_s`` without renewal: the holder died with its worker). Re-runs are thus sequential.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Protocol

from models_store.records import JobRecord, Records, utcnow

__all__ = ["POLL_S", "Claimer", "LeaseKeeper", "claim", "held", "release"]

log = logging.getLogger(__name__)
POLL_S = 0.5
"""How often a waiting execution looks at the manifest again."""


def held(record: JobRecord, lease_s: float) -> bool:
    """Whether a live execution holds the (non-terminal) manifest's lease."""
    return (not record.terminal and record.worker_pid is not None
            and utcnow() - record.updated_at < timedelta(seconds=lease_s))


class Claimer(Protocol):
    """A manifest change that claims a job: ``held`` when a live lease refused it."""

    held: bool
    claimed: bool

    def __call__(self, record: JobRecord) -> JobRecord | None: ...


def claim(records: Records, tenant: str, job_id: str,
          make_claim: Callable[[], Claimer]) -> tuple[JobRecord, bool]:
    """Apply a fresh claim (``make_claim()``: a manifest change with ``held`` and ``claimed``)
    until it is not refused by a live lease; returns the manifest and whether it was claimed."""
    waited_for: int | None = None
    while True:
        change = make_claim()
        record = records.update_job(tenant, job_id, change)
        if not change.held:
            return record, change.claimed
        if waited_for != record.worker_pid:
            waited_for = record.worker_pid
            log.info("job %s: execution %s holds it; waiting for it to end", job_id, waited_for)
        time.sleep(POLL_S)


def release(records: Records, tenant: str, job_id: str, pid: int) -> None:
    """Drop the lease of execution ``pid`` (its process is gone) so a re-run need not wait."""

    def change(record: JobRecord) -> JobRecord | None:
        if record.worker_pid != pid:
            return None
        record.worker_pid = None
        return record

    records.update_job(tenant, job_id, change)


class LeaseKeeper:
    """Renews the lease of execution ``pid`` on a manifest from a daemon thread while in use."""

    def __init__(self, records: Records, tenant: str, job_id: str, pid: int, lease_s: float) -> None:
        self._records, self._tenant, self._id, self._pid = records, tenant, job_id, pid
        self._period = lease_s / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _renew(self, record: JobRecord) -> JobRecord | None:
        return record if record.worker_pid == self._pid and not record.terminal else None

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._records.update_job(self._tenant, self._id, self._renew)
            except Exception:
                log.warning("job %s: could not renew its lease", self._id, exc_info=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
