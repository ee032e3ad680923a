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
# The service suites run a second time on the S3 store (a moto server process the tests start,
# tests/s3_support.py), beside the main run, when the whole suite runs (no arguments).
s3=""
if [ "$#" -eq 0 ]; then
  read -r -a s3_suites <<< "$(.venv/bin/python -c 'from tests.s3_support import S3_SUITES; print(*S3_SUITES)')"
  SOFTUNLEARN_TEST_STORE=s3 .venv/bin/pytest -q -p no:cacheprovider "${s3_suites[@]}" \
    > .ci-logs/pytest-s3.log 2>&1 &
  s3=$!
fi
# The main run is split over two test processes (pytest-xdist; each claims a Redis DB of its own
# and runs torch on one thread, tests/conftest.py): 24 minutes in one process, 8½ in two.
status=0
.venv/bin/pytest -n "${SOFTUNLEARN_TEST_PROCESSES:-2}" "$@" || status=$?
if [ -n "$s3" ]; then
  if ! wait "$s3"; then
    tail -n 60 .ci-logs/pytest-s3.log
    echo "error: the service tests failed on the S3 store (above; whole log .ci-logs/pytest-s3.log)" >&2
    status=1
  fi
  echo "on the S3 store: $(tail -n 1 .ci-logs/pytest-s3.log)"
fi
if ! wait "$mypy"; then
  cat .ci-logs/mypy.log
  echo "error: mypy found problems (above)" >&2
  status=1
fi
tail -n 1 .ci-logs/mypy.log
exit "$status"
