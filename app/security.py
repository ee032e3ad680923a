"""API keys: ``Authorization: Bearer <key>`` → tenant.

Keys come from ``SOFTUNLEARN_API_KEYS`` (``tenant:key`` pairs, comma-separated) and/or the file
``SOFTUNLEARN_API_KEYS_FILE`` (one ``tenant:key`` or ``tenant:sha256:<hex>`` per line). Only the
SHA-256 of each key is kept; a presented key is hashed and compared with every known hash by
``secrets.compare_digest``, so the time taken does not depend on which key (if any) matches.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from models_store.keys import is_valid_tenant

__all__ = ["KeyRing", "hash_key"]

_HASHED = re.compile(r"^sha256:([0-9a-f]{64})$")
MIN_KEY_LENGTH = 16
"""Shorter keys are refused at start-up: they could be guessed."""


def hash_key(key: str) -> str:
    """Hex SHA-256 of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _parse_entry(entry: str, source: str) -> tuple[str, str]:
    tenant, sep, secret = entry.strip().partition(":")
    tenant = tenant.strip()
    if not sep or not secret.strip():
        raise ValueError(f"{source}: entries must look like tenant:key; got {entry.strip()[:20]!r}...")
    if not is_valid_tenant(tenant):
        raise ValueError(f"{source}: tenant {tenant[:40]!r} must match [a-z0-9][a-z0-9-]{{0,62}}")
    secret = secret.strip()
    hashed = _HASHED.match(secret)
    if hashed:
        return tenant, hashed.group(1)
    if len(secret) < MIN_KEY_LENGTH:
        raise ValueError(f"{source}: the key of tenant {tenant!r} has fewer than {MIN_KEY_LENGTH} characters")
    return tenant, hash_key(secret)


class KeyRing:
    """Known key hashes and their tenants."""

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        self._entries = [(bytes.fromhex(digest), tenant) for tenant, digest in entries]

    @classmethod
    def from_config(cls, keys: str, keys_file: Path | None) -> KeyRing:
        """Parse the environment value and the optional file.

        Raises:
            ValueError: a malformed entry (the message says which and why; never the key).
        """
        entries = [_parse_entry(e, "SOFTUNLEARN_API_KEYS") for e in keys.split(",") if e.strip()]
        if keys_file is not None:
            for line in Path(keys_file).read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    entries.append(_parse_entry(line, str(keys_file)))
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def tenant_of(self, key: str) -> str | None:
        """The tenant owning ``key``, or None; constant time over the key ring."""
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        found: str | None = None
        for digest, tenant in self._entries:
            if secrets.compare_digest(presented, digest):
                found = tenant
        return found
