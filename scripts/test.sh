#!/usr/bin/env bash
# The test suite: set up the environment, then run every test (real Ray, real data sample).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
exec python -m pytest "$@"
