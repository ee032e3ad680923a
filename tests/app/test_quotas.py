"""Per-tenant quotas and rate limits: 429 + Retry-After, per tenant, shared through Redis."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from tests.app.support import KEY_B, TestClient, auth, flush_test_db, job_body, make_settings, upload_example
from tests.s3_support import on_s3
from workers.engine.examples.common import ExampleInfo

pytestmark = pytest.mark.redis
TINY_CSV = b"a,s,y\n1,f,0\n2,m,1\n"
SCHEMA = json.dumps({"label": "y", "sensitive": ["s"]})


@contextmanager
def limited_client(tmp_path: Path, **limits: Any) -> Iterator[TestClient]:
    """A client on an app with the given quota/rate settings (the rest as in the other tests)."""
    flush_test_db()
    settings = make_settings(tmp_path / "store", f"t{uuid.uuid4().hex[:10]}", **limits)
    with TestClient(create_app(settings, reconcile=False)) as client:
        yield client
    flush_test_db()


def _upload_csv(client: TestClient, key: str | None = None) -> Any:
    return client.post("/v1/datasets", headers=auth(key) if key else auth(),
                       files={"file": ("d.csv", TINY_CSV)}, data={"schema": SCHEMA})


def _assert_429(response: Any, code: str) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == code
    assert int(response.headers["Retry-After"]) >= 1


def _fresh_minute(needed_s: float = 15.0) -> None:
    """Wait for the next minute when less than ``needed_s`` of this one is left: the limits are
    fixed one-minute windows, and a test whose requests straddle a boundary sees the count reset."""
    left = 60.0 - time.time() % 60.0
    if left < needed_s:
        time.sleep(left + 0.05)


def test_failed_auth_is_limited_per_address_even_for_a_valid_key_afterwards(tmp_path: Path) -> None:
    with limited_client(tmp_path, rate_failed_auth_per_min=5) as client:
        _fresh_minute()
        wrong = {"Authorization": "Bearer wrong-key-0123456789"}
        statuses = [client.get("/v1/jobs", headers=wrong).status_code for _ in range(8)]
        assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 3, statuses
        _assert_429(client.get("/v1/jobs", headers=wrong), "too_many_failed_auth")
        _assert_429(client.get("/v1/jobs", headers=auth()), "too_many_failed_auth")


@pytest.mark.skipif(on_s3(), reason="the rate limit is Redis's; on the S3 run's slower requests the "
                    "30-request burst can outlast the one-second windows it counts")
def test_request_rate_is_per_tenant(tmp_path: Path) -> None:
    with limited_client(tmp_path, rate_requests_per_s=10) as client:
        started = time.monotonic()
        responses = [client.get("/v1/jobs", headers=auth()) for _ in range(30)]
        windows = math.ceil(time.monotonic() - started) + 1  # one-second windows the burst touched
        statuses = [r.status_code for r in responses]
        assert statuses[0] == 200 and statuses.count(200) <= 10 * windows < 30, (statuses, windows)
        _assert_429(next(r for r in responses if r.status_code == 429), "rate_limited")
        # Another tenant is not slowed down by the first one's burst.
        assert client.get("/v1/jobs", headers=auth(KEY_B)).status_code == 200


def test_uploads_per_minute(tmp_path: Path) -> None:
    with limited_client(tmp_path, rate_uploads_per_min=3) as client:
        _fresh_minute()
        statuses = [_upload_csv(client).status_code for _ in range(3)]
        assert statuses == [201] * 3
        _assert_429(_upload_csv(client), "upload_rate_limited")
        assert _upload_csv(client, KEY_B).status_code == 201


def test_stored_bytes_quota(tmp_path: Path) -> None:
    """What is stored counts: a 1 kB file fits a 2 kB quota once, not twice; deleting frees it."""
    kilobyte = b"a,s,y\n" + b"1,f,0\n" * 166  # 1002 bytes

    def upload() -> Any:
        return client.post("/v1/datasets", headers=auth(), files={"file": ("d.csv", kilobyte)},
                           data={"schema": SCHEMA})

    with limited_client(tmp_path, quota_stored_bytes=2000) as client:
        first = upload()
        assert first.status_code == 201, first.text
        second = upload()
        _assert_429(second, "storage_quota_exceeded")
        assert "DELETE" in second.json()["detail"]
        parts = [b'--B\r\nContent-Disposition: form-data; name="schema"\r\n\r\n', SCHEMA.encode(),
                 b'\r\n--B\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n\r\n',
                 kilobyte, b"\r\n--B--\r\n"]
        chunked = client.post("/v1/datasets", content=iter(parts),
                              headers={**auth(), "Content-Type": "multipart/form-data; boundary=B"})
        _assert_429(chunked, "storage_quota_exceeded")  # no Content-Length: refused on the size received
        assert client.delete(f"/v1/datasets/{first.json()['id']}", headers=auth()).status_code == 204
        assert upload().status_code == 201


def test_jobs_in_flight_quota(tmp_path: Path, adult_example: ExampleInfo) -> None:
    with limited_client(tmp_path, quota_jobs_in_flight=2) as client:
        ids = upload_example(client, adult_example)
        keyed = {**auth(), "Idempotency-Key": "first"}
        created = [client.post("/v1/jobs", headers=h, json=job_body(ids)) for h in (keyed, auth())]
        assert [r.status_code for r in created] == [202, 202]
        _assert_429(client.post("/v1/jobs", headers=auth(), json=job_body(ids)), "job_quota_exceeded")
        # A retry of an accepted submission (same Idempotency-Key) is not a new job: not refused.
        retry = client.post("/v1/jobs", headers=keyed, json=job_body(ids))
        assert retry.status_code == 202 and retry.json()["id"] == created[0].json()["id"]
        cancel = client.post(f"/v1/jobs/{created[0].json()['id']}/cancel", headers=auth())
        assert cancel.status_code == 202 and cancel.json()["status"] == "canceled"
        assert client.post("/v1/jobs", headers=auth(), json=job_body(ids)).status_code == 202
