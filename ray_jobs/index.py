"""Index stage: every item's projected embedding in a faiss index, saved as a version serving loads.

    ray job submit --working-dir . -- python -m ray_jobs.index --config configs/beauty-sample.yaml
    # approximate search, its recall against exact measured on validation users' histories:
    python -m ray_jobs.index --config configs/beauty-sample.yaml --set index.kind=hnsw
    # new items without retraining: a new version = the latest one + these items through Enc and f
    python -m ray_jobs.index --config configs/beauty-sample.yaml --set index.new_items=/path/new_items.parquet

The version is named from its inputs (model, settings, items), and ``index/latest.json`` points to
the one built last; layout in ``r2end_core/index.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import torch

from r2end_core import artifacts, data, embeddings, index, projection, storage
from r2end_core.config import PipelineConfig
from r2end_core.recommender import load_projection, model_path
from ray_jobs.encode import encode_texts
from ray_jobs.runtime import run_stage


KIND_SETTINGS = {"flat": (), "ivf": ("nlist", "nprobe"), "hnsw": ("hnsw_m", "ef_search")}


def model_of(cfg: PipelineConfig) -> dict:
    """The manifest's ``model``: what the project run serves with, as paths under the storage path."""
    root, run = cfg.storage_path, cfg.index.project_run or cfg.project.run_name
    metrics_path = artifacts.run_path(root, run, "metrics.json")
    if not storage.exists(metrics_path):
        raise FileNotFoundError(f"{metrics_path} not found: run the project stage with project.run_name={run} "
                                "first (or set index.project_run)")
    trained = storage.read_json(metrics_path)["config"]
    if trained["user_encoder"] == "item_mean":
        raise ValueError(f"project run '{run}' embeds users as the mean of item embeddings (ablation 4); serving "
                         "encodes history text: index a run with project.user_encoder=student or encoder")
    if trained["user_encoder"] == "student":
        student = storage.read_json(artifacts.run_path(root, trained["student_run"], "metrics.json"))
        user_model, user_model_id = f"{trained['student_run']}/model", f"{student['ray_train_run']}-{student['steps']}"
    else:
        user_model = user_model_id = cfg.embed.encoder
    projection_path = f"{run}/projection.pt" if trained["use_projection"] else None
    return {"project_run": run, "user_encoder": trained["user_encoder"], "user_model": user_model,
            "user_model_id": user_model_id, "projection": projection_path,
            "projection_sha256": storage.sha256(model_path(projection_path, root))[:12] if projection_path else None,
            "item_encoder": cfg.embed.encoder, "max_seq_length": cfg.embed.max_seq_length}


def projected(vectors: np.ndarray, model: dict, root: str) -> np.ndarray:
    f = load_projection(model_path(model["projection"], root)) if model["projection"] else None
    return projection.unit_vectors(torch.from_numpy(vectors), f).numpy()


def measure_recall(cfg: PipelineConfig, model: dict, faiss_index, item_vectors: np.ndarray) -> dict:
    """Recall@k against exact search, queried with a fixed sample of validation users' histories."""
    users = artifacts.read_users(cfg.storage_path)
    _, sample = projection.user_samples(users.num_rows, None, cfg.index.recall_queries, cfg.project.sample_seed)
    texts = users.column("valid_history_text").take(pa.array(sample)).to_pylist()
    user_model = model_path(model["user_model"], cfg.storage_path)
    queries = projected(encode_texts(texts, user_model, cfg.embed, keep="end"), model, cfg.storage_path)
    exact = index.build(item_vectors, cfg.index.model_copy(update={"kind": "flat"}))
    return {f"recall@{cfg.index.recall_k}": index.recall(faiss_index, exact, queries, cfg.index.recall_k),
            "queries": len(texts)}


def build_version(cfg: PipelineConfig) -> dict:
    root, ic = cfg.storage_path, cfg.index
    model = model_of(cfg)
    items = artifacts.read_items(root)
    item_vectors = projected(embeddings.read_item_vectors(root, items), model, root)
    faiss_index = index.build(item_vectors, ic)
    quality = {"exact": True} if ic.kind == "flat" else {"exact": False, **measure_recall(cfg, model, faiss_index, item_vectors)}
    settings = ic.model_dump(include={"kind", *KIND_SETTINGS[ic.kind]})
    catalogue = items.select(["item_id", "title", "metadata_text"])
    version = index.version_name(ic.kind, model, settings, catalogue.column("item_id").to_pylist())
    manifest = {"model": model, "settings": settings, "quality": quality, "base_version": None, "added_items": 0}
    index.save(root, version, faiss_index, catalogue, manifest)
    return {**manifest, "version": version, "items": faiss_index.ntotal}


def add_items(cfg: PipelineConfig) -> dict:
    """A new version: a built one plus ``index.new_items``, each embedded as Enc(M_i) and projected."""
    root, ic = cfg.storage_path, cfg.index
    base = index.resolve_version(root, ic.base_version or "latest")
    faiss_index, catalogue, manifest = index.load(root, base)
    new = data.read_new_items(ic.new_items, set(catalogue.column("item_id").to_pylist()))
    model = manifest["model"]
    texts = new.column("metadata_text").to_pylist()
    faiss_index.add(projected(encode_texts(texts, model["item_encoder"], cfg.embed), model, root))
    catalogue = pa.concat_tables([catalogue, new.cast(index.INDEX_ITEMS_SCHEMA)])
    version = index.version_name(manifest["settings"]["kind"], base, new.column("item_id").to_pylist(), texts)
    manifest = {**manifest, "base_version": base, "added_items": manifest["added_items"] + new.num_rows}
    index.save(root, version, faiss_index, catalogue, manifest)
    return {**manifest, "version": version, "items": faiss_index.ntotal}


def run(cfg: PipelineConfig) -> dict:
    started = time.time()
    summary = add_items(cfg) if cfg.index.new_items else build_version(cfg)
    summary["wall_time_s"] = round(time.time() - started, 1)
    print(f"index version {summary['version']}: {summary['items']:,} items, {summary['settings']['kind']}, "
          f"quality {summary['quality']}")
    return summary


if __name__ == "__main__":
    run_stage(__doc__, run)
