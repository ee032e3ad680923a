"""Bounded work per request against a real ``softunlearn serve``: streamed body caps, body-read
timeouts, concurrency limits, staging cleanup and client disconnects."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.support import KEY_A, auth, flush_test_db, make_settings
from tests.faults.serving import Server, raw_request, read_status, serve
from workers.settings import ServiceSettings

pytestmark = [pytest.mark.redis]

LIMITS = {"SOFTUNLEARN_BODY_IDLE_TIMEOUT_S": "1.5", "SOFTUNLEARN_MAX_CONCURRENT_UPLOADS": "2",
          "SOFTUNLEARN_RATE_REQUESTS_PER_S": "0"}


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceSettings]:
    flush_test_db()
    yield make_settings(tmp_path_factory.mktemp("limits") / "store", f"t{uuid.uuid4().hex[:10]}")
    flush_test_db()


@pytest.fixture(scope="module")
def server(module_settings: ServiceSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(module_settings, tmp_path_factory.mktemp("logs") / "serve.log", **LIMITS) as running:
        yield running


def _staging(settings: ServiceSettings) -> list[str]:
    return sorted(os.listdir(Path(settings.store) / ".tmp"))


def _wait_no_staging(settings: ServiceSettings, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while _staging(settings) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _staging(settings)


def _upload_head(port: int, length: int, boundary: str = "b0undary") -> str:
    return (f"POST /v1/datasets HTTP/1.1\nHost: 127.0.0.1:{port}\nAuthorization: Bearer {KEY_A}\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\nContent-Length: {length}\n")


def _file_part(boundary: str = "b0undary") -> bytes:
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n'
            "Content-Type: text/csv\r\n\r\n").encode() + b"a,b,y\n" * 1000


def test_chunked_json_body_is_capped_while_streaming(server: Server) -> None:
    """A chunked 64 MiB body to POST /v1/jobs is refused once past the 1 MiB cap, not read whole."""
    rss_before = server.rss_mb()

    def chunks() -> Iterator[bytes]:
        yield b'{"model_id": "'
        for _ in range(64):
            yield b"x" * (1 << 20)

    started = time.monotonic()
    response = httpx.post(f"{server.url}/v1/jobs", content=chunks(), timeout=30,
                          headers={**auth(), "Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "body_too_large", response.text
    assert time.monotonic() - started < 20
    assert server.rss_mb() - rss_before < 60, "the body was buffered"


def test_lying_content_length_times_out_and_keeps_nothing(server: Server,
                                                          module_settings: ServiceSettings) -> None:
    """A body shorter than its Content-Length is refused (408) after the idle timeout; its
    staging file is removed."""
    part = _file_part()
    sock = raw_request(server.port, _upload_head(server.port, len(part) + 100_000), part)
    with sock:
        status, text = read_status(sock)
    assert status == 408 and "body_timeout" in text, text
    assert _wait_no_staging(module_settings) == []
    assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200


def test_concurrent_uploads_past_the_limit_get_503(server: Server, module_settings: ServiceSettings) -> None:
    """With 2 uploads stalled, a third is answered 503 + Retry-After at once, /healthz still
    answers, and when the stalled ones time out nothing is left in staging."""
    part = _file_part()
    stalled = [raw_request(server.port, _upload_head(server.port, len(part) + 10**6), part) for _ in range(2)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        third = httpx.post(f"{server.url}/v1/datasets", headers=auth(), timeout=10, files={
            "file": ("d.csv", b"a,y\n1,0\n")}, data={"schema": json.dumps({"label": "y"})})
        assert third.status_code == 503 and third.json()["code"] == "busy", third.text
        assert int(third.headers["Retry-After"]) >= 1
        assert time.monotonic() - started < 2
        assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
        for sock in stalled:
            assert read_status(sock)[0] == 408
    finally:
        for sock in stalled:
            sock.close()
    assert _wait_no_staging(module_settings) == []
    after = httpx.post(f"{server.url}/v1/datasets", headers=auth(), timeout=10,
                       files={"file": ("d.csv", b"a,y\n1,0\n")}, data={"schema": json.dumps({"label": "y"})})
    assert after.status_code != 503, after.text


def test_client_disconnect_is_not_an_error(server: Server, module_settings: ServiceSettings) -> None:
    """A client that hangs up mid-upload leaves no staging file, no ERROR traceback and no 500."""
    part = _file_part()
    sock = raw_request(server.port, _upload_head(server.port, len(part) + 10**6), part)
    time.sleep(0.3)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    assert _wait_no_staging(module_settings) == []
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert 'status="500"' not in metrics
    log = server.log_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def test_long_multipart_boundary_is_a_400(server: Server) -> None:
    boundary = "x" * 300
    body = f"--{boundary}\r\n".encode()
    response = httpx.post(f"{server.url}/v1/datasets", content=body, timeout=10, headers={
        **auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 400 and response.json()["code"] == "malformed_multipart"


def test_staging_of_a_killed_api_is_removed_at_start(tmp_path: Path) -> None:
    """An upload cut by SIGKILL of the API leaves a staging file; the next start removes it, while
    another live process's staging file is left alone."""
    settings = make_settings(tmp_path / "store", f"t{uuid.uuid4().hex[:10]}")
    from models_store import LocalStore

    live = LocalStore(settings.store)
    with live.stage() as mine:
        mine.write(b"in progress")
        with serve(settings, tmp_path / "a.log", **LIMITS) as first:
            part = _file_part()
            sock = raw_request(first.port, _upload_head(first.port, len(part) + 10**6), part)
            deadline = time.monotonic() + 10
            while len(_staging(settings)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(_staging(settings)) == 2
            os.kill(first.process.pid, signal.SIGKILL)
            first.process.wait()
            sock.close()
        assert len(_staging(settings)) == 2  # nobody cleaned up after the kill
        with serve(settings, tmp_path / "b.log", **LIMITS):
            assert _staging(settings) == [mine.path.name]
