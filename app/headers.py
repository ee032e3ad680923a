"""Security headers on every response.

Every response says ``nosniff`` and may not be framed; API responses (``/v1``) are never cached
(they carry tenant data) and get a CSP that allows nothing, since none of them is a page that
needs to load anything. Routes that set their own (the report page's CSP) keep theirs. The
interactive docs (``/docs``, ``/redoc``) are left without a CSP: they load their assets.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SecurityHeadersMiddleware"]

ALWAYS = {b"x-content-type-options": b"nosniff", b"x-frame-options": b"DENY",
          b"referrer-policy": b"no-referrer"}
API = {b"cache-control": b"no-store",
       b"content-security-policy": b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'"}
DOCS_PATHS = ("/docs", "/redoc")


class SecurityHeadersMiddleware:
    """Adds :data:`ALWAYS` to every HTTP response and :data:`API` to those under ``/v1``, unless
    the route set the header itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra = {**ALWAYS, **(API if path.startswith("/v1") else {})}
        if not path.startswith(DOCS_PATHS) and not path.startswith("/v1"):
            extra[b"content-security-policy"] = API[b"content-security-policy"]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in extra.items() if k not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)
