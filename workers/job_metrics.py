"""Job metrics kept in Redis: written by whoever ends a job, read by the API at scrape time.

Workers are other processes than the API, so their counts cannot live in the API's Prometheus
registry. Each write is a few ``HINCRBY``/``HINCRBYFLOAT`` in one pipeline, under the service's
``queue_prefix``; :func:`read` fetches every hash in one round trip for the API's collector
(app/metrics.py). A failed write is logged and dropped: metrics never fail a job.

==========================================  =================================================
key (``PREFIX:metrics:...``)                fields
==========================================  =================================================
``jobs_finished``                           ``queue|status|code`` → count (code ``none`` on
                                            success and cancel)
``job_seconds``                             ``queue|status|i`` bucket counts, ``queue|status|sum``,
                                            ``queue|status|count`` (start to end of a job that ran)
``queue_wait_seconds``                      ``queue|i``, ``queue|sum``, ``queue|count`` (enqueue to
                                            start of each execution)
``stage_seconds``                           ``stage|i``, ``stage|sum``, ``stage|count``
``webhook_deliveries``                      ``outcome`` → count
==========================================  =================================================

Bucket ``i`` counts observations in ``(BUCKETS[i-1], BUCKETS[i]]`` (the last index is ``+Inf``);
the reader makes them cumulative.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.utils import floatToGoString
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workers import logs

__all__ = [
    "BUCKETS",
    "HISTOGRAMS",
    "Histogram",
    "Snapshot",
    "metrics_key",
    "parse",
    "read",
    "record_outcome",
    "record_queue_wait",
    "record_webhook_delivery",
]

log = logging.getLogger(__name__)
BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                              1800.0, 3600.0, 7200.0)
"""Upper bounds (seconds) of the duration histograms; an implicit ``+Inf`` follows."""
COUNTERS = ("jobs_finished", "webhook_deliveries")
HISTOGRAMS = ("job_seconds", "queue_wait_seconds", "stage_seconds")
NO_CODE = "none"
"""The ``code`` label of a job that ended without an error."""
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError)
_LABEL = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def metrics_key(prefix: str, name: str) -> str:
    """The Redis hash of metric ``name`` under ``prefix``."""
    return f"{prefix}:metrics:{name}"


def _label(value: str | None) -> str:
    """A label value safe in a hash field (``|`` separates labels) and of bounded size."""
    if value is None or value == "":
        return NO_CODE
    return value if _LABEL.fullmatch(value) else "other"


def _observe(pipeline: Any, key: str, labels: str, seconds: float) -> None:
    index = bisect.bisect_left(BUCKETS, max(seconds, 0.0))
    pipeline.hincrby(key, f"{labels}|{index}", 1)
    pipeline.hincrby(key, f"{labels}|count", 1)
    pipeline.hincrbyfloat(key, f"{labels}|sum", max(seconds, 0.0))


def _write(redis: Redis | None, what: str, fill: Any) -> bool:
    """Run ``fill(pipeline)`` and execute it; False (logged) when Redis refused."""
    if redis is None:
        return False
    try:
        with redis.pipeline(transaction=False) as pipeline:
            fill(pipeline)
            pipeline.execute()
    except REDIS_ERRORS as exc:  # an outage: the worker's own lines report it (resilience.py)
        log.debug("could not record %s: %s", what, exc)
        return False
    except Exception as exc:  # metrics are best effort: never fail the caller (a job)
        logs.event(log, logging.WARNING, "metrics_write_failed", "could not record %s (%s: %s)",
                   what, type(exc).__name__, exc)
        return False
    return True


def record_outcome(redis: Redis | None, prefix: str, queue: str, status: str, code: str | None,
                   duration_s: float | None, timings: Mapping[str, float] | None = None) -> bool:
    """Count one job that ended (``status``, error ``code``), its run time when it ran and the
    duration of each of its engine stages (``timings``; ``total`` is the job's, not a stage's)."""
    labels = f"{_label(queue)}|{_label(status)}"
    stages = {name: seconds for name, seconds in (timings or {}).items() if name != "total"}

    def fill(pipeline: Any) -> None:
        pipeline.hincrby(metrics_key(prefix, "jobs_finished"), f"{labels}|{_label(code)}", 1)
        if duration_s is not None:
            _observe(pipeline, metrics_key(prefix, "job_seconds"), labels, duration_s)
        for name, seconds in stages.items():
            _observe(pipeline, metrics_key(prefix, "stage_seconds"), _label(name), seconds)

    return _write(redis, "a job outcome", fill)


def record_queue_wait(redis: Redis | None, prefix: str, queue: str, wait_s: float) -> bool:
    """Observe how long an execution waited in ``queue`` before a worker started it."""
    return _write(redis, "a queue wait", lambda pipeline: _observe(
        pipeline, metrics_key(prefix, "queue_wait_seconds"), _label(queue), wait_s))


def record_webhook_delivery(redis: Redis | None, prefix: str, outcome: str) -> bool:
    """Count one webhook delivery attempt by ``outcome`` (e.g. ``delivered``, ``failed``,
    ``refused``; anything outside ``[A-Za-z0-9_.:-]`` is counted as ``other``)."""
    return _write(redis, "a webhook delivery", lambda pipeline: pipeline.hincrby(
        metrics_key(prefix, "webhook_deliveries"), _label(outcome), 1))


@dataclass
class Histogram:
    """One histogram series: cumulative ``(upper bound, count)`` pairs ending at ``+Inf``, a sum."""

    buckets: list[tuple[str, float]]
    sum: float


@dataclass
class Snapshot:
    """The job metrics read from Redis: counters by label tuple, histograms by label tuple."""

    counters: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    histograms: dict[str, dict[tuple[str, ...], Histogram]] = field(default_factory=dict)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _histograms(raw: Mapping[Any, Any]) -> dict[tuple[str, ...], Histogram]:
    counts: dict[tuple[str, ...], list[float]] = {}
    sums: dict[tuple[str, ...], float] = {}
    for key, value in raw.items():
        *labels, part = _text(key).split("|")
        series = tuple(labels)
        if part == "sum":
            sums[series] = float(value)
        elif part.isdigit() and int(part) <= len(BUCKETS):
            counts.setdefault(series, [0.0] * (len(BUCKETS) + 1))[int(part)] += float(value)
    result = {}
    for series, per_bucket in counts.items():
        bounds = [*(floatToGoString(bound) for bound in BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]
        cumulative, total = [], 0.0
        for bound, count in zip(bounds, per_bucket, strict=True):
            total += count
            cumulative.append((bound, total))
        result[series] = Histogram(cumulative, sums.get(series, 0.0))
    return result


def parse(hashes: Iterable[tuple[str, Mapping[Any, Any]]]) -> Snapshot:
    """The snapshot of ``(metric name, raw hash)`` pairs as ``HGETALL`` returned them."""
    snapshot = Snapshot()
    for name, raw in hashes:
        if name in HISTOGRAMS:
            snapshot.histograms[name] = _histograms(raw)
        else:
            snapshot.counters[name] = {tuple(_text(k).split("|")): float(v) for k, v in raw.items()}
    return snapshot


def read(pipeline: Any, prefix: str) -> int:
    """Queue an ``HGETALL`` of every metric hash on ``pipeline``; returns how many were queued
    (their results, in :data:`COUNTERS` then :data:`HISTOGRAMS` order, go to :func:`parse`)."""
    names = (*COUNTERS, *HISTOGRAMS)
    for name in names:
        pipeline.hgetall(metrics_key(prefix, name))
    return len(names)


NAMES: tuple[str, ...] = (*COUNTERS, *HISTOGRAMS)
"""Every metric hash, in the order :func:`read` queues them."""
