#!/usr/bin/env bash
# Create .venv and install SoftUnlearn with its test tools. torch==2.13.0 goes first: this
# machine serves its CPU wheel locally, while any other torch spec resolved from scratch
# downloads a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev${EXTRAS:+,$EXTRAS}]"
