"""Security headers on every response.

Every response says ``nosniff`` and may not be framed; API responses (``/v1``) are never cached
(they carry tenant data) and get a CSP that allows nothing, since none of them is a page that
needs to load anything. Routes that set their own (the report page's CSP) keep theirs. The
interactive docs (``/docs``, ``/redoc``, ``app.docs``) get :data:`DOCS`: their scripts, styles and
images from this server only (no inline script; inline styles, which both UIs set at run time),
fetches of the OpenAPI document, and ReDoc's search worker (a ``blob:`` URL).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SecurityHeadersMiddleware"]

ALWAYS = {b"x-content-type-options": b"nosniff", b"x-frame-options": b"DENY",
          b"referrer-policy": b"no-referrer"}
API = {b"cache-control": b"no-store",
       b"content-security-policy": b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'"}
DOCS = {b"content-security-policy": b"default-src 'none'; script-src 'self'; "
                                    b"style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                    b"font-src 'self' data:; connect-src 'self'; worker-src blob:; "
                                    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}
DOCS_PAGES = ("/docs", "/redoc")


def _is_docs(path: str) -> bool:
    return path in DOCS_PAGES or path.startswith(tuple(f"{page}/" for page in DOCS_PAGES))


class SecurityHeadersMiddleware:
    """Adds :data:`ALWAYS` to every HTTP response, :data:`API` to those under ``/v1``, :data:`DOCS`
    to the docs pages and their assets, and a CSP that allows nothing to the rest, unless the
    route set the header itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/v1"):
            extra = {**ALWAYS, **API}
        elif _is_docs(path):
            extra = {**ALWAYS, **DOCS}
        else:
            extra = {**ALWAYS, b"content-security-policy": API[b"content-security-policy"]}

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in extra.items() if k not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)
