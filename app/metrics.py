"""Prometheus metrics of the API: requests, latencies, uploads, job submissions, deletions, the
process's own (CPU, memory, file descriptors, Python), and the jobs' read from Redis at scrape time
(app/job_collector.py). Every metric is listed in docs/SERVICE.md "Metrics"."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "MetricsMiddleware"]

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

    def add_collector(self, collector: Collector) -> None:
        """Report ``collector``'s metrics too (the job metrics read from Redis)."""
        self.registry.register(collector)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests by method, route template (not raw path) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": CLIENT_CLOSED}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if status["code"] == CLIENT_CLOSED:
                status["code"] = 500
            raise
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], template, str(status["code"])).inc()
            self.metrics.latency.labels(scope["method"], template).observe(time.perf_counter() - started)
