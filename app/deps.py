"""Dependencies: the service container and the authenticated tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis

from app.errors import ApiError
from app.metrics import Metrics
from app.quotas import RateLimiter, too_many
from app.security import KeyRing
from models_store import Records, Store
from workers import logs
from workers.settings import ServiceSettings

__all__ = ["Services", "ServicesDep", "TenantDep", "current_tenant", "get_services"]


@dataclass
class Services:
    """Everything a request handler needs, built once per app."""

    settings: ServiceSettings
    store: Store
    records: Records
    redis: Redis
    keys: KeyRing
    metrics: Metrics
    limiter: RateLimiter


def get_services(request: Request) -> Services:
    """The app's service container."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def _failed_auth_limit(wait: float) -> ApiError:
    return too_many("too_many_failed_auth", "too many requests with a missing or wrong API key from "
                    "your address; wait before retrying", wait)


def _auth_refused(services: Services, address: str) -> ApiError:
    """401, or 429 once ``address`` has failed authentication too often this minute."""
    wait = services.limiter.hit("failed-auth", address, services.settings.rate_failed_auth_per_min, 60)
    if wait is not None:
        return _failed_auth_limit(wait)
    return ApiError(401, "unauthorized", "send a valid API key as 'Authorization: Bearer <key>'",
                    headers={"WWW-Authenticate": "Bearer"})


def current_tenant(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant of the presented API key, within its request rate.

    Raises:
        ApiError: 401 when the key is missing, malformed or unknown; 429 past the tenant's request
            rate, or past the failed-authentication rate of the client's address.
    """
    settings, limiter = services.settings, services.limiter
    address = request.client.host if request.client else "unknown"
    wait = limiter.over("failed-auth", address, settings.rate_failed_auth_per_min, 60)
    if wait is not None:
        raise _failed_auth_limit(wait)
    tenant = services.keys.tenant_of(credentials.credentials) if credentials else None
    if tenant is None:
        raise _auth_refused(services, address)
    logs.note(tenant=tenant)
    wait = limiter.hit("requests", tenant, settings.rate_requests_per_s, 1)
    if wait is not None:
        raise too_many("rate_limited", f"more than {settings.rate_requests_per_s} requests per second; "
                       "slow down", wait)
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
