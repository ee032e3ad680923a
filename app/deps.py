"""Dependencies: the service container and the authenticated tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis

from app.errors import ApiError
from app.metrics import Metrics
from app.security import KeyRing
from models_store import Records, Store
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


def get_services(request: Request) -> Services:
    """The app's service container."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def current_tenant(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant of the presented API key.

    Raises:
        ApiError: 401 when the key is missing, malformed or unknown.
    """
    tenant = services.keys.tenant_of(credentials.credentials) if credentials else None
    if tenant is None:
        raise ApiError(401, "unauthorized", "send a valid API key as 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
