"""The stages on a real local Ray cluster: Ray Data writes the tables, Ray Train trains SASRec (one
worker, and two with DDP on a user count that splits unevenly), and the model is indexed."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from r2end_core import models, schemas
from r2end_core.config import load_config
from r2end_core.data import prepare as prepare_in_process
from r2end_core.data.contract import DataValidationError
from r2end_core.data.histories import Histories
from r2end_core.layout import Layout
from r2end_core.serve import aliases
from ray_jobs import index, prepare, promote, train_sasrec
from tests.conftest import BEAUTY, write_dataset
from tests.serve.test_aliases import built

REPO = Path(__file__).resolve().parents[2]


def sample_config(tmp_path, *overrides):
    return load_config(
        REPO / "configs/beauty-sample.yaml",
        [
            f"storage_path={tmp_path / 'artifacts'}",
            f"prepare.dataset_path={BEAUTY}",
            "prepare.sample_users=300",
            "sasrec.max_epochs=2",
            "sasrec.model.hidden_size=32",
            *overrides,
        ],
    )


def test_prepare_then_sasrec_then_its_index(tmp_path, ray_cluster):
    cfg = sample_config(tmp_path)
    layout = Layout(cfg.storage_path)
    report = prepare.run(cfg)
    assert report.users == 300 and report.dropped_short_users == 0
    prepare.run(cfg)  # a re-run replaces the tables instead of appending to them
    users, items = layout.read_users(), layout.read_items()
    assert users.num_rows == 300 and items.num_rows == report.items
    assert users.schema.equals(schemas.USERS) and items.schema.equals(schemas.ITEMS)

    summary = train_sasrec.run(cfg)
    assert summary.best_epoch in (1, 2) and summary.epochs_trained == 2 and summary.mask_history
    for metrics in (summary.valid, summary.test):
        assert metrics["users"] == 300 and 0.0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1.0
    # The saved model loads by name and answers through the recommender interface.
    model = models.load(layout, "sasrec")
    assert model.manifest.kind == "sasrec" and model.manifest.version == summary.version
    assert (
        model.manifest.args == cfg.sasrec.model.model_dump() and model.item_ids == items.column("item_id").to_pylist()
    )
    history = users.slice(0, 2).column("sequence").to_pylist()
    vectors = model.user_vectors(Histories(item_ids=history))
    assert vectors.shape == (2, 32) and model.item_vectors().shape == (items.num_rows, 32)

    # Any model can be indexed: SASRec's items, searched by inner product.
    built = index.run(cfg.with_section("index", model="sasrec", kind="hnsw", recall_queries=20))
    assert built.model == "sasrec" and built.similarity == "dot" and built.items == items.num_rows
    assert built.quality["queries"] == 20 and 0 < built.quality["recall@10"] <= 1


def test_prepare_on_ray_data_in_parts_is_prepare_in_one_process(tmp_path, ray_cluster, beauty_frames):
    """Read in slices of 1,200 rows (3 row groups), users grouped into as many blocks, sorted and sampled across
    them: the tables are the ones one process makes from the whole file, the same files every run, and bad rows
    are named as there."""
    inter, items = beauty_frames
    data = write_dataset(tmp_path / "data", inter, items, row_group_size=400)
    cfg = sample_config(
        tmp_path, f"prepare.dataset_path={data}", "prepare.interactions_per_part=1000", "prepare.sample_users=120"
    )
    layout = Layout(cfg.storage_path)
    report, digest = prepare.run(cfg), layout.prepared_digest()
    whole = prepare_in_process.prepare(cfg.prepare, prepare_in_process.Parts.of)
    assert report == whole.report and report.users == 120
    whole_users = prepare_in_process.collect(whole.users, schemas.USERS).sort_by("user_id")  # as readers see them
    assert layout.read_users().to_pylist() == whole_users.to_pylist()
    assert layout.read_items().to_pylist() == whole.items.to_pylist()
    prepare.run(cfg)  # the same files again, whatever blocks Ray made (training runs are named by the digest)
    assert layout.prepared_digest() == digest

    inter = pd.concat([inter, inter.iloc[[1234]]], ignore_index=True)  # a row of the 2nd slice, again at the end
    bad = sample_config(
        tmp_path,
        "prepare.interactions_per_part=1000",
        f"prepare.dataset_path={write_dataset(tmp_path / 'bad', inter, items, row_group_size=400)}",
    )
    with pytest.raises(
        DataValidationError,
        match=rf"duplicate \(user_id, seq_pos\) rows \(2 rows\), e.g. row 1234 .*; row {len(inter) - 1} ",
    ):
        prepare.run(bad)


def test_two_workers_train_with_ddp_on_uneven_batches(tmp_path, ray_cluster):
    # 257 users in batches of 128: the last global batch has one user for two workers. Each worker must
    # run the same number of steps, or DDP waits for ever.
    cfg = sample_config(
        tmp_path,
        "prepare.sample_users=257",
        "sasrec.num_workers=2",
        "sasrec.batch_size=128",
        "resources.cpus_per_worker=1",
        "sasrec.max_epochs=1",
    )
    prepare.run(cfg)
    summary = train_sasrec.run(cfg)
    assert summary.epochs_trained == 1 and summary.test["users"] == 257
    assert np.isfinite(summary.valid["ndcg@10"])


STAGES_BEFORE = {  # a stage (or benchmark) run on an empty storage path: the stage its error says to run first
    "ray_jobs.train_sasrec": "prepare",
    "ray_jobs.embed": "prepare",
    "ray_jobs.distill": "embed",
    "ray_jobs.project": "distill",
    "ray_jobs.index": "project",  # the default model is R2END's
    "ray_jobs.promote": "index",
    "ray_jobs.train_dllm2rec": "prepare",
    "ray_jobs.train_fusion": "prepare",
    "ray_jobs.train_profile": "prepare",
    "ray_jobs.generate": "prepare",
    "bench.students_beauty": "prepare",
}


@pytest.mark.parametrize("stage", list(STAGES_BEFORE))
def test_a_stage_on_an_empty_storage_path_says_which_stage_to_run_first(tmp_path, ray_cluster, stage):
    cfg, module = sample_config(tmp_path), importlib.import_module(stage)
    run = (
        module.run
        if hasattr(module, "run")
        else lambda c: module.benchmark(
            c, argparse.Namespace(methods="sasrec", seeds="23", level="all", records_only=False, plan=False)
        )
    )
    with pytest.raises(FileNotFoundError, match=rf"ray_jobs\.{STAGES_BEFORE[stage]}\b"):
        run(cfg)


def test_the_index_and_promote_stages_write_only_under_the_lease(tmp_path):
    """Another writer holding the index's lease keeps both stages out before they change anything."""
    cfg = sample_config(tmp_path)
    layout = Layout(cfg.storage_path)
    version = built(layout, "flat-0001")
    with aliases.lease(layout, "another-writer"):
        for stage in (lambda: index.run(cfg), lambda: promote.run(cfg, version)):
            with pytest.raises(aliases.LeaseHeld, match="another-writer is writing the index"):
                stage()
    assert aliases.read(layout) is None
    assert promote.run(cfg, version).version == version  # the lease released, the promotion goes through
