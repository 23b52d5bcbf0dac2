"""The training stages for real on a small slice: 40 Beauty users with their committed teacher
outputs. Embed on Ray Data, distill on Ray Train + DeepSpeed (SIGKILLed part-way, then resumed from
its checkpoint; and ZeRO-3 in bf16 over two workers), project on Ray Train (then continued to more
epochs), evaluate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import paired
from r2end_core import artifacts, embeddings, encoders, storage
from ray_jobs import distill, embed, project
from tests.conftest import REPO, SLICE_USERS as USERS



def distill_job(config_path: Path, log: Path) -> subprocess.Popen:
    """The stage as its own process, which starts (and, SIGKILLed, takes down) its own Ray cluster."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "ray_jobs.distill", "--config", str(config_path)], cwd=REPO,
                                env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)


def checkpoints(root: str) -> list[Path]:
    """Checkpoints Ray Train has registered (the snapshot is written once a checkpoint is complete)."""
    return list(Path(artifacts.ray_train_path(root)).glob("distill-*/checkpoint_manager_snapshot.json"))


def test_embed_distill_resume_project(tmp_path, embedded):
    cfg, config_path, report = embedded
    cfg = cfg.model_copy(deep=True)
    root = cfg.storage_path
    assert report["targets"] == {"oracle": USERS, "unguided": USERS, "metadata": USERS}
    assert report["items"] == report["items_with_description"] + report["items_metadata_only"]
    # Two teacher-output folders joined; the second one's unguided answers were grounded here.
    assert report["teacher_outputs"].count(" + ") == 1
    assert storage.read_table(artifacts.grounding_path(root)).num_rows == USERS
    targets = storage.read_table(artifacts.embeddings_path(root, "targets.parquet"))
    assert targets.schema.equals(embeddings.TARGET_EMBEDDING_SCHEMA)
    vectors = embeddings.to_matrix(targets["embedding"])
    assert vectors.shape == (3 * USERS, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    # Same inputs: the written embeddings are reused; another encoder setting would encode again.
    assert embed.run(cfg) == {**report, "reused": True}
    assert embed.inputs_digest(cfg.model_copy(update={"embed": cfg.embed.model_copy(update={"max_seq_length": 64})})) \
        != report["inputs_digest"]

    # Distillation SIGKILLed after its first checkpoint; the re-run resumes from it.
    killed = distill_job(config_path, tmp_path / "killed.log")
    deadline = time.time() + 400
    while not checkpoints(root):
        assert killed.poll() is None, "distill ended before its first checkpoint:\n" + (tmp_path / "killed.log").read_text()[-4000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.5)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not storage.exists(artifacts.run_path(root, "student", "metrics.json"))

    distill.run(cfg)  # the re-run, through the session's cluster (sparing a Ray start)
    student = json.loads(Path(artifacts.run_path(root, "student", "metrics.json")).read_text())
    assert student["users_distilled"] == USERS - 10 and student["steps"] == 15
    assert student["resumed_from_step"] >= 3 and len(student["losses"]) == 15 and student["train_seconds"] > 0
    held = student["distances_held_out"]
    assert held["l2_after"]["mean"] < held["l2_before"]["mean"] and held["cos_after"]["mean"] > held["cos_before"]["mean"]
    # The saved student is a plain sentence-transformers folder.
    model = encoders.load_encoder(artifacts.run_path(root, "student", "model"))
    assert encoders.encode(model, ["1. 2014-01-01: Lip Balm"]).shape == (1, 384)

    summary = project.run(cfg)
    assert summary["epochs_trained"] == 2 and summary["resumed_from_epoch"] == 0
    for split in ("valid", "test"):
        assert summary[split]["users"] == USERS and 0 <= summary[split]["ndcg@10"] <= summary[split]["hr@10"] <= 1
    # Asking for more epochs continues the same run from its last checkpoint.
    cfg.project.epochs = 3
    continued = project.run(cfg)
    assert continued["resumed_from_epoch"] == 2 and continued["epochs_trained"] == 3
    assert [h["epoch"] for h in continued["history"]] == [1, 2, 3]

    # Ablation switches of the same job: no text encoder, no projection.
    cfg.project.user_encoder, cfg.project.use_projection, cfg.project.run_name = "item_mean", False, "floor"
    floor = project.run(cfg)
    assert "best_epoch" not in floor and floor["test"]["users"] == USERS
    assert not storage.exists(artifacts.run_path(root, "floor", "projection.pt"))

    # Every scored user's ranks are kept, so runs on the same users compare paired.
    ranks = {run: storage.read_table(artifacts.run_path(root, run, "ranks.parquet")) for run in (continued["config"]["run_name"], "floor")}
    difference = paired.compare(ranks)["floor"]["test"]
    assert difference["users"] == USERS and difference["hr@10"]["difference"] == pytest.approx(
        floor["test"]["hr@10"] - continued["test"]["hr@10"])


def test_two_workers_zero3_bf16_save_a_plain_student(zero3_student):
    cfg, summary = zero3_student
    assert summary["target"] == "metadata" and summary["steps"] == 8 and summary["config"]["zero_stage"] == 3
    # ZeRO-3 partitions the weights across the two workers; the saved folder holds them whole, in fp32.
    model = encoders.load_encoder(artifacts.run_path(cfg.storage_path, "student-z3", "model"))
    weights = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 and p.numel() > 0 for p in weights.values())
    base = dict(encoders.load_encoder("bundled:all-minilm-l6-v2").named_parameters())
    assert weights.keys() == base.keys() and any(not torch.equal(weights[k], base[k]) for k in base)


def test_new_embeddings_start_new_training_runs(tmp_path, embedded):
    cfg = embedded[0].model_copy(update={"storage_path": str(tmp_path)})
    names = {}
    for digest in ("a", "b"):
        storage.write_json({"inputs_digest": digest}, artifacts.embeddings_path(str(tmp_path), "report.json"))
        names[digest] = (distill.run_name(cfg), project.run_name(cfg, "item_mean"))
    assert names["a"][0] != names["b"][0] and names["a"][1] != names["b"][1]
