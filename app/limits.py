"""Bounded work per request: body size, body-read time and concurrency, enforced while streaming.

One ASGI middleware (our own rather than Starlette's ``RequestBodyLimitMiddleware``, because the
caps depend on the route and on runtime settings, and a refusal must be a problem document):

- a body larger than its route's cap is refused with 413, from ``Content-Length`` before anything
  is read, and while streaming for chunked bodies or lying lengths (counted as bytes arrive);
- a body that stalls (no bytes for ``body_idle_timeout_s``) or is still arriving after
  ``body_timeout_s`` is refused with 408 and the connection closed;
- past ``max_concurrent_uploads`` uploads or ``max_concurrent_requests`` requests in one process,
  a request is answered 503 + Retry-After at once, without reading its body;
- a client that disconnects mid-request is logged at INFO, not as an error.

Upload handlers write into a staging object inside ``with store.stage()``, so any of these
refusals discards what was staged.
"""

from __future__ import annotations

import json
import logging
import time

import anyio
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, problem_document
from app.services.uploads import MULTIPART_OVERHEAD
from workers.settings import ServiceSettings

__all__ = ["MAX_JSON_BODY", "RequestLimitsMiddleware"]

log = logging.getLogger(__name__)
MAX_JSON_BODY = 1024 * 1024
"""Largest non-upload request body."""
BUSY_RETRY_AFTER_S = 2
UPLOAD_PATHS = ("/v1/models", "/v1/datasets")


async def _send_problem(send: Send, error: ApiError, instance: str) -> None:
    """Answer from middleware, outside the routing (and its exception handlers)."""
    body = json.dumps(problem_document(error, instance)).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large(cap: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body is larger than {cap} bytes")


class _Gate:
    """A count of requests in progress with a ceiling (the event loop is single-threaded)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.active = limit, 0

    def enter(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


class _GuardedBody:
    """Wraps ``receive``: counts body bytes against the cap and times every wait for more."""

    def __init__(self, receive: Receive, cap: int, idle_s: float, total_s: float) -> None:
        self._receive, self.cap, self.idle_s = receive, cap, idle_s
        self.deadline = time.monotonic() + total_s
        self.received = 0
        self.refusal: ApiError | None = None
        self.done = False

    def _refuse(self, error: ApiError) -> ApiError:
        self.refusal = error
        return error

    async def receive(self) -> Message:
        if self.refusal is not None:
            raise self.refusal
        if self.done:  # body complete: later receives wait for a disconnect, untimed
            return await self._receive()
        wait = min(self.idle_s, self.deadline - time.monotonic())
        with anyio.move_on_after(max(wait, 0.0)) as scope:
            message = await self._receive()
        if scope.cancelled_caught:
            raise self._refuse(ApiError(408, "body_timeout", "the request body arrived too slowly "
                                        f"(nothing for {self.idle_s:g} s, or past the overall limit); "
                                        "nothing was stored", headers={"Connection": "close"}))
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.cap:
                raise self._refuse(_too_large(self.cap))
            self.done = not message.get("more_body", False)
        return message


class RequestLimitsMiddleware:
    """Applies the limits in this module's docstring to every HTTP request."""

    def __init__(self, app: ASGIApp, settings: ServiceSettings) -> None:
        self.app, self.settings = app, settings
        self.caps = {"/v1/models": settings.max_model_bytes + MULTIPART_OVERHEAD,
                     "/v1/datasets": settings.max_dataset_bytes + MULTIPART_OVERHEAD}
        self.uploads = _Gate(settings.max_concurrent_uploads)
        self.requests = _Gate(settings.max_concurrent_requests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        cap = self.caps.get(path, MAX_JSON_BODY)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > cap:
            await _send_problem(send, _too_large(cap), path)
            return
        gate = self.uploads if scope["method"] == "POST" and path in UPLOAD_PATHS else self.requests
        if not gate.enter():
            what = "uploads" if gate is self.uploads else "requests"
            busy = ApiError(503, "busy", f"the server is handling its limit of {gate.limit} concurrent "
                            f"{what}; retry shortly", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
            await _send_problem(send, busy, path)
            return
        try:
            await self._guarded(scope, receive, send, cap)
        finally:
            gate.leave()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        body = _GuardedBody(receive, cap, self.settings.body_idle_timeout_s, self.settings.body_timeout_s)
        state = {"started": False, "replaced": False}

        async def send_checked(message: Message) -> None:
            if message["type"] == "http.response.start" and not state["started"]:
                state["started"] = True
                # FastAPI turns an error raised while it reads a JSON body into a generic 400;
                # the real reason is the refusal recorded here.
                if body.refusal is not None and message["status"] != body.refusal.status:
                    state["replaced"] = True
                    await _send_problem(send, body.refusal, scope["path"])
                    return
            if not state["replaced"]:
                await send(message)

        try:
            await self.app(scope, body.receive, send_checked)
        except ClientDisconnect:
            log.info("client went away during %s %s", scope["method"], scope["path"],
                     extra={"event": "client_disconnect", "method": scope["method"]})
        except ApiError as exc:
            if exc is not body.refusal or state["started"]:
                raise
            await _send_problem(send, exc, scope["path"])
