"""The training stages for real on a small slice: 40 Beauty users with their committed teacher
outputs. Embed on Ray Data, distill on Ray Train + DeepSpeed (its worker SIGKILLed part-way: the run goes
on from its checkpoint to the very losses and weights of an uninterrupted run; and ZeRO-3 in bf16 over two
workers on a batch that splits unevenly), project on Ray
Train (then continued to more epochs), evaluate through the recommender interface; DLLM2Rec from a
text model's rankings on Ray Train."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pytest
import torch

from bench import paired
from r2end_core import models, schemas, storage
from r2end_core.data.histories import Histories
from r2end_core.data.splits import Split
from r2end_core.eval.evaluate import EvalSet, evaluate
from r2end_core.layout import Layout
from r2end_core.models.r2end import distill as distillation
from r2end_core.models.r2end import projection
from r2end_core.models.r2end.targets import inputs_digest as targets_digest
from r2end_core.summaries import DistillSummary
from r2end_core.text import encoders
from r2end_core.text.cache import encoder_id
from ray_jobs import distill, embed, project, ray_data, train_dllm2rec, train_profile
from tests.conftest import REPO
from tests.conftest import SLICE_USERS as USERS


def distill_job(config_path: Path, log: Path, address: str) -> subprocess.Popen:
    """The stage as its own process on the cluster at ``address``."""
    env = os.environ | {"RAY_ADDRESS": address}
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ray_jobs.distill", "--config", str(config_path)],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def train_workers(session_dir: str) -> list[psutil.Process]:
    """The Ray Train workers of the cluster whose session folder is ``session_dir`` (their raylet's sockets are
    in it; another Ray cluster on the machine has its own)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if (process.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker"):
            with contextlib.suppress(psutil.Error):
                if session_dir in " ".join(process.parent().cmdline()):
                    found.append(process)
    return found


def checkpoints(layout: Layout, run: str) -> list[Path]:
    """Checkpoints Ray Train has registered for ``run`` (the snapshot is written once a checkpoint is complete);
    other tests' distillation runs share the session's storage path."""
    return list(Path(layout.ray_train).glob(f"{run}/checkpoint_manager_snapshot.json"))


def test_embed_distill_resume_project(tmp_path, ray_cluster, embedded):
    cfg, config_path, report = embedded
    layout = Layout(cfg.storage_path)
    assert report.targets == {"oracle": USERS, "unguided": USERS, "metadata": USERS, "profile": USERS}
    assert report.items == report.items_with_description + report.items_metadata_only
    # Three teacher-output folders joined; the second one's unguided answers were grounded here.
    assert report.teacher_outputs.count(" + ") == 2
    assert storage.read_table(layout.embeddings("unguided_grounding.parquet")).num_rows == USERS
    targets = storage.read_table(layout.embeddings("targets.parquet"))
    assert targets.schema.equals(schemas.TARGET_EMBEDDINGS)
    vectors = schemas.to_matrix(targets["embedding"])
    assert vectors.shape == (4 * USERS, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    # Same inputs: the written embeddings are reused; another encoder setting would encode again.
    assert embed.run(cfg) == report.model_copy(update={"reused": True})
    assert targets_digest(cfg.embed.model_copy(update={"max_seq_length": 64}), layout) != report.inputs_digest
    # Each text the bundled encoder embedded is kept, so a run whose inputs change encodes only new texts.
    cache = layout.text_vectors(encoder_id(cfg.embed.encoder, cfg.embed.max_seq_length, "start"))
    kept = pa.concat_tables([storage.read_table(f) for f in storage.list_files(cache)])
    row = {key: i for i, key in enumerate(kept.column("text_sha256").to_pylist())}
    items = layout.read_items().sort_by("item_index")
    keys = [hashlib.sha256(t.encode()).hexdigest() for t in items.column("metadata_text").to_pylist()]
    item_vectors = storage.read_table(layout.embeddings("items.parquet")).sort_by("item_index")["metadata_embedding"]
    assert np.array_equal(schemas.to_matrix(kept["embedding"])[[row[k] for k in keys]], schemas.to_matrix(item_vectors))

    # Distillation's Ray Train worker SIGKILLed after the first checkpoint: the run restarts it from there
    # (ray.max_failures) and ends with the losses and weights of a run nobody killed.
    killed = distill_job(config_path, tmp_path / "killed.log", ray_cluster.get_runtime_context().gcs_address)
    deadline = time.time() + 400
    run = distillation.run_name(cfg.distill, report.inputs_digest, layout.root)
    while not checkpoints(layout, run):
        assert killed.poll() is None, (
            "distill ended before its first checkpoint:\n" + (tmp_path / "killed.log").read_text()[-4000:]
        )
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.5)
    workers = train_workers(ray_cluster._private.worker.global_worker.node.get_session_dir_path())
    assert killed.poll() is None and len(workers) == 1, f"the run ended before its worker was killed: {workers}"
    workers[0].send_signal(signal.SIGKILL)
    assert killed.wait(timeout=600) == 0, (tmp_path / "killed.log").read_text()[-4000:]
    student = DistillSummary.read(layout.student("student", "metrics.json"), "distill")
    assert student.users_distilled == USERS - 10 and student.steps == 15
    assert student.resumed_from_step >= 3 and len(student.losses) == 15 and student.train_seconds > 0
    # A student that learnt the same examples with the same settings is copied, not trained again: with the
    # killed run's summary aside, the uninterrupted run trains for real.
    aside = tmp_path / "student-metrics.json"
    shutil.move(layout.student("student", "metrics.json"), aside)
    whole = distill.run(cfg.with_section("distill", run_name="student-whole", checkpoint_every=100))
    shutil.move(aside, layout.student("student", "metrics.json"))
    assert whole.resumed_from_step == 0 and whole.losses == student.losses and whole.copied_from is None
    kept, uninterrupted = (encoders.load_encoder(layout.student(n, "model")) for n in ("student", "student-whole"))
    for (name, weight), other in zip(kept.state_dict().items(), uninterrupted.state_dict().values(), strict=True):
        assert torch.equal(weight, other), name
    copied = distill.run(cfg.with_section("distill", run_name="student-copy", checkpoint_every=5))
    assert copied.copied_from == "student" and copied.weights_id == student.weights_id
    assert copied.config["run_name"] == "student-copy" and copied.losses == student.losses
    assert storage.folder_sha256(layout.student("student-copy", "model")) == storage.folder_sha256(
        layout.student("student", "model")
    )
    held = student.distances_held_out
    assert held["l2_after"].mean < held["l2_before"].mean and held["cos_after"].mean > held["cos_before"].mean
    # The saved student is a plain sentence-transformers folder.
    assert encoders.encode(kept, ["1. 2014-01-01: Lip Balm"]).shape == (1, 384)

    summary = project.run(cfg)
    assert summary.epochs_trained == 2 and summary.resumed_from_epoch == 0
    for metrics in (summary.valid, summary.test):
        assert metrics["users"] == USERS and 0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1
    # The model in its folder scores as the stage recorded, through the recommender interface; the best
    # epoch's validation score during training is the one recorded.
    r2end = models.load(layout, "r2end")
    assert r2end.manifest.version == summary.version and r2end.manifest.text_encoder == "./encoder"
    # the version holds its encoder: the student's folder, which the next distillation replaces, can go
    assert {f for f in r2end.manifest.files if f.startswith("encoder/")} >= {"encoder/config.json"}
    histories = Histories.of_split(layout.read_users().slice(0, 3), Split.TEST)
    before = r2end.user_vectors(histories)
    shutil.move(layout.student("student", "model"), tmp_path / "student-away")
    np.testing.assert_allclose(models.load(layout, "r2end").user_vectors(histories), before, rtol=1e-5, atol=1e-6)
    shutil.move(tmp_path / "student-away", layout.student("student", "model"))
    assert summary.history[summary.best_epoch - 1]["valid"]["ndcg@10"] == pytest.approx(
        summary.valid["ndcg@10"], abs=1e-6
    )
    # Asking for more epochs continues the same run from its last checkpoint.
    continued = project.run(cfg.with_section("project", epochs=3))
    assert continued.resumed_from_epoch == 2 and continued.epochs_trained == 3
    assert [h["epoch"] for h in continued.history] == [1, 2, 3]

    # Ablation switches of the same job: no text encoder, no projection.
    floor = project.run(
        cfg.with_section("project", model={"user_encoder": "item_mean", "use_projection": False}, run_name="floor")
    )
    assert floor.best_epoch is None and floor.test["users"] == USERS
    assert models.load(layout, "floor").projection is None

    # Every scored user's ranks are kept, so runs on the same users compare paired.
    ranks = {
        name: storage.read_table(layout.model_version(name, s.version, "ranks.parquet"))
        for name, s in (("r2end", continued), ("floor", floor))
    }
    difference = paired.compare(ranks)["floor"]["test"]
    assert difference["users"] == USERS and difference["hr@10"]["difference"] == pytest.approx(
        floor.test["hr@10"] - continued.test["hr@10"]
    )


def test_two_workers_zero3_bf16_save_a_plain_student(zero3_student):
    cfg, summary = zero3_student
    # 29 users in batches of 4 over two workers: 7 steps, the last one of 5 rows (the lone 29th row
    # joined the batch before it, so no worker ever had nothing to train on).
    assert summary.users_distilled == 29 and summary.target == "metadata" and summary.steps == 7
    assert summary.config["zero_stage"] == 3
    # ZeRO-3 partitions the weights across the two workers; the saved folder holds them whole, in fp32.
    model = encoders.load_encoder(Layout(cfg.storage_path).student("student-z3", "model"))
    weights = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 and p.numel() > 0 for p in weights.values())
    base = dict(encoders.load_encoder("bundled:all-minilm-l6-v2").named_parameters())
    assert weights.keys() == base.keys() and any(not torch.equal(weights[k], base[k]) for k in base)


def test_new_embeddings_start_new_training_runs(embedded):
    cfg = embedded[0].with_section("distill", patience=1)
    names = {
        digest: (
            distillation.run_name(cfg.distill, digest, cfg.storage_path),
            projection.run_name(cfg.project, {"embeddings": digest}, cfg.storage_path),
        )
        for digest in "ab"
    }
    assert names["a"][0] != names["b"][0] and names["a"][1] != names["b"][1]
    # Raising epochs (or lowering the held-out loss's floor) continues a run rather than starting another.
    more = cfg.with_section("distill", epochs=3, min_improvement=0.01).with_section("project", epochs=20)
    assert (
        distillation.run_name(more.distill, "a", cfg.storage_path),
        projection.run_name(more.project, {"embeddings": "a"}, cfg.storage_path),
    ) == names["a"]


def test_students_of_a_text_model_dllm2rec_and_fusion(r2end_model, fused_student):
    """Two students of a real R2END model (a distilled student on the history texts, encoded on Ray Data),
    on Ray Train.
    DLLM2Rec: the teacher ranks each training instance once, the student trains with the ranking term and
    the item embeddings, and saves a SASRec. Fusion: a SASRec's scores plus the text model's, weighted as
    validation chose, saved as one model that reads item ids and text."""
    cfg, teacher = r2end_model
    cfg = cfg.with_section("sasrec", max_epochs=2, batch_size=8, model={"hidden_size": 16, "inner_size": 16})
    cfg = cfg.with_section("dllm2rec", teacher="r2end-serve", positions="all", top_k=5)
    layout = Layout(cfg.storage_path)
    # SIG_IGN where the suite runs as a background job, Python's own handler in a terminal
    ctrl_c = signal.getsignal(signal.SIGINT)
    summary = train_dllm2rec.run(cfg)
    assert summary.epochs_trained == 2 and all(epoch["rank_distill"] > 0 for epoch in summary.history)
    # Ray Train's Ctrl-C handler is gone once fit returns: the pipeline's endpoint, served next, gets Ctrl-C
    assert signal.getsignal(signal.SIGINT) is ctrl_c
    student = models.load(layout, "dllm2rec")
    assert student.manifest.kind == "sasrec" and student.manifest.inputs["teacher"] == f"r2end-serve/{teacher.version}"
    assert student.module.feature_dim == 384 and student.manifest.version == summary.version
    rankings = storage.read_table(layout.teacher_rankings("r2end-serve", teacher.version, "all-top5-len50"))
    users = layout.read_users()
    assert rankings.num_rows == sum(len(s) - 3 for s in users["sequence"].to_pylist())  # every trained position
    first = users["sequence"][0].as_py()
    item_ids = layout.read_items()["item_id"].to_pylist()
    for position, ranked in zip(rankings["position"].to_pylist()[:3], rankings["items"].to_pylist()[:3]):
        assert not {item_ids[i] for i in ranked} & set(first[:position])  # never an item of the history
    valid = EvalSet.build(users, layout.read_items(), Split.VALID)
    assert evaluate(student, valid).metrics["ndcg@10"] == pytest.approx(summary.valid["ndcg@10"], abs=1e-6)

    fused = fused_student[1]
    model = models.load(layout, "fusion")
    assert model.manifest.kind == "fusion" and model.manifest.reads == "item_ids+text"
    assert model.manifest.inputs["r2end-serve"] == teacher.version == model.parts[1].manifest.version
    # every weight of the grid tried (in Ray tasks); the best on validation kept, scored as the model ranks
    assert [w for _, w in (s["weights"] for s in fused.history)] == [0, 1, 4, 16]
    best = max(fused.history, key=lambda s: s["ndcg@10"])
    assert model.weights == best["weights"] and fused.valid["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-9)

    assert student.manifest.inputs.keys() == {"prepared", "distillation", "teacher", "item_embeddings"}


def test_profile_distillation_from_generated_profiles_and_the_other_sources(r2end_model):
    """Profile distillation on Ray Train from the teacher's generated profiles (committed, embedded by the
    embed stage); the other sources: R2END's oracle targets (the slice's users with reasoning) and a
    distilled student's embedding of every user's training history (encoded on Ray Data)."""
    cfg = r2end_model[0].with_section("sasrec", max_epochs=2, batch_size=8, model={"hidden_size": 16, "inner_size": 16})
    cfg = cfg.with_section("profile", source="generated", student_run="student-z3")
    layout = Layout(cfg.storage_path)
    summary = train_profile.run(cfg)
    assert summary.epochs_trained == 2 and all(epoch["profile_distill"] > 0 for epoch in summary.history)
    loaded = models.load(layout, "profile")
    assert loaded.manifest.kind == "sasrec" and loaded.manifest.inputs["profiles"].startswith("profile/")
    assert summary.valid["users"] == USERS

    users = layout.read_users()
    for source, named_after in (("generated", "profile/"), ("oracle", "oracle/"), ("student", "student/")):
        named, table = train_profile.profile_embeddings(cfg.with_section("profile", source=source), layout, users)
        assert named.startswith(named_after) and table.num_rows == USERS  # every slice user has each


def test_history_texts_encode_in_bulk_on_onnx_runtime_as_on_torch(embedded):
    """embed.cpu_history_encoder=onnx-fp32: the encoders export the encoder and run it on ONNX Runtime; the
    vectors are torch's to float noise, cached apart from torch's. Each backend encodes alike on Ray Data's
    actors and, for fewer texts than ``embed.ray_data_min_texts``, in the calling process."""
    cfg = embedded[0]
    layout, encoder = Layout(cfg.storage_path), cfg.embed.encoder
    texts = layout.read_users().column("train_history_text").to_pylist()[:12]
    on_ray_data = cfg.embed.model_copy(update={"ray_data_min_texts": 0})
    for onnx in (None, (encoder, "fp32")):
        here, on_actors = (
            ray_data.encode_texts(texts, encoder, ec, cfg.resources, keep="end", onnx=onnx)
            for ec in (cfg.embed, on_ray_data)
        )
        assert np.min((here * on_actors).sum(1)) > 0.99999, onnx
    vectors = {
        backend: ray_data.history_text_encoder(
            layout, encoder, encoder, cfg.embed.model_copy(update={"cpu_history_encoder": backend}), cfg.resources
        )(texts)
        for backend in ("torch", "onnx-fp32")
    }
    assert vectors["onnx-fp32"].shape == (12, 384)
    assert np.min((vectors["torch"] * vectors["onnx-fp32"]).sum(1)) > 0.9999
    caches = {backend: encoder_id(encoder, cfg.embed.max_seq_length, "end", backend) for backend in vectors}
    assert caches["torch"] == encoder_id(encoder, cfg.embed.max_seq_length, "end") != caches["onnx-fp32"]
    assert all(storage.list_files(layout.text_vectors(cache)) for cache in caches.values())
