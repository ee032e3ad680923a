"""Standard Webhooks signatures (https://www.standardwebhooks.com, symmetric ``v1``).

The signed content is ``f"{webhook-id}.{webhook-timestamp}.{body}"``; the signature is
``v1,`` + base64(HMAC-SHA256(secret bytes, content)), where a secret is written ``whsec_`` +
base64 of its bytes. Several signatures (one per secret, during a rotation) are separated by
spaces in one ``webhook-signature`` header; a receiver accepts the message when any matches.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

__all__ = ["SECRET_PREFIX", "SignatureError", "new_secret", "secret_bytes", "sign", "signed_headers",
           "verify"]

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 16
DEFAULT_TOLERANCE_S = 300
"""A message whose timestamp is further than this from the receiver's clock is refused (replays)."""


class SignatureError(ValueError):
    """A webhook message failed verification (missing header, stale timestamp, no matching signature)."""


def new_secret(n_bytes: int = 32) -> str:
    """A fresh random secret, ``whsec_`` + base64 of ``n_bytes`` random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode("ascii")


def secret_bytes(secret: str) -> bytes:
    """The key bytes of a ``whsec_...`` secret.

    Raises:
        ValueError: not ``whsec_`` + base64 of at least 16 bytes.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret must be whsec_ followed by base64") from exc
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"a webhook secret must hold at least {MIN_SECRET_BYTES} bytes")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    content = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, content, hashlib.sha256).digest()


def sign(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,<base64>`` per secret, space-separated."""
    return " ".join("v1," + base64.b64encode(_signature(secret_bytes(s), msg_id, timestamp, body)).decode()
                    for s in secrets_)


def signed_headers(secrets_: Sequence[str], msg_id: str, body: bytes, timestamp: int | None = None
                   ) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (timestamp: now, unix seconds)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(secrets_, msg_id, ts, body)}


def verify(secret: str, body: bytes, headers: Mapping[str, str], *,
           tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> None:
    """Check a received message; what a receiver runs on the raw body before trusting it.

    Raises:
        SignatureError: a header is missing or malformed, the timestamp is more than
            ``tolerance_s`` away from ``now``, or no ``v1`` signature matches ``secret``.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lowered.get(h) for h in ("webhook-id", "webhook-timestamp",
                                                          "webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not stamp.isdigit():
        raise SignatureError("webhook-timestamp is not unix seconds")
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        raise SignatureError("webhook-timestamp is too far from now (a replay?)")
    expected = _signature(secret_bytes(secret), msg_id, int(stamp), body)
    for candidate in signatures.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(given, expected):
            return
    raise SignatureError("no signature matches the secret")
