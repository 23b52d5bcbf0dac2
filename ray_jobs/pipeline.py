"""Run the stages in order on one Ray cluster (local by default, or RAY_ADDRESS), then serve:
prepare -> SASRec -> generate -> embed -> distill -> project (R2END) -> index -> promote -> serve.

    python -m ray_jobs.pipeline --config configs/beauty-sample.yaml [--set sasrec.max_epochs=3]

The console shows a banner per stage, progress and results; the full log is under the storage path.
"""

from __future__ import annotations

import time

from r2end_core.config import PipelineConfig
from r2end_core.eval.metrics import format_table
from r2end_core.layout import Layout
from ray_jobs import distill, embed, generate, index, prepare, project, promote, serve, train_sasrec
from ray_jobs.runtime import banner, copy_ray_logs, log, run_stage

STAGES = [
    (prepare, "check the dataset, split each user's sequence leave-one-out, write histories as text"),
    (train_sasrec, "the baseline: SASRec with full-softmax cross-entropy, selected on validation"),
    (generate, "the teacher LLM explains users' choices and describes items (vLLM)"),
    (embed, "the text encoder embeds items and the teacher's reasoning"),
    (distill, "the student learns to embed raw histories like the reasoning (DeepSpeed)"),
    (project, "R2END's projection aligns users and items, selected on validation"),
    (index, "the model's item vectors in a faiss index, promoted to what is served"),
]
SAMPLE_CAVEAT = (
    "These metrics come from a {users:,}-user sample: a smoke test of the pipeline, not a result. The sample "
    "starves SASRec of data (on all of Beauty the order reverses: bench/results/README.md)."
)


def run(cfg: PipelineConfig) -> dict:
    started, results = time.time(), {}
    for step, (stage, what) in enumerate(STAGES, start=1):
        name = stage.__name__.rsplit(".", 1)[-1]
        t = banner(f"{step}/{len(STAGES) + 1} {name}", what)
        output = stage.run(cfg)
        log.info(f"   {name} done in {time.time() - t:.0f} s")
        if name in ("train_sasrec", "project"):
            results["sasrec" if name == "train_sasrec" else "r2end"] = output.model_dump()
        if name == "index":  # the version just built becomes what is served
            promote.run(cfg, output.version)
    log.info(f"\n== Results ({time.time() - started:.0f} s)\n{format_table(results)}")
    if cfg.prepare.sample_users:
        log.info(SAMPLE_CAVEAT.format(users=cfg.prepare.sample_users))
    copy_ray_logs(Layout(cfg.storage_path))
    banner(
        f"{len(STAGES) + 1}/{len(STAGES) + 1} serve",
        "the model behind an HTTP endpoint (Ray Serve), asked a real query",
    )
    serve.run(cfg)
    return results


if __name__ == "__main__":
    run_stage(__doc__, run, "pipeline")
