"""Tenants' webhook secrets: listed pairs (rotation order), the derived secret, bad settings."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from workers.notify.keys import tenant_secrets
from workers.notify.signing import new_secret, secret_bytes
from workers.settings import ServiceSettings


def test_listed_secrets_come_in_order_then_the_derived_one() -> None:
    new, old = new_secret(), new_secret()
    listed = ServiceSettings(webhook_secrets=SecretStr(f"acme:{new}, globex:{old},acme:{old}"))
    assert tenant_secrets(listed, "acme") == [new, old] and tenant_secrets(listed, "initech") == []
    master = SecretStr("m" * 40)
    both = ServiceSettings(webhook_secrets=SecretStr(f"acme:{new}"), webhook_master_secret=master)
    derived = tenant_secrets(both, "globex")
    assert len(derived) == 1 and len(secret_bytes(derived[0])) == 32
    assert tenant_secrets(both, "acme")[0] == new and tenant_secrets(both, "acme")[1] != derived[0]
    assert tenant_secrets(ServiceSettings(webhook_master_secret=master), "globex") == derived, "stable"
    other_master = tenant_secrets(ServiceSettings(webhook_master_secret=SecretStr("n" * 40)), "globex")
    assert other_master != derived


@pytest.mark.parametrize(("values", "why"), [
    ({"webhook_secrets": "acme"}, "tenant:whsec_"),
    ({"webhook_secrets": "acme:not-a-secret"}, "must start with 'whsec_'"),
    ({"webhook_secrets": "acme:whsec_c2hvcnQ="}, "at least 16 bytes"),
    ({"webhook_master_secret": "short"}, "at least 32 characters"),
])
def test_malformed_secret_settings_fail_at_start_without_echoing_them(values: dict[str, str],
                                                                     why: str) -> None:
    with pytest.raises(ValidationError, match=why) as raised:
        ServiceSettings(**values)  # type: ignore[arg-type]
    assert "not-a-secret" not in str(raised.value) and "c2hvcnQ" not in str(raised.value)
