"""Each tenant's webhook secrets, from ``SOFTUNLEARN_WEBHOOK_SECRETS`` and/or a master secret.

Listed secrets (``tenant:whsec_...`` pairs) come first, in their order; with
``SOFTUNLEARN_WEBHOOK_MASTER_SECRET`` every tenant also has a derived one,
``whsec_`` + base64(HMAC-SHA256(master, "softunlearn-webhook:" + tenant)). Every secret of a tenant
signs each message (one signature each), so a secret can be rotated without a gap; the first is
the one shown to the tenant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import TYPE_CHECKING

from workers.notify.signing import SECRET_PREFIX, secret_bytes

if TYPE_CHECKING:
    from workers.settings import ServiceSettings

__all__ = ["MIN_MASTER_LENGTH", "NOT_CONFIGURED", "check_master_secret", "parse_secrets", "tenant_secrets"]

MIN_MASTER_LENGTH = 32
_DERIVATION_LABEL = b"softunlearn-webhook:"
NOT_CONFIGURED = ("this service has no webhook secret for your tenant; the operator must set "
                  "SOFTUNLEARN_WEBHOOK_SECRETS (tenant:whsec_... pairs) or SOFTUNLEARN_WEBHOOK_MASTER_SECRET")


def parse_secrets(value: str) -> dict[str, list[str]]:
    """``tenant:whsec_...`` pairs (comma-separated) as each tenant's secrets, in order.

    Raises:
        ValueError: a malformed pair or secret (the message never quotes a secret).
    """
    found: dict[str, list[str]] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        tenant, sep, secret = entry.partition(":")
        if not sep or not tenant.strip():
            raise ValueError("SOFTUNLEARN_WEBHOOK_SECRETS: entries must look like tenant:whsec_...")
        try:
            secret_bytes(secret.strip())
        except ValueError as exc:
            raise ValueError(f"SOFTUNLEARN_WEBHOOK_SECRETS: tenant {tenant.strip()[:40]!r}: {exc}") from None
        found.setdefault(tenant.strip(), []).append(secret.strip())
    return found


def check_master_secret(value: str) -> None:
    """Refuse a master secret too short to derive secrets from.

    Raises:
        ValueError: fewer than 32 characters.
    """
    if len(value) < MIN_MASTER_LENGTH:
        raise ValueError(f"SOFTUNLEARN_WEBHOOK_MASTER_SECRET must have at least {MIN_MASTER_LENGTH} "
                         "characters")


def tenant_secrets(settings: ServiceSettings, tenant: str) -> list[str]:
    """The secrets that sign ``tenant``'s webhooks, the current one first (empty: none configured)."""
    listed = parse_secrets(settings.webhook_secrets.get_secret_value()) if settings.webhook_secrets else {}
    found = list(listed.get(tenant, []))
    if settings.webhook_master_secret is not None:
        master = settings.webhook_master_secret.get_secret_value().encode()
        derived = hmac.new(master, _DERIVATION_LABEL + tenant.encode(), hashlib.sha256).digest()
        found.append(SECRET_PREFIX + base64.b64encode(derived).decode("ascii"))
    return found
