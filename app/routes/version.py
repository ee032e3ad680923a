"""``GET /v1/version``: which SoftUnlearn answers, so a client can check it speaks its API."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import TenantDep
from app.routes.problems import V1_COMMON
from app.schemas import VersionPublic
from app.version import API_VERSION, __version__

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["operations"], responses=V1_COMMON)


@router.get("/version", response_model=VersionPublic)
def get_version(_tenant: TenantDep) -> VersionPublic:
    """The service's package version and API version (``softunlearn --version`` prints the same
    for the installed client)."""
    return VersionPublic(version=__version__, api_version=API_VERSION)
