"""A Prometheus collector of the service's job metrics, read from Redis at scrape time.

Workers write job outcomes and durations to Redis (workers/job_metrics.py); queue depth, live
workers and the oldest queued job come from RQ's own keys. A scrape costs at most two Redis round
trips (one pipeline for every hash, queue length, oldest job id and worker set; one for the
workers' keys and the oldest jobs' enqueue times). With Redis unreachable only
``softunlearn_metrics_redis_up 0`` is reported (the process metrics still are, by their own
collectors), and the scrape answers at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job
from rq.utils import utcparse
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from workers import job_metrics
from workers.queue import QUEUE_KINDS, get_queue
from workers.settings import ServiceSettings

__all__ = ["JobMetricsCollector"]

log = logging.getLogger(__name__)
_HISTOGRAMS = {
    "job_seconds": ("softunlearn_job_duration_seconds", "Run time of jobs that ran, start to end",
                    ["queue", "status"]),
    "queue_wait_seconds": ("softunlearn_job_queue_wait_seconds", "Time an execution waited in its "
                           "queue before a worker started it", ["queue"]),
    "stage_seconds": ("softunlearn_job_stage_seconds", "Duration of each engine stage of succeeded jobs",
                      ["stage"]),
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class JobMetricsCollector(Collector):
    """Reads the job metrics of ``settings.queue_prefix`` from ``redis`` on every collect."""

    def __init__(self, redis: Redis, settings: ServiceSettings) -> None:
        self.redis, self.settings = redis, settings
        self.queues = {kind: get_queue(redis, settings, kind) for kind in QUEUE_KINDS}

    def collect(self) -> Iterator[Any]:
        """The metric families (see docs/SERVICE.md "Metrics")."""
        up = GaugeMetricFamily("softunlearn_metrics_redis_up", "1 when the job metrics could be read "
                               "from Redis at this scrape, else 0")
        try:
            families = self._read()
        except RedisError as exc:
            log.debug("job metrics unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Any]:
        prefix = self.settings.queue_prefix
        with self.redis.pipeline(transaction=False) as pipeline:
            job_metrics.read(pipeline, prefix)
            for queue in self.queues.values():
                pipeline.llen(queue.key)
                pipeline.lindex(queue.key, 0)
                pipeline.smembers(WORKERS_BY_QUEUE_KEY % queue.name)
            results = pipeline.execute()
        count = len(job_metrics.NAMES)
        snapshot = job_metrics.parse(zip(job_metrics.NAMES, results[:count], strict=True))
        per_queue = [results[count + 3 * i: count + 3 * i + 3] for i in range(len(self.queues))]
        return [*self._job_families(snapshot), *self._queue_families(per_queue)]

    @staticmethod
    def _job_families(snapshot: job_metrics.Snapshot) -> Iterator[Any]:
        finished = CounterMetricFamily("softunlearn_jobs_finished", "Jobs that reached a terminal status, "
                                       "by queue, status and error code (none: no error)",
                                       labels=["queue", "status", "code"])
        for labels, value in sorted(snapshot.counters.get("jobs_finished", {}).items()):
            if len(labels) == 3:
                finished.add_metric(list(labels), value)
        yield finished
        webhooks = CounterMetricFamily("softunlearn_webhook_deliveries", "Webhook delivery attempts by "
                                       "outcome", labels=["outcome"])
        for labels, value in sorted(snapshot.counters.get("webhook_deliveries", {}).items()):
            webhooks.add_metric(list(labels[:1]), value)
        yield webhooks
        for name, (metric, documentation, label_names) in _HISTOGRAMS.items():
            family = HistogramMetricFamily(metric, documentation, labels=label_names)
            for labels, histogram in sorted(snapshot.histograms.get(name, {}).items()):
                if len(labels) == len(label_names):
                    family.add_metric(list(labels), histogram.buckets, histogram.sum)
            yield family

    def _queue_families(self, per_queue: list[list[Any]]) -> Iterator[Any]:
        kinds = list(self.queues)
        worker_keys = [sorted(_text(k) for k in members) for _depth, _oldest, members in per_queue]
        oldest = [_text(first) if first is not None else None for _depth, first, _members in per_queue]
        with self.redis.pipeline(transaction=False) as pipeline:
            for keys in worker_keys:
                for key in keys:
                    pipeline.exists(key)
            for job_id in oldest:
                if job_id is not None:
                    pipeline.hget(Job.key_for(job_id), "enqueued_at")
            results = iter(pipeline.execute())
        depth = GaugeMetricFamily("softunlearn_queue_depth", "Jobs waiting in each RQ queue",
                                  labels=["queue"])
        alive = GaugeMetricFamily("softunlearn_workers_alive", "Workers registered on each queue whose "
                                  "heartbeat key lives", labels=["queue"])
        age = GaugeMetricFamily("softunlearn_queue_oldest_job_age_seconds", "Age of the oldest job waiting "
                                "in each queue (0 when it is empty)", labels=["queue"])
        now = time.time()
        for kind, (length, _first, _members), keys in zip(kinds, per_queue, worker_keys, strict=True):
            depth.add_metric([kind], float(length))
            alive.add_metric([kind], float(sum(1 for _key in keys if next(results))))
        for kind, job_id in zip(kinds, oldest, strict=True):
            waited = 0.0
            if job_id is not None:
                enqueued = next(results)
                if enqueued:
                    waited = max(now - utcparse(_text(enqueued)).timestamp(), 0.0)
            age.add_metric([kind], waited)
        return iter([depth, alive, age])
