"""SASRec baseline on Ray Train: early stopping on validation NDCG@10, test metrics once at the end.

    ray job submit --working-dir . -- python -m ray_jobs.train_sasrec --config configs/beauty-sample.yaml
"""

from __future__ import annotations

import copy
import os
import tempfile
import time

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from r2end_core import artifacts, data, metrics, sasrec, storage
from r2end_core.config import PipelineConfig, SasrecConfig
from ray_jobs.runtime import run_stage

STATE_FILE = "state.pt"


def _load_catalogue(root: str) -> tuple[list[np.ndarray], int, np.ndarray]:
    items = artifacts.read_items(root)
    sequences = data.index_sequences(artifacts.read_users(root), items)
    tail = metrics.long_tail_mask(np.asarray(items.column("train_popularity").to_pylist()))
    return sequences, items.num_rows, tail


def train_loop_per_worker(config: dict) -> None:
    cfg = SasrecConfig(**config["sasrec"])
    torch.set_num_threads(cfg.cpus_per_worker)  # Ray sets OMP_NUM_THREADS=1 in workers
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    rng = np.random.default_rng(cfg.seed + rank)

    sequences, n_items, tail = _load_catalogue(config["storage_path"])
    train_tokens = [data.training_part(s) + 1 for s in sequences][rank::world]
    core = sasrec.SASRec(n_items, cfg)
    model = ray.train.torch.prepare_model(core)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    start_epoch, evals_without_gain, best = 0, 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group resumes from the best state so far
        with checkpoint.as_directory() as folder:
            best = torch.load(os.path.join(folder, STATE_FILE), weights_only=False)
        core.load_state_dict(best["model"])
        optimizer.load_state_dict(best["optimizer"])
        start_epoch = best["epoch"] + 1

    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.max_epochs):
        batches = sasrec.training_batches(train_tokens, cfg.batch_size, cfg.max_len, rng)
        report = {"epoch": epoch, "loss": sasrec.train_one_epoch(model, optimizer, batches, device)}
        if (epoch + 1) % cfg.eval_every:
            ray.train.report(report)
            continue
        valid = sasrec.evaluate(core, sequences, "valid", tail, cfg.mask_history, device)
        report.update({f"valid_{k}": v for k, v in valid.items()})
        if best is None or valid["ndcg@10"] > best["valid"]["ndcg@10"]:
            evals_without_gain = 0
            best = {"model": copy.deepcopy(core.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
                    "epoch": epoch, "valid": valid, "config": cfg.model_dump(), "n_items": n_items}
            _report(report, best, rank)
        else:
            evals_without_gain += 1
            ray.train.report(report)
        if evals_without_gain >= cfg.patience:
            break
    # Ray Train keeps only metrics that come with a checkpoint: the run ends with one that holds
    # the best model and the run's totals, so the driver reads both from result.checkpoint.
    _report({"epochs_trained": epoch + 1}, {**best, "epochs_trained": epoch + 1}, rank)


def _report(metrics_: dict, state: dict, rank: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            torch.save(state, os.path.join(folder, STATE_FILE))
            ray.train.report(metrics_, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics_)


def run(cfg: PipelineConfig, score_test: bool = True) -> dict:
    """Train, select on validation, save; score the test split once unless ``score_test`` is False
    (a caller choosing among several runs scores only the chosen one, with ``score_test_split``)."""
    root, sc = cfg.storage_path, cfg.sasrec
    started = time.time()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"storage_path": root, "sasrec": sc.model_dump()},
        scaling_config=ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker={"CPU": sc.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=f"{sc.run_name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=artifacts.ray_train_path(root),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE_FILE), weights_only=False)
    with storage.open_output(artifacts.sasrec_model_path(root, sc.run_name)) as out:
        torch.save({"model": state["model"], "config": state["config"], "n_items": state["n_items"]}, out)
    sequences, _, tail = _load_catalogue(root)
    summary = {
        "valid": sasrec.evaluate(load_model(root, sc.run_name), sequences, "valid", tail, sc.mask_history),
        "best_epoch": state["epoch"] + 1,
        "epochs_trained": state["epochs_trained"],
        "mask_history": sc.mask_history,
        "seed": sc.seed,
        "config": sc.model_dump(),
        "wall_time_s": round(time.time() - started, 1),
    }
    storage.write_json(summary, artifacts.sasrec_metrics_path(root, sc.run_name))
    return score_test_split(root, sc.run_name) if score_test else summary


def load_model(root: str, run_name: str) -> sasrec.SASRec:
    with storage.open_input(artifacts.sasrec_model_path(root, run_name)) as src:
        state = torch.load(src, weights_only=False)
    model = sasrec.SASRec(state["n_items"], SasrecConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model


def score_test_split(root: str, run_name: str) -> dict:
    """Score the test split with a saved model and add it to its metrics.json."""
    summary = storage.read_json(artifacts.sasrec_metrics_path(root, run_name))
    torch.set_num_threads(summary["config"]["cpus_per_worker"])
    sequences, _, tail = _load_catalogue(root)
    summary["test"] = sasrec.evaluate(load_model(root, run_name), sequences, "test", tail, summary["mask_history"])
    storage.write_json(summary, artifacts.sasrec_metrics_path(root, run_name))
    return summary


if __name__ == "__main__":
    print(metrics.format_table({"sasrec": run_stage(__doc__, run)}))
