"""The engine is pure numerics: importing all of it pulls in no web, queue or Redis library."""

from __future__ import annotations

import subprocess
import sys

ENGINE_MODULES = [
    "workers.engine.pipeline", "workers.engine.influence.full_scope",
    "workers.engine.unlearning.methods.registry", "workers.engine.examples.builder",
    "workers.engine.evaluation.report",
]


def test_engine_imports_no_service_libraries() -> None:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in ENGINE_MODULES)
            + "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
              "{'fastapi', 'starlette', 'rq', 'redis', 'uvicorn', 'httpx', 'app', 'models_store'})\n"
              "print(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
