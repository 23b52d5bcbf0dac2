"""Distill stage: the student encoder learns history text -> target embedding, on Ray Train + DeepSpeed.

    ray job submit --working-dir . -- python -m ray_jobs.distill --config configs/beauty-sample.yaml

Checkpoints every ``distill.checkpoint_every`` steps through ``ray.train.report``; a run killed
part-way and started again with the same settings resumes from its last checkpoint (the Ray Train
run name is derived from the settings). Writes ``<run_name>/model`` (a sentence-transformers
folder that loads without DeepSpeed), ``metrics.json`` and ``distances.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time

import deepspeed
import numpy as np
import pyarrow as pa
import ray.train
import torch
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from r2end_core import artifacts, distill, embeddings, encoders, storage
from r2end_core.config import DistillConfig, EmbedConfig, PipelineConfig
from ray_jobs import embed
from ray_jobs.encode import encode_texts
from ray_jobs.runtime import run_stage

CHECKPOINT_TAG = "student"  # DeepSpeed's folder name inside a checkpoint ("latest" is its own pointer file)
DISTANCES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("l2_before", pa.float32(), nullable=False),
        pa.field("l2_after", pa.float32(), nullable=False),
        pa.field("cos_before", pa.float32(), nullable=False),
        pa.field("cos_after", pa.float32(), nullable=False),
    ]
)


def train_loop_per_worker(config: dict) -> None:
    cfg, ec = DistillConfig(**config["distill"]), EmbedConfig(**config["embed"])
    torch.set_num_threads(cfg.cpus_per_worker)  # Ray sets OMP_NUM_THREADS=1 in workers
    torch.manual_seed(cfg.seed)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    model = encoders.load_encoder(ec.encoder, str(device), ec.max_seq_length, keep="end")
    examples = storage.read_table(config["examples_path"])
    texts = examples.column("history_text").to_pylist()
    targets = torch.from_numpy(embeddings.to_matrix(examples["target"]))
    steps_per_epoch = -(-len(texts) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch

    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate),
        config=distill.deepspeed_config(cfg, world),
    )
    step, resumed_from, losses, trained_before = 0, 0, [], 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            _, client_state = engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
        step = resumed_from = client_state["step"]
        losses, trained_before = client_state["losses"], client_state["train_seconds"]
    started = time.time()

    while step < total_steps:
        epoch, index = divmod(step, steps_per_epoch)
        rows = distill.batch_rows(len(texts), cfg.batch_size, epoch, cfg.seed)[index][rank::world]
        features = model.preprocess([texts[i] for i in rows])
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        loss = distill.distillation_loss(engine(features)["sentence_embedding"], targets[rows].to(device))
        engine.backward(loss)
        engine.step()
        losses.append(round(loss.item(), 6))
        step += 1
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            # Training time summed over every attempt: a re-run of a finished run reports the original's.
            train_seconds = round(trained_before + time.time() - started, 1)
            with tempfile.TemporaryDirectory() as folder:
                engine.save_checkpoint(folder, tag=CHECKPOINT_TAG,
                                       client_state={"step": step, "losses": losses, "train_seconds": train_seconds})
                report = {"step": step, "loss": losses[-1], "resumed_from_step": resumed_from, "total_steps": total_steps,
                          "train_seconds": train_seconds}
                if step == total_steps:  # the driver reads the run's losses from the last report
                    report["losses"] = losses
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))

    # ZeRO-3 splits the weights across workers: gather them, and save a plain fp32 copy on rank 0.
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        state = {k: v.detach().float().clone() for k, v in model.state_dict().items()} if rank == 0 else None
    if rank == 0:
        student = encoders.load_encoder(ec.encoder, "cpu", ec.max_seq_length, keep="end")
        student.load_state_dict(state)
        with tempfile.TemporaryDirectory() as folder:
            student.save(folder)
            storage.upload_folder(folder, config["model_path"])


def run_name(cfg: PipelineConfig) -> str:
    """The Ray Train run name: the same settings give the same name, so a re-run resumes its run.
    ``epochs`` is left out: raising it continues a finished run instead of starting over; so is
    ``checkpoint_every``, which does not change the weights. The embeddings enter by their inputs
    digest (encoder, max length, the content of what they were made from)."""
    settings = {"distill": cfg.distill.model_dump(exclude={"epochs", "checkpoint_every"}),
                "embeddings": embed.written_digest(cfg.storage_path), "storage_path": cfg.storage_path,
                "holdout": "by-user-id"}  # runs that split by row order held out other users: never resume them
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"distill-{cfg.distill.run_name}-{digest}"


def run(cfg: PipelineConfig) -> dict:
    root, dc, ec = cfg.storage_path, cfg.distill, cfg.embed
    started = time.time()
    users = artifacts.read_users(root)
    history = dict(zip(users.column("user_id").to_pylist(), users.column("train_history_text").to_pylist()))
    user_ids, targets = distill.select_targets(artifacts.read_embeddings(root, "targets.parquet"), dc.target)
    train_rows, held_rows = distill.split_holdout(user_ids, dc.holdout_fraction, dc.seed)
    examples_path = artifacts.run_path(root, dc.run_name, "examples.parquet")
    storage.write_table(
        pa.table({"user_id": [user_ids[i] for i in train_rows], "history_text": [history[user_ids[i]] for i in train_rows],
                  "target": embeddings.embedding_column(targets[train_rows])}),
        examples_path,
    )
    model_path = artifacts.run_path(root, dc.run_name, "model")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"distill": dc.model_dump(), "embed": ec.model_dump(), "examples_path": examples_path,
                           "model_path": model_path},
        torch_config=None if dc.use_gpu else TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=dc.num_workers, use_gpu=dc.use_gpu,
                                     resources_per_worker={"CPU": dc.cpus_per_worker}),
        run_config=RunConfig(name=run_name(cfg), storage_path=artifacts.ray_train_path(root),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    result = trainer.fit()

    summary = {
        "target": dc.target,
        "users_distilled": len(train_rows),
        "users_held_out": len(held_rows),
        "steps": result.metrics["total_steps"],
        "resumed_from_step": result.metrics["resumed_from_step"],
        "loss_first": result.metrics["losses"][0],
        "loss_last": result.metrics["losses"][-1],
        "losses": result.metrics["losses"],
        "train_seconds": result.metrics["train_seconds"],
        "ray_train_run": run_name(cfg),  # with steps, names this student's weights (project caches by it)
        "config": dc.model_dump(),
        "encoder": ec.encoder,
    }
    if len(held_rows):
        summary["distances_held_out"] = measure_distances(cfg, [user_ids[i] for i in held_rows], targets[held_rows],
                                                          history, model_path)
    summary["wall_time_s"] = round(time.time() - started, 1)
    storage.write_json(summary, artifacts.run_path(root, dc.run_name, "metrics.json"))
    return summary


def measure_distances(cfg: PipelineConfig, user_ids: list[str], targets: np.ndarray, history: dict[str, str],
                      model_path: str) -> dict:
    """L2 and cosine between each held-out user's target and Enc (before) / Enc_S (after) on their history."""
    texts = [history[u] for u in user_ids]
    before = encode_texts(texts, cfg.embed.encoder, cfg.embed, keep="end")
    after = encode_texts(texts, model_path, cfg.embed, keep="end")
    l2_before, cos_before = distill.distances(before, targets)
    l2_after, cos_after = distill.distances(after, targets)
    storage.write_table(
        pa.table({"user_id": user_ids, "l2_before": l2_before, "l2_after": l2_after, "cos_before": cos_before,
                  "cos_after": cos_after}, schema=DISTANCES_SCHEMA),
        artifacts.run_path(cfg.storage_path, cfg.distill.run_name, "distances.parquet"),
    )
    return {name: {"mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4)}
            for name, v in (("l2_before", l2_before), ("l2_after", l2_after), ("cos_before", cos_before),
                            ("cos_after", cos_after))}


if __name__ == "__main__":
    print(json.dumps({k: v for k, v in run_stage(__doc__, run).items() if k != "losses"}, indent=2))
