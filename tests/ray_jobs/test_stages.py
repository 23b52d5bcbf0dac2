"""The stages on a real local Ray cluster: Ray Data writes the tables, Ray Train trains SASRec."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from r2end_core import artifacts, data, sasrec
from r2end_core.config import SasrecConfig, load_config
from ray_jobs import prepare, train_sasrec
from tests.conftest import BEAUTY

REPO = Path(__file__).resolve().parents[2]


def sample_config(tmp_path, *overrides):
    cfg = load_config(
        REPO / "configs/beauty-sample.yaml",
        [
            f"storage_path={tmp_path / 'artifacts'}",
            f"prepare.dataset_path={BEAUTY}",
            "prepare.sample_users=300",
            "sasrec.max_epochs=2",
            "sasrec.hidden_size=32",
            *overrides,
        ],
    )
    return cfg


def test_prepare_then_sasrec(tmp_path, ray_cluster):
    cfg = sample_config(tmp_path)
    report = prepare.run(cfg)
    assert report["users"] == 300 and report["dropped_short_users"] == 0
    prepare.run(cfg)  # a re-run replaces the tables instead of appending to them
    users = artifacts.read_users(cfg.storage_path)
    items = artifacts.read_items(cfg.storage_path)
    assert users.num_rows == 300 and items.num_rows == report["items"]
    assert users.schema.equals(data.USERS_SCHEMA) and items.schema.equals(data.ITEMS_SCHEMA)

    summary = train_sasrec.run(cfg)
    assert summary["best_epoch"] in (1, 2) and summary["epochs_trained"] == 2
    assert summary["mask_history"] is True
    for split in ("valid", "test"):
        assert summary[split]["users"] == 300
        assert 0.0 <= summary[split]["ndcg@10"] <= summary[split]["hr@10"] <= 1.0
    saved = json.loads(Path(artifacts.sasrec_metrics_path(cfg.storage_path)).read_text())
    assert saved["test"] == summary["test"]
    state = torch.load(artifacts.sasrec_model_path(cfg.storage_path), weights_only=False)
    model = sasrec.SASRec(state["n_items"], SasrecConfig(**state["config"]))
    model.load_state_dict(state["model"])


def test_two_workers_train_with_ddp(tmp_path, ray_cluster):
    cfg = sample_config(tmp_path, "sasrec.num_workers=2", "sasrec.cpus_per_worker=1", "sasrec.max_epochs=1")
    prepare.run(cfg)
    summary = train_sasrec.run(cfg)
    assert summary["epochs_trained"] == 1 and summary["test"]["users"] == 300
