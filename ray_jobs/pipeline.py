"""Run the stages in order on one Ray cluster (local by default, or RAY_ADDRESS).

    python -m ray_jobs.pipeline --config configs/beauty-sample.yaml [--set sasrec.max_epochs=3]
"""

from __future__ import annotations

from r2end_core import metrics
from ray_jobs import prepare, train_sasrec
from r2end_core.config import PipelineConfig
from ray_jobs.runtime import run_stage


def run(cfg: PipelineConfig) -> None:
    prepare.run(cfg)
    summary = train_sasrec.run(cfg)
    print(f"\nSASRec (best epoch {summary['best_epoch']}, history masked: {summary['mask_history']}):")
    print(metrics.format_table({"sasrec": summary}))


if __name__ == "__main__":
    run_stage(__doc__, run)
