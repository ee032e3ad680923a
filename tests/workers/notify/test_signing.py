"""Standard Webhooks signatures: the spec's test vector, verification and its refusals."""

from __future__ import annotations

import pytest

from workers.notify.signing import SignatureError, new_secret, secret_bytes, sign, signed_headers, verify

# The test vector of the Standard Webhooks reference libraries
# (standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py, test_sign_function).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_spec_test_vector() -> None:
    assert sign([VECTOR_SECRET], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_verify_accepts_the_vector_and_rejects_tampering() -> None:
    headers = {"Webhook-Id": VECTOR_ID, "Webhook-Timestamp": str(VECTOR_TIMESTAMP),
               "Webhook-Signature": VECTOR_SIGNATURE}
    verify(VECTOR_SECRET, VECTOR_BODY, headers, now=VECTOR_TIMESTAMP + 10)
    tampered = [
        (VECTOR_SECRET, b'{"test": 2432232315}', headers),
        (VECTOR_SECRET, VECTOR_BODY, {**headers, "Webhook-Id": "msg_other"}),
        (VECTOR_SECRET, VECTOR_BODY, {**headers, "Webhook-Timestamp": str(VECTOR_TIMESTAMP + 1)}),
        (new_secret(), VECTOR_BODY, headers),
        (VECTOR_SECRET, VECTOR_BODY, {**headers, "Webhook-Signature": "v2," + VECTOR_SIGNATURE[3:]}),
        (VECTOR_SECRET, VECTOR_BODY, {k: v for k, v in headers.items() if k != "Webhook-Signature"}),
    ]
    for secret, body, changed in tampered:
        with pytest.raises(SignatureError):
            verify(secret, body, changed, now=VECTOR_TIMESTAMP + 10)


def test_verify_rejects_old_and_future_timestamps() -> None:
    headers = signed_headers([VECTOR_SECRET], VECTOR_ID, VECTOR_BODY, timestamp=VECTOR_TIMESTAMP)
    verify(VECTOR_SECRET, VECTOR_BODY, headers, now=VECTOR_TIMESTAMP + 299)
    for now in (VECTOR_TIMESTAMP + 301, VECTOR_TIMESTAMP - 301):
        with pytest.raises(SignatureError, match="too far"):
            verify(VECTOR_SECRET, VECTOR_BODY, headers, now=now)


def test_every_secret_signs_during_a_rotation() -> None:
    old, new = new_secret(), new_secret()
    headers = signed_headers([new, old], "msg_1", b"{}")
    assert len(headers["webhook-signature"].split()) == 2
    verify(old, b"{}", headers)
    verify(new, b"{}", headers)


@pytest.mark.parametrize("bad", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_c2hvcnQ="])
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        secret_bytes(bad)
