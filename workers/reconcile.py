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
queued, no live worker     ``failed`` (``no_worker``) once the queue has had no live worker
                           and the job has waited ``no_worker_wait_s``; the RQ job is removed
=========================  ===============================================================

It runs on read (``GET /v1/jobs/{id}``) and periodically in the API process; the ``no_worker``
rule only in the periodic pass (it asks RQ's worker registry once per pass). A worker is live
while RQ's key of it exists: each heartbeat renews its TTL, so a worker killed with ``kill -9``
counts as live until its TTL ends (``worker_ttl`` + 60 s: 120 s for ``softunlearn worker``).

Each terminal transition made here queues the job's webhook (workers/notify/); each periodic pass
also makes the webhook attempts that are due.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from datetime import timedelta

from redis import Redis
from redis.exceptions import RedisError
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from models_store.records import JobError, JobRecord, Records, utcnow
from workers import job_events
from workers.notify.dispatch import deliver_due, notify_terminal
from workers.queue import (
    QUEUE_KINDS,
    RQState,
    cleanup_started_registries,
    enqueue_correction,
    get_queue,
    rq_state,
)
from workers.redact import redact_paths
from workers.settings import ServiceSettings

__all__ = ["Reconciler", "fail_if_no_worker", "idle_queues", "reconcile_all", "reconcile_job"]

log = logging.getLogger(__name__)
MAX_EXTRA_ENQUEUES = 2
"""Re-enqueues of a lost job beyond its attempts, so a job that never starts cannot loop forever."""
WORKER_SEEN_TTL_S = 7 * 86400
"""How long the time a queue last had a live worker is remembered in Redis."""


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
        job_events.ended(updated, redis=connection, prefix=settings.queue_prefix)
        notify_terminal(records, connection, settings, updated)
    return updated


def _worker_seen_key(settings: ServiceSettings, kind: str) -> str:
    return f"{settings.queue_prefix}:worker-seen:{kind}"


def idle_queues(connection: Redis, settings: ServiceSettings) -> dict[str, float]:
    """The queue kinds no live worker listens on, each with the seconds since a reconciler last
    saw one there (``inf``: never). Remembers in Redis when each queue had a worker.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable.
    """
    now = time.time()
    idle: dict[str, float] = {}
    for kind in QUEUE_KINDS:
        key = _worker_seen_key(settings, kind)
        if Worker.all(queue=get_queue(connection, settings, kind)):
            connection.set(key, repr(now), ex=WORKER_SEEN_TTL_S)
            continue
        seen = connection.get(key)
        idle[kind] = now - float(seen) if seen is not None else math.inf
    return idle


def _no_worker_error(kind: str, wait_s: float) -> JobError:
    other = next(k for k in QUEUE_KINDS if k != kind)
    return JobError(code="no_worker", message=f"no worker has listened on the {kind!r} queue for "
                    f"{wait_s:g} s, so the job never started; start one with `softunlearn worker "
                    f"--queues {kind}`, or submit the job again with \"queue\": \"{other}\"")


def fail_if_no_worker(records: Records, connection: Redis, settings: ServiceSettings, record: JobRecord,
                      idle_s: float) -> JobRecord:
    """Fail a queued job with ``no_worker`` when its queue has had no live worker for ``idle_s``
    seconds and both that and the job's wait reach ``settings.no_worker_wait_s``; its RQ job is
    then removed, so a worker started later does not run it. Returns the manifest in force.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable.
    """
    wait_s = settings.no_worker_wait_s
    waiting_since = record.enqueued_at or record.created_at
    if record.status != "queued" or idle_s < wait_s or utcnow() - waiting_since < timedelta(seconds=wait_s):
        return record
    if rq_state(connection, record.id).status != "queued":
        return record  # RQ moved it (a worker took it, or it was lost): the usual rules apply
    error = _no_worker_error(record.queue, wait_s)

    def change(current: JobRecord) -> JobRecord | None:
        if (current.status, current.attempts, current.cancel_requested) != ("queued", record.attempts, False):
            return None
        return _finish(current, "failed", error)

    updated = records.update_job(record.tenant, record.id, change)
    if updated.status == "failed" and updated.error == error:
        job_events.ended(updated, redis=connection, prefix=settings.queue_prefix)
        with contextlib.suppress(NoSuchJobError):
            Job.fetch(record.id, connection=connection, serializer=JSONSerializer).delete()
        notify_terminal(records, connection, settings, updated)
    return updated


def reconcile_all(records: Records, connection: Redis, settings: ServiceSettings) -> int:
    """Reconcile every queued or running job of every tenant (found in the tenants' indexes),
    failing those whose queue has no worker (:func:`fail_if_no_worker`); returns how many changed."""
    cleanup_started_registries(connection, settings)
    idle = idle_queues(connection, settings)
    changed = 0
    for tenant in records.tenants():
        for record in records.in_flight_jobs(tenant):
            try:
                updated = reconcile_job(records, connection, settings, record)
                if updated.queue in idle:
                    updated = fail_if_no_worker(records, connection, settings, updated, idle[updated.queue])
                if updated.status != record.status:
                    changed += 1
            except RedisError:
                raise
            except Exception:
                log.exception("could not reconcile job %s", record.id)
    return changed


class Reconciler(threading.Thread):
    """A daemon thread running :func:`reconcile_all` every ``settings.reconcile_interval_s``, and
    removing staging files of dead processes."""

    def __init__(self, records: Records, connection: Redis, settings: ServiceSettings) -> None:
        super().__init__(name="softunlearn-reconciler", daemon=True)
        self._records, self._connection, self._settings = records, connection, settings
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Loop until :meth:`stop`; Redis outages are logged and retried next period."""
        while not self._stop_event.wait(self._settings.reconcile_interval_s):
            try:  # staging left by processes that died since the API started (not only at start-up)
                self._records.store.collect_garbage()
            except OSError as exc:
                log.warning("reconciler: staging cleanup failed (%s)", exc.strerror)
            try:
                reconcile_all(self._records, self._connection, self._settings)
            except RedisError as exc:
                log.warning("reconciler: Redis unavailable (%s); retrying later", exc,
                            extra={"event": "redis_unavailable"})
                continue
            except Exception:
                log.exception("reconciler pass failed")
            try:
                deliver_due(self._records, self._connection, self._settings)
            except RedisError as exc:
                log.warning("reconciler: webhooks not delivered, Redis unavailable (%s)", exc)
            except Exception:
                log.exception("webhook deliveries failed")

    def stop(self) -> None:
        """Ask the loop to end and wait for it."""
        self._stop_event.set()
        self.join(timeout=10)
