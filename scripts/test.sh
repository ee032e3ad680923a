#!/usr/bin/env bash
# Set up the environment, make sure Redis is up, run lint, types and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The MLflow hand-off tests run a real `mlflow server` from a venv of its own (see the script);
# it is built while the project's own environment is set up.
mkdir -p .ci-logs
bash scripts/mlflow-server-venv.sh > .ci-logs/mlflow-server-venv.log 2>&1 &
mlflow_venv=$!
bash scripts/setup.sh
bash scripts/ensure-redis.sh
.venv/bin/ruff check app workers models_store tests benchmarks
if ! wait "$mlflow_venv"; then
  tail -n 40 .ci-logs/mlflow-server-venv.log
  echo "error: scripts/mlflow-server-venv.sh failed (log above)" >&2
  exit 1
fi
# Type checking runs beside the tests (one core of its own for a minute); both must pass.
.venv/bin/mypy > .ci-logs/mypy.log 2>&1 &
mypy=$!
status=0
.venv/bin/pytest "$@" || status=$?
if ! wait "$mypy"; then
  cat .ci-logs/mypy.log
  echo "error: mypy found problems (above)" >&2
  status=1
fi
tail -n 1 .ci-logs/mypy.log
exit "$status"
