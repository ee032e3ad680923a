"""The FastAPI application: ``create_app(settings)`` wires routes, errors, metrics and services.

Never imports torch (a test checks it in a fresh interpreter).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app.deps import Services
from app.errors import install_error_handlers, problem_type
from app.headers import SecurityHeadersMiddleware
from app.metrics import Metrics, MetricsMiddleware
from app.routes import artifacts, health, jobs
from app.security import KeyRing
from app.services.uploads import MULTIPART_OVERHEAD
from models_store import LocalStore, Records
from workers.queue import connect
from workers.reconcile import Reconciler
from workers.settings import ServiceSettings, get_settings

__all__ = ["app_factory", "create_app"]

log = logging.getLogger(__name__)
MAX_JSON_BODY = 1024 * 1024
"""Largest non-upload request body."""
VERSION = "1.0.0"

class BodyLimitMiddleware:
    """413 up front when Content-Length exceeds the route's cap (uploads stream their own cap)."""

    def __init__(self, app: ASGIApp, settings: ServiceSettings) -> None:
        self.app = app
        self.caps = {"/v1/models": settings.max_model_bytes + MULTIPART_OVERHEAD,
                     "/v1/datasets": settings.max_dataset_bytes + MULTIPART_OVERHEAD}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            cap = self.caps.get(scope["path"].rstrip("/"), MAX_JSON_BODY)
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if length.isdigit() and int(length) > cap:
                body = (b'{"type":"' + problem_type("body_too_large").encode() + b'","title":"Content too '
                        b'large","status":413,"code":"body_too_large","detail":"the request body is larger '
                        b'than ' + str(cap).encode() + b' bytes"}')
                await send({"type": "http.response.start", "status": 413, "headers": [
                    (b"content-type", b"application/problem+json"), (b"connection", b"close"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

def _services(settings: ServiceSettings) -> Services:
    store = LocalStore(settings.store)
    keys = KeyRing.from_config(settings.api_keys, settings.api_keys_file)
    if not len(keys):
        log.warning("no API keys configured (SOFTUNLEARN_API_KEYS): every /v1 request will be refused")
    return Services(settings=settings, store=store, records=Records(store), redis=connect(settings),
                    keys=keys, metrics=Metrics())

def create_app(settings: ServiceSettings | None = None, *, reconcile: bool = True) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    services = _services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        services.store.collect_garbage()  # type: ignore[attr-defined]
        reconciler = Reconciler(services.records, services.redis, settings) if reconcile else None
        if reconciler is not None:
            reconciler.start()
        try:
            yield
        finally:
            if reconciler is not None:
                reconciler.stop()

    app = FastAPI(
        title="SoftUnlearn", version=VERSION, lifespan=lifespan,
        # No trailing-slash redirects: they would echo the request's Host header in Location.
        redirect_slashes=False,
        description="Correct a trained classifier for fairness or robustness without retraining, by "
                    "soft-weighted machine unlearning. Errors are RFC 9457 problem+json.",
    )
    app.state.services = services
    install_error_handlers(app)
    for router in (health.router, artifacts.router, jobs.router):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    return app

def app_factory() -> FastAPI:
    """Factory for ``uvicorn --factory app.main:app_factory``."""
    return create_app()
