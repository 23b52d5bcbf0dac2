"""SASRec on Ray Train: early stopping on validation NDCG@10, the test split scored once at the end.

    ray job submit --working-dir . -- python -m ray_jobs.train_sasrec --config configs/beauty-sample.yaml

Writes the model to ``models/<sasrec.run_name>/<version>/`` with its metrics (the loop:
``r2end_core.models.sasrec.train``). A run killed part-way resumes from its last epoch when started
again with the same settings.
"""

from __future__ import annotations

import time

import ray.train.torch
import torch

from r2end_core import models
from r2end_core.config import PipelineConfig, SasrecConfig
from r2end_core.data.splits import Split
from r2end_core.eval.evaluate import EvalSet, record
from r2end_core.layout import Layout
from r2end_core.models import sasrec
from r2end_core.summaries import TrainSummary
from r2end_core.train import selection
from ray_jobs import ray_train
from ray_jobs.runtime import run_stage


def train_loop_per_worker(config: dict) -> None:
    me, layout = ray_train.worker(config), Layout(config["storage_path"])
    epochs = sasrec.train(
        layout.read_users(),
        layout.read_items(),
        SasrecConfig(**config["sasrec"]),
        config["history"],
        me.device,
        me.rank,
        me.world,
        ray_train.restore(),
        ray.train.torch.prepare_model,
    )
    for state, epoch in epochs:
        ray_train.report(config, epoch, state=state)


def run(cfg: PipelineConfig, score_test: bool = True) -> TrainSummary:
    """Train, select on validation, save; score the test split once unless ``score_test`` is False (a
    caller choosing among several runs scores only the chosen one)."""
    layout, sc, started = Layout(cfg.storage_path), cfg.sasrec, time.time()
    name = sasrec.run_name(sc, layout.prepared_digest(), layout.root)
    config = {"storage_path": layout.root, "sasrec": sc.model_dump(), "history": cfg.prepare.history}
    result = ray_train.fit(
        train_loop_per_worker,
        config,
        name=name,
        layout=layout,
        resources=cfg.resources,
        num_workers=sc.num_workers,
        describe=selection.describe("sasrec"),
    )
    state, users, items = ray_train.final_state(result), layout.read_users(), layout.read_items()
    module = sasrec.SASRec(items.num_rows, sc.model)
    module.load_state_dict(state["best"]["weights"]["model"])
    manifest = sasrec.manifest(
        sc.run_name, sc.model, items.num_rows, cfg.prepare.history, {"prepared": layout.prepared_digest()}
    )
    model = sasrec.SasrecRecommender(module, items.column("item_id").to_pylist(), manifest)
    model.manifest = models.save(layout, model.manifest, model.write_files)
    torch.set_num_threads(cfg.resources.cpus_per_worker)
    splits = [Split.VALID, Split.TEST] if score_test else [Split.VALID]
    return record(
        layout,
        model,
        [EvalSet.build(users, items, s, sc.mask_history) for s in splits],
        **selection.summary_fields(state),
        train_users=users.num_rows,
        eval_users=users.num_rows,
        wall_time_s=round(time.time() - started, 1),
        config=sc.model_dump(mode="json"),
    )


if __name__ == "__main__":
    run_stage(__doc__, run, "train_sasrec")
