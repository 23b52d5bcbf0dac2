"""Run the stages in order on one Ray cluster (local by default, or RAY_ADDRESS):
prepare -> SASRec baseline -> generate -> embed -> distill -> project, then a metrics table;
then index -> serve: the endpoint starts, answers a real query and (serve.keep_serving) stays up.

    python -m ray_jobs.pipeline --config configs/beauty-sample.yaml [--set sasrec.max_epochs=3]
"""

from __future__ import annotations

from r2end_core import metrics
from r2end_core.config import PipelineConfig
from ray_jobs import distill, embed, generate, index, prepare, project, train_sasrec
from ray_jobs.runtime import run_stage
from serve_app.deploy import serve_and_query


def run(cfg: PipelineConfig) -> dict:
    prepare.run(cfg)
    results = {"sasrec": train_sasrec.run(cfg)}
    generate.run(cfg)
    embed.run(cfg)
    student = distill.run(cfg)
    results["r2end"] = project.run(cfg)
    print(f"\nStudent distilled from {student['users_distilled']} users' {student['target']} targets; "
          f"held-out distances: {student.get('distances_held_out')}")
    print(metrics.format_table(results))
    index.run(cfg)
    serve_and_query(cfg)
    return results


if __name__ == "__main__":
    run_stage(__doc__, run)
