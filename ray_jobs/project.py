"""Project stage: the shared projection f trained with InfoNCE + L2 on Ray Train; the R2END model saved and scored.

    ray job submit --working-dir . -- python -m ray_jobs.project --config configs/beauty-sample.yaml

User embeddings e_u come from the distilled student on each split's history text (encoded on Ray Data,
cached per student), from Enc, or from the mean of the history items' embeddings (``project.model``).
Each epoch is scored on validation and checkpointed; the best epoch is kept and the test split scored
once, on it. A run killed part-way resumes from its last epoch. Writes ``models/<run_name>/<version>/``
(the logic: ``r2end_core.models.r2end.training``).
"""

from __future__ import annotations

import time

import ray

from r2end_core.config import PipelineConfig, ProjectConfig
from r2end_core.layout import Layout
from r2end_core.models.r2end import recommender, training
from r2end_core.summaries import TrainSummary
from r2end_core.train import selection
from ray_jobs import ray_data, ray_train
from ray_jobs.runtime import run_stage


def train_loop_per_worker(config: dict) -> None:
    me = ray_train.worker(config)
    epochs = training.train(ray.get(config["data"]), ProjectConfig(**config["project"]), me.device, ray_train.restore())
    for state, epoch in epochs:
        ray_train.report(config, epoch, state=state)


def run(cfg: PipelineConfig) -> TrainSummary:
    layout, ec, started = Layout(cfg.storage_path), cfg.embed, time.time()
    _, source, weights = recommender.user_encoder(cfg, layout)
    embed_users = ray_data.history_embedder(layout, source, weights, ec, cfg.resources) if source else None
    run = training.ProjectionRun.prepare(cfg, layout, embed_users)
    state = None
    if cfg.project.model.use_projection:
        config = {"project": cfg.project.model_dump(), "data": ray.put(run.worker_data())}
        result = ray_train.fit(
            train_loop_per_worker,
            config,
            name=run.run_name,
            layout=layout,
            resources=cfg.resources,
            max_failures=cfg.ray.max_failures,
            describe=selection.describe("project"),
        )
        state = ray_train.final_state(result)
    return run.finish(layout, state, started)


if __name__ == "__main__":
    run_stage(__doc__, run, "project")
