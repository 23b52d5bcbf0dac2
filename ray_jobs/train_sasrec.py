"""SASRec on Ray Train: early stopping on validation NDCG@10, the test split scored once at the end.

    ray job submit --working-dir . -- python -m ray_jobs.train_sasrec --config configs/beauty-sample.yaml

Writes the model to ``models/<sasrec.run_name>/<version>/`` with its metrics (the loop:
``r2end_core.models.sasrec.train``). A run killed part-way resumes from its last epoch when started
again with the same settings.
"""

from __future__ import annotations

from r2end_core.config import PipelineConfig
from r2end_core.summaries import TrainSummary
from ray_jobs import sequential
from ray_jobs.runtime import run_stage


def run(cfg: PipelineConfig, score_test: bool = True) -> TrainSummary:
    """Train, select on validation, save; score the test split once unless ``score_test`` is False."""
    return sequential.fit(cfg, cfg.sasrec, score_test=score_test)


if __name__ == "__main__":
    run_stage(__doc__, run, "train_sasrec")
