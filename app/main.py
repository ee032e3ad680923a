"""The FastAPI application: ``create_app(settings)`` wires routes, errors, metrics and services.

Never imports torch (a test checks it in a fresh interpreter).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from app.access_log import RequestLogMiddleware
from app.deps import Services
from app.docs import install_docs
from app.errors import install_error_handlers
from app.headers import SecurityHeadersMiddleware
from app.job_collector import JobMetricsCollector
from app.limits import RequestLimitsMiddleware
from app.metrics import Metrics
from app.quotas import RateLimiter
from app.routes import artifacts, health, jobs, version, webhooks
from app.routes.contract import operation_id, with_report_schema
from app.routes.problems import as_problem_json
from app.security import KeyRing
from app.version import __version__
from models_store import Records, StoreUnavailable, open_store
from workers.queue import connect
from workers.reconcile import Reconciler
from workers.settings import ServiceSettings, get_settings

__all__ = ["app_factory", "create_app"]

log = logging.getLogger(__name__)

def _services(settings: ServiceSettings) -> Services:
    store = open_store(settings.store, endpoint_url=settings.s3_endpoint_url,
                       min_free_bytes=settings.min_free_disk_bytes)
    keys = KeyRing.from_config(settings.api_keys, settings.api_keys_file)
    if not len(keys):
        log.warning("no API keys configured (SOFTUNLEARN_API_KEYS): every /v1 request will be refused")
    redis = connect(settings)
    metrics = Metrics()
    metrics.add_collector(JobMetricsCollector(redis, settings))
    return Services(settings=settings, store=store, records=Records(store), redis=redis, keys=keys,
                    metrics=metrics, limiter=RateLimiter(redis, settings.queue_prefix))

def create_app(settings: ServiceSettings | None = None, *, reconcile: bool = True) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    services = _services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            services.store.collect_garbage()
        except StoreUnavailable as exc:  # serve anyway: /readyz fails and requests answer 503
            log.error("store unavailable at startup, garbage collection skipped: %s", exc)
        reconciler = Reconciler(services.records, services.redis, settings) if reconcile else None
        if reconciler is not None:
            reconciler.start()
        try:
            yield
        finally:
            if reconciler is not None:
                reconciler.stop()

    app = FastAPI(
        title="SoftUnlearn", version=__version__, lifespan=lifespan,
        # No trailing-slash redirects: they would echo the request's Host header in Location.
        redirect_slashes=False,
        # Our own /docs and /redoc (app.docs): assets from the package, never from a CDN.
        docs_url=None, redoc_url=None, generate_unique_id_function=operation_id,
        description="Correct a trained classifier for fairness or robustness without retraining, by "
                    "soft-weighted machine unlearning. Errors are RFC 9457 problem+json.",
    )
    app.state.services = services
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_report_schema(as_problem_json(build_openapi()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_error_handlers(app)
    install_docs(app)
    for router in (health.router, version.router, artifacts.router, jobs.router, webhooks.router):
        app.include_router(router)
    app.add_middleware(RequestLimitsMiddleware, settings=settings)
    app.add_middleware(SecurityHeadersMiddleware)
    # Outermost: every answer carries X-Request-ID, and is logged and counted once.
    app.add_middleware(RequestLogMiddleware, metrics=services.metrics)
    return app

def app_factory() -> FastAPI:
    """Factory for ``uvicorn --factory app.main:app_factory``."""
    return create_app()
