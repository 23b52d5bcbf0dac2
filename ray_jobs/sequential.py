"""SASRec-family students on Ray Train: the worker loop and the driver's save-and-score, shared by the
baseline (``train_sasrec``) and the students that add knowledge to it (``train_dllm2rec``).

A student is the baseline's training (``r2end_core.models.sasrec.train``) plus ``sasrec.Extras`` (item
features, an auxiliary loss), sent to the workers through Ray's object store.
"""

from __future__ import annotations

import time

import ray
import ray.train.torch
import torch

from r2end_core import models
from r2end_core.config import PipelineConfig, SasrecConfig
from r2end_core.data.splits import Split
from r2end_core.eval.evaluate import record, stored_sets
from r2end_core.layout import Layout
from r2end_core.models import sasrec
from r2end_core.summaries import PrepareReport, TrainSummary
from r2end_core.train import selection
from ray_jobs import ranking, ray_train


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
        ray.get(config["extras"]),
    )
    for state, epoch in epochs:
        ray_train.report(config, epoch, state=state)


def fit(
    cfg: PipelineConfig,
    sc: SasrecConfig,
    extras: sasrec.Extras | None = None,
    inputs: dict | None = None,
    score_test: bool = True,
) -> TrainSummary:
    """Train ``sc`` (with a student's ``extras``), select on validation, save as ``models/<sc.run_name>/``;
    score the test split once unless ``score_test`` is False (a caller choosing among several runs scores
    only the chosen one). ``inputs``: what the student learnt from besides the prepared data (digests),
    recorded in the manifest and naming the run, so a killed run resumes only on the same inputs."""
    layout, started = Layout(cfg.storage_path), time.time()
    extras = extras or sasrec.Extras()
    inputs = {"prepared": layout.prepared_digest(), **(inputs or {})}
    config = {
        "storage_path": layout.root,
        "sasrec": sc.model_dump(),
        "history": cfg.prepare.history,
        "extras": ray.put(extras),
    }
    result = ray_train.fit(
        train_loop_per_worker,
        config,
        name=sasrec.run_name(sc, layout.root, **inputs),
        layout=layout,
        resources=cfg.resources,
        max_failures=cfg.ray.max_failures,
        num_workers=sc.num_workers,
        describe=selection.describe(sc.run_name),
    )
    # the driver holds the catalogue and a block of users at a time (the workers held all of them to train)
    state, items = ray_train.final_state(result), layout.read_items()
    users = PrepareReport.read(layout.prepare_report, "prepare").users
    module = extras.module(items.num_rows, sc.model)
    module.load_state_dict(state["best"]["weights"]["model"])
    manifest = sasrec.manifest(sc.run_name, sc.model, items.num_rows, cfg.prepare.history, inputs)
    model = sasrec.SasrecRecommender(module, items.column("item_id").to_pylist(), manifest)
    model.manifest = models.save(layout, model.manifest, model.write_files)
    torch.set_num_threads(cfg.resources.cpus_per_worker)
    splits = [Split.VALID, Split.TEST] if score_test else [Split.VALID]
    return record(
        layout,
        model,
        stored_sets(layout, items, splits, sc.mask_history),
        ranking.on_ray(cfg.resources),
        **selection.summary_fields(state),
        train_users=users,
        eval_users=users,
        wall_time_s=round(time.time() - started, 1),
        config=sc.model_dump(mode="json"),
    )
