"""MLflow hand-off against a real ``mlflow server`` (sqlite backend, file artifact root) started
here: one real job through the API and a real worker process, then the server queried with
MlflowClient; MLflow unreachable; a tracking URI the operator did not allow.

The server comes from ``.venv-mlflow-server`` (``scripts/mlflow-server-venv.sh``) or
``SOFTUNLEARN_TEST_MLFLOW_SERVER`` (an ``mlflow`` executable); the client is the ``[mlflow]``
extra. Either missing skips the tests that need it, saying so.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from models_store import LocalStore, Records
from tests.app.support import (
    ROOT,
    TestClient,
    auth,
    flush_test_db,
    job_body,
    make_settings,
    upload_example,
    wait_for,
    worker_env,
)
from workers.demo import stop_process
from workers.engine.examples.common import ExampleInfo
from workers.handoff.mlflow import JOB_TAG, PARENT_TAG, REPORT_TAG, TENANT_TAG, hand_off_mlflow
from workers.settings import ServiceSettings

EXPERIMENT, REGISTERED_MODEL = "softunlearn-tests", "adult-income"
FAST = {"robustness": False, "n_boot": 200, "frontier": {"reductions": [], "k_fractions": []}}
SERVER_START_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_executable() -> str:
    pytest.importorskip("mlflow", reason="no MLflow client installed (pip install softunlearn[mlflow])")
    configured = os.environ.get("SOFTUNLEARN_TEST_MLFLOW_SERVER")
    candidate = Path(configured) if configured else ROOT / ".venv-mlflow-server" / "bin" / "mlflow"
    if not candidate.is_file():
        pytest.skip(f"no mlflow server at {candidate}: run scripts/mlflow-server-venv.sh "
                    "or set SOFTUNLEARN_TEST_MLFLOW_SERVER")
    return str(candidate)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@dataclass
class Server:
    """A started ``mlflow server``; :meth:`url` waits until it answers its health check."""

    process: subprocess.Popen[bytes]
    address: str
    log: Path

    def url(self) -> str:
        """The tracking URI, once ``/health`` answers (the server starts in about 8 s)."""
        deadline = time.monotonic() + SERVER_START_S
        while not _healthy(self.address):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not come up: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return self.address


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``mlflow server`` on a free port: sqlite backend, artifacts proxied to a folder. It is
    not waited for here, so the job's uploads and worker start overlap its start."""
    executable = _server_executable()
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [executable, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    # No telemetry, and no job runner (a second process the registry does not need).
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                   start_new_session=True)  # its uvicorn child shares its group
    try:
        yield Server(process, f"http://127.0.0.1:{port}", root / "server.log")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=1)  # a throwaway server: no need to wait out a graceful stop
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextmanager
def _worker(settings: ServiceSettings, log: Path, **extra: str) -> Iterator[None]:
    """A real RQ worker with the MLflow settings in its environment."""
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "workers.cli.main", "worker"], cwd=ROOT,
                                   env=worker_env(settings, **extra), stdout=handle, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            stop_process(process, timeout=20)


@dataclass(frozen=True)
class FinishedJob:
    """The job run once for this module, and where its store lies."""

    job: dict[str, Any]
    report: dict[str, Any]
    model_sha256: str
    settings: ServiceSettings


@pytest.fixture(scope="module")
def finished_job(mlflow_server: Server, adult_example: ExampleInfo,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedJob]:
    """One real correction through the API and a worker process, naming this module's server."""
    root = tmp_path_factory.mktemp("mlflow-job")
    flush_test_db()
    uri = mlflow_server.address
    settings = make_settings(root / "store", f"t{uuid.uuid4().hex[:10]}", mlflow_allowed_tracking_uris=uri)
    with TestClient(create_app(settings, reconcile=False)) as client, \
            _worker(settings, root / "worker.log", SOFTUNLEARN_MLFLOW_ALLOWED_TRACKING_URIS=uri):
        ids = upload_example(client, adult_example)
        model_sha256 = client.get(f"/v1/models/{ids['model_id']}", headers=auth()).json()["sha256"]
        mlflow = {"tracking_uri": mlflow_server.url(), "experiment": EXPERIMENT,
                  "registered_model": REGISTERED_MODEL}
        created = client.post("/v1/jobs", headers=auth(), json=job_body(ids, evaluation=FAST, mlflow=mlflow))
        assert created.status_code == 202, created.text
        job = wait_for(client, created.json()["id"], ("succeeded", "failed", "canceled"), timeout=60)
        assert job["status"] == "succeeded", (job, (root / "worker.log").read_text()[-3000:])
        report = client.get(f"/v1/jobs/{job['id']}/report", headers=auth()).json()
    yield FinishedJob(job=job, report=report, model_sha256=model_sha256, settings=settings)
    flush_test_db()


def test_the_job_registers_a_version_with_its_lineage(finished_job: FinishedJob,
                                                      mlflow_server: Server) -> None:
    from mlflow import MlflowClient

    job, report = finished_job.job, finished_job.report
    handoff = job["handoffs"]["mlflow"]
    assert handoff["status"] == "registered" and handoff["warning"] is None, handoff
    assert handoff["registered_model"] == REGISTERED_MODEL and handoff["model_version"] == "1"

    uri = mlflow_server.url()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert [v.version for v in versions] == ["1"]
    tags = versions[0].tags
    assert tags[PARENT_TAG] == finished_job.model_sha256 == report["provenance"]["model_sha256"]
    assert tags[JOB_TAG] == job["id"] and tags[TENANT_TAG] == "acme"
    assert tags[REPORT_TAG] == report["provenance"]["report_id"]
    assert versions[0].run_id == handoff["run_id"] and str(versions[0].source).endswith("/model")

    run = client.get_run(handoff["run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == handoff["experiment_id"]
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    params, metrics = run.data.params, run.data.metrics
    assert params["objective.metric"] == "demographic_parity" and params["objective.reduction"] == "0.9"
    assert params["method.name"] == "newton" and params["evaluation.n_boot"] == "200"
    assert metrics["after.eval.accuracy"] == pytest.approx(report["after"]["eval"]["accuracy"], abs=1e-12)
    assert metrics["before.eval.demographic_parity_difference"] == pytest.approx(
        report["before"]["eval"]["demographic_parity_difference"], abs=1e-12)
    change = report["confidence"]["eval"]["accuracy"]["change"]
    assert metrics["after.eval.accuracy.change_low"] == pytest.approx(change["low"], abs=1e-12)
    assert metrics["after.eval.accuracy.change_high"] == pytest.approx(change["high"], abs=1e-12)
    listed = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "report.html", "weights.parquet", "model"} <= listed
    assert [f.path for f in client.list_artifacts(run.info.run_id, "model")] == ["model/model.safetensors"]
    model = Path(client.download_artifacts(run.info.run_id, "model/model.safetensors"))
    job_store = Records(LocalStore(finished_job.settings.store))
    published_key = job_store.output_key("acme", job["id"], "model.safetensors")
    with job_store.store.local_path(published_key) as published:
        assert model.read_bytes() == published.read_bytes()

    # A re-run of the job function finds the version tagged with the job id: no second version.
    record = job_store.get_job("acme", job["id"])
    assert record is not None
    again = hand_off_mlflow(job_store, record, finished_job.settings)
    assert again is not None and again.status == "registered" and again.model_version == "1"
    assert again.run_id == handoff["run_id"]
    assert len(client.search_model_versions(f"name = '{REGISTERED_MODEL}'")) == 1
    assert len(client.search_runs([run.info.experiment_id])) == 1

    # One that finds the job's run but no version of its model (a crash in between) reuses the run.
    mlflow = {**record.request["mlflow"], "registered_model": "adult-income-b"}
    elsewhere = record.model_copy(update={"request": {**record.request, "mlflow": mlflow}})
    resumed = hand_off_mlflow(job_store, elsewhere, finished_job.settings)
    assert resumed is not None and resumed.status == "registered" and resumed.model_version == "1"
    assert resumed.run_id == handoff["run_id"] and len(client.search_runs([run.info.experiment_id])) == 1
    assert client.get_model_version("adult-income-b", "1").run_id == handoff["run_id"]


@contextmanager
def _unreachable_server(kind: str) -> Iterator[str]:
    """A tracking URI that refuses connections (a closed port) or accepts them and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        if kind == "silent":
            silent.listen(8)  # the kernel completes connections that nobody reads
            yield f"http://127.0.0.1:{silent.getsockname()[1]}"
            return
        port = silent.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_mlflow_unreachable_is_a_warning_on_a_succeeded_job(finished_job: FinishedJob, tmp_path: Path,
                                                            kind: str) -> None:
    store = tmp_path / "store"
    shutil.copytree(finished_job.settings.store, store)  # the shared job's record stays as it was
    records = Records(LocalStore(store))
    job_id = finished_job.job["id"]
    with _unreachable_server(kind) as uri:
        settings = finished_job.settings.model_copy(update={
            "store": store, "mlflow_allowed_tracking_uris": uri, "mlflow_max_retries": 1,
            "mlflow_timeout_s": 1})

        def point_there(record: Any) -> Any:
            record.request = {**record.request, "mlflow": {**record.request["mlflow"], "tracking_uri": uri}}
            return record

        record = records.update_job("acme", job_id, point_there)
        started = time.monotonic()
        outcome = hand_off_mlflow(records, record, settings)
        elapsed = time.monotonic() - started
    assert elapsed < 10, f"the hand-off took {elapsed:.1f} s against a 1 s timeout and 1 retry"
    assert outcome is not None and outcome.status == "failed" and outcome.warning is not None
    assert outcome.warning.code == "mlflow_unreachable", outcome.warning
    assert "while searching model versions" in outcome.warning.message, outcome.warning
    with TestClient(create_app(settings, reconcile=False)) as client:
        shown = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert shown["status"] == "succeeded"
    assert shown["handoffs"]["mlflow"]["status"] == "failed"
    assert shown["handoffs"]["mlflow"]["warning"]["code"] == "mlflow_unreachable"
    assert shown["handoffs"]["mlflow"]["model_version"] is None


def test_a_uri_no_longer_allowed_or_no_client_is_recorded(finished_job: FinishedJob, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    shutil.copytree(finished_job.settings.store, store)
    records = Records(LocalStore(store))
    record = records.get_job("acme", finished_job.job["id"])
    assert record is not None
    closed = finished_job.settings.model_copy(update={"store": store, "mlflow_allowed_tracking_uris": ""})
    refused = hand_off_mlflow(records, record, closed)
    assert refused is not None and refused.status == "failed" and refused.warning is not None
    assert refused.warning.code == "mlflow_not_allowed"
    assert "SOFTUNLEARN_MLFLOW_ALLOWED_TRACKING_URIS" in refused.warning.message

    monkeypatch.setitem(sys.modules, "mlflow", None)  # what a worker without the [mlflow] extra sees
    skipped = hand_off_mlflow(records, record, finished_job.settings.model_copy(update={"store": store}))
    assert skipped is not None and skipped.status == "skipped" and skipped.warning is not None
    assert skipped.warning.code == "mlflow_not_installed"
    shown = records.get_job("acme", record.id)
    assert shown is not None and shown.status == "succeeded" and shown.handoffs["mlflow"] == skipped


@pytest.mark.parametrize(("mlflow", "field", "says"), [
    ({"tracking_uri": "http://169.254.169.254/latest", "registered_model": "m"}, "mlflow.tracking_uri",
     "SOFTUNLEARN_MLFLOW_ALLOWED_TRACKING_URIS"),
    ({"tracking_uri": "http://mlflow.internal:5000/", "registered_model": "m"}, "mlflow.tracking_uri",
     "SOFTUNLEARN_MLFLOW_ALLOWED_TRACKING_URIS"),  # the allowed one with a trailing slash: not exact
    ({"registered_model": "m"}, "mlflow.tracking_uri", "SOFTUNLEARN_MLFLOW_TENANTS"),
    ({"tracking_uri": "http://mlflow.internal:5000"}, "mlflow.registered_model", "registered model"),
    ({"tracking_uri": "http://mlflow.internal:5000", "registered_model": "a name; DROP"},
     "mlflow.registered_model", "pattern"),
    ({"tracking_uri": "http://mlflow.internal:5000", "registered_model": "m", "experiment": "e" * 251},
     "mlflow.experiment", "pattern"),
    ({"tracking_uri": "http://mlflow.internal:5000", "registered_model": "m", "secret": 1},
     "mlflow.secret", ""),
])
def test_mlflow_configuration_is_checked_at_submission(tmp_path: Path, mlflow: dict[str, Any], field: str,
                                                        says: str) -> None:
    settings = make_settings(tmp_path / "store", f"t{uuid.uuid4().hex[:10]}",
                             mlflow_allowed_tracking_uris="http://mlflow.internal:5000")
    with TestClient(create_app(settings, reconcile=False)) as client:
        ids = {"model_id": str(uuid.uuid4()), "train_dataset_id": str(uuid.uuid4()),
               "audit_dataset_id": str(uuid.uuid4())}
        answer = client.post("/v1/jobs", headers=auth(), json=job_body(ids, mlflow=mlflow))
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert [e["field"] for e in problem["errors"]] == [field], problem
    assert says in problem["errors"][0]["message"], problem
