"""``softunlearn submit`` from a fresh virtualenv holding only ``pip install softunlearn`` (no
torch), against a real ``softunlearn serve`` and a real worker process on the Adult example.

One module, one service, one real correction: the thin install is checked, the job is submitted,
followed, downloaded and gated; a re-run reuses uploads and finds the same job; a canceled job
exits 4; bad input exits 2; an unreachable service is retried, then exit 1.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.version import __version__
from tests.app.support import KEY_A, ROOT, make_settings, worker_process
from tests.faults.serving import Server, serve
from tests.private_redis import free_port
from workers.engine.examples.common import ExampleInfo

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SPEC = {"objective": {"metric": "demographic_parity", "sensitive_attribute": "sex", "reduction": 0.9,
                      "utility_tolerance": 0.0},
        "evaluation": {"robustness": False, "frontier": {"reductions": [0.5], "k_fractions": []}}}


@dataclass(frozen=True)
class ThinInstall:
    """A virtualenv with the package and its base dependencies only."""

    python: Path
    cli: Path


@pytest.fixture(scope="module")
def thin(tmp_path_factory: pytest.TempPathFactory) -> ThinInstall:
    """Build the wheel from this tree and install it, without extras, into a new virtualenv."""
    root = tmp_path_factory.mktemp("thin")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    (wheel,) = wheels.glob("softunlearn-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(wheel)],
                   check=True, capture_output=True)
    return ThinInstall(python=python, cli=venv / "bin" / "softunlearn")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real API and one real worker on a private store and queue prefix."""
    root = tmp_path_factory.mktemp("service")
    settings = make_settings(root / "store", f"t{uuid.uuid4().hex[:10]}")
    with serve(settings, root / "api.log") as server, worker_process(settings, root / "worker.log"):
        yield server


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "spec.json"
    path.write_text(json.dumps(SPEC))
    return path


@dataclass
class Run:
    code: int
    events: list[dict[str, Any]]
    stderr: str

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == kind]


def run_cli(thin: ThinInstall, *args: str, key: str = KEY_A) -> Run:
    """Run the thin install's ``softunlearn`` (stdout is a pipe: JSON lines, each must parse)."""
    env = {"PATH": "/usr/bin:/bin", "CI_SUBMIT_KEY": key, "HOME": str(thin.python.parent)}
    done = subprocess.run([str(thin.cli), *args], capture_output=True, text=True, env=env, timeout=300)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    return Run(done.returncode, events, done.stderr)


def submit_args(example: ExampleInfo, spec: Path, url: str, *extra: str) -> list[str]:
    d = example.out_dir
    return ["submit", "--url", url, "--api-key-env", "CI_SUBMIT_KEY",
            "--model", str(d / "model.safetensors"), "--arch", str(d / "arch.json"),
            "--train", str(d / "train.parquet"), "--audit", str(d / "audit.parquet"),
            "--eval", str(d / "eval.parquet"), "--schema", str(d / "schema.json"), "--spec", str(spec),
            *extra]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_thin_install_has_no_engine_and_agrees_on_the_version(thin: ThinInstall, service: Server) -> None:
    no_torch = subprocess.run([str(thin.python), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, "pip install softunlearn must not bring torch"
    shown = subprocess.run([str(thin.cli), "--version"], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == f"softunlearn {__version__} (API v1)"
    served = httpx.get(f"{service.url}/v1/version", headers={"Authorization": f"Bearer {KEY_A}"}).json()
    assert served["version"] == __version__ and served["api_version"] == "v1"
    engine = subprocess.run([str(thin.cli), "correct", "--model", "m", "--arch", "a", "--train", "t",
                             "--audit", "v", "--out", "o"], capture_output=True, text=True)
    assert engine.returncode == 2 and "pip install 'softunlearn[worker]'" in engine.stderr


@pytest.fixture(scope="module")
def submitted(thin: ThinInstall, service: Server, adult_example: ExampleInfo, spec_file: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """One real job, submitted and followed to its end by the thin client."""
    out = tmp_path_factory.mktemp("submitted") / "out"
    run = run_cli(thin, *submit_args(adult_example, spec_file, service.url, "--wait", "--out", str(out),
                                     "--gate", "eval.accuracy_change>=-0.05",
                                     "--gate", "eval.demographic_parity_difference_change<=0"))
    return run, out


def test_submit_waits_downloads_and_gates(submitted: tuple[Run, Path], adult_example: ExampleInfo) -> None:
    run, out = submitted
    assert run.code in (0, 3), run.stderr
    assert [e["role"] for e in run.of("uploaded")] == ["model", "train", "audit", "eval"]
    (job_event,) = run.of("submitted")
    assert job_event["idempotency_key"].startswith("softunlearn-submit-")
    statuses = [e["status"] for e in run.of("progress")]
    assert statuses[-1] == "succeeded" and "running" in statuses
    report = json.loads((out / "report.json").read_text())
    assert report["provenance"]["job_id"] == job_event["job_id"]
    assert sha256(out / "model.safetensors") == report["provenance"]["corrected_model_sha256"]
    assert report["provenance"]["model_sha256"] == sha256(adult_example.out_dir / "model.safetensors")
    assert (out / "weights.parquet").read_bytes()[:4] == b"PAR1"
    assert "<svg" in (out / "report.html").read_text()
    after, before = report["after"]["eval"], report["before"]["eval"]
    expected_gates = [after["accuracy"] - before["accuracy"] >= -0.05,
                      after["demographic_parity_difference"] - before["demographic_parity_difference"] <= 0]
    gates = json.loads((out / "gates.json").read_text())
    assert [row["passed"] for row in gates] == [e["passed"] for e in run.of("gate")] == expected_gates
    (result,) = run.of("result")
    expected = 0 if report["target_met"] and all(expected_gates) else 3
    assert run.code == result["exit_code"] == expected and result["target_met"] == report["target_met"]


def test_a_rerun_uploads_nothing_and_finds_the_same_job(thin: ThinInstall, service: Server,
                                                       adult_example: ExampleInfo, spec_file: Path,
                                                       submitted: tuple[Run, Path]) -> None:
    first, out = submitted
    again = run_cli(thin, *submit_args(adult_example, spec_file, service.url))
    assert again.code == 0, again.stderr
    assert [e["reused"] for e in again.of("uploaded")] == [True] * 4
    assert again.of("submitted")[0]["job_id"] == first.of("submitted")[0]["job_id"]
    job_id = first.of("submitted")[0]["job_id"]
    failing = run_cli(thin, "download", job_id, "--url", service.url, "--api-key-env", "CI_SUBMIT_KEY",
                      "--out", str(out.parent / "again"), "--gate", "eval.accuracy>=1.01")
    assert failing.code == 3 and failing.of("gate")[0]["passed"] is False
    status = run_cli(thin, "status", job_id, "--url", service.url, "--api-key-env", "CI_SUBMIT_KEY")
    assert status.code == 0 and status.of("result")[0]["job"]["status"] == "succeeded"


def test_a_canceled_job_exits_4(thin: ThinInstall, service: Server, adult_example: ExampleInfo,
                                spec_file: Path) -> None:
    queued = run_cli(thin, *submit_args(adult_example, spec_file, service.url, "--idempotency-key",
                                        f"cancel-{uuid.uuid4().hex}"))
    job_id = queued.of("submitted")[0]["job_id"]
    connection = ["--url", service.url, "--api-key-env", "CI_SUBMIT_KEY"]
    assert run_cli(thin, "cancel", job_id, *connection).code == 0
    waited = run_cli(thin, "wait", job_id, *connection, "--timeout", "120")
    assert waited.code == 4 and waited.of("error")[0]["status"] == "canceled", waited.stderr
    assert run_cli(thin, "download", job_id, *connection).code == 4


def test_bad_input_exits_2_with_what_to_change(thin: ThinInstall, service: Server, adult_example: ExampleInfo,
                                               spec_file: Path, tmp_path: Path) -> None:
    missing = run_cli(thin, *submit_args(adult_example, tmp_path / "nope.json", service.url))
    assert missing.code == 2 and "nope.json" in missing.of("error")[0]["message"]
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({**SPEC, "method": {"name": "newton", "stepsize": 3}}))
    refused = run_cli(thin, *submit_args(adult_example, unknown, service.url))
    assert refused.code == 2 and refused.of("error")[0]["status"] == 422
    assert "stepsize" in refused.of("error")[0]["message"]
    args = submit_args(adult_example, spec_file, service.url)
    wrong_key = run_cli(thin, *args, key="not-a-key-" + "x" * 30)
    assert wrong_key.code == 2 and "check the API key" in wrong_key.stderr
    bad_gate = run_cli(thin, *args, "--gate", "eval.accuracy=>1")
    assert bad_gate.code == 2 and "malformed gate" in bad_gate.stderr


def test_an_unreachable_service_is_retried_then_exit_1(thin: ThinInstall, adult_example: ExampleInfo,
                                                       spec_file: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    run = run_cli(thin, *submit_args(adult_example, spec_file, closed, "--retry-for", "2"))
    assert run.code == 1 and run.of("retry"), run.stderr
    assert "could not be reached" in run.of("error")[0]["message"]
