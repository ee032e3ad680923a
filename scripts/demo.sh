#!/usr/bin/env bash
# Set up .venv, then run the whole service on this machine and a real correction over HTTP:
# Redis (the one at REDIS_URL, or a local redis-server started for the demo), the API, an RQ
# worker, the Adult example uploaded, a demographic-parity job submitted, polled and downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/softunlearn demo "$@"
