#!/usr/bin/env bash
# The main job: set up the environment, then run the pipeline on a Beauty sample on a local Ray cluster.
# Extra arguments go to the pipeline, e.g.  bash scripts/main.sh --set sasrec.max_epochs=5
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
exec python -m ray_jobs.pipeline --config configs/beauty-sample.yaml "$@"
