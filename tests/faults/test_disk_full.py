"""A store on a really full disk (a small tmpfs): 507 with nothing left behind, and readiness
that fails below the free-space floor. Needs permission to mount a tmpfs (root, as in CI)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.main import create_app
from tests.app.support import TestClient, auth, flush_test_db, job_body, make_settings, upload_example
from workers.engine.examples.common import ExampleInfo

pytestmark = pytest.mark.redis
MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:100]}): disk-full tests need root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free (or fewer)."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * max(free - leave, 0))
    return filler


def _leftovers(store: Path) -> list[str]:
    found = []
    for path in store.rglob("*"):
        if path.is_file() and ".locks" not in path.parts and "idempotency" not in path.parts:
            found.append(str(path.relative_to(store)))
    return sorted(found)


@pytest.fixture
def full_client(small_disk: Path) -> Iterator[TestClient]:
    flush_test_db()
    settings = make_settings(small_disk / "store", f"t{uuid.uuid4().hex[:10]}", min_free_disk_bytes=0)
    with TestClient(create_app(settings, reconcile=False)) as client:
        yield client
    flush_test_db()


def test_streamed_upload_that_fills_the_disk_is_507_and_leaves_nothing(full_client: TestClient,
                                                                     small_disk: Path) -> None:
    before = _leftovers(small_disk / "store")

    def body() -> Iterator[bytes]:  # chunked: no Content-Length to refuse up front
        yield (b'--B\r\nContent-Disposition: form-data; name="schema"\r\n\r\n'
               b'{"label": "y", "sensitive": ["s"]}\r\n--B\r\n'
               b'Content-Disposition: form-data; name="file"; filename="d.csv"\r\n\r\na,s,y\n')
        for _ in range(6):
            yield b"1,f,0\n" * (MiB // 6)
        yield b"\r\n--B--\r\n"

    response = full_client.post("/v1/datasets", content=body(), headers={
        **auth(), "Content-Type": "multipart/form-data; boundary=B"})
    assert response.status_code == 507, response.text
    assert response.json()["code"] == "insufficient_storage" and "Retry-After" in response.headers
    assert _leftovers(small_disk / "store") == before
    assert os.listdir(small_disk / "store" / ".tmp") == []


def test_submission_and_cancel_on_a_full_disk_are_507(full_client: TestClient, small_disk: Path,
                                                       adult_example: ExampleInfo) -> None:
    ids = upload_example(full_client, adult_example)
    queued = full_client.post("/v1/jobs", headers=auth(), json=job_body(ids))
    assert queued.status_code == 202
    store = small_disk / "store"
    before = _leftovers(store)
    filler = _fill(small_disk, leave=0)
    try:
        response = full_client.post("/v1/jobs", headers=auth(), json=job_body(ids))
        assert response.status_code == 507, response.text
        cancel = full_client.post(f"/v1/jobs/{queued.json()['id']}/cancel", headers=auth())
        assert cancel.status_code == 507, cancel.text
        assert "/" not in json.dumps(cancel.json()["detail"]).replace("/v1/", "")
        assert _leftovers(store) == before
        assert os.listdir(store / ".tmp") == []
    finally:
        filler.unlink()
    assert full_client.post(f"/v1/jobs/{queued.json()['id']}/cancel", headers=auth()).status_code == 202


def test_readiness_fails_below_the_free_space_floor(small_disk: Path) -> None:
    flush_test_db()
    settings = make_settings(small_disk / "store", f"t{uuid.uuid4().hex[:10]}", min_free_disk_bytes=3 * MiB)
    with TestClient(create_app(settings, reconcile=False)) as client:
        assert client.get("/readyz").status_code == 200
        filler = _fill(small_disk, leave=2 * MiB)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "floor" in ready.json()["checks"]["disk"], ready.text
        upload = client.post("/v1/datasets", headers=auth(), files={"file": ("d.csv", b"a,s,y\n1,f,0\n")},
                             data={"schema": json.dumps({"label": "y", "sensitive": ["s"]})})
        assert upload.status_code == 507, upload.text
        filler.unlink()
        assert client.get("/readyz").status_code == 200
