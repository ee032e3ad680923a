"""``/v1/webhooks``: what a tenant needs to verify the webhooks of its jobs."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ServicesDep, TenantDep
from app.errors import ApiError
from app.routes.problems import V1_COMMON, problems
from app.schemas import WebhookSecret
from workers.notify.keys import NOT_CONFIGURED, tenant_secrets

__all__ = ["router"]

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=V1_COMMON)


@router.get("/secret", response_model=WebhookSecret, responses=problems(404))
def get_webhook_secret(services: ServicesDep, tenant: TenantDep) -> WebhookSecret:
    """The secret that signs this tenant's webhook events (``webhook-signature``, Standard
    Webhooks); 404 ``webhook_not_configured`` when the operator has set none."""
    secrets = tenant_secrets(services.settings, tenant)
    if not secrets:
        raise ApiError(404, "webhook_not_configured", NOT_CONFIGURED)
    return WebhookSecret(secret=secrets[0])
