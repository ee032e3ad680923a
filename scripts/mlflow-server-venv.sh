#!/usr/bin/env bash
# Build .venv-mlflow-server: the full `mlflow` package (server, sqlite backend) in a venv of its
# own, for tests/workers/handoff/test_mlflow.py's real `mlflow server`. Apart from .venv because
# mlflow 3.17 (the newest whose mlflow-skinny is served here) pins pyarrow<26 and would downgrade
# the project's pyarrow; the project itself needs only the client (mlflow-skinny, extra [mlflow]).
# About a minute on 2 cores; a no-op when the venv already has that version.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VERSION=${MLFLOW_SERVER_VERSION:-3.17.2}
VENV=${MLFLOW_SERVER_VENV:-.venv-mlflow-server}
if [ -x "$VENV/bin/mlflow" ] && "$VENV/bin/python" -c "import mlflow, sys; sys.exit(mlflow.__version__ != '$VERSION')"; then
  exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "mlflow==$VERSION"
