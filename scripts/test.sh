#!/usr/bin/env bash
# Set up the environment, make sure Redis is up, run lint, types and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The MLflow hand-off tests run a real `mlflow server` from a venv of its own (see the script).
bash scripts/mlflow-server-venv.sh
bash scripts/ensure-redis.sh
.venv/bin/ruff check app workers models_store tests benchmarks
.venv/bin/mypy
.venv/bin/pytest "$@"
