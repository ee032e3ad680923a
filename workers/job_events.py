"""A job's log lines and metrics where it starts and ends (torch-free).

The worker's job function calls :func:`started` once it has claimed a manifest and :func:`ended`
once its terminal status is written; the reconciler (in the API) calls :func:`ended` for the
terminal states it writes itself (RQ failed the job, it was lost, no worker). Each end is one
``job_finished`` (INFO), ``job_canceled`` (INFO) or ``job_failed`` (WARNING, with the error's
``code`` and message) line carrying the job's ``request_id``, plus a ``stage_finished`` line per
engine stage, and the counts in Redis (workers/job_metrics.py).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from redis import Redis

from models_store.records import JobRecord, utcnow
from workers import job_metrics, logs
from workers.settings import get_settings

__all__ = ["ended", "in_job_context", "started", "worker_redis"]

log = logging.getLogger("workers.jobs")
METRICS_SOCKET_TIMEOUT_S = 2.0
"""A stalled Redis delays a job's end by at most this much per metrics write."""
T = TypeVar("T")
_connection: tuple[int, Redis] | None = None


def worker_redis() -> Redis:
    """This process's Redis connection for metrics (one per process: a horse is a fork)."""
    global _connection
    if _connection is None or _connection[0] != os.getpid():
        url = get_settings().redis_url
        _connection = (os.getpid(), Redis.from_url(url, socket_timeout=METRICS_SOCKET_TIMEOUT_S,
                                                   socket_connect_timeout=METRICS_SOCKET_TIMEOUT_S))
    return _connection[1]


def in_job_context(function: Callable[[str, str], T]) -> Callable[[str, str], T]:
    """Run a job function ``(tenant, job_id)`` with both in the log context; an exception that
    escapes it (an internal error, left to RQ's retry) is logged as ``job_error`` with its traceback."""

    @functools.wraps(function)
    def run(tenant: str, job_id: str) -> T:
        with logs.bind(tenant=tenant, job_id=job_id):
            try:
                return function(tenant, job_id)
            except Exception:
                log.exception("job raised an internal error; RQ retries it or fails it",
                              extra={"event": "job_error", "code": "internal_error"})
                raise

    return run


def started(record: JobRecord, device: str | None) -> None:
    """The ``job_started`` line of an execution that claimed ``record`` (its device and threads),
    and its queue wait."""
    logs.note(request_id=record.request_id)
    waited = record.enqueued_at or record.created_at
    wait_s = max((utcnow() - waited).total_seconds(), 0.0)
    logs.event(log, logging.INFO, "job_started", "job started: attempt %d on %s (%s threads) from queue %s",
               record.attempts, device, record.threads, record.queue, attempt=record.attempts,
               device=device, threads=record.threads, queue=record.queue, status="running")
    settings = get_settings()
    job_metrics.record_queue_wait(worker_redis(), settings.queue_prefix, record.queue, wait_s)


def _duration(record: JobRecord) -> float | None:
    if record.started_at is None or record.finished_at is None:
        return None
    return max((record.finished_at - record.started_at).total_seconds(), 0.0)


def ended(record: JobRecord, timings: Mapping[str, float] | None = None, *, redis: Redis | None = None,
          prefix: str | None = None) -> None:
    """Log and count the end of ``record`` (terminal; written by the caller just now).

    ``redis``/``prefix`` default to this worker process's (the settings' ``REDIS_URL`` and
    ``queue_prefix``).
    """
    fields = {"request_id": record.request_id, "tenant": record.tenant, "job_id": record.id,
              "queue": record.queue, "status": record.status, "attempt": record.attempts}
    duration = _duration(record)
    for stage, seconds in (timings or {}).items():
        if stage != "total":
            logs.event(log, logging.INFO, "stage_finished", "stage %s took %.3f s", stage, seconds,
                       **fields, stage=stage, duration_s=seconds)
    code = record.error.code if record.error else None
    if record.status == "failed":
        message = record.error.message if record.error else "no reason recorded"
        logs.event(log, logging.WARNING, "job_failed", "job failed: %s: %s", code, message, **fields,
                   code=code, duration_s=duration)
    elif record.status == "canceled":
        logs.event(log, logging.INFO, "job_canceled", "job canceled", **fields, duration_s=duration)
    else:
        logs.event(log, logging.INFO, "job_finished", "job %s", record.status, **fields, duration_s=duration)
    if redis is None:
        redis = worker_redis()
    prefix = prefix if prefix is not None else get_settings().queue_prefix
    job_metrics.record_outcome(redis, prefix, record.queue, record.status, code, duration, timings)
