"""Unauthenticated operational endpoints: liveness, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError

from app.deps import ServicesDep
from app.errors import PROBLEM_JSON, problem_type
from app.routes.problems import problems
from app.schemas import Health, Readiness

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, responses=problems(503))
def get_health() -> Health:
    """Liveness: the process answers."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses=problems(503))
def get_readiness(services: ServicesDep) -> Readiness | JSONResponse:
    """Readiness: Redis answers, the store is writable and keeps its free-space floor."""
    checks: dict[str, str] = {}
    try:
        services.redis.ping()
        checks["redis"] = "ok"
    except RedisError as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    try:
        services.store.check_writable()
        checks["store"] = "ok"
    except OSError as exc:
        checks["store"] = f"unavailable: {type(exc).__name__}"
    floor = services.settings.min_free_disk_bytes
    if services.store.free_bytes() < floor:
        checks["disk"] = f"below the free-space floor of {floor} bytes"
    else:
        checks["disk"] = "ok"
    if all(v == "ok" for v in checks.values()):
        return Readiness(checks=checks)
    body = {"type": problem_type("not_ready"), "title": "Service unavailable", "status": 503,
            "detail": "a dependency is unavailable", "code": "not_ready", "instance": "/readyz",
            "checks": checks}
    return JSONResponse(body, status_code=503, media_type=PROBLEM_JSON, headers={"Retry-After": "5"})


@router.get("/metrics", response_class=Response,
            responses={**problems(503),
                       200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}})
def get_metrics(services: ServicesDep) -> Response:
    """Prometheus metrics."""
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
