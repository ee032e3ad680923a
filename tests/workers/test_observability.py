"""Structured logs and job metrics of a real ``softunlearn serve`` and a real ``softunlearn worker``.

One rig for the module: the API and a worker as subprocesses (JSON logs, the default), the small
synthetic example uploaded once with two architectures, two jobs sent with an ``X-Request-ID``:
one that succeeds and one whose rebuild misses the reference logits, so that the worker fails it
(``invalid_input``). /metrics is scraped before and after.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.app.support import (
    KEY_A,
    ROOT,
    auth,
    flush_test_db,
    job_body,
    make_settings,
    worker_env,
    worker_process,
)
from tests.engine.small_data import SmallExample, write_small_example
from tests.faults.serving import Server, serve
from tests.private_redis import free_port
from workers.demo import stop_process

SCHEMA = {"label": "good", "sensitive": ["age_group"], "reference_logits": "reference_logits"}
OBJECTIVE = {"metric": "demographic_parity", "sensitive_attribute": "age_group", "reduction": 0.9,
             "utility_tolerance": 0.0}
WRONG_KEY = "not-a-key-but-a-secret-0123456789"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Rig:
    """What the module's run left: logs, jobs, request ids and two scrapes."""

    server: Server
    worker_log: Path
    jobs: dict[str, dict[str, Any]]
    request_ids: dict[str, str]
    before: Samples
    after: Samples

    def lines(self, which: str) -> list[dict[str, Any]]:
        """Every line of the API's (``api``) or the worker's (``worker``) log, each parsed as JSON."""
        path = self.server.log if which == "api" else self.worker_log
        parsed = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AssertionError(f"{which} log line {number} is not JSON: {line[:300]!r}") from exc
        return parsed


def _samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _upload(client: httpx.Client, example: SmallExample) -> dict[str, dict[str, str]]:
    """The example's splits once, its checkpoint twice: with its own activation and a wrong one."""
    datasets = {}
    for split in ("train", "audit", "eval"):
        with open(example.root / f"{split}.parquet", "rb") as handle:
            response = client.post("/v1/datasets", headers=auth(), data={"schema": json.dumps(SCHEMA)},
                                   files={"file": (f"{split}.parquet", handle)})
        assert response.status_code == 201, response.text
        datasets[f"{split}_dataset_id"] = response.json()["id"]
    arch = json.loads((example.root / "arch.json").read_text())
    ids = {}
    for name, activation in (("ok", "tanh"), ("bad", "relu")):
        with open(example.root / "model.safetensors", "rb") as handle:
            response = client.post("/v1/models", headers=auth(),
                                   data={"architecture": json.dumps({**arch, "activation": activation})},
                                   files={"file": ("model.safetensors", handle)})
        assert response.status_code == 201, response.text
        ids[name] = {"model_id": response.json()["id"], **datasets}
    return ids


def _wait(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("observability")
    flush_test_db()
    settings = make_settings(root / "store", f"t{uuid.uuid4().hex[:10]}")
    example = write_small_example(root / "tanh", activation="tanh", reference_logits=True)
    with serve(settings, root / "api.log") as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        ids = _upload(client, example)
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {WRONG_KEY}"}).status_code == 401
        before = _samples(client.get("/metrics").text)
        with worker_process(settings, root / "worker.log"):
            request_ids, jobs = {}, {}
            for name in ("ok", "bad"):
                request_ids[name] = f"obs-{name}-{uuid.uuid4().hex[:8]}"
                response = client.post("/v1/jobs", json=job_body(ids[name], objective=OBJECTIVE),
                                       headers={**auth(), "X-Request-ID": request_ids[name]})
                assert response.status_code == 202, response.text
                assert response.headers["x-request-id"] == request_ids[name]
                jobs[name] = response.json()
            for name, job in jobs.items():
                jobs[name] = _wait(client, job["id"])
            after = _samples(client.get("/metrics").text)
        yield Rig(server, root / "worker.log", jobs, request_ids, before, after)
    flush_test_db()


def test_every_line_of_both_logs_is_json_with_the_common_fields(rig: Rig) -> None:
    for which in ("api", "worker"):
        lines = rig.lines(which)
        assert lines, which
        for line in lines:
            assert {"ts", "level", "logger", "event", "message"} <= set(line), line
            assert line["ts"].endswith("Z") and len(line["ts"]) == len("2026-01-01T00:00:00.000Z"), line
            assert line["event"] and line["event"].replace("_", "").isalnum(), line
    worker = rig.lines("worker")
    assert any(line["event"] == "worker_started" for line in worker)
    assert not any("Job OK" in line["message"] for line in worker), "RQ's misleading line is dropped"


def test_the_request_line_and_the_job_lines_share_the_request_id(rig: Rig) -> None:
    assert rig.jobs["ok"]["status"] == "succeeded", (rig.jobs["ok"], rig.worker_log.read_text()[-3000:])
    job_id, request_id = rig.jobs["ok"]["id"], rig.request_ids["ok"]
    requests = [line for line in rig.lines("api") if line["event"] == "request"
                and line.get("request_id") == request_id]
    assert len(requests) == 1, requests
    access = requests[0]
    assert (access["method"], access["route"], access["status"]) == ("POST", "/v1/jobs", 202), access
    assert access["tenant"] == "acme" and access["duration_s"] >= 0, access
    by_job = [line for line in rig.lines("worker") if line.get("job_id") == job_id]
    finished = [line for line in by_job if line["event"] == "job_finished"]
    assert len(finished) == 1, by_job
    assert finished[0]["request_id"] == request_id and finished[0]["status"] == "succeeded", finished
    assert finished[0]["tenant"] == "acme" and finished[0]["duration_s"] > 0, finished
    started = [line for line in by_job if line["event"] == "job_started"]
    assert len(started) == 1 and started[0]["request_id"] == request_id, started
    stages = {line["stage"]: line["duration_s"] for line in by_job if line["event"] == "stage_finished"}
    assert {"load", "influence", "evaluate"} <= set(stages), stages
    assert all(line["request_id"] == request_id for line in by_job if line["logger"].startswith("workers")), \
        by_job


def test_a_job_failed_by_the_worker_logs_its_code_and_message(rig: Rig) -> None:
    job = rig.jobs["bad"]
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input", job
    failed = [line for line in rig.lines("worker") if line["event"] == "job_failed"]
    assert len(failed) == 1, failed
    line = failed[0]
    assert line["level"] == "WARNING" and line["code"] == "invalid_input", line
    assert line["job_id"] == job["id"] and line["request_id"] == rig.request_ids["bad"], line
    assert "does not reproduce the reference logits" in line["message"], line
    assert not any(other["event"] == "job_finished" and other.get("job_id") == job["id"]
                   for other in rig.lines("worker"))


def test_no_api_key_appears_in_any_log(rig: Rig) -> None:
    for text in (rig.server.log_text(), rig.worker_log.read_text()):
        assert KEY_A not in text and WRONG_KEY not in text
    refused = [line for line in rig.lines("api") if line["event"] == "request" and line["status"] == 401]
    assert refused and all("tenant" not in line for line in refused), refused


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_the_outcomes_stages_queues_and_workers(rig: Rig) -> None:
    before, after = rig.before, rig.after
    finished = "softunlearn_jobs_finished_total"
    for status, code in (("succeeded", "none"), ("failed", "invalid_input")):
        rise = _value(after, finished, queue="cpu", status=status, code=code) - \
            _value(before, finished, queue="cpu", status=status, code=code)
        assert rise == 1, (status, code, {k: v for k, v in after.items() if k[0] == finished})
    for stage in ("load", "influence", "evaluate"):
        assert _value(after, "softunlearn_job_stage_seconds_count", stage=stage) == 1, stage
        assert _value(after, "softunlearn_job_stage_seconds_bucket", stage=stage, le="+Inf") == 1, stage
    assert _value(after, "softunlearn_job_duration_seconds_count", queue="cpu", status="succeeded") == 1
    assert _value(after, "softunlearn_job_queue_wait_seconds_count", queue="cpu") == 2
    assert _value(after, "softunlearn_metrics_redis_up") == 1
    assert _value(after, "softunlearn_queue_depth", queue="cpu") == 0
    assert _value(after, "softunlearn_workers_alive", queue="cpu") == 1
    assert _value(before, "softunlearn_workers_alive", queue="cpu") == 0
    assert ("softunlearn_workers_alive", (("queue", "gpu"),)) in after
    assert _value(after, "softunlearn_queue_oldest_job_age_seconds", queue="cpu") == 0
    assert _value(after, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _labels in after)


def test_log_format_text_gives_plain_lines(tmp_path: Path) -> None:
    """``softunlearn serve --log-format text`` (over ``SOFTUNLEARN_LOG_FORMAT=json``) writes human lines."""
    settings = make_settings(tmp_path / "store", f"t{uuid.uuid4().hex[:10]}")
    port = free_port()
    env = worker_env(settings, SOFTUNLEARN_API_KEYS=settings.api_keys, SOFTUNLEARN_LOG_FORMAT="json")
    log = tmp_path / "api.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "workers.cli.main", "serve", "--port", str(port),
                                    "--log-format", "text"], env=env, cwd=ROOT, stdout=handle,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Request-ID": "txt-1"},
                                 timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
        finally:
            stop_process(process, timeout=15)
    lines = log.read_text().splitlines()
    request = [line for line in lines if "request_id=txt-1" in line]
    assert len(request) == 1 and " INFO    app.access request: GET /healthz 200" in request[0], lines
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
