"""Reconcile job manifests (the record of truth) with what RQ knows (torch-free).

A worker normally moves its manifest to a terminal status itself. When it cannot (work horse
SIGKILLed, job timeout, Redis restarted and lost the job), the reconciler does, from RQ's view:

=========================  ===============================================================
RQ says                    manifest becomes
=========================  ===============================================================
failed                     ``failed`` (``worker_crashed``, ``timeout`` or ``internal_error``)
stopped / canceled         ``canceled``
queued while running       ``queued`` again (RQ's ``Retry`` re-enqueued it)
no such job                re-enqueued while attempts remain, else ``failed`` (``lost``)
finished, not terminal     ``failed`` (``internal_error``)
=========================  ===============================================================

It runs on read (``GET /v1/jobs/{id}``) and periodically in the API process.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from redis import Redis
from redis.exceptions import RedisError

from models_store.records import JobError, JobRecord, Records, utcnow
from workers.queue import RQState, cleanup_started_registries, enqueue_correction, rq_state
from workers.redact import redact_paths
from workers.settings import ServiceSettings

__all__ = ["Reconciler", "reconcile_all", "reconcile_job"]

log = logging.getLogger(__name__)
MAX_EXTRA_ENQUEUES = 2
"""Re-enqueues of a lost job beyond its attempts, so a job that never starts cannot loop forever."""


def _failure(state: RQState) -> JobError:
    text = redact_paths(state.error or "the worker reported a failure without details")
    if "Work-horse terminated unexpectedly" in text:
        return JobError(code="worker_crashed", message=f"the worker process died while running the "
                        f"job (out of memory?): {text}")
    if "AbandonedJobError" in text:  # whole worker gone (kill -9, node lost): its heartbeat expired
        return JobError(code="worker_crashed", message=f"the worker running the job stopped sending "
                        f"heartbeats (process killed or machine lost): {text}")
    if "JobTimeoutException" in text or "timeout" in text.lower():
        return JobError(code="timeout", message=f"the job ran past its time limit: {text}")
    return JobError(code="internal_error", message=text)


def _finish(record: JobRecord, status: str, error: JobError | None) -> JobRecord:
    record.status = status  # type: ignore[assignment]
    record.error = error
    record.finished_at = utcnow()
    return record


def _decide(record: JobRecord, state: RQState, settings: ServiceSettings) -> tuple[JobRecord | None, bool]:
    """The new manifest (None: unchanged) and whether to enqueue it again."""
    if record.terminal:
        return None, False
    if state.status in ("failed", "stopped", "canceled"):
        if record.cancel_requested or state.status != "failed":
            return _finish(record, "canceled", None), False
        return _finish(record, "failed", _failure(state)), False
    if state.status == "finished":
        error = JobError(code="internal_error", message="the job ended without publishing its results")
        return _finish(record, "failed", error), False
    if state.status in ("queued", "scheduled", "deferred"):
        if record.status != "running":
            return None, False
        record.status, record.stage, record.progress = "queued", None, 0.0
        return record, False
    if state.status is not None:
        return None, False
    grace = timedelta(seconds=settings.requeue_grace_s)
    if record.enqueued_at is not None and utcnow() - record.enqueued_at < grace:
        return None, False
    if record.cancel_requested:
        return _finish(record, "canceled", None), False
    too_many = record.enqueues > settings.max_attempts + MAX_EXTRA_ENQUEUES
    if record.attempts >= settings.max_attempts or too_many:
        error = JobError(code="lost", message=f"the queue lost the job after {record.attempts} attempt(s) "
                         "(Redis restarted without persistence?); submit it again")
        return _finish(record, "failed", error), False
    record.status, record.stage, record.progress = "queued", None, 0.0
    record.enqueues += 1
    record.enqueued_at = utcnow()
    return record, True


def reconcile_job(
    records: Records, connection: Redis, settings: ServiceSettings, record: JobRecord
) -> JobRecord:
    """Bring one non-terminal manifest in line with RQ; returns the manifest now in force.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable.
    """
    if record.terminal:
        return record
    state = rq_state(connection, record.id)
    requeue = False

    def change(current: JobRecord) -> JobRecord | None:
        nonlocal requeue
        if (current.status, current.attempts) != (record.status, record.attempts):
            return None  # a worker moved the job after RQ's state was read: that state is stale
        changed, requeue = _decide(current, state, settings)
        return changed

    updated = records.update_job(record.tenant, record.id, change)
    if requeue:
        log.warning("re-enqueuing job %s (RQ no longer knows it)", record.id)
        enqueue_correction(connection, settings, record.tenant, record.id, record.queue)
    if updated.status in ("failed", "canceled") and updated.status != record.status:
        records.store.delete_prefix(records.output_prefix(record.tenant, record.id))
    return updated


def reconcile_all(records: Records, connection: Redis, settings: ServiceSettings) -> int:
    """Reconcile every non-terminal manifest of every tenant; returns how many changed."""
    cleanup_started_registries(connection, settings)
    changed = 0
    for tenant in records.tenants():
        for record in records.list_jobs(tenant):
            if record.terminal:
                continue
            try:
                if reconcile_job(records, connection, settings, record).status != record.status:
                    changed += 1
            except RedisError:
                raise
            except Exception:
                log.exception("could not reconcile job %s", record.id)
    return changed


class Reconciler(threading.Thread):
    """A daemon thread running :func:`reconcile_all` every ``settings.reconcile_interval_s``."""

    def __init__(self, records: Records, connection: Redis, settings: ServiceSettings) -> None:
        super().__init__(name="softunlearn-reconciler", daemon=True)
        self._records, self._connection, self._settings = records, connection, settings
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Loop until :meth:`stop`; Redis outages are logged and retried next period."""
        while not self._stop_event.wait(self._settings.reconcile_interval_s):
            try:
                reconcile_all(self._records, self._connection, self._settings)
            except RedisError as exc:
                log.warning("reconciler: Redis unavailable (%s); retrying later", exc)
            except Exception:
                log.exception("reconciler pass failed")

    def stop(self) -> None:
        """Ask the loop to end and wait for it."""
        self._stop_event.set()
        self.join(timeout=10)
