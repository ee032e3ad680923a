"""The tests' S3 server (``tests/s3_server.py``, a subprocess) and helpers to use it.

``SOFTUNLEARN_TEST_STORE=s3`` runs the service tests' ``settings`` fixture (tests/conftest.py)
on this server instead of a local directory (scripts/test.sh does so once, for the suites in
:data:`S3_SUITES`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUCKET", "S3_SUITES", "S3Server", "on_s3", "s3_url", "start_s3_server"]

BUCKET = "softunlearn-tests"
ROOT = Path(__file__).resolve().parents[1]
S3_SUITES = ("tests/app/client", "tests/app/test_auth.py", "tests/app/test_delete.py",
             "tests/app/test_jobs_api.py", "tests/app/test_quotas.py", "tests/app/test_redis_down.py",
             "tests/app/test_request_id.py", "tests/app/test_uploads.py",
             "tests/workers/test_lifecycle.py::test_sigkilled_work_horse_never_stays_running[1]")
"""What scripts/test.sh runs a second time on S3: the API suites that go through the store, and
a real job whose work horse is killed mid-job and re-run from the store (besides the real jobs
of tests/app/test_delete.py). Left out, as they do not depend on the store or take minutes:
the contract, OpenAPI, header, docs and schemathesis tests, and the other worker tests (they
pass on S3 too, see docs/SERVICE.md, "Running N workers on M hosts")."""
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "softunlearn-tests", "AWS_SECRET_ACCESS_KEY": "softunlearn-tests",
               "AWS_REGION": "us-east-1"}


def on_s3() -> bool:
    """Whether this test session runs the service tests on the S3 server."""
    return os.environ.get("SOFTUNLEARN_TEST_STORE", "local") == "s3"


@dataclass
class S3Server:
    """A running test S3 server."""

    endpoint: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Close its standard input (it exits) and reap it."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_s3_server() -> S3Server:
    """Start the server on a free port, make the tests' bucket, and put the test credentials in
    this process's environment (so workers started by the tests inherit them)."""
    import boto3

    os.environ.update(CREDENTIALS)
    process = subprocess.Popen([sys.executable, "-m", "tests.s3_server"], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"the test S3 server did not start (it printed {line!r})")
    server = S3Server(f"http://127.0.0.1:{int(line.split()[1])}", process)
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=BUCKET)
    return server


def s3_url(prefix: str | None = None) -> str:
    """``s3://`` URL of a fresh (or the given) prefix in the tests' bucket."""
    return f"s3://{BUCKET}/{prefix or 'p' + uuid.uuid4().hex[:12]}"
