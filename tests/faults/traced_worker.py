"""``softunlearn worker`` with every execution of a job recorded (test-only).

``python -m tests.faults.traced_worker`` runs the real CLI's ``worker`` command after wrapping
``workers.jobs._execute``, which runs only once an execution has claimed its manifest: each call
appends a ``start`` line before the engine runs and an ``end`` line after the outputs are
published (or the engine raised) to the file ``SOFTUNLEARN_TEST_EXECUTION_LOG`` names, with one
``O_APPEND`` write each, so concurrent horses cannot interleave. A horse killed mid-run leaves a
``start`` without an ``end``, which the checks read as an execution that never ended.
``workers.lease.claim`` is wrapped the same way: ``claim`` when a horse starts claiming the
manifest, ``claimed`` or ``declined`` when the claim returns (after any wait for a lease).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

EXECUTION_LOG_ENV = "SOFTUNLEARN_TEST_EXECUTION_LOG"


def _record(event: str, job_id: str) -> None:
    """Append one event of this process to the execution log."""
    line = json.dumps({"event": event, "job": job_id, "pid": os.getpid(), "t": time.time()}) + "\n"
    fd = os.open(os.environ[EXECUTION_LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _install() -> None:
    from workers import jobs, lease

    original = jobs._execute
    original_claim = lease.claim

    def traced_claim(records: Any, tenant: str, job_id: str, make_claim: Any) -> Any:
        _record("claim", job_id)
        record, claimed = original_claim(records, tenant, job_id, make_claim)
        _record("claimed" if claimed else "declined", job_id)
        return record, claimed

    def traced(records: Any, record: Any, settings: Any) -> dict[str, float]:
        _record("start", record.id)
        try:
            return original(records, record, settings)
        finally:
            _record("end", record.id)

    jobs._execute = traced
    lease.claim = traced_claim


def main() -> int:
    """Run ``softunlearn worker`` (arguments after the module name) with executions traced."""
    from workers.cli.main import main as cli_main

    _install()
    return cli_main(["worker", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
