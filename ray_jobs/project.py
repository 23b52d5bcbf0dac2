"""Project stage: the shared projection f trained with InfoNCE + L2 on Ray Train, then evaluated.

    ray job submit --working-dir . -- python -m ray_jobs.project --config configs/beauty-sample.yaml

User embeddings e_u come from the distilled student on each split's history text (cached under
``<student_run>/user_embeddings/<weights id>/``) or, for ablation 4, from the mean of the history items'
embeddings. Each epoch is scored on validation and checkpointed; the epoch with the best
validation NDCG@10 is kept, and the test split is scored once, on it. A run killed part-way
resumes from its last epoch when started again with the same settings.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import time
import uuid

import numpy as np
import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from r2end_core import artifacts, data, embeddings, metrics, projection, storage
from r2end_core.config import PipelineConfig, ProjectConfig
from ray_jobs import embed
from ray_jobs.encode import encode_texts
from ray_jobs.runtime import run_stage

STATE_FILE = "state.pt"
SPLITS = ("train", "valid", "test")


def train_loop_per_worker(config: dict) -> None:
    cfg = ProjectConfig(**config["project"])
    torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()
    arrays = ray.get(config["arrays"])  # read-only views of the object store: torch.tensor copies them
    items = torch.tensor(arrays["items"], device=device)
    train_users = torch.tensor(arrays["train_users"], device=device)
    positives = torch.tensor(arrays["train_targets"])  # indices stay on the CPU, with the sampler
    valid_users = torch.tensor(arrays["valid_users"], device=device)
    f = projection.Projection(items.shape[1], cfg.dim).to(device)
    optimizer = torch.optim.Adam(f.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    state = {"epoch": 0, "best": None, "history": [], "resumed_from_epoch": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE_FILE), weights_only=False)
        f.load_state_dict(state["projection"])
        optimizer.load_state_dict(state["optimizer"])  # moves the optimizer state to f's device
        generator.set_state(state["generator"])
        state["resumed_from_epoch"] = state["epoch"]

    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        losses = projection.train_epoch(f, optimizer, train_users, positives, items, cfg, generator)
        valid = projection.evaluate(f, valid_users, items, arrays["valid_targets"], arrays["valid_exclude"],
                                    arrays["tail"])
        state["history"].append({"epoch": epoch, **losses, "valid_hr@10": valid["hr@10"],
                                 "valid_ndcg@10": valid["ndcg@10"]})
        if state["best"] is None or valid["ndcg@10"] > state["best"]["valid"]["ndcg@10"]:
            state["best"] = {"projection": copy.deepcopy(f.state_dict()), "epoch": epoch, "valid": valid}
        state.update(epoch=epoch, projection=f.state_dict(), optimizer=optimizer.state_dict(),
                     generator=generator.get_state())
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, os.path.join(folder, STATE_FILE))
            ray.train.report({"epoch": epoch, **state["history"][-1]},
                             checkpoint=ray.train.Checkpoint.from_directory(folder))


def run_name(cfg: PipelineConfig, inputs_version: str) -> str:
    """Same settings and inputs, same Ray Train run (so a re-run resumes it); ``epochs`` is left out so
    that raising it continues a finished run."""
    settings = {"project": cfg.project.model_dump(exclude={"epochs"}), "inputs": inputs_version,
                "embeddings": embed.written_digest(cfg.storage_path), "storage_path": cfg.storage_path}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"project-{cfg.project.run_name}-{digest}"


def text_encoder_embeddings(cfg: PipelineConfig, users: pa.Table, wanted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The student's (or, with ``user_encoder=encoder``, Enc's) embeddings of each split's history text
    for the wanted user positions, from the cache where present; the rest are encoded on Ray Data and
    added to the cache."""
    pc_ = cfg.project
    if pc_.user_encoder == "encoder":
        model_path, cache_folder = cfg.embed.encoder, artifacts.encoder_user_embeddings_path(cfg.storage_path)
    else:
        model_path = artifacts.run_path(cfg.storage_path, pc_.student_run, "model")
        if not storage.exists(model_path):
            raise FileNotFoundError(f"no student at {model_path}: run the distill stage with distill.run_name="
                                    f"{pc_.student_run} first (or set project.student_run)")
        student = storage.read_json(artifacts.run_path(cfg.storage_path, pc_.student_run, "metrics.json"))
        # Keyed by the weights' identity, so a retrained student never reads an older one's vectors.
        cache_folder = artifacts.run_path(cfg.storage_path, pc_.student_run,
                                          f"user_embeddings/{student['ray_train_run']}-{student['steps']}")
    files = storage.list_files(cache_folder)
    cached = pa.concat_tables([storage.read_table(f) for f in files]) if files else embeddings.USER_EMBEDDING_SCHEMA.empty_table()
    cache = {(u, s): i for i, (u, s) in enumerate(zip(cached.column("user_id").to_pylist(),
                                                       cached.column("split").to_pylist()))}
    ids = users.column("user_id").to_pylist()
    missing = [(ids[p], split) for split, positions in wanted.items() for p in positions if (ids[p], split) not in cache]
    if missing:
        texts = {split: users.column(f"{split}_history_text").to_pylist() for split in SPLITS}
        position = {u: i for i, u in enumerate(ids)}
        vectors = encode_texts([texts[s][position[u]] for u, s in missing], model_path, cfg.embed, keep="end")
        added = pa.table({"user_id": [u for u, _ in missing], "split": [s for _, s in missing],
                          "embedding": embeddings.embedding_column(vectors)}, schema=embeddings.USER_EMBEDDING_SCHEMA)
        storage.write_table_atomic(added, storage.join(cache_folder, f"part-{uuid.uuid4().hex}.parquet"))
        cached = pa.concat_tables([cached, added])
        cache.update({key: cached.num_rows - len(missing) + i for i, key in enumerate(missing)})
    matrix = embeddings.to_matrix(cached["embedding"])
    return {split: matrix[[cache[(ids[p], split)] for p in positions]] for split, positions in wanted.items()}


def item_mean_embeddings(users: pa.Table, items: pa.Table, item_vectors: np.ndarray,
                         wanted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    index = dict(zip(items.column("item_id").to_pylist(), items.column("item_index").to_pylist()))
    out = {}
    for split, positions in wanted.items():
        histories = users.column(f"{split}_history_ids").take(pa.array(positions)).to_pylist()
        out[split] = projection.mean_item_embeddings([np.array([index[i] for i in h]) for h in histories], item_vectors)
    return out


def run(cfg: PipelineConfig) -> dict:
    root, pc_ = cfg.storage_path, cfg.project
    started = time.time()
    users, items = artifacts.read_users(root), artifacts.read_items(root)
    item_vectors = embeddings.read_item_vectors(root, items)
    train_pos, eval_pos = projection.user_samples(users.num_rows, pc_.train_users, pc_.eval_users, pc_.sample_seed)
    wanted = {"train": train_pos, "valid": eval_pos, "test": eval_pos}
    if pc_.user_encoder == "student":
        user_vectors = text_encoder_embeddings(cfg, users, wanted)
        student = storage.read_json(artifacts.run_path(root, pc_.student_run, "metrics.json"))
        inputs_version = f"student:{pc_.student_run}:{student['ray_train_run']}-{student['steps']}"
    elif pc_.user_encoder == "encoder":
        user_vectors = text_encoder_embeddings(cfg, users, wanted)
        inputs_version = f"encoder:{cfg.embed.encoder}:{cfg.embed.max_seq_length}"
    else:
        user_vectors = item_mean_embeddings(users, items, item_vectors, wanted)
        inputs_version = "item_mean"

    sequences = data.index_sequences(users, items)
    tail = metrics.long_tail_mask(np.asarray(items.column("train_popularity").to_pylist()))
    split_data = {}
    for split, positions in wanted.items():
        inputs, targets = data.split_inputs_targets([sequences[p] for p in positions], split)
        split_data[split] = (targets, inputs if pc_.mask_history else None)

    summary = {"user_encoder": pc_.user_encoder, "student_run": pc_.student_run if pc_.user_encoder == "student" else None,
               "use_projection": pc_.use_projection, "train_users": len(train_pos), "eval_users": len(eval_pos),
               "mask_history": pc_.mask_history, "config": pc_.model_dump()}
    f = None
    if pc_.use_projection:
        arrays = {"items": item_vectors, "train_users": user_vectors["train"],
                  "train_targets": split_data["train"][0], "valid_users": user_vectors["valid"],
                  "valid_targets": split_data["valid"][0], "valid_exclude": split_data["valid"][1], "tail": tail}
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"project": pc_.model_dump(), "arrays": ray.put(arrays)},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=pc_.use_gpu,
                                         resources_per_worker={"CPU": pc_.cpus_per_worker}),
            run_config=RunConfig(name=run_name(cfg, inputs_version), storage_path=artifacts.ray_train_path(root),
                                 checkpoint_config=CheckpointConfig(num_to_keep=1)),
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE_FILE), weights_only=False)
        f = projection.Projection(item_vectors.shape[1], pc_.dim)
        f.load_state_dict({k: v.cpu() for k, v in state["best"]["projection"].items()})
        summary.update(best_epoch=state["best"]["epoch"], epochs_trained=state["epoch"],
                       resumed_from_epoch=state["resumed_from_epoch"], history=state["history"])
        with storage.open_output(artifacts.run_path(root, pc_.run_name, "projection.pt")) as out:
            torch.save({"projection": f.state_dict(), "in_dim": item_vectors.shape[1], "out_dim": pc_.dim,
                        "config": pc_.model_dump()}, out)
    elif storage.exists(artifacts.run_path(root, pc_.run_name, "projection.pt")):  # from an earlier run with one
        storage.delete_file(artifacts.run_path(root, pc_.run_name, "projection.pt"))

    torch.set_num_threads(pc_.cpus_per_worker)
    item_tensor = torch.from_numpy(item_vectors)
    ranks = []
    for split in ("valid", "test"):  # the test split is scored once, on the model validation chose
        targets, exclude = split_data[split]
        ranking = projection.rank(f, torch.from_numpy(user_vectors[split]), item_tensor, targets, exclude)
        summary[split] = metrics.ranking_metrics(ranking, targets, len(item_vectors), tail)
        ranks.append(pa.table({"user_id": users.column("user_id").take(eval_pos), "split": [split] * len(eval_pos),
                               "rank": ranking.ranks.astype(np.int32)}, schema=artifacts.RANKS_SCHEMA))
    storage.write_table(pa.concat_tables(ranks), artifacts.run_path(root, pc_.run_name, "ranks.parquet"))
    summary["wall_time_s"] = round(time.time() - started, 1)
    storage.write_json(summary, artifacts.run_path(root, pc_.run_name, "metrics.json"))
    return summary


if __name__ == "__main__":
    summary = run_stage(__doc__, run)
    print(metrics.format_table({summary["config"]["run_name"]: summary}))
