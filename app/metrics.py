"""Prometheus metrics of the API: requests, latencies, uploads, job submissions, deletions, the
process's own (CPU, memory, file descriptors, Python), and the jobs' read from Redis at scrape time
(app/job_collector.py). Every metric is listed in docs/SERVICE.md "Metrics"."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.registry import Collector

__all__ = ["CLIENT_CLOSED", "Metrics"]

CLIENT_CLOSED = 499
"""Status recorded for a request that ended with no response (the client went away first)."""


class Metrics:
    """The app's own registry (one per app, so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("softunlearn_http_requests", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("softunlearn_http_request_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry)
        self.uploads = Counter("softunlearn_uploads", "Uploads by kind and outcome",
                               ["kind", "outcome"], registry=self.registry)
        self.upload_bytes = Counter("softunlearn_upload_bytes", "Bytes of accepted uploads",
                                    ["kind"], registry=self.registry)
        self.jobs = Counter("softunlearn_jobs_submitted", "Correction jobs submitted",
                            ["queue"], registry=self.registry)
        self.deletions = Counter("softunlearn_deletions", "DELETE requests by kind (model, dataset, "
                                 "job) and outcome (deleted or the error code)", ["kind", "outcome"],
                                 registry=self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request by method, route template (not raw path) and status."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def add_collector(self, collector: Collector) -> None:
        """Report ``collector``'s metrics too (the job metrics read from Redis)."""
        self.registry.register(collector)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
