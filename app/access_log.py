"""Request ids and the access log: one ``request`` line per HTTP request (workers/logs.py format).

The outermost middleware: it takes the request id from ``X-Request-ID`` when that is 1 to 128
printable ASCII characters without spaces (else makes one, uuid4 hex), binds it into the log
context of everything the request logs (and the job it may create: ``JobRecord.request_id``),
echoes it on the response as ``X-Request-ID`` and, once the response is sent, logs the method,
the route template (never the raw path or query string), the status and ``duration_s``, and
counts the request in the app's metrics (one measurement serves both). A client
that went away before an answer is status 499, logged at INFO like any request; a 5xx at WARNING
(its traceback, if any, is on the error handler's own line).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import CLIENT_CLOSED, Metrics
from workers import logs

__all__ = ["REQUEST_ID_HEADER", "RequestLogMiddleware"]

log = logging.getLogger("app.access")
REQUEST_ID_HEADER = "X-Request-ID"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            accepted = logs.accepted_request_id(value.decode("latin-1"))
            if accepted is not None:
                return accepted
    return logs.new_request_id()


class RequestLogMiddleware:
    """Binds the request id, echoes it, logs one access line per request and counts it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = time.perf_counter()
        status = {"code": CLIENT_CLOSED}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        with logs.bind(request_id=request_id) as context:
            try:
                await self.app(scope, receive, send_with_id)
            except BaseException:
                if status["code"] == CLIENT_CLOSED:
                    status["code"] = 500
                raise
            finally:
                self._record(scope, status["code"], time.perf_counter() - started, context)

    def _record(self, scope: Scope, code: int, duration: float, context: dict[str, Any]) -> None:
        route: Any = scope.get("route")
        template = getattr(route, "path", "unmatched")
        self.metrics.observe_request(scope["method"], template, code, duration)
        level = logging.WARNING if code >= 500 else logging.INFO
        logs.event(log, level, "request", "%s %s %d", scope["method"], template, code, method=scope["method"],
                   route=template, status=code, duration_s=duration, tenant=context.get("tenant"))
