"""Shared fixtures: real examples built once per test session from the vendored UCI data, and
a fresh API app on a private store and the test Redis DB (API and worker tests); the test S3
server."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from tests.app.support import TestClient, flush_test_db, make_settings, shared_s3_server
from tests.s3_support import S3Server
from workers.engine.examples.builder import build_example
from workers.engine.examples.common import ExampleInfo
from workers.settings import ServiceSettings
from workers.threads import limit_threads


@pytest.fixture(scope="session")
def adult_example(tmp_path_factory: pytest.TempPathFactory) -> ExampleInfo:
    """The Adult example (seed 0), as ``softunlearn example adult`` writes it."""
    return build_example("adult", tmp_path_factory.mktemp("examples") / "adult", seed=0)


@pytest.fixture(scope="session")
def bank_example(tmp_path_factory: pytest.TempPathFactory) -> ExampleInfo:
    """The Bank example (seed 0)."""
    return build_example("bank", tmp_path_factory.mktemp("examples") / "bank", seed=0)


@pytest.fixture(scope="session")
def colored_mnist_example(tmp_path_factory: pytest.TempPathFactory) -> ExampleInfo:
    """The colored-mnist image example (seed 0)."""
    return build_example("colored-mnist", tmp_path_factory.mktemp("examples") / "colored-mnist", seed=0)


def run_correct(args: list[str], out: Path) -> dict[str, Any]:
    """Run ``softunlearn correct``; its exit code must say what the report's ``target_met`` says
    (0 met, 3 missed). Returns the report."""
    from workers.cli.main import main

    code = main(args)
    assert code in (0, 3), f"exit {code}"
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert code == (0 if report["target_met"] else 3), (code, report["target_met"], report["warnings"])
    return report


def example_args(example: ExampleInfo, out: Path, *extra: str) -> list[str]:
    """``softunlearn correct`` arguments for an example directory."""
    d = example.out_dir
    return ["correct", "--model", str(d / "model.safetensors"), "--arch", str(d / "arch.json"),
            "--train", str(d / "train.parquet"), "--audit", str(d / "audit.parquet"),
            "--eval", str(d / "eval.parquet"), "--label", example.label,
            "--sensitive", example.sensitive[0], "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """This session's S3-protocol server (moto in a subprocess, tests/s3_server.py), with the
    tests' bucket; stopped when the session ends."""
    return shared_s3_server()


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[ServiceSettings]:
    """Settings with a private store and queue prefix; the test DB is flushed around the test."""
    flush_test_db()
    yield make_settings(tmp_path / "store", f"t{uuid.uuid4().hex[:10]}")
    flush_test_db()


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    """A TestClient on a new app (no background reconciler: tests reconcile on read)."""
    with TestClient(create_app(settings, reconcile=False)) as test_client:
        yield test_client


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, hold every test process and the workers it starts to one CPU thread:
    the processes already share the cores, and each pool would otherwise start one thread per
    core and spend small tests' time on hand-offs. Only the runtime limits are set, not the
    OpenMP variables: torch loaded with ``OMP_NUM_THREADS=1`` rounds its reductions differently
    in the last bit, and the tests compare CLI and service reports exactly."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        os.environ.setdefault("SOFTUNLEARN_WORKER_THREADS", "1")
        limit_threads(1)
