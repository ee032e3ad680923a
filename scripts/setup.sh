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
# tests/reporting/test_browser.py drives headless Chromium: install Debian's where it is missing
# and this runs as root with apt-get; otherwise say so (that test then skips) and carry on.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; then
      echo "note: apt-get could not install chromium; the browser test will skip"
    fi
  else
    echo "note: no chromium and no root apt-get to install it; the browser test will skip"
  fi
fi
